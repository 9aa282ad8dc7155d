"""The momentum update on the compiled kernel (src/cpu_kernels/optimizer.py,
src/cpu_kernels/kernels/optimizer.cc) against MindSpore's nn.Momentum, through the optimizer train.py
builds (create_optimizer)."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src import trainer
from src.cpu_kernels.optimizer import CompiledMomentum, create_momentum
from src.model_utils.config import load_config
from tests.conftest import CPU_CONFIG, build_kernel, create_with_compiler


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("optimizer", tmp_path_factory.mktemp("kernel_cache"))


class _Small(nn.Cell):
    """Convolution, BatchNorm (undecayed gamma and beta) and a classifier (the head, with a bias)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, pad_mode="same", has_bias=False)
        self.bn = nn.BatchNorm2d(6)
        self.flatten = nn.Flatten()
        self.classifier = nn.Dense(6 * 4 * 4, 5)

    def construct(self, x):
        return self.classifier(self.flatten(self.bn(self.conv(x))))


def _train(config, compiled: bool, steps: int = 3):
    """Parameters and moments after ``steps`` steps of create_optimizer's optimizer."""
    ms.set_seed(4)
    net = _Small()
    learning_rates = np.linspace(0.2, 0.05, steps).astype(np.float32)  # a different rate every step
    optimizer = trainer.create_optimizer(config, net, learning_rates)
    assert isinstance(optimizer, CompiledMomentum) == compiled
    step = nn.TrainOneStepCell(nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")),
                               optimizer)
    step.set_train(True)
    rng = np.random.default_rng(0)
    for _ in range(steps):
        images = ms.Tensor(rng.standard_normal((4, 3, 4, 4)).astype(np.float32))
        step(images, ms.Tensor(np.arange(4, dtype=np.int32)))
    return ({p.name: p.asnumpy() for p in net.trainable_params()},
            {p.name: p.asnumpy() for p in optimizer.moments}, int(optimizer.global_step.asnumpy()[0]))


# Parameter groups (no decay for BatchNorm and biases, a scaled backbone rate) or one group with weight
# decay for all, and a loss scale the optimizer divides out.
SETTINGS = [["--no_decay_bn_bias=True"], ["--no_decay_bn_bias=True", "--backbone_lr_scale=0.1"],
            ["--no_decay_bn_bias=False", "--weight_decay=0.01", "--loss_scale=128"]]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: " ".join(s))
def test_updates_equal_nn_momentum(library, kernel_cache, settings):
    ms.set_context(mode=ms.GRAPH_MODE)
    base = [f"--config_path={CPU_CONFIG}", *settings]
    stock = _train(load_config([*base, "--compiled_optimizer=False"]), compiled=False)
    compiled = _train(load_config(base), compiled=True)
    for expected, got in zip(stock[:2], compiled[:2], strict=True):
        assert expected.keys() == got.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert stock[2] == compiled[2] == 3  # global_step, which picks each step's learning rate


def test_moments_are_nn_momentums(kernel_cache):
    """The same optimizer state, under the same names: checkpoints and resumption are unchanged."""
    net = _Small()
    stock = nn.Momentum(net.trainable_params(), 0.1, 0.9)
    compiled = create_momentum(net.trainable_params(), 0.1, 0.9, compiled=True)
    assert isinstance(compiled, CompiledMomentum)
    assert [(p.name, p.shape) for p in compiled.moments] == [(p.name, p.shape) for p in stock.moments]


def test_where_it_applies(kernel_cache, caplog):
    net = _Small()
    rates = np.full(3, 0.1, np.float32)
    with caplog.at_level("INFO", logger="googlenet"):
        assert isinstance(trainer.create_optimizer(load_config([f"--config_path={CPU_CONFIG}"]), net, rates),
                          CompiledMomentum)
    assert f"optimizer: compiled CPU kernel {kernel_cache}" in caplog.text
    for off in (["--compiled_optimizer=False"], ["--amp_level=O2"]):
        config = load_config([f"--config_path={CPU_CONFIG}", *off])
        assert type(trainer.create_optimizer(config, net, rates)) is nn.Momentum, off


def test_falls_back_to_nn_momentum_without_a_compiler(monkeypatch, caplog, tmp_path):
    net = _Small()
    optimizer = create_with_compiler(lambda: create_momentum(net.trainable_params(), 0.1, 0.9, compiled=True),
                                     str(tmp_path / "no-such-compiler"), tmp_path / "cache", monkeypatch, caplog)
    assert type(optimizer) is nn.Momentum
    assert "no C++ compiler" in caplog.text and "optimizer uses MindSpore's own CPU kernels" in caplog.text


class _ReadAround(nn.Cell):
    """The step's optimizer call with the first parameter read just before it and just after it, in one graph."""

    def __init__(self, optimizer: nn.Momentum) -> None:
        super().__init__()
        self.optimizer = optimizer
        self.param = optimizer.parameters[0]

    def construct(self, gradients):
        before = self.param * 1
        done = self.optimizer(gradients)
        after = self.param * 1
        return before, after, done


def test_the_graph_orders_reads_around_the_update(kernel_cache):
    """The kernel writes the parameters in place: MindSpore must know it, or it may run the update
    before a read written ahead of it, or merge the two reads into one (both seen with the kernel
    declared as only reading its inputs)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    net = _Small()
    optimizer = create_momentum(net.trainable_params(), 0.5, 0.9, compiled=True)
    assert isinstance(optimizer, CompiledMomentum)
    start = optimizer.parameters[0].asnumpy().copy()
    gradients = tuple(ms.Tensor(np.ones(p.shape, np.float32)) for p in optimizer.parameters)
    before, after, _ = _ReadAround(optimizer)(gradients)
    np.testing.assert_array_equal(before.asnumpy(), start)
    np.testing.assert_allclose(after.asnumpy(), start - 0.5, rtol=1e-6, atol=1e-6)  # moment 0: w - lr * g
    np.testing.assert_array_equal(optimizer.parameters[0].asnumpy(), after.asnumpy())
