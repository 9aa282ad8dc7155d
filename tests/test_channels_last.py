"""Channels-last inference on oneDNN (src/cpu_kernels/channels_last.py, src/cpu_kernels/kernels/dnnl.cc):
MindSpore's own oneDNN is the one called, and the converted cells and network compute what the folded
NCHW ones compute."""

from __future__ import annotations

import ctypes
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.cpu_kernels import accelerate, build, channels_last, fold_batchnorm, fold_for_inference
from src.cpu_kernels.blocks import KernelConv2dBlock, folded_block
from src.cpu_kernels.conv import ConvBiasReLU
from src.cpu_kernels.max_pool import CompiledMaxPool2d
from src.googlenet import Conv2dBlock
from src.model_utils.config import load_config
from src.models import create_inference_model
from tests.conftest import CPU_CONFIG, build_kernel, kernel_model
from tests.test_fold_batchnorm import _assert_close, _trained_statistics

MINDSPORE_ONEDNN = Path(ms.__file__).resolve().parent / "lib" / "libdnnl.so.3"


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("dnnl", tmp_path_factory.mktemp("kernel_cache"))


def _nhwc(x: np.ndarray) -> ms.Tensor:
    return ms.Tensor(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


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


# (batch, in, out, kernel, height, width, stride): 1x1 and 3x3 kernels on planes from 1x1 up, conv1's
# 7x7 stride 2, odd sizes (uneven 'same' padding), a 5x5 kernel
CONV_SHAPES = [(4, 16, 24, 1, 7, 7, 1), (2, 12, 20, 3, 14, 14, 1), (32, 48, 40, 3, 1, 1, 1), (3, 8, 12, 3, 2, 2, 1),
               (2, 3, 64, 7, 32, 32, 2), (2, 5, 8, 3, 15, 13, 2), (2, 4, 6, 5, 9, 10, 1), (2, 4, 6, 1, 6, 7, 2)]


@pytest.mark.parametrize("shape", CONV_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_a_convolution_computes_the_folded_block(library, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, height, width, stride = shape
    block = Conv2dBlock(in_channels, out_channels, kernel, stride)
    _trained_statistics(block, seed=sum(shape))
    block.set_train(False)
    folded = folded_block(block)
    converted = channels_last.ConvBiasReLUNhwc(folded, library)
    x = np.random.default_rng(1).standard_normal((batch, in_channels, height, width)).astype(np.float32)
    expected = folded(ms.Tensor(x)).asnumpy().transpose(0, 2, 3, 1)
    for call in ("first call", "second call (the filter reordered once)"):
        _assert_close(converted(_nhwc(x)).asnumpy(), expected, call)
    nchw_input = channels_last.ConvBiasReLUNhwc(folded, library, channels_first_input=True)
    _assert_close(nchw_input(ms.Tensor(x)).asnumpy(), expected, "NCHW input")


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (2, 2)])
@pytest.mark.parametrize("size", [(1, 1), (7, 7), (14, 13)], ids=lambda s: "x".join(map(str, s)))
def test_a_max_pool_equals_mindspores(library, kernel, stride, size):
    ms.set_context(mode=ms.GRAPH_MODE)
    x = np.random.default_rng(2).standard_normal((3, 10, *size)).astype(np.float32) - 1  # negative maxima too
    expected = nn.MaxPool2d(kernel, stride, pad_mode="same")(ms.Tensor(x)).asnumpy().transpose(0, 2, 3, 1)
    got = channels_last.MaxPoolNhwc(kernel, stride, library)(_nhwc(x)).asnumpy()
    np.testing.assert_array_equal(got, expected)


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
    assert "inference: channels-last convolutions and max pools on oneDNN" in caplog.text
    cells = [cell for _, cell in converted.cells_and_names()]
    assert sum(isinstance(cell, channels_last.ConvBiasReLUNhwc) for cell in cells) == 57
    assert sum(isinstance(cell, channels_last.MaxPoolNhwc) for cell in cells) == 13
    assert not any(isinstance(cell, (ConvBiasReLU, nn.MaxPool2d)) for cell in cells)
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
        networks.append(channels_last.to_channels_last(fold_batchnorm(net), library))
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
