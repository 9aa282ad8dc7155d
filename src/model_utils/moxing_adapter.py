"""ModelArts startup: data, checkpoints and outputs synchronised with OBS through moxing.

With ``enable_modelarts=True`` an entry script's ``main`` (decorated with ``moxing_wrapper``) runs
between two synchronisations:

    before: data_url -> data_path, then <data_path>/<modelarts_dataset_unzip_name>.zip unpacked
            into data_path when need_modelarts_dataset_unzip; checkpoint_url -> load_path;
            train_url -> output_path (when it exists already)
    after:  output_path -> train_url (also when main fails)

Relative ckpt_save_dir and file_name are placed under output_path by the config loader, so that
checkpoints and exported models are uploaded.

Only the first process of each server (device id % min(device count, 8) == 0) copies and unpacks;
the others wait for its marker file, at most ``modelarts_sync_timeout`` seconds. ``moxing`` is
ModelArts' own file API and exists only there; it is imported when first needed. (The PyPI
package named ``moxing`` is an unrelated project.)
"""

from __future__ import annotations

import functools
import os
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from src.errors import UserError

# ModelArts sets the same DEVICE_ID / RANK_SIZE / RANK_ID variables as a local launcher.
from src.model_utils.local_adapter import get_device_id, get_device_num

DEVICES_PER_SERVER = 8
MARKER_POLL_SECONDS = 0.5
# The processes of one run start within seconds of each other; a marker whose writer started further
# away from this process belongs to an earlier run.
LAUNCH_SPREAD_SECONDS = 120
PROCESS_START = time.time()


def get_job_id() -> str:
    """JOB_ID: the ModelArts job ("default" when unset)."""
    return os.environ.get("JOB_ID", "").strip() or "default"


def is_first_local_process() -> bool:
    """The process that copies for its server: device id 0 of each group of up to 8 devices."""
    return get_device_id() % min(max(get_device_num(), 1), DEVICES_PER_SERVER) == 0


def import_moxing() -> ModuleType:
    """ModelArts' ``moxing`` module, or a UserError saying where it exists."""
    try:
        import moxing
    except ImportError:
        raise UserError("enable_modelarts=True needs ModelArts' 'moxing' module, which exists only on ModelArts "
                        "(do not pip install 'moxing': that PyPI package is unrelated); run on ModelArts, or set "
                        "--enable_modelarts=False and pass local paths (train_data_path, val_data_path, "
                        "checkpoint_path, ...)") from None
    if not callable(getattr(getattr(moxing, "file", None), "copy_parallel", None)):
        raise UserError(f"the 'moxing' module at {getattr(moxing, '__file__', '?')} has no file.copy_parallel: "
                        "it is not ModelArts' moxing (the PyPI package of that name is unrelated; uninstall it)")
    return moxing


# ---------------------------------------------------------------------------------------------
# One action per server: the first process acts, the others wait for its marker.


def _marker_dir() -> Path:
    """Markers of this job on this server (a fixed folder per JOB_ID, so any launcher's processes meet)."""
    return Path(tempfile.gettempdir()) / f"googlenet_modelarts_{get_job_id()}"


def _read_marker(marker: Path) -> str | None:
    """The message of a marker written in this run, else None.

    A marker records when its writer started; the processes of one run start within
    LAUNCH_SPREAD_SECONDS of each other, so a marker of an earlier run on this machine is ignored.
    """
    try:
        started, _, message = marker.read_text(encoding="utf-8").partition("\n")
        return message if abs(float(started) - PROCESS_START) <= LAUNCH_SPREAD_SECONDS else None
    except (FileNotFoundError, ValueError):
        return None


def run_once_per_server(name: str, action: Callable[[], None], timeout: float) -> None:
    """Run ``action`` in the first process of this server; the others wait until it is done.

    A failure of the first process is written to a marker too, so that the others stop at once
    with its message instead of waiting for the timeout.
    """
    if get_device_num() <= 1:
        action()
        return
    markers = _marker_dir()
    markers.mkdir(parents=True, exist_ok=True)
    done, failed = markers / f"{name}.done", markers / f"{name}.failed"
    if is_first_local_process():
        for stale in (done, failed):
            stale.unlink(missing_ok=True)
        try:
            action()
        except BaseException as err:
            _write_marker(failed, str(err) or type(err).__name__)
            raise
        _write_marker(done, "ok")
        return
    _wait_for_marker(name, done, failed, timeout)


