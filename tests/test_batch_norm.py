"""BatchNorm + ReLU in training on the compiled kernel (src/cpu_kernels/batch_norm.py,
src/cpu_kernels/kernels/conv.cc), alone and fused with the convolution before it, against MindSpore's
BatchNorm and ReLU."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.cpu_kernels.batch_norm import BatchNormReLU2d
from src.cpu_kernels.blocks import KernelConv2dBlock
from src.cpu_kernels.conv import CompiledConv2d
from src.googlenet import Conv2dBlock
from tests.conftest import build_kernel, kernel_block, kernel_model
from tests.gradients import Gradients


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("conv", tmp_path_factory.mktemp("kernel_cache"))


def _assert_close(got, expected, what: str, tolerance: float = 2e-5) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    assert got.shape == expected.shape, what
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(got - expected).max()) / scale
    assert error < tolerance, (what, error)


def _same_statistics(cells, channels: int, rng) -> None:
    """The same gamma, beta and moving statistics (not the defaults: every term counts) in each cell."""
    values = {"gamma": rng.uniform(0.5, 1.5, channels), "beta": rng.uniform(-0.5, 0.5, channels),
              "moving_mean": rng.uniform(-0.2, 0.2, channels), "moving_variance": rng.uniform(0.5, 2.0, channels)}
    for cell in cells:
        for name, value in values.items():
            getattr(cell, name).set_data(ms.Tensor(value.astype(np.float32)))


def _compare(stock: nn.Cell, compiled: nn.Cell, bns, x: np.ndarray, dy: np.ndarray) -> None:
    """Output and moving statistics after one training call, then the gradients."""
    stock.set_train(True)
    compiled.set_train(True)
    x, dy = ms.Tensor(x), ms.Tensor(dy)
    _assert_close(compiled(x).asnumpy(), stock(x).asnumpy(), "output")
    for name in ("moving_mean", "moving_variance"):
        _assert_close(getattr(bns[1], name).asnumpy(), getattr(bns[0], name).asnumpy(), name, 1e-6)
    (dx_compiled,), weights_compiled = Gradients(compiled)(x, dy)
    (dx_stock,), weights_stock = Gradients(stock)(x, dy)
    _assert_close(dx_compiled.asnumpy(), dx_stock.asnumpy(), "input gradient")
    names = [p.name for p in stock.trainable_params()]
    for name, got, expected in zip(names, weights_compiled, weights_stock, strict=True):
        _assert_close(got.asnumpy(), expected.asnumpy(), f"gradient of {name}")


# (batch, channels, height, width): 1x1, 2x2 and 4x4 planes (GoogleNet at 32x32; the loops run along
# whole images there), 8x8 and odd planes (along each plane), one tensor large enough to share
# between the kernel's threads (2**19 values), a single image.
SHAPES = [(8, 384, 1, 1), (32, 20, 2, 2), (6, 10, 4, 4), (4, 12, 8, 8), (3, 5, 3, 5), (32, 64, 16, 16),
          (1, 7, 6, 6)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_training_equals_mindspores_batchnorm_and_relu(library, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(0)
    stock, compiled = BatchNormReLU2d(shape[1]), BatchNormReLU2d(shape[1], library=library)
    assert stock.fused is None and compiled.fused is not None
    _same_statistics([stock, compiled], shape[1], rng)
    x = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
    _compare(stock, compiled, (stock, compiled), x, rng.standard_normal(shape).astype(np.float32))


def test_evaluation_uses_the_moving_statistics(library):
    """Out of training the cell is MindSpore's BatchNorm (moving statistics) and ReLU, bit for bit."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(1)
    stock, compiled = BatchNormReLU2d(6), BatchNormReLU2d(6, library=library)
    _same_statistics([stock, compiled], 6, rng)
    stock.set_train(False)
    compiled.set_train(False)
    x = ms.Tensor(rng.standard_normal((4, 6, 2, 2)).astype(np.float32))
    expected = np.maximum(stock.bn_infer(x, stock.gamma, stock.beta, stock.moving_mean, stock.moving_variance)[0]
                          .asnumpy(), 0)
    np.testing.assert_array_equal(compiled(x).asnumpy(), expected)
    np.testing.assert_array_equal(stock(x).asnumpy(), expected)


# (batch, in, out, kernel, plane): the kernel's paths for the convolution (dense maps on 1x1 and 2x2
# planes, im2col on 4x4, a 1x1 kernel) and, at 8x8, a plane above the training limit, where the block
# runs MindSpore's Conv2D followed by the BatchNorm kernel.
BLOCKS = [(8, 16, 24, 3, 1), (32, 20, 36, 3, 2), (8, 24, 40, 3, 4), (5, 7, 9, 1, 2), (4, 8, 12, 3, 8)]


