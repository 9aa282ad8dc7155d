"""The GoogleNet cell, the loss and the optimiser groups."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from src.CrossEntropySmooth import CrossEntropySmooth
from src.googlenet import GoogleNet, Inception, create_model
from src.model_utils.config import load_config
from src.trainer import create_optimizer
from tests.conftest import CPU_CONFIG


def _trainable(net) -> int:
    return sum(int(np.prod(p.shape)) for p in net.trainable_params())


@pytest.mark.parametrize("num_classes, expected", [(10, 5_610_154), (1000, 6_624_904)])
def test_trainable_parameter_count(num_classes, expected):
    assert _trainable(create_model(num_classes)) == expected


def test_inception_blocks_follow_the_table():
    net = GoogleNet(10)
    table = {  # in, 1x1, 3x3 reduce, 3x3, "5x5" reduce, "5x5", pool proj
        "block3a": (192, 64, 96, 128, 16, 32, 32), "block3b": (256, 128, 128, 192, 32, 96, 64),
        "block4a": (480, 192, 96, 208, 16, 48, 64), "block4b": (512, 160, 112, 224, 24, 64, 64),
        "block4c": (512, 128, 128, 256, 24, 64, 64), "block4d": (512, 112, 144, 288, 32, 64, 64),
        "block4e": (528, 256, 160, 320, 32, 128, 128), "block5a": (832, 256, 160, 320, 32, 128, 128),
        "block5b": (832, 384, 192, 384, 48, 128, 128),
    }
    for name, (cin, c1, c3r, c3, c5r, c5, pool) in table.items():
        block = getattr(net, name)
        assert isinstance(block, Inception)
        assert block.b1.conv.in_channels == cin and block.b1.conv.out_channels == c1
        assert [c.conv.out_channels for c in block.b2] == [c3r, c3]
        assert [c.conv.out_channels for c in block.b3] == [c5r, c5]
        assert block.b3[1].conv.kernel_size == (3, 3)  # the model-zoo 3x3 "5x5" branch
        assert block.b4.conv.out_channels == pool
    assert (net.maxpool3.kernel_size, net.maxpool4.kernel_size, net.maxpool4.stride) == (3, 2, 2)


def test_output_shapes_and_include_top():
    x = ms.Tensor(np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32))
    net = create_model(7)
    net.set_train(False)
    assert net(x).shape == (2, 7)
    features = create_model(7, include_top=False)
    features.set_train(False)
    assert features(x).shape == (2, 1024, 2, 2)


@pytest.mark.parametrize("size, plane", [(64, 2), (32, 1)])
def test_the_classifier_reads_the_feature_maps_mean(size, plane):
    """Logits = classifier(mean over the feature map), also for the 1x1 map of a 32x32 input, where the
    network skips the mean (a single value is its own mean)."""
    x = ms.Tensor(np.random.default_rng(2).normal(size=(2, 3, size, size)).astype(np.float32))
    net = create_model(7)
    features = create_model(7, include_top=False)
    ms.load_param_into_net(features, {p.name: p for p in net.get_parameters()})
    net.set_train(False)
    features.set_train(False)
    maps = features(x).asnumpy()
    assert maps.shape == (2, 1024, plane, plane)
    expected = maps.mean(axis=(2, 3)) @ net.classifier.weight.asnumpy().T + net.classifier.bias.asnumpy()
    np.testing.assert_allclose(net(x).asnumpy(), expected, rtol=1e-5, atol=1e-5)


def test_dropout_applies_in_training_only():
    x = ms.Tensor(np.random.default_rng(1).normal(size=(2, 3, 32, 32)).astype(np.float32))
    net = create_model(10, dropout_rate=0.5)
    net.set_train(False)
    assert np.array_equal(net(x).asnumpy(), net(x).asnumpy())
    net.set_train(True)
    assert not np.allclose(net(x).asnumpy(), net(x).asnumpy())
    no_dropout = create_model(10, dropout_rate=0.0)
    no_dropout.set_train(True)
    assert np.allclose(no_dropout(x).asnumpy(), no_dropout(x).asnumpy(), atol=1e-6)
    assert net.dropout.p == 0.5


def test_label_smoothing_loss_matches_formula():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], dtype=np.float32)
    labels = np.array([0, 2], dtype=np.int32)
    factor = 0.1
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    target = np.full((2, 3), factor / 2)
    target[np.arange(2), labels] = 1 - factor
    expected = float(np.mean(-(target * log_softmax).sum(axis=1)))
    loss = CrossEntropySmooth(num_classes=3, smooth_factor=factor)(ms.Tensor(logits), ms.Tensor(labels))
    assert float(loss.asnumpy()) == pytest.approx(expected, rel=1e-5)
    plain = CrossEntropySmooth(num_classes=3)(ms.Tensor(logits), ms.Tensor(labels))
    assert float(plain.asnumpy()) == pytest.approx(float(np.mean(-log_softmax[np.arange(2), labels])), rel=1e-5)


@pytest.mark.parametrize("no_decay", [True, False])
def test_weight_decay_groups(no_decay):
    config = load_config([f"--config_path={CPU_CONFIG}", f"--no_decay_bn_bias={no_decay}"])
    net = create_model(10)
    optimizer = create_optimizer(config, net, np.full(4, 0.1, dtype=np.float32))
    decays = {p.name: float(wd) for p, wd in zip(optimizer.parameters, optimizer.weight_decay, strict=True)} \
        if isinstance(optimizer.weight_decay, tuple) else None
    undecayed = [p.name for p in net.trainable_params() if p.name.endswith((".gamma", ".beta", ".bias"))]
    assert undecayed and "classifier.bias" in undecayed
    if no_decay:
        assert decays is not None
        assert all(decays[name] == 0.0 for name in undecayed)
        assert decays["conv1.conv.weight"] == pytest.approx(5e-4)
        assert decays["classifier.weight"] == pytest.approx(5e-4)
    else:
        assert decays is None and float(optimizer.weight_decay) == pytest.approx(5e-4)
