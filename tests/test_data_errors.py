"""The data mistakes users meet, through the real entry scripts: one `error:` line each, no traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from src.demo_data import write_image_folder
from tests.conftest import IMAGENET_CONFIG, SMALL_CIFAR, assert_user_error, run_script

SMALL_IMAGENET = [f"--config_path={IMAGENET_CONFIG}", "--device_target=CPU", "--amp_level=O0", "--num_classes=4",
                  "--image_height=32", "--image_width=32", "--batch_size=4", "--num_parallel_workers=1",
                  "--epoch_size=1"]


@pytest.fixture
def cifar_copy(cifar_dir, tmp_path) -> Path:
    """A private copy of the generated CIFAR-10 folder, free to break."""
    return Path(shutil.copytree(cifar_dir, tmp_path / "data" / "cifar-10-batches-bin"))


def test_no_data_at_the_path_names_the_command_that_gets_it(tmp_path):
    missing = tmp_path / "nowhere" / "cifar-10-batches-bin"
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={missing}", cwd=tmp_path)
    assert_user_error(result, 1, f"CIFAR-10 data folder {missing} does not exist",
                      f"python -m src.data_fetch cifar10 --dest {tmp_path / 'nowhere'}")


def test_a_cifar_file_of_the_wrong_size(cifar_copy, tmp_path):
    with open(cifar_copy / "data_batch_2.bin", "ab") as handle:
        handle.write(b"\0" * 100)
    size = (cifar_copy / "data_batch_2.bin").stat().st_size
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={cifar_copy}", cwd=tmp_path)
    assert_user_error(result, 1, f"{cifar_copy / 'data_batch_2.bin'}: {size} bytes is not a whole",
                      "a truncated copy, or not the binary version")


def test_a_missing_training_batch(cifar_copy, tmp_path):
    (cifar_copy / "data_batch_3.bin").unlink()
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={cifar_copy}", cwd=tmp_path)
    assert_user_error(result, 1, f"{cifar_copy}: data_batch_3.bin is missing",
                      "found data_batch_1.bin, data_batch_2.bin, data_batch_4.bin, data_batch_5.bin",
                      f"python -m src.data_fetch cifar10 --dest {cifar_copy.parent}")


def test_the_python_version_and_the_parent_folder(cifar_copy, trained_cifar, tmp_path):
    python_version = tmp_path / "cifar-10-batches-py"
    python_version.mkdir()
    (python_version / "test_batch").write_bytes(b"pickle")
    result = run_script("eval.py", *SMALL_CIFAR, f"--val_data_path={python_version}",
                        f"--checkpoint_path={trained_cifar.checkpoint}", cwd=tmp_path)
    assert_user_error(result, 1, f"no test_batch.bin in {python_version}", "Python version of CIFAR-10",
                      f"--dest {tmp_path} ")
    # The folder that unpacking the archive leaves (it holds cifar-10-batches-bin) stands for it ...
    result = run_script("eval.py", *SMALL_CIFAR, f"--val_data_path={cifar_copy.parent}",
                        f"--checkpoint_path={trained_cifar.checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"CIFAR-10 data: using {cifar_copy}\n" in result.stdout
    assert re.search(r"^accuracy: \{'acc': [\d.]+\}$", result.stdout, re.M)
    # ... but not when two folders of .bin files would be equally likely.
    shutil.copytree(cifar_copy, cifar_copy.parent / "cifar-10-verify-bin")
    result = run_script("eval.py", *SMALL_CIFAR, f"--val_data_path={cifar_copy.parent}",
                        f"--checkpoint_path={trained_cifar.checkpoint}", cwd=tmp_path)
    assert_user_error(result, 1, f"CIFAR-10 data folder {cifar_copy.parent} holds no .bin files but 2 folders",
                      "(cifar-10-batches-bin, cifar-10-verify-bin); pass the one to use")


def test_an_empty_class_folder(tmp_path):
    tree = write_image_folder(tmp_path / "train", num_classes=4, per_class=4, size=40)
    empty = sorted(tree.iterdir())[2]
    for file in empty.iterdir():
        file.unlink()
    result = run_script("train.py", *SMALL_IMAGENET, f"--train_data_path={tree}", cwd=tmp_path)
    assert_user_error(result, 1, f"ImageNet class folder {empty} holds no image files",
                      "1 of 4 class folders are empty", f"python -m src.data_fetch imagenet {tree}")


def test_an_unreadable_image_in_evaluation(tmp_path):
    import mindspore as ms

    from src.googlenet import create_model

    checkpoint = tmp_path / "four_classes.ckpt"
    ms.save_checkpoint(create_model(4), str(checkpoint))
    tree = write_image_folder(tmp_path / "val", num_classes=4, per_class=3, size=40)
    bad = sorted(sorted(tree.iterdir())[1].iterdir())[-1]
    bad.write_bytes(b"<html>404 not found</html>")
    result = run_script("eval.py", *SMALL_IMAGENET, f"--val_data_path={tree}", f"--checkpoint_path={checkpoint}",
                        cwd=tmp_path)
    assert_user_error(result, 1, f"{bad}: not a readable image", "remove or replace this file")
