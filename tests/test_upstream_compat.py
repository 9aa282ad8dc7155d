"""Checkpoints move both ways between this package and the upstream model zoo's GoogleNet: a cell
shaped like upstream's (tests/upstream_googlenet.py) takes our weights, and a checkpoint saved from it
drives eval.py, export.py, predict.py and --pre_trained unchanged; and an upstream user's own YAML files
drive train.py, eval.py and export.py."""

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


# An upstream user's YAML: the keys of upstream's cifar10_config.yaml / imagenet_config.yaml (their
# ModelArts block, training options, export options, upstream's boolean pre_trained and the keys that
# mean nothing here), with only the paths edited. Written here from that key list, not copied.
UPSTREAM_COMMON = {
    "enable_modelarts": False, "data_url": "", "train_url": "", "checkpoint_url": "",
    "data_path": "/cache/data", "output_path": "/cache/train", "load_path": "/cache/checkpoint_path",
    "device_target": "Ascend", "enable_profiling": False, "need_modelarts_dataset_unzip": True,
    "pre_trained": False, "lr_init": 0.1, "momentum": 0.9, "image_height": 224, "image_width": 224,
    "keep_checkpoint_max": 10, "onnx_filename": "googlenet.onnx", "air_filename": "googlenet.air",
    "device_id": 0, "file_name": "googlenet", "file_format": "MINDIR", "ckpt_save_dir": "./ckpt/",
}
UPSTREAM_CIFAR = {
    **UPSTREAM_COMMON, "modelarts_dataset_unzip_name": "cifar10", "dataset_name": "cifar10", "name": "cifar10",
    "train_data_path": "/cache/data/", "val_data_path": "/cache/data/",
    "num_classes": 10, "batch_size": 128, "epoch_size": 125, "weight_decay": 0.0005,
    "checkpoint_path": "./train_googlenet_cifar10-125_390.ckpt",
    "ckpt_file": "/cache/train/train_googlenet_cifar10-125_390.ckpt",
}
UPSTREAM_IMAGENET = {
    **UPSTREAM_COMMON, "modelarts_dataset_unzip_name": "imagenet", "dataset_name": "imagenet", "name": "imagenet",
    "train_data_path": "/cache/data/train/", "val_data_path": "/cache/data/val/",
    "num_classes": 1000, "batch_size": 256, "epoch_size": 300, "weight_decay": 0.0001,
    "checkpoint_path": "./train_googlenet_imagenet-300_5004.ckpt",
    "ckpt_file": "/cache/train/train_googlenet_imagenet-300_5004.ckpt",
    "lr_scheduler": "exponential", "lr_epochs": [70, 140, 210, 280], "lr_gamma": 0.3, "eta_min": 0.0,
    "T_max": 150, "warmup_epochs": 0, "is_dynamic_loss_scale": 0, "loss_scale": 1024,
    "label_smooth_factor": 0.1, "use_label_smooth": True,
}
UPSTREAM_HELP = {"enable_modelarts": "Whether training on modelarts", "name": "dataset name",
                 "onnx_filename": "onnx file name", "device_id": "device id"}
UPSTREAM_CHOICES = {"device_target": ["Ascend", "GPU", "CPU"]}
# Sizes of a test run, given on the command line as a user would.
SMALL_RUN = ["--device_target=CPU", "--image_height=32", "--image_width=32", "--batch_size=16", "--epoch_size=1"]


def _upstream_yaml(path, values: dict, **paths) -> str:
    import yaml

    with open(path, "w", encoding="utf-8") as handle:
        yaml.safe_dump_all([{**values, **paths}, UPSTREAM_HELP, UPSTREAM_CHOICES], handle, sort_keys=False)
    return f"--config_path={path}"


@pytest.mark.parametrize("values, shipped", [(UPSTREAM_CIFAR, "cifar10_config_cpu.yaml"),
                                             (UPSTREAM_IMAGENET, "imagenet_config.yaml")])
def test_an_upstream_yaml_loads_with_one_line_for_what_it_lacks_and_what_is_ignored(values, shipped, tmp_path,
                                                                                     caplog):
    from src.model_utils.config import SCHEMA, load_config

    values = {**values, "train_data_path": "/data/train/"}
    option = _upstream_yaml(tmp_path / "upstream.yaml", values)
    with caplog.at_level(logging.INFO, logger="googlenet"):
        config = load_config([option, "--device_target=CPU"])
    for key, value in values.items():
        if key in SCHEMA and key != "pre_trained" and key != "device_target":
            assert getattr(config, key) == value, key
    assert config.pre_trained == "" and config.device_target == "CPU"
    lines = [record.getMessage() for record in caplog.records]
    assert ["upstream.yaml: upstream keys that mean nothing here, ignored: enable_profiling, "
            "onnx_filename, air_filename, device_id, name" in line for line in lines].count(True) == 1, lines
    filled = [line for line in lines if f"keys of this package not in it, taken from this package's {shipped}:" in line]
    assert len(filled) == 1, lines
    assert "dropout_rate" in filled[0] and "lr_init" not in filled[0]


