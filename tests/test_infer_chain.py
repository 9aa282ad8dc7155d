"""Offline inference chain end to end: export.py -> run_infer_310.sh (preprocess.py, the compiled
ascend310_infer app on its OpenVINO CPU backend, postprocess.py), compared with the eval path.

No Ascend 310 exists here: the MindSpore backend is compiled and linked against MindSpore's C++ API
(the mindspore-lite 2.0.0 package, see scripts/install_infer_deps.sh) and started, but a MindIR can
only run on a 310 box. The build dependencies come from scripts/install_infer_deps.sh; without them
these tests are skipped, unless REQUIRE_INFER_DEPS=1 (set by CI) makes their absence a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IMAGENET_CONFIG, REPO, SMALL_CIFAR, assert_user_error, run_script, script_env

MS_LITE_DIR = REPO / ".deps" / "mindspore-lite-2.0.0"
BUILD_HEADERS = [Path("/usr/include/gflags/gflags.h"), Path("/usr/include/opencv4/opencv2/imgcodecs.hpp")]
# The imagenet pipeline at a small size: shorter side round(32 * 256 / 224) = 37, centre crop 32; six
# classes (the tree has four) so that top-5 is not trivially every image.
SMALL_IMAGENET = [f"--config_path={IMAGENET_CONFIG}", "--device_target=CPU", "--amp_level=O0", "--num_classes=6",
                  "--image_height=32", "--image_width=32", "--batch_size=8", "--num_parallel_workers=2"]


def _missing_dependencies() -> list[str]:
    missing = [str(path) for path in BUILD_HEADERS if not path.is_file()]
    try:
        import openvino  # noqa: F401
    except ImportError:
        missing.append("python package openvino")
    return missing


if _missing_dependencies() and os.environ.get("REQUIRE_INFER_DEPS") != "1":
    pytest.skip(f"inference build dependencies missing ({', '.join(_missing_dependencies())}); "
                "run scripts/install_infer_deps.sh", allow_module_level=True)


def chain_env(**extra: str) -> dict[str, str]:
    return script_env(PYTHON=sys.executable, **extra)


def export_onnx(args: list[str], checkpoint: Path, batch: int, dest: Path) -> Path:
    result = run_script("export.py", *args, f"--ckpt_file={checkpoint}", "--file_format=ONNX",
                        f"--export_batch_size={batch}", f"--file_name={dest}/googlenet", cwd=dest)
    assert result.returncode == 0, result.stderr[-3000:]
    return dest / "googlenet.onnx"


def eval_accuracy(args: list[str], checkpoint: Path, data: Path, cwd: Path) -> dict[str, float]:
    result = run_script("eval.py", *args, f"--val_data_path={data}", f"--checkpoint_path={checkpoint}", cwd=cwd)
    assert result.returncode == 0, result.stderr[-3000:]
    line = re.search(r"^accuracy: \{(.*)\}$", result.stdout, re.M).group(1)
    return {key: float(value) for key, value in re.findall(r"'(\w+)': ([\d.e-]+)", line)}


def postprocess_counts(acc_log: str) -> list[tuple[int, int]]:
    """(correct, total) of each `after allreduce eval` line."""
    found = re.findall(r"^after allreduce eval: top\d_correct=(\d+), tot=(\d+), acc=[\d.]+%$", acc_log, re.M)
    return [(int(correct), int(total)) for correct, total in found]


def network(checkpoint: Path, num_classes: int):
    from src.checkpoint import load_weights
    from src.googlenet import create_model

    net = create_model(num_classes)
    load_weights(net, checkpoint)
    net.set_train(False)
    return net


@pytest.fixture(scope="session")
def trained_imagenet(tmp_path_factory, image_tree) -> Path:
    """train.py with the ImageNet config for one epoch at 32x32 on the generated JPEG tree."""
    workdir = tmp_path_factory.mktemp("train_imagenet")
    result = run_script("train.py", *SMALL_IMAGENET, f"--train_data_path={image_tree / 'train'}", "--epoch_size=1",
                        "--lr_init=0.01", "--dataset_sink_mode=False", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoints = sorted((workdir / "ckpt").glob("train_googlenet_imagenet-1_*.ckpt"))
    assert len(checkpoints) == 1, sorted(p.name for p in (workdir / "ckpt").iterdir())
    return checkpoints[0]


@pytest.fixture(scope="session")
def imagenet_onnx(tmp_path_factory, trained_imagenet) -> Path:
    return export_onnx(SMALL_IMAGENET, trained_imagenet, 2, tmp_path_factory.mktemp("onnx_imagenet"))


def test_cifar10_chain_matches_eval(trained_cifar, tmp_path):
    import mindspore as ms

    from src.dataset import create_dataset
    from src.model_utils.config import load_config

    # One YAML drives export.py and the chain's preprocess.py: 32x32 images, batches of 3 over 80 images
    # (the last .bin holds 2 images and the app pads the model's batch). DATA_PATH is the folder that
    # holds cifar-10-batches-bin.
    config = tmp_path / "cifar10_small.yaml"
    load_config([*SMALL_CIFAR, "--export_batch_size=3"]).save(config)
    model = export_onnx([f"--config_path={config}"], trained_cifar.checkpoint, 3, tmp_path)
    result = run_script("scripts/run_infer_310.sh", str(model), "cifar10", str(trained_cifar.data_dir.parent),
                        cwd=tmp_path, env=chain_env(CONFIG_PATH=str(config)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    results = sorted((tmp_path / "result_Files").glob("cifar10_*_0.bin"))
    assert len(results) == 27
    actual = np.concatenate([np.fromfile(path, dtype=np.float32).reshape(-1, 10) for path in results])
    net = network(trained_cifar.checkpoint, 10)
    dataset = create_dataset("cifar10", trained_cifar.data_dir, training=False, batch_size=16, image_size=(32, 32),
                             shuffle=False)
    expected = np.concatenate([net(ms.Tensor(image)).asnumpy()
                               for image, _ in dataset.create_tuple_iterator(output_numpy=True)])
    assert actual.shape == expected.shape == (80, 10)
    assert np.max(np.abs(actual - expected)) <= 1e-4

    acc_log = (tmp_path / "acc.log").read_text()
    [(correct, total)] = postprocess_counts(acc_log)
    accuracy = eval_accuracy(SMALL_CIFAR, trained_cifar.checkpoint, trained_cifar.data_dir, tmp_path)["acc"]
    assert total == 80 and correct / total == accuracy, (acc_log, accuracy)
    assert re.search(r"^NN inference cost average time: [\d.]+ ms of infer_count 27$",
                     (tmp_path / "time_Result" / "test_perform_static.txt").read_text(), re.M)


def test_imagenet_chain_matches_eval(trained_imagenet, imagenet_onnx, image_tree, tmp_path):
    import mindspore as ms
    import mindspore.dataset.transforms as T

    from src.dataset import eval_transforms

    val = image_tree / "val"
    result = run_script("scripts/run_infer_310.sh", str(imagenet_onnx), "imagenet", str(val), cwd=tmp_path,
                        env=chain_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    labels = (tmp_path / "preprocess_Result" / "imagenet_label.txt").read_text().splitlines()
    images = sorted(val.glob("*/*.JPEG"))
    assert labels == [f"{p.parent.name}/{p.name} {int(p.parent.name[1:])}" for p in images]
    transform = T.Compose(eval_transforms("imagenet", image_size=(32, 32)))
    net = network(trained_imagenet, 6)
    worst = 0.0
    for image in images:
        expected = net(ms.Tensor(transform(np.fromfile(image, dtype=np.uint8))[None])).asnumpy()[0]
        actual = np.fromfile(tmp_path / "result_Files" / f"{image.stem}_0.bin", dtype=np.float32)
        worst = max(worst, float(np.max(np.abs(actual - expected))))
    assert worst <= 1e-4

    [(top1, total), (top5, total5)] = postprocess_counts((tmp_path / "acc.log").read_text())
    accuracy = eval_accuracy(SMALL_IMAGENET, trained_imagenet, val, tmp_path)
    assert total == total5 == len(images) == 20
    assert top1 / total == accuracy["top_1_accuracy"] and top5 / total == accuracy["top_5_accuracy"]


def test_cpp_imagenet_preprocessing_equals_eval_transforms(imagenet_onnx, tmp_path):
    """Decode, shorter-side resize, floor-offset centre crop and normalisation, bit for bit, on
    images of odd and non-square sizes (JPEG and PNG)."""
    import mindspore.dataset.transforms as T
    from PIL import Image

    from src.dataset import eval_transforms

    rng = np.random.default_rng(5)
    images = tmp_path / "images"
    images.mkdir()
    for index, (height, width) in enumerate([(40, 61), (75, 44), (37, 37), (33, 90), (64, 51)]):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(images / f"im{index}.JPEG", quality=90)
    Image.fromarray(rng.integers(0, 256, (45, 52, 3), dtype=np.uint8)).save(images / "im9.png")

    subprocess.run(["bash", str(REPO / "ascend310_infer" / "build.sh"), "openvino"], check=True, env=chain_env(),
                   capture_output=True)
    app = REPO / "ascend310_infer" / "out" / "openvino" / "main"
    result = subprocess.run([str(app), f"--model_path={imagenet_onnx}", "--dataset=imagenet",
                             f"--dataset_path={images}", f"--input_dump_path={tmp_path / 'inputs'}",
                             f"--result_path={tmp_path / 'results'}", f"--time_path={tmp_path / 'time'}"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]

    transform = T.Compose(eval_transforms("imagenet", image_size=(32, 32)))
    names = sorted(p.name for p in images.iterdir())
    expected = np.stack([transform(np.fromfile(images / name, dtype=np.uint8)) for name in names])
    # The model takes batches of 2: each dump file holds one batch, named after its first image.
    dumps = [np.fromfile(tmp_path / "inputs" / f"{Path(n).stem}.bin", dtype=np.float32) for n in names[::2]]
    actual = np.concatenate(dumps).reshape(expected.shape)
    np.testing.assert_array_equal(actual, expected)


def test_mindspore_backend_compiles_and_links_for_ascend310(tmp_path):
    if not (MS_LITE_DIR / "include" / "api" / "model.h").is_file() and os.environ.get("REQUIRE_INFER_DEPS") != "1":
        pytest.skip("MindSpore C++ API not unpacked; run scripts/install_infer_deps.sh")
    result = subprocess.run(["bash", str(REPO / "ascend310_infer" / "build.sh"), "mindspore"], env=chain_env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    app = REPO / "ascend310_infer" / "out" / "mindspore" / "main"
    symbols = subprocess.run(["nm", "-DC", str(app)], capture_output=True, text=True, check=True).stdout
    # Undefined here, resolved from MindSpore's library at load time: the Ascend 310 device path.
    assert re.search(r"U mindspore::AscendDeviceInfo::SetDeviceID", symbols)
    assert re.search(r"U mindspore::Serialization::Load", symbols)
    # The binary starts (every library resolves) and rejects a missing model by itself.
    started = subprocess.run([str(app), f"--model_path={tmp_path}/none.mindir", f"--dataset_path={tmp_path}"],
                             capture_output=True, text=True, timeout=120)
    assert started.returncode == 1 and "error: --model_path=" in started.stderr, started.stderr[-2000:]


def test_postprocess_reports_missing_and_missized_results(tmp_path):
    labels, results = tmp_path / "01_label", tmp_path / "result_Files"
    labels.mkdir()
    results.mkdir()
    np.array([1, 2], dtype=np.int32).tofile(labels / "cifar10_00000.bin")
    np.array([3], dtype=np.int32).tofile(labels / "cifar10_00001.bin")
    np.eye(2, 10, k=1, dtype=np.float32).tofile(results / "cifar10_00000_0.bin")
    args = ["--dataset=cifar10", f"--result_path={results}", f"--label_file={labels}"]

    assert_user_error(run_script("postprocess.py", *args, cwd=tmp_path), 1, "cifar10_00001_0.bin", "missing")
    np.zeros(9, dtype=np.float32).tofile(results / "cifar10_00001_0.bin")
    assert_user_error(run_script("postprocess.py", *args, cwd=tmp_path), 1, "cifar10_00001_0.bin", "36 bytes",
                      "1 x 10 float32")
    np.eye(1, 10, k=3, dtype=np.float32).tofile(results / "cifar10_00001_0.bin")
    good = run_script("postprocess.py", *args, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    assert good.stdout.strip() == "after allreduce eval: top1_correct=3, tot=3, acc=100.00%"
    # --label_path, this package's earlier name of upstream's --label_file, still works.
    alias = run_script("postprocess.py", *args[:2], f"--label_path={labels}", cwd=tmp_path)
    assert alias.returncode == 0 and alias.stdout == good.stdout, alias.stderr


def test_run_infer_310_checks_its_arguments(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"x")
    cases = [
        ([str(model), "cifar10"], "expected 3 to 5 arguments"),
        ([str(tmp_path / "none.mindir"), "cifar10", str(tmp_path)], "MODEL_PATH"),
        ([str(model), "mnist", str(tmp_path)], "DATASET 'mnist'"),
        ([str(model), "imagenet", str(tmp_path), "-", "dev0"], "DEVICE_ID 'dev0'"),
    ]
    for args, fragment in cases:
        assert_user_error(run_script("scripts/run_infer_310.sh", *args, cwd=tmp_path, env=chain_env()), 1, fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]
