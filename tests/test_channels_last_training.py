"""Channels-last training on oneDNN (src/cpu_kernels/channels_last.py, ``to_channels_last_training``;
src/cpu_kernels/kernels/dnnl.cc): each converted cell computes what the plain MindSpore cell computes,
forward and backward, with the moving statistics updated as MindSpore updates them; and a training
step of the whole network equals the plain network's."""

from __future__ import annotations

import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.cpu_kernels import accelerate, channels_last
from src.cpu_kernels.blocks import KernelConv2dBlock
from src.googlenet import Conv2dBlock, create_model
from src.model_utils import device_adapter
from src.model_utils.config import load_config
from tests.conftest import CPU_CONFIG, REPO, build_kernel, script_env
from tests.test_batch_norm import _ReadAround
from tests.test_fold_batchnorm import _assert_close, _trained_statistics


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("dnnl", tmp_path_factory.mktemp("kernel_cache"))


def _nhwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


class _Probe(nn.Cell):
    """sum(cell(x) * probe): its gradients are those of cell's output against ``probe``."""

    def __init__(self, cell: nn.Cell, probe: np.ndarray) -> None:
        super().__init__()
        self.cell = cell
        self.probe = ms.Tensor(probe)

    def construct(self, x):
        return (self.cell(x) * self.probe).sum()


def _output_and_gradients(cell: nn.Cell, x: np.ndarray, probe: np.ndarray):
    """cell(x), and the gradients of sum(cell(x) * probe) for x and for cell's trainable parameters
    (by name). The cell runs twice (the output, then the gradients): its moving statistics move twice."""
    output = cell(ms.Tensor(x)).asnumpy()
    params = cell.trainable_params()
    grad = ops.GradOperation(get_all=True, get_by_list=True)(_Probe(cell, probe), ms.ParameterTuple(params))
    (dx,), dparams = grad(ms.Tensor(x))
    return output, dx.asnumpy(), {param.name.split(".")[-1]: g.asnumpy()
                                  for param, g in zip(params, dparams, strict=True)}


# (batch, in, out, kernel, height, width, stride): 1x1 and 3x3 kernels on planes from 1x1 up, conv1's
# 7x7 stride 2 (uneven 'same' padding on odd sizes), a 1x1 stride-2 kernel
TRAIN_SHAPES = [(4, 16, 24, 1, 7, 7, 1), (2, 12, 20, 3, 14, 14, 1), (8, 32, 40, 3, 1, 1, 1), (3, 8, 12, 3, 2, 2, 1),
                (2, 3, 16, 7, 15, 13, 2), (2, 4, 6, 1, 6, 7, 2)]


