"""The compiled CPU convolution kernel (src/cpu_kernels/kernels/conv.cc) against MindSpore's own Conv2D."""

from __future__ import annotations

import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import nn, ops

from src.checkpoint import load_weights
from src.cpu_kernels import accelerate, build, conv
from src.cpu_kernels.blocks import substitute_kernels
from src.errors import UserError
from src.googlenet import Conv2dBlock, create_model
from src.model_utils.config import load_config
from src.models import create_model_from_config
from src.trainer import create_train_model
from tests.conftest import (
    CPU_CONFIG,
    REPO,
    SMALL_CIFAR,
    assert_user_error,
    build_kernel,
    create_with_compiler,
    kernel_model,
    run_script,
    script_env,
)
from tests.gradients import Gradients

EVERY_PLANE = 10**9  # max_kernel_plane that puts every input through the kernel


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("conv", tmp_path_factory.mktemp("kernel_cache"))


def _pair(in_channels: int, out_channels: int, kernel: int, library, max_kernel_plane: int = EVERY_PLANE):
    """nn.Conv2d and a CompiledConv2d holding the same weights."""
    stock = nn.Conv2d(in_channels, out_channels, kernel, pad_mode="same", has_bias=False)
    compiled = conv.CompiledConv2d(in_channels, out_channels, kernel, library, max_kernel_plane=max_kernel_plane)
    compiled.weight.set_data(stock.weight.data.copy())
    return stock, compiled


def _assert_close(got: np.ndarray, expected: np.ndarray, what: str) -> None:
    # Sums of up to C*K*K float32 products in another order: relative to the largest value.
    assert got.shape == expected.shape, what
    scale = float(np.abs(expected).max()) or 1.0
    error = float(np.abs(got - expected).max()) / scale
    assert error < 2e-5, (what, error)


# (batch, in, out, kernel, height, width): 1x1 and 3x3 and 5x5 kernels; planes the kernel window
# covers whole from every output (1x1, 2x2 and 2x1 for 3x3, 3x3 for 5x5: the dense path), 2x2 and 4x4
# (GoogleNet at 32x32), odd and non-square ones; channel counts that do not fill the kernel's register
# tiles; a batch the GEMM takes a few images at a time (im2col bounded), and one single large image.
SHAPES = [
    (32, 48, 40, 3, 1, 1), (5, 7, 9, 1, 1, 1), (32, 64, 96, 1, 2, 2), (32, 20, 36, 3, 2, 2),
    (3, 12, 6, 3, 2, 1), (4, 10, 14, 5, 3, 3), (8, 24, 40, 3, 4, 4), (3, 5, 13, 5, 9, 9),
    (2, 6, 11, 3, 5, 7), (2, 3, 4, 3, 1, 6), (5, 64, 70, 3, 32, 32), (1, 16, 8, 1, 70, 70),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_values_and_gradients_equal_mindspores_conv(library, shape):
    ms.set_context(mode=ms.GRAPH_MODE)
    batch, in_channels, out_channels, kernel, height, width = shape
    stock, compiled = _pair(in_channels, out_channels, kernel, library)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((batch, in_channels, height, width)).astype(np.float32))
    dy = ms.Tensor(rng.standard_normal((batch, out_channels, height, width)).astype(np.float32))
    _assert_close(compiled(x).asnumpy(), stock(x).asnumpy(), "output")
    (dx_compiled,), (dw_compiled,) = Gradients(compiled)(x, dy)
    (dx_stock,), (dw_stock,) = Gradients(stock)(x, dy)
    _assert_close(dx_compiled.asnumpy(), dx_stock.asnumpy(), "input gradient")
    _assert_close(dw_compiled.asnumpy(), dw_stock.asnumpy(), "filter gradient")


def test_pynative_mode_too(library):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        stock, compiled = _pair(6, 10, 3, library)
        x = ms.Tensor(np.random.default_rng(2).standard_normal((4, 6, 3, 3)).astype(np.float32))
        _assert_close(compiled(x).asnumpy(), stock(x).asnumpy(), "output")
        (dx_compiled,), (dw_compiled,) = Gradients(compiled)(x, ops.ones_like(stock(x)))
        (dx_stock,), (dw_stock,) = Gradients(stock)(x, ops.ones_like(stock(x)))
        _assert_close(dx_compiled.asnumpy(), dx_stock.asnumpy(), "input gradient")
        _assert_close(dw_compiled.asnumpy(), dw_stock.asnumpy(), "filter gradient")
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_planes_above_the_limit_run_mindspores_conv(library):
    """Above max_kernel_plane the cell is MindSpore's Conv2D itself: bit-identical output."""
    ms.set_context(mode=ms.GRAPH_MODE)
    stock, compiled = _pair(8, 12, 3, library, max_kernel_plane=16)
    x = ms.Tensor(np.random.default_rng(3).standard_normal((2, 8, 5, 5)).astype(np.float32))
    np.testing.assert_array_equal(compiled(x).asnumpy(), stock(x).asnumpy())
    small = ms.Tensor(np.random.default_rng(3).standard_normal((2, 8, 4, 4)).astype(np.float32))
    _assert_close(compiled(small).asnumpy(), stock(small).asnumpy(), "output at the limit")


