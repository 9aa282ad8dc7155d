"""Out of memory and out of disk: one clear line, and nothing truncated left under a real name.

- Memory: train.py runs under an address-space limit (RLIMIT_AS, like ``ulimit -v``) of 3 GiB with
  a batch of 480 images; MindSpore's CPU memory pool then fails to allocate (the same run finishes
  under 4 GiB), which must come out as a message naming batch_size.
- Disk: the checkpoint folder (or the export target) is a tmpfs mounted with a few MB, so the
  real kernel returns ENOSPC part-way through the write. Mounting needs root; elsewhere these
  tests are skipped.
"""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CPU_CONFIG, REPO, SMALL_CIFAR, assert_user_error, run_script, script_env

# Address space for the out-of-memory test: room to build and compile the network (its graph compile
# reserves about 3 GiB of address space), not for a step of 480 images of 96x96.
MEMORY_LIMIT = 4 * 2**30
PREFIX = "train_googlenet_cifar10"


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


@pytest.fixture
def small_disk(tmp_path):
    """A folder on its own tmpfs; the test sets its size with ``small_disk(megabytes)``."""
    mounted: list[Path] = []

    def mount(megabytes: int) -> Path:
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    from src.demo_data import write_cifar10_layout

    return write_cifar10_layout(tmp_path_factory.mktemp("guard_data"), num_train=96, num_test=16, seed=11)


def test_batch_too_big_for_memory_names_batch_size(tmp_path, cifar_dir):
    command = [sys.executable, str(REPO / "train.py"), *SMALL_CIFAR, f"--train_data_path={cifar_dir}",
               "--batch_size=480", "--image_height=96", "--image_width=96", "--epoch_size=1",
               f"--ckpt_save_dir={tmp_path / 'ckpt'}"]
    result = subprocess.run(command, cwd=tmp_path, env=script_env(), capture_output=True, text=True, timeout=600,
                            preexec_fn=_limit_address_space)
    assert_user_error(result, 1, "batch_size=480", "96x96", "does not fit in CPU memory", "--batch_size=240")
    assert not list((tmp_path / "ckpt").glob("*.ckpt"))


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one(tmp_path, small_cifar, small_disk):
    disk = small_disk(60)  # room for one 45 MB checkpoint, not two
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={small_cifar}", "--epoch_size=3",
                        f"--ckpt_save_dir={disk}", cwd=tmp_path)
    assert_user_error(result, 1, "no space left on the disk of", f"{PREFIX}-2_6.ckpt", "free some space")
    names = sorted(path.name for path in disk.iterdir())
    assert [name for name in names if name.endswith(".ckpt")] == [f"{PREFIX}-1_6.ckpt"], names
    assert not [name for name in names if name.startswith(".") or name.endswith(".tmp")], names
    import mindspore as ms

    assert int(ms.load_checkpoint(str(disk / f"{PREFIX}-1_6.ckpt"))["epoch_num"].asnumpy()) == 1


def test_disk_full_while_exporting_leaves_no_model(tmp_path, trained_cifar, small_disk):
    disk = small_disk(4)  # the MINDIR needs ~23 MB
    result = run_script("export.py", f"--config_path={CPU_CONFIG}", f"--ckpt_file={trained_cifar.checkpoint}",
                        "--image_height=32", "--image_width=32", f"--file_name={disk}/googlenet", cwd=tmp_path)
    assert_user_error(result, 1, "no space left on the disk of", "googlenet.mindir")
    assert list(disk.iterdir()) == []


def test_overwriting_a_checkpoint_on_a_full_disk_keeps_the_old_one(small_disk):
    """Like ``<prefix>-best.ckpt`` being replaced. MindSpore's own writer deletes the old file before it
    writes the new one (a kill in between loses both); ours keeps the old one until the new one is
    complete, so it needs room for both, and when that room is missing the old one survives."""
    import mindspore as ms

    from src.checkpoint import save_checkpoint_file
    from src.errors import UserError
    from src.googlenet import create_model

    disk = small_disk(30)  # one 22 MB network checkpoint fits, two do not
    best = disk / "best.ckpt"
    save_checkpoint_file(create_model(10), best, {"epoch_num": 1})
    with pytest.raises(UserError, match="no space left on the disk of .* while writing best.ckpt"):
        save_checkpoint_file(create_model(10), best, {"epoch_num": 2})
    assert int(ms.load_checkpoint(str(best))["epoch_num"].asnumpy()) == 1
    assert [path.name for path in disk.iterdir()] == ["best.ckpt"]
