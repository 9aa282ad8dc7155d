"""Output files that are either complete or absent, and a clear error when the disk is full.

Every file a run produces (checkpoints, exported models, the saved config, rewritten logs) is
first written under a hidden temporary name in the destination folder, flushed to disk, and
only then renamed to its real name (a rename within one folder is atomic). A process killed at
any moment therefore leaves the previous file or no file under the real name, never a
truncated one. A leftover temporary file is harmless: its name starts with a dot and never
matches what the package reads.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from src.errors import UserError
from src.logger import logger

PARTIAL_MARK = ".partial"
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# The C++ writers behind mindspore.export and save_checkpoint report a full disk in their message only.
_DISK_FULL_TEXT = ("No space left on device", "Disk quota exceeded", "File too large")


def partial_path(target: str | Path) -> Path:
    """The hidden temporary name ``target`` is written under; it keeps the suffix, which some
    writers (MindSpore's checkpoint and export functions) insist on."""
    target = Path(target)
    return target.with_name(f".{target.stem}{PARTIAL_MARK}{os.getpid()}{target.suffix}")


def is_partial(path: str | Path) -> bool:
    """True for a temporary file left by an interrupted write."""
    name = Path(path).name
    return name.startswith(".") and PARTIAL_MARK in name


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _remove_quietly(*paths: Path) -> None:
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError:
            pass


def disk_full_error(err: BaseException, target: str | Path) -> UserError | None:
    """``err`` as a UserError naming ``target`` when it means the disk (or a quota) is full."""
    full = isinstance(err, OSError) and err.errno in _DISK_FULL_ERRNOS
    full = full or (isinstance(err, RuntimeError) and any(text in str(err) for text in _DISK_FULL_TEXT))
    if not full:
        return None
    target = Path(target)
    folder = target.parent if target.parent.exists() else Path(".")
    free_mb = shutil.disk_usage(folder).free / 2**20
    return UserError(f"no space left on the disk of {target.parent} while writing {target.name} "
                     f"({free_mb:.0f} MB free); the file was not written: free some space or write to "
                     "another folder (ckpt_save_dir, file_name)")


def ensure_folder(path: str | Path, key: str) -> Path:
    """Create the output folder ``path`` given by config key ``key`` when missing; a file in the
    way, a folder that cannot be created or a full disk is a UserError naming the key."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"{key}: {path} is not a folder (a file is in the way); expected a folder, "
                        "which is created when missing") from None
    except PermissionError:
        raise UserError(f"{key}: cannot create the folder {path} (permission denied); "
                        "expected a folder you can write to") from None
    except OSError as err:
        full = disk_full_error(err, path / ".")
        if full is not None:
            raise full from None
        raise
    return path


@contextmanager
def atomic_output(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target``'s content to; it becomes ``target`` on success.

    On an exception the temporary file is removed and ``target`` is left as it was; a full disk
    becomes a UserError. MindSpore's checkpoint writer also leaves ``<name>.tmp`` while it
    writes, which is removed as well.
    """
    target = Path(target)
    ensure_folder(target.parent, "output folder")
    partial = partial_path(target)
    try:
        yield partial
        if not partial.exists():
            raise UserError(f"writing {target} produced no file")
        if partial.is_file():
            _fsync(partial)
        os.replace(partial, target)
        _fsync(target.parent)
    except BaseException as err:
        _remove_quietly(partial, partial.with_suffix(".tmp"))
        full = disk_full_error(err, target)
        if full is not None:
            raise full from None
        raise


def atomic_write_text(target: str | Path, text: str) -> Path:
    """Write ``text`` to ``target`` (UTF-8) so that it appears complete or not at all."""
    with atomic_output(target) as partial:
        partial.write_text(text, encoding="utf-8")
    return Path(target)


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files that interrupted writes left in ``folder``; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    leftovers = [path for path in folder.iterdir() if is_partial(path)]
    _remove_quietly(*leftovers)
    return leftovers


def prepare_output_folder(path: str | Path, key: str) -> Path:
    """``ensure_folder``, then clear what a killed run left half-written there (with a warning)."""
    folder = ensure_folder(path, key)
    for leftover in remove_partial_files(folder):
        logger.warning("removed %s: an incomplete file left by an interrupted run", leftover)
    return folder