def _write_marker(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(f"{PROCESS_START}\n{text}", encoding="utf-8")
    os.replace(partial, path)


def _wait_for_marker(name: str, done: Path, failed: Path, timeout: float) -> None:
    print(f"device {get_device_id()}: waiting for the first process of this server to finish {name}", flush=True)
    deadline = time.monotonic() + timeout
    while _read_marker(done) is None:
        failure = _read_marker(failed)
        if failure is not None:
            raise UserError(f"{name} failed in the first process of this server: {failure.strip()}")
        if time.monotonic() > deadline:
            raise UserError(f"waited {timeout:g} s (modelarts_sync_timeout) for the first process of this server "
                            f"(device {get_device_id() - get_device_id() % DEVICES_PER_SERVER}) to finish {name}, "
                            f"but its marker {done} never appeared; check that process's log, or raise "
                            "modelarts_sync_timeout")
        time.sleep(MARKER_POLL_SECONDS)


# ---------------------------------------------------------------------------------------------
# Copies through moxing and the dataset zip.


def copy_with_moxing(mox: ModuleType, source: str, destination: str, what: str) -> None:
    """Copy a folder (or one file into a folder) from ``source`` to ``destination`` with moxing."""
    print(f"{what}: copying {source} -> {destination}", flush=True)
    start = time.perf_counter()
    if not mox.file.exists(source):
        raise UserError(f"{what}: {source} does not exist")
    try:
        if mox.file.is_directory(source):
            mox.file.copy_parallel(source, destination)
        else:
            mox.file.make_dirs(destination)
            mox.file.copy(source, destination.rstrip("/") + "/" + source.rstrip("/").rsplit("/", 1)[-1])
    except Exception as err:  # moxing raises its own error types; name the copy that failed
        raise UserError(f"{what}: copying {source} to {destination} failed: {err}") from None
    print(f"{what}: done in {time.perf_counter() - start:.1f} s", flush=True)


def _safe_member(root: Path, name: str) -> Path:
    target = (root / name).resolve()
    if name.startswith(("/", "\\")) or not target.is_relative_to(root.resolve()):
        raise UserError(f"zip member '{name}' would be written outside {root}; refusing to unpack this zip")
    return target


def unzip_dataset(zip_path: Path, destination: Path) -> None:
    """Unpack ``zip_path`` into ``destination``, printing progress every 10%.

    Members are unpacked into a scratch folder first and moved into place only when all are out,
    so a broken zip leaves nothing half-unpacked behind.
    """
    if not zip_path.is_file():
        present = sorted(p.name for p in zip_path.parent.iterdir()) if zip_path.parent.is_dir() else []
        raise UserError(f"need_modelarts_dataset_unzip=True but {zip_path} does not exist (the downloaded data "
                        f"holds: {', '.join(present[:10]) or 'nothing'}); set modelarts_dataset_unzip_name to the "
                        "zip's name without .zip")
    scratch = Path(tempfile.mkdtemp(prefix=".unzip-", dir=destination))
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = archive.infolist()
            total = max(sum(m.file_size for m in members), 1)
            done_bytes, next_report = 0, 10
            for member in members:
                _safe_member(scratch, member.filename)
                archive.extract(member, scratch)
                done_bytes += member.file_size
                percent = 100 * done_bytes // total
                if percent >= next_report:
                    print(f"unzip {zip_path.name}: {percent}% ({done_bytes} of {total} bytes)", flush=True)
                    next_report = percent // 10 * 10 + 10
        for entry in scratch.iterdir():
            target = destination / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
    except zipfile.BadZipFile as err:
        raise UserError(f"{zip_path} is not a valid zip file: {err}") from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"unzip {zip_path.name}: unpacked {len(members)} entries into {destination}", flush=True)


def download_inputs(mox: ModuleType, config) -> None:
    """data_url, checkpoint_url and train_url to their local folders; the dataset zip unpacked."""
    timeout = config.modelarts_sync_timeout
    Path(config.output_path).mkdir(parents=True, exist_ok=True)
    if config.data_url:
        Path(config.data_path).mkdir(parents=True, exist_ok=True)
        run_once_per_server("download data_url", functools.partial(
            copy_with_moxing, mox, config.data_url, config.data_path, "data_url"), timeout)
    if config.need_modelarts_dataset_unzip:
        zip_path = Path(config.data_path) / f"{config.modelarts_dataset_unzip_name}.zip"
        Path(config.data_path).mkdir(parents=True, exist_ok=True)
        run_once_per_server("unzip dataset", functools.partial(unzip_dataset, zip_path, Path(config.data_path)),
                            timeout)
    if config.checkpoint_url:
        run_once_per_server("download checkpoint_url", functools.partial(
            copy_with_moxing, mox, config.checkpoint_url, config.load_path, "checkpoint_url"), timeout)
    if config.train_url:
        run_once_per_server("download train_url", functools.partial(_download_outputs, mox, config), timeout)


def _download_outputs(mox: ModuleType, config) -> None:
    # An output folder that does not exist yet is normal for a first run.
    if mox.file.exists(config.train_url):
        copy_with_moxing(mox, config.train_url, config.output_path, "train_url")


def upload_outputs(mox: ModuleType, config) -> None:
    """output_path -> train_url, by the first process of each server."""
    if config.train_url and is_first_local_process() and Path(config.output_path).is_dir():
        copy_with_moxing(mox, config.output_path, config.train_url, "upload to train_url")


def moxing_wrapper(main: Callable[[], None]) -> Callable[[], None]:
    """Decorate an entry script's ``main``: on ModelArts, download before and upload after it."""

    @functools.wraps(main)
    def wrapped() -> None:
        from src.model_utils.config import load_config

        config = load_config()
        # msrun's scheduler process runs the script too, but reads no data and writes no outputs.
        if not config.enable_modelarts or os.environ.get("MS_ROLE") == "MS_SCHED":
            main()
            return
        mox = import_moxing()
        download_inputs(mox, config)
        try:
            main()
        except BaseException:
            _upload_after_failure(mox, config)
            raise
        upload_outputs(mox, config)

    return wrapped


def _upload_after_failure(mox: ModuleType, config) -> None:
    """Upload what the failed run left; a failing upload must not hide the run's own error."""
    try:
        upload_outputs(mox, config)
    except Exception as err:  # report and keep the original error
        print(f"warning: uploading {config.output_path} to {config.train_url} after the failure failed too: {err}",
              file=sys.stderr, flush=True)
