"""The entry scripts end to end on generated CIFAR-10 binary files: train -> eval -> export."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest

from tests.conftest import SMALL_CIFAR, assert_user_error, run_script, script_env


def test_train_logs_model_zoo_lines_and_writes_checkpoints(trained_cifar):
    out = trained_cifar.stdout
    assert re.search(r"^epoch: 3 step: 30, loss is \d+\.\d+", out, re.M), out[-2000:]
    assert re.search(r"^epoch: 1 time: [\d.]+ s, per step time: [\d.]+ ms, [\d.]+ images/s", out, re.M)
    assert out.rstrip().endswith("train success")
    names = sorted(p.name for p in trained_cifar.checkpoint.parent.glob("*.ckpt"))
    assert names == [f"train_googlenet_cifar10-{e}_30.ckpt" for e in (1, 2, 3)]
    assert (trained_cifar.checkpoint.parent / "config.yaml").is_file()


def test_eval_scores_every_image_above_chance(trained_cifar, tmp_path):
    result = run_script("eval.py", *SMALL_CIFAR, "--batch_size=24", f"--val_data_path={trained_cifar.data_dir}",
                        f"--checkpoint_path={trained_cifar.checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"^accuracy: \{'acc': ([\d.]+)\}$", result.stdout, re.M).group(1))
    assert accuracy >= 0.6, result.stdout[-1500:]  # 10 classes: chance is 0.1
    # 80 test images at batch 24: the last partial batch of 8 is scored too.
    assert re.search(r"^evaluated 80 images", result.stdout, re.M), result.stdout[-1500:]


@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_export_matches_network_logits(trained_cifar, tmp_path, file_format):
    import mindspore as ms

    from src.checkpoint import load_weights
    from src.googlenet import create_model

    result = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={trained_cifar.checkpoint}",
                        f"--file_format={file_format}", "--export_batch_size=2", f"--file_name={tmp_path}/gnet",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / ("gnet.mindir" if file_format == "MINDIR" else "gnet.onnx")
    assert path.is_file() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []

    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    net = create_model(10)
    load_weights(net, trained_cifar.checkpoint)
    net.set_train(False)
    expected = net(ms.Tensor(x)).asnumpy()
    if file_format == "MINDIR":
        graph = ms.nn.GraphCell(ms.load(str(path)))
        actual = graph(ms.Tensor(x)).asnumpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        actual = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert actual.shape == (2, 10)
    assert np.max(np.abs(actual - expected)) <= 1e-4


def test_export_air_off_ascend_is_a_clear_error(trained_cifar, tmp_path):
    result = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={trained_cifar.checkpoint}",
                        "--file_format=AIR", f"--file_name={tmp_path}/gnet", cwd=tmp_path)
    assert_user_error(result, 2, "file_format=AIR", "Ascend")
    assert list(tmp_path.iterdir()) == []


def test_the_demo_takes_the_folder_that_holds_cifar_10_batches_bin(cifar_dir, tmp_path):
    """scripts/run_demo.sh on a CIFAR-10 folder given as unpacking the archive leaves it: train (with
    evaluation each epoch), eval and export run on it, and it names the folder it used."""
    out = tmp_path / "demo"
    result = run_script("scripts/run_demo.sh", str(cifar_dir.parent), str(out), cwd=tmp_path,
                        env=script_env(PYTHON=sys.executable, EPOCHS="1"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"CIFAR-10 data: using {cifar_dir}" in result.stdout
    assert re.search(r"^accuracy: \{'acc': [\d.]+\}$", result.stdout, re.M), result.stdout[-2000:]
    assert (out / "googlenet.mindir").is_file() and "demo finished" in result.stdout
    # The demo ends by naming the curves it drew (matplotlib is part of requirements.txt).
    curves = out / "ckpt" / "train_googlenet_cifar10-curves.png"
    assert result.stdout.rstrip().endswith(f"curves: {curves}") and curves.stat().st_size > 0