@pytest.mark.parametrize("shape", TRAIN_SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("first", [False, True], ids=["nhwc-input", "nchw-input"])
def test_a_training_block_equals_mindspores(library, shape, first):
    """Batch statistics: output, gradients for x (none for an NCHW input, an image: zeros), the filter,
    gamma and beta, and the moving statistics after the calls, against Conv2dBlock on MindSpore's operators."""
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, height, width, stride = shape
    plain = Conv2dBlock(in_channels, out_channels, kernel, stride)
    _trained_statistics(plain, seed=sum(shape))
    twin = _copy(plain, twin=Conv2dBlock(in_channels, out_channels, kernel, stride))
    converted = channels_last.ConvBatchNormReLUNhwc(twin, library, channels_first_input=first)
    for cell in (plain, converted):
        cell.set_train(True)
    rng = np.random.default_rng(sum(shape) + 1)
    x = rng.standard_normal((batch, in_channels, height, width)).astype(np.float32)
    out_shape = (batch, out_channels, -(-height // stride), -(-width // stride))
    probe = rng.standard_normal(out_shape).astype(np.float32)

    y, dx, grads = _output_and_gradients(plain, x, probe)
    got_y, got_dx, got_grads = _output_and_gradients(converted, x if first else _nhwc(x), _nhwc(probe))
    _assert_close(got_y, _nhwc(y), "output", tolerance=1e-5)
    if first:
        np.testing.assert_array_equal(got_dx, np.zeros_like(x))
    else:
        _assert_close(got_dx, _nhwc(dx), "input gradient", tolerance=1e-4)
    assert sorted(got_grads) == sorted(grads) == ["beta", "gamma", "weight"]
    for name, expected in grads.items():
        _assert_close(got_grads[name], expected, name, tolerance=1e-4)
    for name in ("moving_mean", "moving_variance"):
        _assert_close(getattr(twin.bn, name).asnumpy(), getattr(plain.bn, name).asnumpy(), name, tolerance=1e-5)


@pytest.mark.parametrize("training, use_batch_statistics", [(False, None), (True, False)],
                         ids=["evaluation", "frozen-batchnorm"])
def test_a_block_on_moving_statistics_equals_mindspores(library, training, use_batch_statistics):
    """Moving statistics (evaluation; a frozen backbone trains with them): output and gradients as
    MindSpore's, the statistics left alone."""
    ms.set_context(mode=ms.GRAPH_MODE)
    plain = Conv2dBlock(6, 10, 3)
    _trained_statistics(plain, seed=5)
    twin = _copy(plain, twin=Conv2dBlock(6, 10, 3))
    converted = channels_last.ConvBatchNormReLUNhwc(twin, library)
    for cell in (plain, converted):
        cell.bn.use_batch_statistics = use_batch_statistics
        cell.set_train(training)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 6, 5, 5)).astype(np.float32)
    probe = rng.standard_normal((3, 10, 5, 5)).astype(np.float32)
    statistics = twin.bn.moving_mean.asnumpy().copy()
    y, dx, grads = _output_and_gradients(plain, x, probe)
    got_y, got_dx, got_grads = _output_and_gradients(converted, _nhwc(x), _nhwc(probe))
    _assert_close(got_y, _nhwc(y), "output", tolerance=1e-5)
    _assert_close(got_dx, _nhwc(dx), "input gradient", tolerance=1e-5)
    for name, expected in grads.items():
        _assert_close(got_grads[name], expected, name, tolerance=1e-5)
    np.testing.assert_array_equal(twin.bn.moving_mean.asnumpy(), statistics)


@pytest.mark.parametrize("kernel, stride", [(3, 1), (3, 2), (2, 2)])
@pytest.mark.parametrize("size", [(1, 1), (7, 7), (14, 13)], ids=lambda s: "x".join(map(str, s)))
def test_a_training_max_pool_equals_mindspores(library, kernel, stride, size):
    """Values bit for bit; the gradient reaches the same inputs (distinct values: no ties), overlapping
    windows' contributions summed (float32 order aside)."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(7)
    x = (rng.permutation(3 * 10 * size[0] * size[1]).reshape(3, 10, *size) / 100 - 1).astype(np.float32)
    plain = nn.MaxPool2d(kernel, stride, pad_mode="same")
    y = plain(ms.Tensor(x)).asnumpy()
    probe = rng.standard_normal(y.shape).astype(np.float32)
    dx = ops.GradOperation()(_Probe(plain, probe))(ms.Tensor(x)).asnumpy()
    converted = channels_last.MaxPoolNhwcTrain(kernel, stride, library)
    got_y = converted(ms.Tensor(_nhwc(x))).asnumpy()
    got_dx = ops.GradOperation()(_Probe(converted, _nhwc(probe)))(ms.Tensor(_nhwc(x))).asnumpy()
    np.testing.assert_array_equal(got_y, _nhwc(y))
    _assert_close(got_dx, _nhwc(dx), "input gradient", tolerance=1e-6)


def test_the_graph_orders_reads_around_the_statistics_update(library):
    """The training kernel writes the moving statistics in place, declared to MindSpore: a read
    written before the call sees the old values, one after it the new ones."""
    ms.set_context(mode=ms.GRAPH_MODE)
    cell = channels_last.ConvBatchNormReLUNhwc(Conv2dBlock(6, 8, 3), library)
    cell.set_train(True)
    x = ms.Tensor((np.random.default_rng(4).standard_normal((4, 2, 2, 6)) + 3).astype(np.float32))
    start = cell.bn.moving_mean.asnumpy().copy()
    before, _, after = _ReadAround(cell, cell.bn)(x)
    np.testing.assert_array_equal(before.asnumpy(), start)
    assert not np.allclose(after.asnumpy(), start)
    np.testing.assert_array_equal(cell.bn.moving_mean.asnumpy(), after.asnumpy())


def _copy(net: nn.Cell, twin: nn.Cell) -> nn.Cell:
    """``twin`` (the same architecture) with copies of ``net``'s parameter values."""
    ms.load_param_into_net(twin, {p.name: ms.Parameter(p.data.copy(), name=p.name) for p in net.get_parameters()})
    return twin


def _train_step(net: nn.Cell, x: ms.Tensor, labels: ms.Tensor):
    """One training step's loss and gradients (by parameter name), and the moving statistics after it."""
    net.set_train(True)
    loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    params = ms.ParameterTuple(net.trainable_params())
    gradients = ops.GradOperation(get_by_list=True)(loss, params)(x, labels)
    statistics = {p.name: p.asnumpy() for p in net.get_parameters() if "moving_" in p.name}
    named = {p.name: g.asnumpy() for p, g in zip(params, gradients, strict=True)}
    return loss(x, labels).asnumpy(), named, statistics


def test_a_training_step_of_the_network_equals_mindspores(library, monkeypatch, caplog):
    """As train.py builds it on CPU (accelerate with the CPU config): every block and max pool converted,
    parameters under their names; a step's loss, gradients and moving statistics, and the evaluation
    logits after it, as the plain network's on MindSpore's operators."""
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(library.parent))
    from src.cpu_kernels import build

    build.kernel_library.cache_clear()
    ms.set_seed(20)  # one initialisation, the same in every run
    plain = create_model(10)
    _trained_statistics(plain, seed=21)
    twin = _copy(plain, twin=create_model(10))
    try:
        with caplog.at_level("INFO", logger="googlenet"):
            converted = accelerate(twin, load_config([f"--config_path={CPU_CONFIG}"]))
    finally:
        build.kernel_library.cache_clear()
    assert "convolution blocks and max pools: channels-last on oneDNN" in caplog.text
    cells = [cell for _, cell in converted.cells_and_names()]
    assert sum(isinstance(cell, channels_last.ConvBatchNormReLUNhwc) for cell in cells) == 57
    assert sum(isinstance(cell, channels_last.MaxPoolNhwcTrain) for cell in cells) == 13
    assert [p.name for p in converted.get_parameters()] == [p.name for p in plain.get_parameters()]

    rng = np.random.default_rng(22)
    x = rng.standard_normal((6, 3, 32, 32)).astype(np.float32)
    labels = ms.Tensor(rng.integers(0, 10, 6).astype(np.int32))
    loss, gradients, statistics = _train_step(plain, ms.Tensor(x), labels)
    got_loss, got_gradients, got_statistics = _train_step(converted, ms.Tensor(x), labels)
    # Per parameter, the relative L2 difference of the gradients. Both paths round differently in float32,
    # and through 57 BatchNorms on a batch of 6 that reaches ~1e-4; a real error (a wrong term, a stale
    # buffer) moves them by far more. A max-pool tie or ReLU edge switched by rounding would too: with
    # this initialisation, moving the plain network's input by 2^-22 of itself moves its gradients by
    # a median 4% (the converted network stays within 1e-4), so the seed is fixed.
    relative = {name: float(np.linalg.norm(got_gradients[name] - expected) / np.linalg.norm(expected))
                for name, expected in gradients.items()}
    np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
    assert sorted(got_gradients) == sorted(gradients) and len(gradients) == 57 * 3 + 2
    assert np.median(list(relative.values())) < 1e-3, sorted(relative.items(), key=lambda item: -item[1])[:5]
    assert max(relative.values()) < 1e-2, sorted(relative.items(), key=lambda item: -item[1])[:5]
    for name, expected in statistics.items():
        _assert_close(got_statistics[name], expected, name, tolerance=1e-4)
    for net in (plain, converted):
        net.set_train(False)
    _assert_close(converted(ms.Tensor(x)).asnumpy(), plain(ms.Tensor(x)).asnumpy(), "evaluation logits", tolerance=1e-4)


