"""Checkpoints move both ways between this package and the upstream model zoo's GoogleNet: a cell
shaped like upstream's (tests/upstream_googlenet.py) takes our weights, and a checkpoint saved from it
drives eval.py, export.py, predict.py and --pre_trained unchanged."""

from __future__ import annotations

import logging
import re

import mindspore as ms
import numpy as np
import pytest

from tests.conftest import SMALL_CIFAR, run_script
from tests.upstream_googlenet import UpstreamGoogleNet


@pytest.fixture(scope="module")
def upstream(trained_cifar, tmp_path_factory):
    """Our trained checkpoint loaded into the upstream-shaped cell (every one of its parameters found
    under the same name), then saved from that cell: a checkpoint with upstream's names alone."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = UpstreamGoogleNet(10)
    not_loaded, _ = ms.load_param_into_net(cell, ms.load_checkpoint(str(trained_cifar.checkpoint)), strict_load=True)
    assert not_loaded == []
    path = tmp_path_factory.mktemp("upstream") / "googlenet_upstream.ckpt"
    ms.save_checkpoint(cell, str(path))
    cell.set_train(False)
    return path, cell


def _ours(checkpoint):
    from src.checkpoint import load_weights
    from src.googlenet import create_model

    net = create_model(10)
    load_weights(net, checkpoint)
    net.set_train(False)
    return net


def test_the_networks_compute_the_same_function(upstream, trained_cifar):
    path, cell = upstream
    x = ms.Tensor(np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32))
    expected = cell(x).asnumpy()
    np.testing.assert_allclose(_ours(trained_cifar.checkpoint)(x).asnumpy(), expected, atol=1e-5)
    np.testing.assert_allclose(_ours(path)(x).asnumpy(), expected, atol=1e-5)
    # Upstream's names are ours: the same list, in the same order, except our dropout's step counter.
    ours = [p.name for p in _ours(path).get_parameters() if p.name != "dropout.step"]
    assert ours == [p.name for p in cell.get_parameters()]


def test_eval_py_scores_an_upstream_checkpoint_like_upstreams_cell(upstream, trained_cifar, tmp_path):
    from src.dataset import create_dataset_from_config
    from src.model_utils.config import load_config

    path, cell = upstream
    data = f"--val_data_path={trained_cifar.data_dir}"
    result = run_script("eval.py", *SMALL_CIFAR, data, f"--checkpoint_path={path}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    accuracy = float(re.search(r"^accuracy: \{'acc': ([\d.]+)\}$", result.stdout, re.M).group(1))

    dataset = create_dataset_from_config(load_config([*SMALL_CIFAR, data]), training=False)
    correct = total = 0
    for images, labels in dataset.create_tuple_iterator(output_numpy=True):
        correct += int((cell(ms.Tensor(images)).asnumpy().argmax(axis=1) == labels).sum())
        total += len(labels)
    assert total == 80 and accuracy >= 0.6
    # eval.py runs the folded network on the compiled kernels: float32 rounding in another order may
    # move an image that sits on a class boundary, no more.
    assert abs(accuracy * total - correct) <= 1, (accuracy, correct)


@pytest.mark.parametrize("file_format", ["MINDIR", "ONNX"])
def test_export_py_of_an_upstream_checkpoint_gives_its_logits(upstream, tmp_path, file_format):
    path, cell = upstream
    result = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={path}", f"--file_format={file_format}",
                        "--export_batch_size=2", f"--file_name={tmp_path}/upstream", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    x = np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32)
    if file_format == "MINDIR":
        actual = ms.nn.GraphCell(ms.load(f"{tmp_path}/upstream.mindir"))(ms.Tensor(x)).asnumpy()
    else:
        import onnxruntime

        session = onnxruntime.InferenceSession(f"{tmp_path}/upstream.onnx", providers=["CPUExecutionProvider"])
        actual = session.run(None, {session.get_inputs()[0].name: x})[0]
    assert np.max(np.abs(actual - cell(ms.Tensor(x)).asnumpy())) <= 1e-4


def test_predict_py_with_an_upstream_checkpoint_ranks_like_upstreams_cell(upstream, tmp_path):
    from PIL import Image

    from src.demo_data import synthetic_images
    from src.predictor import image_transforms, softmax

    path, cell = upstream
    images = synthetic_images(np.arange(6), 32, np.random.default_rng(5))
    for index, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"image{index}.png")
    result = run_script("predict.py", *SMALL_CIFAR, f"--predict_images={tmp_path}", f"--predict_model={path}",
                        "--top_k=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    transform = image_transforms("cifar10", (32, 32))
    for index in range(len(images)):
        line = re.search(rf"^\S*image{index}\.png: (.+)$", result.stdout, re.M).group(1)
        ranked = [(int(name), float(p)) for name, p in (item.split(" ") for item in line.split(", "))]
        x = np.asarray(transform(np.fromfile(tmp_path / f"image{index}.png", dtype=np.uint8)), np.float32)
        probabilities = softmax(cell(ms.Tensor(x[None])).asnumpy())[0]
        expected = np.argsort(-probabilities)[:3]
        assert [c for c, _ in ranked] == list(expected), (line, probabilities)
        np.testing.assert_allclose([p for _, p in ranked], probabilities[expected], atol=2e-4)


def test_pre_trained_from_an_upstream_checkpoint_fine_tunes(upstream, trained_cifar, tmp_path):
    path, _ = upstream
    result = run_script("train.py", *SMALL_CIFAR, f"--train_data_path={trained_cifar.data_dir}",
                        f"--pre_trained={path}", "--epoch_size=1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # Every parameter of upstream's network (285 of the 57 blocks, the classifier's 2); none re-initialised.
    assert f"pre_trained {path}: loaded 287 parameters" in result.stdout
    assert "skipped" not in result.stdout and result.stdout.rstrip().endswith("train success")


def test_checkpoints_with_this_packages_earlier_names_load_renamed(trained_cifar, tmp_path, caplog):
    """Before it took upstream's names the package wrote inception3a.branch4.1... ; those still load."""
    stored = ms.load_checkpoint(str(trained_cifar.checkpoint))

    def earlier(name: str) -> str:
        name = re.sub(r"(^|\.)block(\d[a-e])\.", r"\1inception\2.", name)
        return re.sub(r"\.b([123])\.", r".branch\1.", name.replace(".b4.", ".branch4.1."))

    old = tmp_path / "earlier.ckpt"
    ms.save_checkpoint([{"name": earlier(name), "data": value} for name, value in stored.items()], str(old))
    assert "inception3a.branch4.1.conv.weight" in ms.load_checkpoint(str(old))
    x = ms.Tensor(np.random.default_rng(2).normal(size=(2, 3, 32, 32)).astype(np.float32))
    with caplog.at_level(logging.INFO, logger="googlenet"):
        renamed = _ours(old)
    assert "renamed from this package's earlier names" in caplog.text
    np.testing.assert_array_equal(renamed(x).asnumpy(), _ours(trained_cifar.checkpoint)(x).asnumpy())
