"""The compiled CPU max-pool kernel (src/cpu_kernels/kernels/max_pool.cc) against MindSpore's own MaxPool."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.cpu_kernels import max_pool
from src.cpu_kernels.blocks import substitute_kernels
from src.model_utils.config import load_config
from src.trainer import create_train_model
from tests.conftest import CPU_CONFIG, build_kernel, create_with_compiler, kernel_model


@pytest.fixture(params=[ms.GRAPH_MODE, ms.PYNATIVE_MODE], ids=["graph", "pynative"])
def mode(request):
    previous = ms.get_context("mode")
    ms.set_context(mode=request.param)
    yield request.param
    ms.set_context(mode=previous)


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("max_pool", tmp_path_factory.mktemp("kernel_cache"))


class _Grad(nn.Cell):
    def __init__(self, pool: nn.Cell) -> None:
        super().__init__()
        self.pool = pool
        self.grad = ops.GradOperation(sens_param=True)

    def construct(self, x, dy):
        return self.grad(self.pool)(x, dy)


def _inputs(shape, ties: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    if ties:  # what ReLU feeds a pool: many equal zeros, so the first-maximum rule decides
        x = np.maximum(x, 0)
        x[..., ::2] = 0
    return x


# Odd and even sizes (even ones take the kernel's stride-2 fast path), the small planes of a 32x32
# input, planes of one value, two tensors large enough to be split between threads and into several
# blocks of planes, and small planes in two blocks (the second shorter).
SHAPES = [(2, 3, 7, 9), (2, 3, 8, 8), (4, 6, 4, 4), (3, 5, 2, 2), (1, 4, 14, 14), (2, 5, 1, 1), (1, 2, 2, 3),
          (3, 50, 33, 31), (2, 40, 64, 64), (4, 300, 4, 4)]


@pytest.mark.parametrize("kernel, stride", sorted(max_pool.KERNEL_SHAPES))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("ties", [False, True])
def test_values_and_gradients_equal_mindspores_max_pool(library, kernel, stride, shape, ties):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = _inputs(shape, ties)
    stock = nn.MaxPool2d(kernel_size=kernel, stride=stride, pad_mode="same")
    compiled = max_pool.CompiledMaxPool2d(kernel, stride, library)
    expected = stock(ms.Tensor(x)).asnumpy()
    got = compiled(ms.Tensor(x)).asnumpy()
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)
    # Positive output gradients: where the input gradient is non-zero shows which input each window chose.
    dy = ms.Tensor(np.random.default_rng(1).uniform(0.5, 1.5, expected.shape).astype(np.float32))
    grad_compiled = _Grad(compiled)(ms.Tensor(x), dy).asnumpy()
    grad_stock = _Grad(stock)(ms.Tensor(x), dy).asnumpy()
    np.testing.assert_array_equal(grad_compiled != 0, grad_stock != 0)
    # Overlapping windows sum contributions in another order: float32 rounding apart, equal.
    np.testing.assert_allclose(grad_compiled, grad_stock, rtol=1e-6, atol=0)
    if stride >= kernel:  # no overlap, one contribution per input: exactly equal
        np.testing.assert_array_equal(grad_compiled, grad_stock)


def test_pynative_mode_too(library, mode):
    x = ms.Tensor(_inputs((2, 3, 9, 9), ties=True))
    stock = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
    compiled = max_pool.CompiledMaxPool2d(3, 2, library)
    dy = ms.Tensor(np.ones((2, 3, 5, 5), np.float32))
    np.testing.assert_array_equal(compiled(x).asnumpy(), stock(x).asnumpy())
    np.testing.assert_allclose(_Grad(compiled)(x, dy).asnumpy(), _Grad(stock)(x, dy).asnumpy(), rtol=1e-6, atol=0)


def test_a_training_step_of_the_network_is_unchanged(kernel_cache):
    """Same weights, same batch: the same loss, and parameters after the update equal up to float32 rounding."""
    ms.set_context(mode=ms.GRAPH_MODE)
    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=4", "--dropout_rate=0"])
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((4, 3, 64, 64)).astype(np.float32))
    labels = ms.Tensor(np.array([0, 1, 2, 3], np.int32))
    results = []
    for compiled in (False, True):
        ms.set_seed(1)
        net = kernel_model(10, dropout_rate=0.0, max_pool=compiled)
        assert isinstance(net.maxpool1, max_pool.CompiledMaxPool2d) == compiled
        before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
        step = create_train_model(config, net, np.full(10, 0.1, np.float32))._train_network
        step.set_train(True)
        loss = step(images, labels)
        updates = {p.name: p.asnumpy() - before[p.name] for p in net.trainable_params()}
        results.append((float(loss.asnumpy()), updates))
    (loss_stock, updates_stock), (loss_compiled, updates_compiled) = results
    assert loss_compiled == loss_stock  # the forward pass is bit-identical
    assert updates_compiled.keys() == updates_stock.keys()
    for name, update in updates_stock.items():
        # Gradient sums in another order: rounding-level differences, not a different update.
        difference = np.linalg.norm(updates_compiled[name] - update)
        assert difference <= 1e-4 * np.linalg.norm(update), (name, difference, np.linalg.norm(update))


def _pools_substituted() -> list[nn.Cell]:
    """Two 'same' max pools (3x3 stride 2, 3x3 stride 1) after the CPU layer's substitution."""
    pools = nn.SequentialCell([nn.MaxPool2d(3, 2, pad_mode="same"), nn.MaxPool2d(3, 1, pad_mode="same")])
    substitute_kernels(pools, max_pool=True, conv=False)
    return list(pools)


def test_falls_back_to_mindspores_max_pool_without_a_compiler(monkeypatch, caplog, tmp_path):
    pools = create_with_compiler(_pools_substituted, str(tmp_path / "no-such-compiler"), tmp_path / "cache",
                                 monkeypatch, caplog)
    assert all(type(pool) is nn.MaxPool2d for pool in pools)
    assert "no C++ compiler" in caplog.text
    assert not (tmp_path / "cache").exists()


def test_a_broken_build_falls_back_and_leaves_no_library(monkeypatch, caplog, tmp_path):
    compiler = tmp_path / "failing-compiler"
    compiler.write_text("#!/bin/sh\necho 'fatal error: simulated' >&2\nexit 1\n")
    compiler.chmod(0o755)
    pools = create_with_compiler(_pools_substituted, str(compiler), tmp_path / "cache", monkeypatch, caplog)
    assert all(type(pool) is nn.MaxPool2d for pool in pools)
    assert "simulated" in caplog.text
    assert list((tmp_path / "cache").iterdir()) == []


@pytest.mark.parametrize("overrides, wanted", [
    ([], True),
    (["--compiled_max_pool=False"], False),
    (["--amp_level=O2"], False),
    (["--device_target=GPU"], False),
])
def test_where_the_compiled_kernel_applies(overrides, wanted):
    config = load_config([f"--config_path={CPU_CONFIG}", *overrides])
    assert max_pool.compiled_max_pool_wanted(config) is wanted
