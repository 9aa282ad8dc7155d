"""Folded inference on oneDNN's channel-blocked layout (kernels/dnnl.cc, MindSpore's own oneDNN library).

In that layout (nChw16c where oneDNN may use AVX-512, else nChw8c) channels come in groups of b = 16
or 8, each group a plane of b-value vectors; a MindSpore tensor holds it as [N, C/b, H, W, b]. oneDNN
writes a convolution's output into a channel range of such a tensor in place (a range that starts on
a group), so an Inception's four branches need no concatenation; on NHWC the same in-place writes run
oneDNN's reference kernels (docs/PERFORMANCE.md).

``to_blocked_layout(net)`` takes a GoogleNet whose blocks are folded (``fold_batchnorm``) and, in place:

- conv1, conv2 and conv3 (``ConvBiasReLU``) become ``ConvBiasReLUBlocked``: convolution + bias + ReLU
  as one oneDNN primitive, conv1 reading the NCHW image as it is; the weights in the layout oneDNN
  chooses, reordered once per filter and again only when its values change;
- every Inception becomes ``InceptionBlocked``, its six convolutions and its max pool one kernel call;
- every other max pool becomes ``MaxPoolBlocked``;
- block5b gives its output back as NCHW, so the feature map, the head and the outputs are those of the
  network before.

The weight and bias parameters are the folded cells' own, under the same names. The result computes
the folded network's function (to float32 rounding: another summation order), for inference only.
"""

from __future__ import annotations

import ctypes
import math
from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor

from src.cpu_kernels.blocks import replace_children, restore_parameter_names, window_side
from src.cpu_kernels.conv import ConvBiasReLU, first_input_type, next_filter_token
from src.cpu_kernels.max_pool import CompiledMaxPool2d
from src.googlenet import GoogleNet, Inception


def blocked_channels(library: Path) -> int:
    """The channels in a group of oneDNN's blocked layout as ``library`` uses it: 16 or 8."""
    function = ctypes.CDLL(str(library)).BlockedChannels
    function.restype = ctypes.c_int64
    return int(function())


def _check_outputs(cells, block: int) -> None:
    """The blocked layout holds whole groups: every output written must have a multiple of ``block`` channels."""
    for cell in cells:
        if cell.weight.shape[0] % block:
            raise ValueError(f"a convolution with {cell.weight.shape[0]} output channels: the blocked layout "
                             f"needs a multiple of {block}")


