"""Inference on oneDNN's blocked layout (src/cpu_kernels/blocked.py, src/cpu_kernels/kernels/dnnl.cc):
MindSpore's own oneDNN is the one called, and the converted cells and network compute what the folded
NCHW ones compute."""

from __future__ import annotations

import ctypes
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.cpu_kernels import accelerate, blocked, build, fold_batchnorm, fold_for_inference
from src.cpu_kernels.blocks import KernelConv2dBlock, folded_block
from src.cpu_kernels.conv import ConvBiasReLU
from src.cpu_kernels.max_pool import CompiledMaxPool2d
from src.googlenet import Conv2dBlock, Inception
from src.model_utils.config import load_config
from src.models import create_inference_model
from tests.conftest import CPU_CONFIG, build_kernel, kernel_model
from tests.test_fold_batchnorm import _assert_close, _trained_statistics

MINDSPORE_ONEDNN = Path(ms.__file__).resolve().parent / "lib" / "libdnnl.so.3"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("dnnl", tmp_path_factory.mktemp("kernel_cache"))


@pytest.fixture(scope="module")
def block(library):
    return blocked.blocked_channels(library)


def _blocked(x: np.ndarray, block: int) -> ms.Tensor:
    """NCHW ``x`` in the blocked layout, [N, C/block, H, W, block]."""
    n, c, h, w = x.shape
    return ms.Tensor(np.ascontiguousarray(x.reshape(n, c // block, block, h, w).transpose(0, 1, 3, 4, 2)))


def _unblocked(y: ms.Tensor) -> np.ndarray:
    n, groups, h, w, block = y.shape
    return y.asnumpy().transpose(0, 1, 4, 2, 3).reshape(n, groups * block, h, w)


def test_the_kernel_calls_mindspores_own_onednn(library):
    """Two oneDNN copies in one process could bind each other's unversioned symbols: the kernel's
    must resolve to MindSpore's lib/libdnnl.so.3, whose version the kernel reports from inside."""
    ms.set_context(mode=ms.GRAPH_MODE)
    version = ops.Custom(f"{library}:ChannelsLastVersion", out_shape=lambda shape: [3],
                         out_dtype=lambda dtype: dtype, func_type="aot")
    reported = [int(v) for v in version(ms.Tensor(np.zeros(1, np.float32))).asnumpy()]

    kernel = ctypes.CDLL(str(library))  # the library MindSpore loaded: dlopen gives the same handle
    kernel.OneDnnLibrary.restype = ctypes.c_char_p
    assert Path(kernel.OneDnnLibrary().decode()).resolve() == MINDSPORE_ONEDNN

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int)]

    mindspores = ctypes.CDLL(str(MINDSPORE_ONEDNN))
    mindspores.dnnl_version.restype = ctypes.POINTER(Version)
    expected = mindspores.dnnl_version().contents
    assert reported == [expected.major, expected.minor, expected.patch]
    assert reported[0] == 3 and reported[1] >= 9  # not older than the headers it was compiled with


def test_the_block_is_what_the_cpu_allows(block):
    """16 channels where oneDNN may use AVX-512 (as the instruction set it reports says), else 8."""
    isa = ctypes.CDLL(str(MINDSPORE_ONEDNN)).dnnl_get_effective_cpu_isa()
    avx512_core = 0x27  # dnnl_cpu_isa_avx512_core
    assert block == (16 if isa & avx512_core == avx512_core else 8)


# (batch, in, out, kernel, height, width, stride): 1x1 and 3x3 kernels on planes from 1x1 up, conv1's
# 7x7 stride 2 on a 3-channel image, odd sizes (uneven 'same' padding), a 5x5 kernel; channels a
# multiple of 16 except the images' inputs
CONV_SHAPES = [(4, 16, 32, 1, 7, 7, 1), (2, 32, 16, 3, 14, 14, 1), (32, 48, 64, 3, 1, 1, 1), (3, 16, 16, 3, 2, 2, 1),
               (2, 3, 64, 7, 32, 32, 2), (2, 5, 16, 3, 15, 13, 2), (2, 16, 32, 5, 9, 10, 1), (2, 16, 16, 1, 6, 7, 2)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_a_convolution_computes_the_folded_block(library, block, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, height, width, stride = shape
    conv_block = Conv2dBlock(in_channels, out_channels, kernel, stride)
    _trained_statistics(conv_block, seed=sum(shape))
    conv_block.set_train(False)
    folded = folded_block(conv_block)
    x = np.random.default_rng(1).standard_normal((batch, in_channels, height, width)).astype(np.float32)
    expected = folded(ms.Tensor(x)).asnumpy()
    converted = blocked.ConvBiasReLUBlocked(folded, library, block)
    _assert_close(_unblocked(converted(ms.Tensor(x))), expected, "NCHW image input")
    if in_channels % block == 0:
        for call in ("first call", "second call (the filter reordered once)"):
            _assert_close(_unblocked(converted(_blocked(x, block))), expected, f"blocked input, {call}")


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (2, 2)])
@pytest.mark.parametrize("size", [(1, 1), (7, 7), (14, 13)], ids=lambda s: "x".join(map(str, s)))
def test_a_max_pool_equals_mindspores(library, block, kernel, stride, size):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = np.random.default_rng(2).standard_normal((3, 32, *size)).astype(np.float32) - 1  # negative maxima too
    expected = nn.MaxPool2d(kernel, stride, pad_mode="same")(ms.Tensor(x)).asnumpy()
    got = _unblocked(blocked.MaxPoolBlocked(kernel, stride, library, block)(_blocked(x, block)))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("size", [(1, 1), (4, 4), (7, 6)], ids=lambda s: "x".join(map(str, s)))
def test_an_inception_computes_the_folded_one(library, block, size):
    """Each branch written in place into its channels of the output; in groups of 16 the reductions
    (24 and 8 channels) fill part of their last group, which the next convolution must ignore."""
    ms.set_context(mode=ms.GRAPH_MODE)
    inception = Inception(64, 16, 24, 32, 8, 16, 16)
    _trained_statistics(inception, seed=21)
    inception.set_train(False)
    fold_batchnorm(inception)
    x = np.random.default_rng(22).standard_normal((3, 64, *size)).astype(np.float32)
    expected = inception(ms.Tensor(x)).asnumpy()
    converted = blocked.InceptionBlocked(inception, library, block)
    _assert_close(_unblocked(converted(_blocked(x, block))), expected, "blocked output")
    last = blocked.InceptionBlocked(inception, library, block)
    last.channels_first_output = True  # before its first call: graph mode compiles a cell once
    _assert_close(last(_blocked(x, block)).asnumpy(), expected, "NCHW output")


def test_channels_the_layout_cannot_hold_are_refused(library, block):
    inception = Inception(64, block + 4, 24, 32, 8, 16, 16)
    inception.set_train(False)
    fold_batchnorm(inception)
    with pytest.raises(ValueError, match=f"{block + 4} output channels: the blocked layout needs a multiple of"):
        blocked.InceptionBlocked(inception, library, block)


def _inference_model(channels_last_on: bool, checkpoint: Path, include_top: bool = True):
    """eval.py's network: the CPU config's (all kernels), or folded on MindSpore's operators alone."""
    off = [] if channels_last_on else ["--channels_last=False", "--compiled_conv=False", "--compiled_max_pool=False"]
    config = load_config([f"--config_path={CPU_CONFIG}", "--image_height=32", "--image_width=32", *off])
    net = create_inference_model(config, str(checkpoint))
    net.include_top = include_top
    return net


def test_the_network_equals_the_folded_network(library, monkeypatch, tmp_path, caplog):
    """As eval.py builds it on CPU: every convolution and max pool converted, the same logits and
    feature map as the folded NCHW network on MindSpore's operators."""
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(library.parent))
    build.kernel_library.cache_clear()
    source = kernel_model(10)
    _trained_statistics(source, seed=11)
    checkpoint = tmp_path / "net.ckpt"
    ms.save_checkpoint(source, str(checkpoint))
    with caplog.at_level("INFO", logger="googlenet"):
        converted = _inference_model(True, checkpoint)
    build.kernel_library.cache_clear()
    assert "inference: convolutions, max pools and Inceptions on oneDNN (blocked layout)" in caplog.text
    cells = [cell for _, cell in converted.cells_and_names()]
    assert sum(isinstance(cell, blocked.ConvBiasReLUBlocked) for cell in cells) == 3
    assert sum(isinstance(cell, blocked.InceptionBlocked) for cell in cells) == 9
    assert sum(isinstance(cell, blocked.MaxPoolBlocked) for cell in cells) == 4
    assert not any(isinstance(cell, (nn.MaxPool2d, CompiledMaxPool2d, Inception)) for cell in cells)
    names = [name for name, _ in converted.parameters_and_names()]
    assert [param.name for param in converted.get_parameters()] == names and "block4e.b2.1.weight" in names

    reference = _inference_model(False, checkpoint)
    x = ms.Tensor(np.random.default_rng(12).standard_normal((4, 3, 32, 32)).astype(np.float32))
    _assert_close(converted(x).asnumpy(), reference(x).asnumpy(), "logits", tolerance=1e-4)
    converted.include_top = reference.include_top = False
    _assert_close(converted(x).asnumpy(), reference(x).asnumpy(), "feature map (NCHW)", tolerance=1e-4)