def test_one_kernel_thread_gives_the_same_values(library, tmp_path):
    """GOOGLENET_KERNEL_THREADS=1: no worker threads at all (a fresh process reads it once)."""
    program = (
        "import sys; import numpy as np, mindspore as ms; from mindspore import nn\n"
        "from src.cpu_kernels.conv import CompiledConv2d\n"
        "from pathlib import Path\n"
        "stock = nn.Conv2d(32, 64, 3, pad_mode='same', has_bias=False)\n"
        "compiled = CompiledConv2d(32, 64, 3, Path(sys.argv[1]), max_kernel_plane=10**9)\n"
        "compiled.weight.set_data(stock.weight.data.copy())\n"
        "x = ms.Tensor(np.random.default_rng(0).standard_normal((16, 32, 6, 6)).astype(np.float32))\n"
        "a, b = compiled(x).asnumpy(), stock(x).asnumpy()\n"
        "print('error', float(np.abs(a - b).max() / np.abs(b).max()))\n"
    )
    result = subprocess.run([sys.executable, "-c", program, str(library)], cwd=REPO, capture_output=True,
                            text=True, timeout=300, env=script_env(GOOGLENET_KERNEL_THREADS="1"))
    assert result.returncode == 0, result.stderr[-2000:]
    error = float(result.stdout.split("error")[-1])
    assert error < 2e-5


def test_a_training_step_of_the_network_matches(kernel_cache):
    """32x32 input (planes 2x2 and 1x1 through the kernel, 4x4 at the limit; BatchNorm and ReLU on the
    kernel too): same loss, the same parameter updates and moving statistics as with MindSpore's
    convolutions and BatchNorm, up to float32 rounding."""
    ms.set_context(mode=ms.GRAPH_MODE)
    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=8", "--dropout_rate=0"])
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((8, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.arange(8, dtype=np.int32) % 10)
    results = []
    for compiled in (False, True):
        ms.set_seed(1)
        net = kernel_model(10, dropout_rate=0.0, conv=compiled)
        assert isinstance(net.block5b.b2[1].conv, conv.CompiledConv2d) == compiled
        before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
        step = create_train_model(config, net, np.full(10, 0.1, np.float32))._train_network
        step.set_train(True)
        loss = float(step(images, labels).asnumpy())
        updates = {p.name: p.asnumpy() - before[p.name] for p in net.trainable_params()}
        # the moving statistics, which the BatchNorm kernel updates in place
        updates.update({p.name: p.asnumpy() for p in net.get_parameters() if ".moving_" in p.name})
        results.append((loss, updates))
    (loss_stock, updates_stock), (loss_compiled, updates_compiled) = results
    assert loss_compiled == pytest.approx(loss_stock, rel=1e-5)
    assert updates_compiled.keys() == updates_stock.keys() and len(updates_stock) == 57 * 5 + 2
    for name, update in updates_stock.items():
        difference = np.linalg.norm(updates_compiled[name] - update)
        assert difference <= 1e-3 * np.linalg.norm(update), (name, difference, np.linalg.norm(update))


def test_checkpoints_move_between_the_two(kernel_cache, tmp_path):
    """Same parameter names and shapes: a checkpoint of one network loads into the other."""
    stock = kernel_model(10, conv=False)
    compiled = kernel_model(10, conv=True)
    assert [(p.name, p.shape) for p in stock.get_parameters()] == [(p.name, p.shape) for p in compiled.get_parameters()]
    path = tmp_path / "stock.ckpt"
    ms.save_checkpoint(stock, str(path))
    load_weights(compiled, path)
    for a, b in zip(stock.get_parameters(), compiled.get_parameters(), strict=True):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())


def _substituted(*shapes: tuple[int, int]) -> list[nn.Cell]:
    """A convolution block (4 to 8 channels) for each (kernel, stride), put through the CPU layer's
    substitution with the convolution kernel asked for: the convolution cell each block ends with."""
    blocks = nn.SequentialCell([Conv2dBlock(4, 8, kernel, stride) for kernel, stride in shapes])
    substitute_kernels(blocks, max_pool=False, conv=True)
    return [block.conv for block in blocks]