def test_channels_last_off_keeps_the_nchw_kernels(library):
    """``--channels_last=False``: the NCHW kernel forms (src/cpu_kernels/blocks.py), as before."""
    config = load_config([f"--config_path={CPU_CONFIG}", "--channels_last=False"])
    net = accelerate(create_model(10), config)
    assert isinstance(net.conv2, KernelConv2dBlock)
    assert not any(isinstance(cell, channels_last.ConvBatchNormReLUNhwc) for _, cell in net.cells_and_names())


def test_input_gradients_as_the_readme_says(library, monkeypatch):
    """README: the channels-last network gives zeros as its input image's gradient (conv1 skips it);
    with ``--channels_last=False`` the input gradient is the plain network's. Evaluation mode, where a
    saliency map would be taken."""
    ms.set_context(mode=ms.GRAPH_MODE)
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(library.parent))
    from src.cpu_kernels import build

    ms.set_seed(23)
    plain = create_model(10)
    _trained_statistics(plain, seed=24)
    plain.set_train(False)
    rng = np.random.default_rng(25)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    probe = rng.standard_normal((2, 10)).astype(np.float32)
    _, expected, _ = _output_and_gradients(plain, x, probe)
    assert np.abs(expected).max() > 0
    for channels_last_on in (False, True):
        build.kernel_library.cache_clear()
        try:
            net = accelerate(_copy(plain, twin=create_model(10)),
                             load_config([f"--config_path={CPU_CONFIG}", f"--channels_last={channels_last_on}"]))
        finally:
            build.kernel_library.cache_clear()
        net.set_train(False)
        _, dx, _ = _output_and_gradients(net, x, probe)
        if channels_last_on:
            np.testing.assert_array_equal(dx, np.zeros_like(x))
        else:
            _assert_close(dx, expected, "input gradient, channels_last off", tolerance=1e-4)