@pytest.mark.parametrize("shape", BLOCKS, ids=lambda s: "x".join(map(str, s)))
def test_a_fused_convolution_block_equals_mindspores(library, kernel_cache, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, plane = shape
    rng = np.random.default_rng(2)
    stock = Conv2dBlock(in_channels, out_channels, kernel)
    compiled = kernel_block(in_channels, out_channels, kernel)
    assert isinstance(compiled.conv, CompiledConv2d) and compiled.fused is not None
    compiled.conv.weight.set_data(stock.conv.weight.data.copy())
    _same_statistics([stock.bn, compiled.bn], out_channels, rng)
    x = rng.standard_normal((batch, in_channels, plane, plane)).astype(np.float32)
    dy = rng.standard_normal((batch, out_channels, plane, plane)).astype(np.float32)
    _compare(stock, compiled, (stock.bn, compiled.bn), x, dy)


def test_which_blocks_use_it(kernel_cache):
    """With compiled_conv every BatchNorm trains on the kernel; the stride-1 convolutions (not conv1)
    also fuse with it (where their plane is on the kernel); without it, none."""
    compiled, stock = kernel_model(10, conv=True), kernel_model(10, conv=False)
    blocks = [cell for _, cell in compiled.cells_and_names() if isinstance(cell, KernelConv2dBlock)]
    assert len(blocks) == 57 and all(block.bn.fused is not None for block in blocks)
    assert [block.fused is None for block in blocks].count(True) == 1 and compiled.conv1.fused is None
    plain = [cell for _, cell in stock.cells_and_names() if isinstance(cell, Conv2dBlock)]
    assert len(plain) == 57 and not any(isinstance(cell, KernelConv2dBlock) for _, cell in stock.cells_and_names())


def test_moving_statistics_in_training_when_asked(library, kernel_cache):
    """use_batch_statistics=False (a frozen backbone, src/finetune.py): MindSpore's BatchNorm with the
    moving statistics, in training too, and nothing updated; True: batch statistics in evaluation too."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 16, 2, 2)).astype(np.float32)
    for use_batch_statistics, training in [(False, True), (True, False)]:
        stock = Conv2dBlock(16, 12, 3)
        compiled = kernel_block(16, 12, 3)
        compiled.conv.weight.set_data(stock.conv.weight.data.copy())
        _same_statistics([stock.bn, compiled.bn], 12, rng)
        for block in (stock, compiled):
            block.bn.use_batch_statistics = use_batch_statistics
            block.set_train(training)
        before = compiled.bn.moving_mean.asnumpy().copy()
        _assert_close(compiled(ms.Tensor(x)).asnumpy(), stock(ms.Tensor(x)).asnumpy(), "output")
        for name in ("moving_mean", "moving_variance"):
            _assert_close(getattr(compiled.bn, name).asnumpy(), getattr(stock.bn, name).asnumpy(), name, 1e-6)
        assert np.array_equal(compiled.bn.moving_mean.asnumpy(), before) != use_batch_statistics


class _ReadAround(nn.Cell):
    """A training call of ``cell`` with its moving mean read just before it and just after it, in one graph."""

    def __init__(self, cell: nn.Cell, bn: BatchNormReLU2d) -> None:
        super().__init__()
        self.cell = cell
        self.moving_mean = bn.moving_mean

    def construct(self, x):
        before = self.moving_mean * 1
        y = self.cell(x)
        after = self.moving_mean * 1
        return before, y, after


@pytest.mark.parametrize("fused", [False, True], ids=["batch-norm", "convolution-block"])
def test_the_graph_orders_reads_around_the_statistics_update(library, kernel_cache, fused):
    """The kernels write the moving statistics in place: MindSpore must know it, or a read written
    after the call may see the old values (both reads merged, or run before the kernel)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(4)
    if fused:
        cell = kernel_block(6, 8, 3)
        assert cell.fused is not None
        bn = cell.bn
    else:
        cell = bn = BatchNormReLU2d(8, library=library)
    cell.set_train(True)
    x = ms.Tensor((rng.standard_normal((4, 6 if fused else 8, 2, 2)) + 3).astype(np.float32))
    start = bn.moving_mean.asnumpy().copy()
    before, _, after = _ReadAround(cell, bn)(x)
    np.testing.assert_array_equal(before.asnumpy(), start)
    assert not np.allclose(after.asnumpy(), start)
    np.testing.assert_array_equal(bn.moving_mean.asnumpy(), after.asnumpy())