def test_weights_loaded_later_are_used(library):
    """Filters are reordered once into oneDNN's layout and kept: weights loaded into a converted network
    that has run must be reordered again. Network A, after a call, takes B's weights and gives B's logits."""
    ms.set_context(mode=ms.GRAPH_MODE)
    networks = []
    for seed in (13, 14):
        ms.set_seed(seed)
        net = kernel_model(10)
        _trained_statistics(net, seed=seed)
        net.set_train(False)
        networks.append(blocked.to_blocked_layout(fold_batchnorm(net), library))
    target, source = networks
    x = ms.Tensor(np.random.default_rng(15).standard_normal((2, 3, 32, 32)).astype(np.float32))
    expected = source(x).asnumpy()
    assert np.abs(target(x).asnumpy() - expected).max() > 1e-2 * np.abs(expected).max()
    for name, param in target.parameters_and_names():
        if name.endswith(("weight", "bias")):
            ops.Assign()(param, dict(source.parameters_and_names())[name].value())  # in place
    _assert_close(target(x).asnumpy(), expected, "logits after an in-place load", tolerance=1e-5)


def test_without_onednn_headers_the_network_stays_nchw(monkeypatch, caplog, tmp_path):
    """No headers (onednn-devel not installed; simulated by pointing the install prefix elsewhere):
    one warning, and the NCHW kernel forms for training and the folded NCHW network for inference."""
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(tmp_path / "cache"))
    real_get_path = build.sysconfig.get_path
    monkeypatch.setattr(build.sysconfig, "get_path",
                        lambda name, *args, **kwargs: str(tmp_path) if name == "data" else real_get_path(name))
    build.kernel_library.cache_clear()
    config = load_config([f"--config_path={CPU_CONFIG}"])
    try:
        with caplog.at_level("WARNING", logger="googlenet"):
            trained = accelerate(kernel_model(10), config)
            folded = fold_for_inference(kernel_model(10), config)
    finally:
        build.kernel_library.cache_clear()
    assert isinstance(trained.conv2, KernelConv2dBlock) and isinstance(trained.maxpool1, CompiledMaxPool2d)
    assert isinstance(folded.conv2, ConvBiasReLU) and folded.conv2.fused is not None
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [f"cannot build the dnnl kernel (no oneDNN headers in {tmp_path / 'include'}: pip install "
                        f"onednn-devel==2025.3.0): it uses {build.FALLBACKS['dnnl']}"]