def blocked_shape(x_shape, stride: int, channels: int, block: int) -> list:
    """The blocked output shape [N, channels / block, H', W', block] of a 'same' convolution or pooling
    with ``stride`` of ``x_shape`` (blocked, or the NCHW image)."""
    return [x_shape[0], channels // block, math.ceil(x_shape[2] / stride), math.ceil(x_shape[3] / stride), block]


class ConvBiasReLUBlocked(nn.Cell):
    """``relu(conv(x, weight) + bias)`` with 'same' padding from blocked ``x`` (or the NCHW image) to
    blocked output, from a folded block's ``ConvBiasReLU``."""

    def __init__(self, folded: ConvBiasReLU, library: Path, block: int) -> None:
        super().__init__()
        _check_outputs([folded], block)
        self.weight, self.bias = folded.weight, folded.bias
        stride = folded.stride
        # [token, stride]: the token names this filter in the kernel's cache of reordered filters
        self.kernel_spec = Parameter(Tensor(np.array([next_filter_token(), stride], np.int64)), name="kernel_spec",
                                     requires_grad=False)

        def output_shape(x_shape, w_shape, b_shape, spec_shape):
            return blocked_shape(x_shape, stride, w_shape[0], block)

        self.conv = ops.Custom(f"{library}:ConvBiasReluBlocked", out_shape=output_shape,
                               out_dtype=first_input_type, func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        return self.conv(x, self.weight, self.bias, self.kernel_spec)


class MaxPoolBlocked(nn.Cell):
    """``nn.MaxPool2d(kernel_size, stride, pad_mode="same")`` on blocked input."""

    def __init__(self, kernel_size: int, stride: int, library: Path, block: int) -> None:
        super().__init__()
        self.spec = Tensor(np.array([kernel_size, stride], np.int64))

        def output_shape(x_shape, spec_shape):
            return blocked_shape(x_shape, stride, x_shape[1] * block, block)

        self.pool = ops.Custom(f"{library}:MaxPoolBlocked", out_shape=output_shape, out_dtype=first_input_type,
                               func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        return self.pool(x, self.spec)


class InceptionBlocked(nn.Cell):
    """An ``Inception`` with folded branches as one kernel call on blocked input and output, each
    branch writing its channels of the output (nothing concatenates). ``b1``..``b4`` are the
    Inception's own cells, kept for their parameters. With ``channels_first_output`` the result is
    given back as NCHW."""

    def __init__(self, inception: Inception, library: Path, block: int) -> None:
        super().__init__()
        self.b1, self.b2, self.b3, self.b4 = inception.b1, inception.b2, inception.b3, inception.b4
        folded = (self.b1, self.b2[0], self.b2[1], self.b3[0], self.b3[1], self.b4)
        if not all(isinstance(cell, ConvBiasReLU) for cell in folded):
            raise ValueError("expected an Inception whose convolution blocks are folded (ConvBiasReLU)")
        branch_outputs = (self.b1, self.b2[1], self.b3[1], self.b4)  # the convolutions that write y
        _check_outputs(branch_outputs, block)
        pool = (window_side(inception.maxpool.kernel_size), window_side(inception.maxpool.stride))
        if pool != (3, 1):
            raise ValueError(f"expected an Inception whose max pool is 3x3 with stride 1 (the kernel's), got {pool}")
        self.tokens = Parameter(Tensor(np.array([next_filter_token() for _ in folded], np.int64)), name="tokens",
                                requires_grad=False)
        self.channels_first_output = False
        self.transpose = ops.Transpose()
        self.reshape = ops.Reshape()
        outputs = sum(cell.weight.shape[0] for cell in branch_outputs)

        def output_shape(x_shape, *others):
            return blocked_shape(x_shape, 1, outputs, block)

        self.inception = ops.Custom(f"{library}:InceptionBlocked", out_shape=output_shape,
                                    out_dtype=first_input_type, func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        b2, b3 = self.b2, self.b3
        y = self.inception(x, self.b1.weight, self.b1.bias, b2[0].weight, b2[0].bias, b2[1].weight, b2[1].bias,
                           b3[0].weight, b3[0].bias, b3[1].weight, b3[1].bias, self.b4.weight, self.b4.bias,
                           self.tokens)
        if self.channels_first_output:
            n, groups, rows, cols, block = y.shape
            y = self.reshape(self.transpose(y, (0, 1, 4, 2, 3)), (n, groups * block, rows, cols))
        return y


def to_blocked_layout(net: GoogleNet, library: Path) -> GoogleNet:
    """The folded ``net`` on oneDNN's blocked layout and the kernels of ``library``, in place (see the
    module's docstring). Call it after ``fold_batchnorm`` and before the network's first call."""
    if not isinstance(net.conv1, ConvBiasReLU):
        raise ValueError("expected a network whose convolution blocks are folded (ConvBiasReLU)")
    block = blocked_channels(library)

    def replace(cell: nn.Cell) -> nn.Cell | None:
        if isinstance(cell, Inception):
            return InceptionBlocked(cell, library, block)
        if isinstance(cell, ConvBiasReLU):
            return ConvBiasReLUBlocked(cell, library, block)
        if isinstance(cell, (nn.MaxPool2d, CompiledMaxPool2d)):
            return MaxPoolBlocked(window_side(cell.kernel_size), window_side(cell.stride), library, block)
        return None

    replace_children(net, replace)
    inceptions = [cell for _, cell in net.cells_and_names() if isinstance(cell, InceptionBlocked)]
    inceptions[-1].channels_first_output = True
    restore_parameter_names(net)
    return net
