"""Max pooling ('same' padding) with the compiled CPU kernel of src/cpu_kernels/kernels/max_pool.cc.

MindSpore 2.10's CPU MaxPoolGrad re-runs the pooling forward and then oneDNN's plain-layout
reference backward: a third of GoogleNet's training step on CPU (docs/PERFORMANCE.md). The kernel
here computes the same forward and, alongside it, the index of each window's maximum, so that the
gradient is a scatter through those indices. The values equal ``nn.MaxPool2d``'s bit for bit and
the gradient reaches the same inputs (same first-maximum rule for ties); where overlapping windows
send one input several contributions, their float32 sum may differ in the last bits, since the
order of summation differs. No parameters: checkpoints move freely between the two.

The library is built on first use by src/cpu_kernels/build.py. Where that is not possible (no
compiler, a device other than CPU) the network keeps ``nn.MaxPool2d`` (src/cpu_kernels/blocks.py,
``substitute_kernels``); exported models always use ``nn.MaxPool2d``.
"""

from __future__ import annotations

import math
from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore import dtype as mstype

from src.cpu_kernels.build import kernels_apply

KERNEL_SHAPES = {(3, 1), (3, 2), (2, 2)}  # (kernel, stride) pairs the library exports


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
        if self.stride == 1 and x.shape[2] == 1 and x.shape[3] == 1:  # decided when the graph is compiled
            return x  # a stride-1 'same' pool of a 1x1 plane is its input (Inception 5 at 32x32 input)
        return self.pool(x)[0]


def compiled_max_pool_wanted(config) -> bool:
    """The config's ``compiled_max_pool`` where it applies: on CPU, in float32 (amp_level O0)."""
    return bool(config.compiled_max_pool) and kernels_apply(config)
