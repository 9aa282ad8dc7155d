"""A local stand-in for ModelArts' ``moxing`` module, for tests only.

The real ``moxing`` is preinstalled on ModelArts and exists nowhere else (the PyPI package of the
same name is an unrelated project), so the tests put this folder on PYTHONPATH instead. It
implements the part of ``moxing.file`` the package calls, over local folders: ``obs://bucket/key``
is mapped to ``$MOXING_STANDIN_OBS_ROOT/bucket/key``; any other path is a local path.
"""

from . import file  # noqa: F401