def test_the_isa_cap_is_lifted_where_every_convolution_is_ours(library, monkeypatch, caplog):
    """The AVX2 cap exists for MindSpore's NCHW convolutions. A channels-last network runs none: the
    cap the scripts set is taken back, with a log line; with channels-last off it stays, and a cap
    the user set always stays."""
    monkeypatch.setenv("GOOGLENET_KERNEL_CACHE", str(library.parent))
    from src.cpu_kernels import build

    monkeypatch.setenv(device_adapter.ONEDNN_ISA_VARIABLE, "")  # the variable as it was is restored afterwards
    for user_cap, channels_last_on, lifted in [(None, False, False), (None, True, True), ("AVX2", True, False)]:
        if user_cap is None:
            monkeypatch.delenv(device_adapter.ONEDNN_ISA_VARIABLE, raising=False)
        else:
            monkeypatch.setenv(device_adapter.ONEDNN_ISA_VARIABLE, user_cap)
        monkeypatch.setitem(device_adapter._cap, "set_here", False)
        device_adapter.cap_cpu_kernels()
        config = load_config([f"--config_path={CPU_CONFIG}", f"--channels_last={channels_last_on}"])
        build.kernel_library.cache_clear()
        caplog.clear()
        try:
            with caplog.at_level("INFO", logger="googlenet"):
                accelerate(create_model(10), config)
        finally:
            build.kernel_library.cache_clear()
        assert (device_adapter.ONEDNN_ISA_VARIABLE not in os.environ) == lifted, (user_cap, channels_last_on)
        assert ("ONEDNN_MAX_CPU_ISA lifted" in caplog.text) == lifted


# what a primitive run under ONEDNN_VERBOSE reports: "onednn_verbose,...,exec,cpu,convolution,<impl>,..."
_VERBOSE_RUN = """
import sys
sys.path.insert(0, {repo!r})
import mindspore as ms
import numpy as np
from mindspore import nn, ops
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device
from src.models import create_model_from_config

config = load_config(["--config_path={config}", "--num_classes=2"])
configure_device(config)
net = create_model_from_config(config)
net.set_train(True)
loss = nn.WithLossCell(net, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
gradient = ops.GradOperation(get_by_list=True)(loss, ms.ParameterTuple(net.trainable_params()))
gradient(ms.Tensor(np.ones((2, 3, 32, 32), np.float32)), ms.Tensor(np.array([0, 1], np.int32)))
"""


def test_with_the_cap_lifted_onednn_uses_the_cpus_instruction_set(library):
    """train.py's process (configure_device, then the network's forward and backward pass) on oneDNN's
    verbose log: no convolution primitive it runs, forward, backward-data or backward-weights, is a
    reference kernel, and every one that names its instruction set names the CPU's widest, AVX-512
    where it has it (the cap lifted), else AVX2 (with AVX2, some backward-weights run oneDNN's
    GEMM-based kernel, "gemm:jit", which names none); so does every forward one."""
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
        flags = next((line for line in cpuinfo if line.startswith("flags")), "").split()
    if "avx2" not in flags:
        pytest.skip("this CPU has no AVX2")
    widest = "avx512" if "avx512f" in flags else "avx2"
    code = _VERBOSE_RUN.format(repo=str(REPO), config=CPU_CONFIG)
    env = script_env(ONEDNN_VERBOSE="1", GOOGLENET_KERNEL_CACHE=str(library.parent))
    env.pop(device_adapter.ONEDNN_ISA_VARIABLE, None)  # the scripts set the cap themselves, as for a user
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    executed = [fields[fields.index("convolution") + 1:fields.index("convolution") + 3] for fields in
                (line.split(",") for line in result.stdout.splitlines() if line.startswith("onednn_verbose"))
                if "exec" in fields and "convolution" in fields]
    passes = [direction for _, direction in executed]
    # 57 forward, 57 backward-weights, 56 backward-data (none for conv1's image)
    assert [passes.count(d) for d in ("forward_training", "backward_weights", "backward_data")] == [57, 57, 56], \
        sorted(set(passes))
    implementations = sorted({name for name, _ in executed})
    assert not any("ref" in name for name in implementations), implementations
    assert all(widest in name for name in implementations if "avx" in name or "sse" in name), implementations
    assert all(widest in name for name, direction in executed if direction == "forward_training"), implementations
