"""Convolution (odd kernel, 'same' padding) with the compiled CPU kernel of src/cpu_kernels/kernels/conv.cc.

MindSpore 2.10's CPU convolutions (oneDNN) work image by image; on the smallest planes of a 32x32
input (4x4 down to 1x1) that leaves the arithmetic in GEMMs too small to run fast. The kernel
computes the forward pass and both gradients each as one GEMM over the whole batch (im2col; on
planes the kernel window covers whole, a dense map that skips the padding taps): with it
on planes of at most 16 values the 32x32 training step is 13-24% shorter (docs/PERFORMANCE.md,
"Changes tried"); on larger planes oneDNN is faster, and keeps them. ``CompiledConv2d`` is an
``nn.Conv2d`` with the same parameter, so checkpoints move freely between the two; its outputs
equal MindSpore's up to float32 rounding (the sums run in another order). Stride-2 convolutions (conv1)
have no gradient in the kernel: their ``CompiledConv2d`` is MindSpore's Conv2D, and the kernel runs only
their folded inference form, ``ConvBiasReLU``.

The library is built on first use by src/cpu_kernels/build.py. Where that is not possible (no
compiler) and for what the kernel does not cover (even kernels, strides above 2) the network keeps
``nn.Conv2d`` (src/cpu_kernels/blocks.py, ``substitute_kernels``); exported models always use
``nn.Conv2d``. The kernel's worker threads: one per core the process may use, or
``$GOOGLENET_KERNEL_THREADS``.
"""

from __future__ import annotations

import itertools
import os
import sys
from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor
from mindspore.common.initializer import TruncatedNormal

from src.cpu_kernels.build import kernels_apply
from src.errors import UserError

THREADS_VARIABLE = "GOOGLENET_KERNEL_THREADS"

# Largest plane (H*W values) a CompiledConv2d computes with the kernel; above it, MindSpore's Conv2D,
# which is faster on larger planes (docs/PERFORMANCE.md, "Changes tried": with the kernel on every plane
# the 224x224 training step took 3.15 s instead of 2.47 s; at 32x32, limits of 4, 16 and 64 values
# could not be told apart).
MAX_KERNEL_PLANE = 16
# The same limit for the folded inference form (ConvBiasReLU), whose filters the kernel packs once:
# there it is faster on 8x8 planes too (conv2 and conv3 at 32x32 input) and no slower on the 7x7
# planes of a 224x224 input (docs/PERFORMANCE.md, "Changes tried").
MAX_FOLDED_KERNEL_PLANE = 64

# Names each folded filter for the kernel, which packs a filter on its first call and keeps it by
# that name until the filter's values change (src/cpu_kernels/kernels/conv.cc, PackedOnce): never
# reused within a process.
_filter_tokens = itertools.count(1)


def next_filter_token() -> int:
    """A name for a filter in a kernel's cache of prepared filters, never given twice in a process."""
    return next(_filter_tokens)


def first_input_type(first, *others):
    """The output dtype of the kernel's operations: that of their first input."""
    return first


