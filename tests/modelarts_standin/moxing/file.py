"""``moxing.file`` over local folders (see the package docstring).

Test hooks: ``MOXING_STANDIN_LOG`` names a file that receives one line per copy call (to count
which process copied), ``MOXING_STANDIN_DELAY`` makes every copy sleep that many seconds.
"""

from __future__ import annotations

import os
import shutil
import time

OBS_SCHEME = "obs://"


def _local(url: str) -> str:
    if url.startswith(OBS_SCHEME):
        root = os.environ.get("MOXING_STANDIN_OBS_ROOT")
        if not root:
            raise RuntimeError("MOXING_STANDIN_OBS_ROOT is not set: the stand-in cannot map " + url)
        return os.path.join(root, url[len(OBS_SCHEME):])
    return url


def _record(call: str, src: str, dst: str) -> None:
    log = os.environ.get("MOXING_STANDIN_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"{call} {os.getpid()} {os.environ.get('DEVICE_ID', '-')} {src} {dst}\n")
    time.sleep(float(os.environ.get("MOXING_STANDIN_DELAY", "0")))


def exists(url: str) -> bool:
    return os.path.exists(_local(url))


def is_directory(url: str) -> bool:
    return os.path.isdir(_local(url))


def make_dirs(url: str) -> None:
    os.makedirs(_local(url), exist_ok=True)


def list_directory(url: str, recursive: bool = False) -> list[str]:
    root = _local(url)
    if not recursive:
        return sorted(os.listdir(root))
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def copy(src_url: str, dst_url: str) -> None:
    """Copy one file (like moxing, a missing source is an error)."""
    _record("copy", src_url, dst_url)
    src, dst = _local(src_url), _local(dst_url)
    if not os.path.isfile(src):
        raise FileNotFoundError(f"stand-in moxing: no such file {src_url}")
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    shutil.copyfile(src, dst)


def copy_parallel(src_url: str, dst_url: str) -> None:
    """Copy a folder's contents into another folder, merging with what is there."""
    _record("copy_parallel", src_url, dst_url)
    src, dst = _local(src_url), _local(dst_url)
    if not os.path.isdir(src):
        raise FileNotFoundError(f"stand-in moxing: no such folder {src_url}")
    shutil.copytree(src, dst, dirs_exist_ok=True)