def test_which_convolutions_use_it(kernel_cache):
    """Odd kernels with stride 1, and with stride 2 (where only the folded inference form runs the
    kernel: the cell itself is MindSpore's Conv2D, bit for bit); even kernels and stride 3 never."""
    ms.set_context(mode=ms.GRAPH_MODE)
    shapes = [(3, 1), (1, 1), (7, 2), (3, 2)]
    for (kernel, stride), cell in zip(shapes, _substituted(*shapes), strict=True):
        assert isinstance(cell, conv.CompiledConv2d) and cell.kernel_stride == stride, (kernel, stride)
    shapes = [(2, 1), (4, 2), (3, 3)]
    for shape, cell in zip(shapes, _substituted(*shapes), strict=True):
        assert type(cell) is nn.Conv2d, shape
    strided = _substituted((7, 2))[0]
    stock = nn.Conv2d(4, 8, 7, stride=2, pad_mode="same", has_bias=False)
    stock.weight.set_data(strided.weight.data.copy())
    x = ms.Tensor(np.random.default_rng(5).standard_normal((2, 4, 4, 4)).astype(np.float32))  # a small plane
    np.testing.assert_array_equal(strided(x).asnumpy(), stock(x).asnumpy())


def test_the_entry_scripts_network_uses_it_and_logs_it(kernel_cache, caplog):
    with caplog.at_level("INFO", logger="googlenet"):
        net = create_model_from_config(load_config([f"--config_path={CPU_CONFIG}", "--channels_last=False"]))
    assert isinstance(net.conv2.conv, conv.CompiledConv2d)
    assert net.conv1.conv.kernel_stride == 2 and net.conv1.conv.max_kernel_plane == 0  # MindSpore's Conv2D
    assert f"stride-1 convolutions: compiled CPU kernel {kernel_cache}" in caplog.text


def test_falls_back_to_mindspores_operators_without_a_compiler(monkeypatch, caplog, tmp_path):
    """No compiler: the CPU layer leaves the network as built (one warning per kernel asked for) and
    trains and infers with MindSpore's operators, the same results as a network it was never applied to."""
    ms.set_context(mode=ms.GRAPH_MODE)
    config = load_config([f"--config_path={CPU_CONFIG}", "--num_classes=4"])
    ms.set_seed(3)
    plain = create_model(4)
    ms.set_seed(3)
    net = create_with_compiler(lambda: accelerate(create_model(4), config), str(tmp_path / "no-such-compiler"),
                               tmp_path / "cache", monkeypatch, caplog)
    assert [type(cell) for _, cell in net.cells_and_names()] == [type(cell) for _, cell in plain.cells_and_names()]
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert sorted(warnings) == [f"no C++ compiler (g++ or $CXX) found: {name} uses {fallback}" for name, fallback in
                                [("conv", "MindSpore's own CPU kernels"), ("dnnl", build.FALLBACKS["dnnl"]),
                                 ("max_pool", "MindSpore's own CPU kernels")]]
    assert not (tmp_path / "cache").exists()
    x = ms.Tensor(np.random.default_rng(6).standard_normal((2, 3, 32, 32)).astype(np.float32))
    net.set_train(False)
    plain.set_train(False)
    np.testing.assert_array_equal(net(x).asnumpy(), plain(x).asnumpy())


@pytest.mark.parametrize("value", ["two", "0", "-1", "1.5"])
def test_a_bad_thread_count_is_a_user_error(kernel_cache, monkeypatch, value):
    monkeypatch.setenv("GOOGLENET_KERNEL_THREADS", value)
    with pytest.raises(UserError, match=f"GOOGLENET_KERNEL_THREADS='{value}': expected a positive integer"):
        _substituted((3, 1))
    monkeypatch.setenv("GOOGLENET_KERNEL_THREADS", "3")
    assert isinstance(_substituted((3, 1))[0], conv.CompiledConv2d)


def test_eval_py_reports_a_bad_thread_count_in_one_line(library, cifar_dir, trained_cifar, tmp_path):
    result = run_script("eval.py", *SMALL_CIFAR, f"--val_data_path={cifar_dir}",
                        f"--checkpoint_path={trained_cifar.checkpoint}", cwd=tmp_path, timeout=600,
                        env=script_env(GOOGLENET_KERNEL_THREADS="many", GOOGLENET_KERNEL_CACHE=str(library.parent)))
    assert_user_error(result, 1, "GOOGLENET_KERNEL_THREADS='many'", "positive integer")


@pytest.mark.parametrize("overrides, wanted", [
    ([], True),
    (["--compiled_conv=False"], False),
    (["--amp_level=O2"], False),
    (["--device_target=GPU"], False),
])
def test_where_the_compiled_kernel_applies(overrides, wanted):
    config = load_config([f"--config_path={CPU_CONFIG}", *overrides])
    assert conv.compiled_conv_wanted(config) is wanted
