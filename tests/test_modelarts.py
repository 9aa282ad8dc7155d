"""ModelArts startup: the real entry scripts with enable_modelarts=True, local folders standing in for OBS.

ModelArts' ``moxing`` module exists only on ModelArts (the PyPI package of that name is unrelated),
so these tests put a stand-in on PYTHONPATH: tests/modelarts_standin/moxing implements the
``moxing.file`` calls the package makes over local folders, mapping ``obs://bucket/key`` to
``$MOXING_STANDIN_OBS_ROOT/bucket/key``. Everything else is the real code path.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest

from src.demo_data import write_cifar10_layout, write_image_folder
from src.errors import UserError
from src.model_utils.moxing_adapter import unzip_dataset
from tests.conftest import IMAGENET_CONFIG, REPO, SMALL_CIFAR, assert_user_error, run_script, script_env

STANDIN = REPO / "tests" / "modelarts_standin"
CKPT = "train_googlenet_cifar10-1_10.ckpt"


@pytest.fixture
def obs(tmp_path) -> Path:
    """The "OBS" root: bucket/data/cifar10.zip holding cifar-10-batches-bin/ (160 training, 32 test records)."""
    generated = write_cifar10_layout(tmp_path / "generated", num_train=160, num_test=32, seed=5)
    root = tmp_path / "obs"
    (root / "bucket" / "data").mkdir(parents=True)
    with zipfile.ZipFile(root / "bucket" / "data" / "cifar10.zip", "w") as archive:
        for file in sorted(generated.iterdir()):
            archive.write(file, f"cifar-10-batches-bin/{file.name}")
    return root


@pytest.fixture
def job_id():
    """A fresh JOB_ID per test, so that marker files of one test are never seen by another."""
    job = f"test-{uuid.uuid4().hex[:12]}"
    yield job
    import tempfile

    shutil.rmtree(Path(tempfile.gettempdir()) / f"googlenet_modelarts_{job}", ignore_errors=True)


def modelarts_env(obs: Path, job: str, with_moxing: bool = True, **extra: str) -> dict[str, str]:
    env = script_env(MOXING_STANDIN_OBS_ROOT=str(obs), JOB_ID=job, **extra)
    if with_moxing:
        env["PYTHONPATH"] = str(STANDIN)
    return env


def server_args(cache: Path) -> list[str]:
    """One "server": its local /cache folders, the zip unpacked into data_path."""
    data = cache / "data"
    return ["--enable_modelarts=True", "--data_url=obs://bucket/data", f"--data_path={data}",
            f"--output_path={cache / 'train'}", f"--load_path={cache / 'checkpoint'}",
            "--need_modelarts_dataset_unzip=True", "--modelarts_dataset_unzip_name=cifar10",
            f"--train_data_path={data / 'cifar-10-batches-bin'}", f"--val_data_path={data / 'cifar-10-batches-bin'}"]


def test_download_unzip_train_upload_then_eval_and_export_from_obs(obs, job_id, tmp_path):
    env = modelarts_env(obs, job_id)
    train = run_script("train.py", *SMALL_CIFAR, *server_args(tmp_path / "server1"), "--epoch_size=1",
                       "--train_url=obs://bucket/out", "--ckpt_save_dir=ckpt", cwd=tmp_path, env=env)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-3000:]
    out = train.stdout
    assert "data_url: copying obs://bucket/data -> " in out
    assert re.search(r"^unzip cifar10\.zip: 100% \(\d+ of \d+ bytes\)$", out, re.M), out[:3000]
    assert out.index("unzip cifar10.zip: 100%") < out.index("epoch: 1 step: 10, loss is")
    assert out.index("train success") < out.index("upload to train_url: copying")
    # ckpt_save_dir was placed under output_path, and output_path went up to train_url.
    local = tmp_path / "server1" / "train" / "ckpt" / CKPT
    uploaded = obs / "bucket" / "out" / "ckpt" / CKPT
    assert local.is_file() and uploaded.read_bytes() == local.read_bytes()
    assert (obs / "bucket" / "out" / "ckpt" / "config.yaml").is_file()

    # A second "server" evaluates the uploaded checkpoint: checkpoint_url (one file) -> load_path.
    server2 = tmp_path / "server2"
    evaluate = run_script("eval.py", *SMALL_CIFAR, *server_args(server2),
                          f"--checkpoint_url=obs://bucket/out/ckpt/{CKPT}",
                          f"--checkpoint_path={server2 / 'checkpoint' / CKPT}", cwd=tmp_path, env=env)
    assert evaluate.returncode == 0, evaluate.stdout[-3000:] + evaluate.stderr[-3000:]
    assert re.search(r"^accuracy: \{'acc': [\d.]+\}$", evaluate.stdout, re.M)
    assert re.search(r"^evaluated 32 images", evaluate.stdout, re.M)

    # Export: train_url downloaded into output_path first, the model written there and uploaded with it.
    server3 = tmp_path / "server3"
    export = run_script("export.py", *SMALL_CIFAR, "--enable_modelarts=True", "--checkpoint_url=obs://bucket/out/ckpt",
                        f"--load_path={server3 / 'checkpoint'}", f"--output_path={server3 / 'train'}",
                        "--train_url=obs://bucket/out", f"--ckpt_file={server3 / 'checkpoint' / CKPT}",
                        "--file_name=googlenet", "--file_format=MINDIR", cwd=tmp_path, env=env)
    assert export.returncode == 0, export.stdout[-3000:] + export.stderr[-3000:]
    assert (server3 / "train" / "ckpt" / CKPT).is_file(), "train_url was not downloaded into output_path"
    assert (obs / "bucket" / "out" / "googlenet.mindir").stat().st_size > 100_000
    assert not (tmp_path / "googlenet.mindir").exists()


def test_missing_moxing_is_one_clear_line(obs, job_id, tmp_path):
    result = run_script("train.py", *SMALL_CIFAR, *server_args(tmp_path / "cache"), cwd=tmp_path,
                        env=modelarts_env(obs, job_id, with_moxing=False))
    assert_user_error(result, 1, "enable_modelarts=True needs ModelArts' 'moxing' module",
                      "do not pip install 'moxing'")
    assert not (tmp_path / "cache").exists()


def test_first_process_of_a_server_copies_and_unzips_while_the_other_waits(obs, job_id, tmp_path,
                                                                           trained_cifar):
    log = tmp_path / "copies.log"
    cache = tmp_path / "cache"
    args = [*SMALL_CIFAR, *server_args(cache), f"--checkpoint_path={trained_cifar.checkpoint}"]
    processes = {}
    for device in ("1", "0"):  # the waiting process starts first
        env = modelarts_env(obs, job_id, DEVICE_ID=device, RANK_SIZE="2", MOXING_STANDIN_LOG=str(log),
                            MOXING_STANDIN_DELAY="3")
        processes[device] = subprocess.Popen([sys.executable, str(REPO / "eval.py"), *args], cwd=tmp_path,
                                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
    outputs = {device: process.communicate(timeout=600) for device, process in processes.items()}
    for device, (stdout, stderr) in outputs.items():
        assert processes[device].returncode == 0, (device, stdout[-2000:], stderr[-2000:])
        assert re.search(r"^evaluated 32 images", stdout, re.M), stdout[-2000:]
    copies = log.read_text().splitlines()
    assert len(copies) == 1 and copies[0].startswith("copy_parallel ") and copies[0].split()[2] == "0", copies
    waiter = outputs["1"][0]
    assert "device 1: waiting for the first process of this server to finish download data_url" in waiter
    assert "unzip cifar10.zip" not in waiter and "unzip cifar10.zip: 100%" in outputs["0"][0]


def test_waiting_process_gives_up_after_the_timeout(obs, job_id, tmp_path):
    """No first process: the waiter stops after modelarts_sync_timeout, ignoring an earlier run's marker."""
    import tempfile

    markers = Path(tempfile.gettempdir()) / f"googlenet_modelarts_{job_id}"
    markers.mkdir()
    (markers / "download data_url.done").write_text(f"{time.time() - 3600}\nok")
    env = modelarts_env(obs, job_id, DEVICE_ID="1", RANK_SIZE="2")
    result = run_script("eval.py", *SMALL_CIFAR, *server_args(tmp_path / "cache"), "--modelarts_sync_timeout=2",
                        cwd=tmp_path, env=env)
    assert_user_error(result, 1, "waited 2 s (modelarts_sync_timeout) for the first process of this server "
                      "(device 0) to finish download data_url")


