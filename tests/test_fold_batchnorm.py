"""BatchNorm folded into the convolutions for inference (src/cpu_kernels/blocks.py fold_batchnorm, the
ConvBiasReluForward entry of src/cpu_kernels/kernels/conv.cc): the same function as the unfolded network."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn

from src.checkpoint import load_weights
from src.cpu_kernels import conv
from src.cpu_kernels.blocked import ConvBiasReLUBlocked
from src.cpu_kernels.blocks import KernelConv2dBlock, fold_batchnorm, folded_block
from src.cpu_kernels.channels_last import ConvBatchNormReLUNhwc
from src.googlenet import Conv2dBlock, create_model
from src.model_utils.config import load_config
from src.models import create_inference_model
from tests.conftest import CPU_CONFIG, build_kernel, kernel_block, kernel_model


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("conv", tmp_path_factory.mktemp("kernel_cache"))


def _trained_statistics(net: nn.Cell, seed: int) -> None:
    """BatchNorm parameters as after training (the initial ones fold into nearly nothing)."""
    rng = np.random.default_rng(seed)
    for name, param in net.parameters_and_names():
        if name.endswith(("moving_mean", "beta")):
            param.set_data(ms.Tensor(rng.normal(0, 0.2, param.shape).astype(np.float32)))
        elif name.endswith(("moving_variance", "gamma")):
            param.set_data(ms.Tensor(rng.uniform(0.3, 2.0, param.shape).astype(np.float32)))


def _assert_close(got: np.ndarray, expected: np.ndarray, what: str, tolerance: float = 2e-5) -> None:
    assert got.shape == expected.shape, what
    assert np.abs(expected).max() > 0, what  # ReLU must not have zeroed everything
    error = float(np.abs(got - expected).max()) / float(np.abs(expected).max())
    assert error < tolerance, (what, error)


# (batch, in, out, kernel, height, width, stride): through the compiled kernel a 1x1 plane (dense
# path), a 4x4 plane, one image (the kernel's GEMM writes it in place; also on the dense path of a
# 2x2 plane, where the bias is per channel of (channel, position) rows), an 8x8 plane (above the
# training limit, within the folded one), stride 2 on any plane (conv1's shape at 32x32 input; odd
# sizes, where 'same' padding is uneven; a 1x1 kernel, which needs none); with stride 1 above the
# folded limit, MindSpore's Conv2D + BiasAdd + ReLU.
BLOCK_SHAPES = [(32, 48, 40, 3, 1, 1, 1), (4, 24, 36, 3, 4, 4, 1), (1, 8, 12, 1, 3, 3, 1), (1, 16, 24, 3, 2, 2, 1),
                (2, 16, 24, 3, 8, 8, 1),
                (2, 8, 12, 3, 9, 9, 1),
                (4, 3, 64, 7, 32, 32, 2), (2, 5, 8, 3, 15, 13, 2), (2, 4, 6, 5, 9, 10, 2), (2, 4, 6, 1, 6, 7, 2)]


@pytest.mark.parametrize("compiled", [False, True], ids=["mindspore", "kernel"])
@pytest.mark.parametrize("shape", BLOCK_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_a_folded_block_computes_what_the_block_computes(kernel_cache, compiled, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, height, width, stride = shape
    block = (kernel_block if compiled else Conv2dBlock)(in_channels, out_channels, kernel, stride)
    assert isinstance(block.conv, conv.CompiledConv2d) == compiled
    _trained_statistics(block, seed=sum(shape))
    block.set_train(False)
    folded = folded_block(block)
    folded.set_train(False)
    assert (folded.fused is not None) == compiled
    on_kernel = compiled and (stride == 2 or height * width <= conv.MAX_FOLDED_KERNEL_PLANE)
    assert (height * width <= folded.max_kernel_plane) == on_kernel  # what construct() decides
    x = ms.Tensor(np.random.default_rng(1).standard_normal((batch, in_channels, height, width)).astype(np.float32))
    expected = block(x).asnumpy()
    _assert_close(folded(x).asnumpy(), expected, "output")
    _assert_close(folded(x).asnumpy(), expected, "output, second call (the kernel's filter packed once)")


def test_filters_packed_once_stay_with_their_cell(kernel_cache):
    """Two folded 3x3 blocks of the same shape, called in turn on planes the kernel handles three ways
    (dense 1x1 and 2x2 maps, im2col on 4x4): each call computes its own block's function, the
    first call on each plane and every one after it."""
    ms.set_context(mode=ms.GRAPH_MODE)
    blocks, folded = [], []
    for seed in (5, 6):
        block = kernel_block(16, 24, 3)
        _trained_statistics(block, seed=seed)
        block.set_train(False)
        blocks.append(block)
        folded.append(folded_block(block))
        folded[-1].set_train(False)
    assert folded[0].filter_token.asnumpy()[0] != folded[1].filter_token.asnumpy()[0]
    rng = np.random.default_rng(7)
    for _ in range(2):
        for size in (1, 2, 4):
            x = ms.Tensor(rng.standard_normal((3, 16, size, size)).astype(np.float32))
            for block, fold in zip(blocks, folded, strict=True):
                _assert_close(fold(x).asnumpy(), block(x).asnumpy(), f"{size}x{size}")


@pytest.mark.parametrize("compiled", [False, True], ids=["mindspore", "kernel"])
def test_the_folded_network_equals_the_network(kernel_cache, compiled, tmp_path):
    """32x32 input, a checkpoint with trained-looking BatchNorm statistics: the feature map before the
    classifier is the same with and without folding (the folded NCHW network; eval.py's, channels-last
    on oneDNN, is tests/test_channels_last.py's)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    source = kernel_model(10, conv=compiled)
    _trained_statistics(source, seed=3)
    checkpoint = tmp_path / "net.ckpt"
    ms.save_checkpoint(source, str(checkpoint))
    overrides = [f"--config_path={CPU_CONFIG}", "--image_height=32", "--image_width=32", f"--compiled_conv={compiled}"]
    plain = create_inference_model(load_config([*overrides, "--fold_batchnorm=False"]), str(checkpoint))
    folded = kernel_model(10, conv=compiled)
    load_weights(folded, checkpoint)
    fold_batchnorm(folded).set_train(False)
    plain.include_top = folded.include_top = False

    cells = [cell for _, cell in folded.cells_and_names()]
    assert not any(isinstance(cell, (Conv2dBlock, KernelConv2dBlock, nn.BatchNorm2d)) for cell in cells)
    folded_blocks = [cell for cell in cells if isinstance(cell, conv.ConvBiasReLU)]
    assert len(folded_blocks) == 57
    assert sum(cell.fused is not None for cell in folded_blocks) == (57 if compiled else 0)
    names = [param.name for param in folded.get_parameters()]
    assert names == [name for name, _ in folded.parameters_and_names()]  # full, hence unique, names
    # weight and bias per folded convolution, plus its filter token where the kernel runs it; the
    # classifier's weight and bias; the dropout's step counter
    assert "block4e.b2.1.bias" in names and len(names) == 57 * (3 if compiled else 2) + 3
    tokens = [int(cell.filter_token.asnumpy()[0]) for cell in folded_blocks if cell.fused is not None]
    assert len(set(tokens)) == len(tokens) == (57 if compiled else 0)

    x = ms.Tensor(np.random.default_rng(4).standard_normal((4, 3, 32, 32)).astype(np.float32))
    _assert_close(folded(x).asnumpy(), plain(x).asnumpy(), "feature map", tolerance=1e-4)


def test_the_config_decides_and_the_log_says_so(kernel_cache, caplog):
    config = load_config([f"--config_path={CPU_CONFIG}"])
    with caplog.at_level("INFO", logger="googlenet"):
        net = create_inference_model(config, None)
    assert isinstance(net.conv2, ConvBiasReLUBlocked) and not net.training  # folded, then blocked
    assert "inference: BatchNorm folded into the convolutions" in caplog.text
    assert "inference: convolutions, max pools and Inceptions on oneDNN (blocked layout)" in caplog.text
    caplog.clear()
    config = load_config([f"--config_path={CPU_CONFIG}", "--channels_last=False"])
    with caplog.at_level("INFO", logger="googlenet"):
        net = create_inference_model(config, None)
    assert isinstance(net.conv2, conv.ConvBiasReLU) and "channels-last" not in caplog.text
    caplog.clear()
    config = load_config([f"--config_path={CPU_CONFIG}", "--fold_batchnorm=False"])
    with caplog.at_level("INFO", logger="googlenet"):
        net = create_inference_model(config, None)
    assert isinstance(net.conv2, ConvBatchNormReLUNhwc) and not net.training  # as train.py trains it
    assert "BatchNorm folded" not in caplog.text


def test_fold_batchnorm_returns_the_network_it_changed(kernel_cache):
    net = create_model(10)
    assert fold_batchnorm(net) is net
    assert isinstance(net.block3a.b4, conv.ConvBiasReLU)


def test_weights_loaded_into_a_folded_network_are_used(kernel_cache):
    """The kernel keeps each folded filter packed between calls: new weights loaded into a folded
    network that has already run (as a serving process reloading a checkpoint does) must be packed
    again, wherever MindSpore puts them. Network A, after it has run, takes network B's folded
    weights and gives B's logits."""
    ms.set_context(mode=ms.GRAPH_MODE)
    networks = []
    for seed in (8, 9):
        ms.set_seed(seed)
        net = kernel_model(10, conv=True)
        _trained_statistics(net, seed=seed)
        net.set_train(False)
        networks.append(fold_batchnorm(net))
    target, source = networks
    x = ms.Tensor(np.random.default_rng(10).standard_normal((4, 3, 32, 32)).astype(np.float32))
    expected = source(x).asnumpy()
    before = target(x).asnumpy()
    assert np.abs(before - expected).max() > 1e-2 * np.abs(expected).max()  # two different networks

    weights = {name: param for name, param in source.parameters_and_names() if not name.endswith("filter_token")}
    not_loaded, _ = ms.load_param_into_net(target, weights, strict_load=True)
    assert not [name for name in not_loaded if not name.endswith("filter_token")]
    _assert_close(target(x).asnumpy(), expected, "logits after loading", tolerance=1e-5)

    # written into the parameters' own memory, as an in-graph update would
    for name, param in target.parameters_and_names():
        if name.endswith("weight"):
            ms.ops.Assign()(param, ms.Tensor(param.asnumpy() * 0.5))
    halved = target(x).asnumpy()
    fresh = kernel_model(10, conv=True)
    fresh.set_train(False)
    fold_batchnorm(fresh)
    ms.load_param_into_net(fresh, {name: param for name, param in target.parameters_and_names()
                                   if not name.endswith("filter_token")}, strict_load=True)
    _assert_close(halved, fresh(x).asnumpy(), "logits after an in-place write", tolerance=1e-5)
    assert np.abs(halved - expected).max() > 1e-2 * np.abs(expected).max()
