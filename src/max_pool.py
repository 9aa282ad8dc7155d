"""Max pooling ('same' padding) with the compiled CPU kernel of src/kernels/max_pool.cc.

MindSpore 2.10's CPU MaxPoolGrad re-runs the pooling forward and then oneDNN's plain-layout
reference backward: a third of GoogleNet's training step on CPU (docs/PERFORMANCE.md). The kernel
here computes the same forward and, alongside it, the index of each window's maximum, so that the
gradient is a scatter through those indices. The values equal ``nn.MaxPool2d``'s bit for bit and
the gradient reaches the same inputs (same first-maximum rule for ties); where overlapping windows
send one input several contributions, their float32 sum may differ in the last bits, since the
order of summation differs. No parameters: checkpoints move freely between the two.

The library is compiled with the system C++ compiler on first use, once per source version and
machine, into ``$GOOGLENET_KERNEL_CACHE`` (default ``~/.cache/googlenet_kernels``).
``create_max_pool`` falls back to ``nn.MaxPool2d`` where that is not possible (no compiler, a
device other than CPU); exported models always use ``nn.MaxPool2d``.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore import dtype as mstype

from src.logger import logger

KERNEL_SOURCE = Path(__file__).resolve().parent / "kernels" / "max_pool.cc"
KERNEL_SHAPES = {(3, 1), (3, 2), (2, 2)}  # (kernel, stride) pairs the library exports
COMPILE_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread"]


def _machine_id() -> str:
    """What a -march=native build depends on: the architecture and the CPU's feature flags."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            flags = next((line for line in cpuinfo if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    return platform.machine() + flags


@functools.cache
def kernel_library() -> Path | None:
    """Path of the compiled kernel library, building it if needed; None when it cannot be built."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        logger.warning("no C++ compiler (g++ or $CXX) found: max pooling uses MindSpore's own CPU kernels")
        return None
    source = KERNEL_SOURCE.read_bytes()
    digest = hashlib.sha256(source + " ".join([compiler, *COMPILE_FLAGS, _machine_id()]).encode()).hexdigest()[:16]
    cache = Path(os.environ.get("GOOGLENET_KERNEL_CACHE") or Path.home() / ".cache" / "googlenet_kernels")
    library = cache / f"max_pool_{digest}.so"
    if library.is_file():
        return library
    try:
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / library.name
            subprocess.run([compiler, *COMPILE_FLAGS, "-o", str(built), str(KERNEL_SOURCE)],
                           check=True, capture_output=True, text=True, timeout=300)
            os.replace(built, library)  # atomic: concurrent ranks may build at the same time
        logger.info("compiled %s into %s", KERNEL_SOURCE.name, library)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or str(err)
        last_line = detail.strip().splitlines()[-1] if detail.strip() else str(err)
        logger.warning("could not compile %s (%s): max pooling uses MindSpore's own CPU kernels",
                       KERNEL_SOURCE, last_line)
        return None
    return library


class CompiledMaxPool2d(nn.Cell):
    """``nn.MaxPool2d(kernel_size, stride, pad_mode="same")`` on the compiled CPU kernel (NCHW float32)."""

    def __init__(self, kernel_size: int, stride: int, library: Path) -> None:
        super().__init__()
        if (kernel_size, stride) not in KERNEL_SHAPES:
            raise ValueError(f"no compiled max-pool kernel for kernel {kernel_size}, stride {stride}")
        self.kernel_size, self.stride = kernel_size, stride

        # Shape/type functions as plain defs: MindSpore's graph parser rejects some lambdas here.
        def pooled(x_shape):
            shape = [x_shape[0], x_shape[1], math.ceil(x_shape[2] / stride), math.ceil(x_shape[3] / stride)]
            return shape, shape

        def like_input(x, dy, argmax):
            return x

        grad = ops.Custom(f"{library}:MaxPoolGrad", out_shape=like_input, out_dtype=like_input, func_type="aot")

        def bprop(x, out, dout):
            return (grad(x, dout[0], out[1]),)

        self.pool = ops.Custom(f"{library}:MaxPoolK{kernel_size}S{stride}", out_shape=pooled,
                               out_dtype=(mstype.float32, mstype.int32), func_type="aot", bprop=bprop)

    def construct(self, x: Tensor) -> Tensor:
        return self.pool(x)[0]


def compiled_max_pool_wanted(config) -> bool:
    """The config's ``compiled_max_pool`` where it applies: on CPU, in float32 (amp_level O0)."""
    return bool(config.compiled_max_pool) and config.device_target == "CPU" and config.amp_level == "O0"


def create_max_pool(kernel_size: int, stride: int, compiled: bool = False) -> nn.Cell:
    """A 'same'-padded max pool: the compiled kernel when asked for and available, else nn.MaxPool2d."""
    library = kernel_library() if compiled else None
    if library is not None:
        return CompiledMaxPool2d(kernel_size, stride, library)
    return nn.MaxPool2d(kernel_size=kernel_size, stride=stride, pad_mode="same")