def test_a_failed_copy_stops_the_waiting_processes_at_once(obs, job_id, tmp_path):
    args = [*SMALL_CIFAR, *server_args(tmp_path / "cache"), "--data_url=obs://bucket/nothing-here"]
    waiter = subprocess.Popen([sys.executable, str(REPO / "eval.py"), *args], cwd=tmp_path,
                              env=modelarts_env(obs, job_id, DEVICE_ID="1", RANK_SIZE="2"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = run_script("eval.py", *args, cwd=tmp_path, env=modelarts_env(obs, job_id, DEVICE_ID="0", RANK_SIZE="2"))
    assert_user_error(first, 1, "data_url: obs://bucket/nothing-here does not exist")
    start = time.monotonic()
    stdout, stderr = waiter.communicate(timeout=120)
    assert time.monotonic() - start < 30, "the waiter should not sit out modelarts_sync_timeout (7200 s)"
    assert_user_error(subprocess.CompletedProcess(waiter.args, waiter.returncode, stdout, stderr), 1,
                      "download data_url failed in the first process of this server: "
                      "data_url: obs://bucket/nothing-here does not exist")


def test_outputs_are_uploaded_after_a_failure(job_id, tmp_path):
    """Training stops on an unreadable image; what it wrote to output_path still reaches train_url."""
    obs = tmp_path / "obs"
    tree = write_image_folder(obs / "bucket" / "imagenet" / "train", num_classes=4, per_class=4, size=40, seed=2)
    bad = sorted(next(iter(sorted(tree.iterdir()))).iterdir())[0]
    bad.write_bytes(b"this is not a JPEG")
    cache = tmp_path / "cache"
    result = run_script("train.py", f"--config_path={IMAGENET_CONFIG}", "--device_target=CPU", "--amp_level=O0",
                        "--num_classes=4", "--image_height=32", "--image_width=32", "--batch_size=4",
                        "--num_parallel_workers=1", "--epoch_size=1", "--enable_modelarts=True",
                        "--data_url=obs://bucket/imagenet", f"--data_path={cache / 'data'}",
                        f"--output_path={cache / 'train'}", "--train_url=obs://bucket/out",
                        f"--train_data_path={cache / 'data' / 'train'}", cwd=tmp_path, env=modelarts_env(obs, job_id))
    local_bad = cache / "data" / "train" / bad.parent.name / bad.name
    assert_user_error(result, 1, f"{local_bad}: not a readable image", "remove or replace this file")
    assert "upload to train_url: copying" in result.stdout
    assert (obs / "bucket" / "out" / "ckpt" / "config.yaml").is_file()


def test_a_zip_member_outside_the_destination_is_refused(tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("good/file.txt", "fine")
        handle.writestr("../escaped.txt", "not fine")
    destination = tmp_path / "data"
    destination.mkdir()
    with pytest.raises(UserError, match=r"zip member '\.\./escaped\.txt' would be written outside"):
        unzip_dataset(archive, destination)
    assert not (tmp_path / "escaped.txt").exists() and list(destination.iterdir()) == []
    with pytest.raises(UserError, match=r"need_modelarts_dataset_unzip=True but .*missing\.zip does not exist"):
        unzip_dataset(destination / "missing.zip", destination)


def test_predict_py_as_a_startup_file_fetches_its_images_and_checkpoint(trained_cifar, job_id, tmp_path):
    from PIL import Image

    from src.demo_data import synthetic_images

    obs = tmp_path / "obs"
    (obs / "bucket" / "images").mkdir(parents=True)
    for index, image in enumerate(synthetic_images(np.arange(3), 32, np.random.default_rng(6))):
        Image.fromarray(image).save(obs / "bucket" / "images" / f"image{index}.png")
    (obs / "bucket" / "ckpt").mkdir()
    shutil.copy(trained_cifar.checkpoint, obs / "bucket" / "ckpt" / CKPT)
    cache = tmp_path / "cache"
    result = run_script("predict.py", *SMALL_CIFAR, "--enable_modelarts=True", "--data_url=obs://bucket/images",
                        f"--data_path={cache / 'data'}", "--checkpoint_url=obs://bucket/ckpt",
                        f"--load_path={cache / 'ckpt'}", f"--output_path={cache / 'train'}",
                        "--need_modelarts_dataset_unzip=False", f"--predict_images={cache / 'data'}",
                        f"--predict_model={cache / 'ckpt' / CKPT}", "--top_k=2", cwd=tmp_path,
                        env=modelarts_env(obs, job_id))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "data_url: copying obs://bucket/images -> " in result.stdout
    for index in range(3):
        assert re.search(rf"^\S*image{index}\.png: \d \d\.\d{{4}}, \d \d\.\d{{4}}$", result.stdout, re.M), \
            result.stdout[-2000:]