class CompiledConv2d(nn.Conv2d):
    """``nn.Conv2d(in, out, kernel_size, stride, pad_mode="same", has_bias=False)``, odd kernel, on the
    compiled CPU kernel (NCHW float32) for inputs of at most ``max_kernel_plane`` values per plane and on
    MindSpore's own Conv2D above that. The kernel's gradients are stride-1 only: with stride 2 this
    cell always runs MindSpore's Conv2D, and the kernel only its folded inference form (ConvBiasReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, library: Path,
                 weight_init=None, max_kernel_plane: int = MAX_KERNEL_PLANE, stride: int = 1) -> None:
        if kernel_size % 2 != 1 or stride not in (1, 2):
            raise ValueError(f"the compiled convolution needs an odd kernel and stride 1 or 2, got {kernel_size}, "
                             f"{stride}")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, pad_mode="same", has_bias=False,
                         weight_init=weight_init if weight_init is not None else TruncatedNormal(0.02))
        self.library = library
        self.kernel_stride = stride
        self.max_kernel_plane = max_kernel_plane if stride == 1 else 0

        # Shape functions as plain defs: MindSpore's graph parser rejects some lambdas here.
        def output_shape(x_shape, w_shape):
            return [x_shape[0], w_shape[0], x_shape[2], x_shape[3]]

        def input_grad_shape(dy_shape, w_shape):
            return [dy_shape[0], w_shape[1], dy_shape[2], dy_shape[3]]

        def filter_grad_shape(x_shape, dy_shape, w_shape):
            return w_shape

        input_grad = ops.Custom(f"{library}:ConvGradInput", out_shape=input_grad_shape, out_dtype=first_input_type,
                                func_type="aot")
        filter_grad = ops.Custom(f"{library}:ConvGradFilter", out_shape=filter_grad_shape, out_dtype=first_input_type,
                                 func_type="aot")

        def bprop(x, weight, out, dout):
            return input_grad(dout, weight), filter_grad(x, dout, weight)

        self.compiled_conv = ops.Custom(f"{library}:ConvForward", out_shape=output_shape, out_dtype=first_input_type,
                                        func_type="aot", bprop=bprop)

    def on_kernel(self, x: Tensor) -> bool:
        """Whether the kernel computes this input: planes of at most ``max_kernel_plane`` values
        (decided when the graph is compiled)."""
        return x.shape[2] * x.shape[3] <= self.max_kernel_plane

    def construct(self, x: Tensor) -> Tensor:
        if self.on_kernel(x):
            return self.compiled_conv(x, self.weight)
        return self.conv2d(x, self.weight)


class ConvBiasReLU(nn.Cell):
    """``relu(conv(x, weight) + bias)``, for inference: a convolution with BatchNorm folded into its
    weight and bias (src/googlenet.py, ``fold_batchnorm``). Made from a ``CompiledConv2d``, it is one
    call of the compiled kernel: for stride 1 on planes of at most ``MAX_FOLDED_KERNEL_PLANE`` values
    (or the convolution's own limit, if larger), for stride 2 on every plane (conv1: faster than
    MindSpore's at 32x32 and 224x224 input, docs/PERFORMANCE.md); otherwise it is
    MindSpore's Conv2D (the one of ``conv``), BiasAdd and ReLU. The kernel keeps the filter packed
    after its first call, with a copy of the values it was packed from, and packs it again when the
    weight it is given differs (weights loaded into the folded network are used)."""

    def __init__(self, conv: nn.Conv2d, weight: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.weight = Parameter(Tensor(weight), name="weight", requires_grad=False)
        self.bias = Parameter(Tensor(bias), name="bias", requires_grad=False)
        self.conv2d = conv.conv2d
        self.bias_add = ops.BiasAdd()
        self.relu = ops.ReLU()
        self.stride = conv.stride[0] if isinstance(conv.stride, tuple) else conv.stride
        self.fused = None
        self.max_kernel_plane = 0
        if isinstance(conv, CompiledConv2d):
            self.filter_token = Parameter(Tensor(np.array([next_filter_token()], np.int64)), name="filter_token",
                                          requires_grad=False)
            stride = conv.kernel_stride
            self.max_kernel_plane = max(conv.max_kernel_plane, MAX_FOLDED_KERNEL_PLANE) if stride == 1 else sys.maxsize

            def output_shape(x_shape, w_shape, b_shape, token_shape):
                return [x_shape[0], w_shape[0], -(-x_shape[2] // stride), -(-x_shape[3] // stride)]

            entry = "ConvBiasReluForward" if stride == 1 else "ConvBiasReluStride2Forward"
            self.fused = ops.Custom(f"{conv.library}:{entry}", out_shape=output_shape, out_dtype=first_input_type,
                                    func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        if self.fused is not None and x.shape[2] * x.shape[3] <= self.max_kernel_plane:
            return self.fused(x, self.weight, self.bias, self.filter_token)
        return self.relu(self.bias_add(self.conv2d(x, self.weight), self.bias))


def compiled_conv_wanted(config) -> bool:
    """The config's ``compiled_conv`` where it applies: on CPU, in float32 (amp_level O0)."""
    return bool(config.compiled_conv) and kernels_apply(config)


def check_kernel_threads() -> None:
    """``$GOOGLENET_KERNEL_THREADS``, when set, must be a positive integer (the kernel reads it once)."""
    value = os.environ.get(THREADS_VARIABLE, "")
    if value and not (value.isdigit() and int(value) > 0):
        raise UserError(f"{THREADS_VARIABLE}={value!r}: expected a positive integer "
                        "(worker threads of the compiled convolution kernel)")