def test_an_upstream_yaml_still_names_a_missing_upstream_key(tmp_path):
    from src.errors import ConfigError
    from src.model_utils.config import load_config

    values = {key: value for key, value in UPSTREAM_CIFAR.items() if key != "momentum"}
    with pytest.raises(ConfigError, match="upstream.yaml: missing key 'momentum' \\(a number\\)"):
        load_config([_upstream_yaml(tmp_path / "upstream.yaml", values)])


def test_upstream_pre_trained_true_means_start_from_checkpoint_path(tmp_path, caplog):
    from src.model_utils.config import load_config

    option = _upstream_yaml(tmp_path / "upstream.yaml", {**UPSTREAM_CIFAR, "pre_trained": True},
                            checkpoint_path="/ckpt/upstream.ckpt")
    with caplog.at_level(logging.INFO, logger="googlenet"):
        assert load_config([option]).pre_trained == "/ckpt/upstream.ckpt"
    assert "training starts from checkpoint_path /ckpt/upstream.ckpt" in caplog.text
    assert load_config([option, "--pre_trained=False"]).pre_trained == ""
    assert load_config([option, "--pre_trained=/other.ckpt"]).pre_trained == "/other.ckpt"


def test_an_upstream_cifar_yaml_trains_evaluates_exports_and_fine_tunes(cifar_dir, tmp_path):
    """Upstream's train_data_path/val_data_path name the folder that holds cifar-10-batches-bin."""
    from src.checkpoint import load_weights
    from src.googlenet import create_model

    data = str(cifar_dir.parent) + "/"
    option = _upstream_yaml(tmp_path / "cifar10_config.yaml", UPSTREAM_CIFAR, train_data_path=data,
                            val_data_path=data, ckpt_save_dir=str(tmp_path / "ckpt"))
    result = run_script("train.py", option, *SMALL_RUN, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"CIFAR-10 data: using {cifar_dir}" in result.stdout
    assert re.search(r"^epoch: 1 step: 30, loss is [\d.]+$", result.stdout, re.M)
    checkpoint = tmp_path / "ckpt" / "train_googlenet_cifar10-1_30.ckpt"
    assert checkpoint.is_file()

    result = run_script("eval.py", option, "--device_target=CPU", "--image_height=32", "--image_width=32",
                        f"--checkpoint_path={checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^accuracy: \{'acc': [\d.]+\}$", result.stdout, re.M)

    result = run_script("export.py", option, "--device_target=CPU", "--image_height=32", "--image_width=32",
                        f"--ckpt_file={checkpoint}", f"--file_name={tmp_path}/googlenet", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    net = create_model(10)
    load_weights(net, checkpoint)
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(3).normal(size=(1, 3, 32, 32)).astype(np.float32))
    exported = ms.nn.GraphCell(ms.load(f"{tmp_path}/googlenet.mindir"))(x).asnumpy()
    assert np.max(np.abs(exported - net(x).asnumpy())) <= 1e-4

    # Upstream's way to fine-tune: pre_trained: True starts from checkpoint_path.
    result = run_script("train.py", option, *SMALL_RUN, "--pre_trained=True", f"--checkpoint_path={checkpoint}",
                        f"--ckpt_save_dir={tmp_path / 'tuned'}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    # The network's 287 parameters and our dropout's step counter.
    assert f"pre_trained {checkpoint}: loaded 288 parameters" in result.stdout


def test_an_upstream_imagenet_yaml_trains_and_evaluates(image_tree, tmp_path):
    option = _upstream_yaml(tmp_path / "imagenet_config.yaml", UPSTREAM_IMAGENET,
                            train_data_path=str(image_tree / "train"), val_data_path=str(image_tree / "val"),
                            ckpt_save_dir=str(tmp_path / "ckpt"))
    sizes = ["--device_target=CPU", "--amp_level=O0", "--image_height=32", "--image_width=32", "--batch_size=4",
             "--num_parallel_workers=1"]
    result = run_script("train.py", option, *sizes, "--epoch_size=1", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = tmp_path / "ckpt" / "train_googlenet_imagenet-1_12.ckpt"
    assert checkpoint.is_file(), sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    result = run_script("eval.py", option, *sizes, f"--checkpoint_path={checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert re.search(r"^accuracy: \{'top_1_accuracy': [\d.]+, 'top_5_accuracy': [\d.]+\}$", result.stdout, re.M)


def test_mindspore_hub_conf_builds_the_network_upstream_checkpoints_load_into(upstream):
    from mindspore_hub_conf import create_network

    path, cell = upstream
    net = create_network("googlenet")
    not_loaded, _ = ms.load_param_into_net(net, ms.load_checkpoint(str(path)), strict_load=True)
    assert not_loaded == ["dropout.step"]  # our dropout's step counter; upstream has none
    net.set_train(False)
    x = ms.Tensor(np.random.default_rng(4).normal(size=(2, 3, 32, 32)).astype(np.float32))
    np.testing.assert_allclose(net(x).asnumpy(), cell(x).asnumpy(), atol=1e-5)
    assert create_network("googlenet", num_classes=1000).classifier.weight.shape == (1000, 1024)
    with pytest.raises(NotImplementedError, match="resnet50 is not implemented in this repository"):
        create_network("resnet50")
