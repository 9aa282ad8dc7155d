"""Folded inference in channels-last (NHWC) layout, every convolution and max pool on oneDNN
(kernels/dnnl.cc, MindSpore's own oneDNN library).

``to_channels_last(net)`` takes a GoogleNet whose blocks are folded (``fold_batchnorm``) and, in place:

- every ``ConvBiasReLU`` becomes ``ConvBiasReLUNhwc``, the same weight and bias parameters under the same
  names, convolution + bias + ReLU as one oneDNN primitive on NHWC activations (weights in the layout
  oneDNN chooses, reordered once per filter and again only when its values change);
- every max pool becomes ``MaxPoolNhwc``; every Inception concatenates on the last axis;
- the layout changes twice per call: NCHW to NHWC before conv1, back to NCHW after block5b's
  concatenation, so the feature map, the head and the outputs are those of the network before.

The result computes the folded network's function (to float32 rounding: another summation order).
It is for inference only, like the folded network.
"""

from __future__ import annotations

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

TO_CHANNELS_LAST = (0, 2, 3, 1)
TO_CHANNELS_FIRST = (0, 3, 1, 2)


class ConvBiasReLUNhwc(nn.Cell):
    """``relu(conv(x, weight) + bias)`` with 'same' padding on NHWC ``x`` (NCHW when
    ``channels_first_input``: it is transposed first), from a folded block's ``ConvBiasReLU``."""

    def __init__(self, folded: ConvBiasReLU, library: Path, channels_first_input: bool = False) -> None:
        super().__init__()
        self.weight, self.bias = folded.weight, folded.bias
        stride = folded.stride
        self.channels_first_input = channels_first_input
        self.transpose = ops.Transpose()
        # [token, stride]: the token names this filter in the kernel's cache of reordered filters
        self.kernel_spec = Parameter(Tensor(np.array([next_filter_token(), stride], np.int64)), name="kernel_spec",
                                     requires_grad=False)

        def output_shape(x_shape, w_shape, b_shape, spec_shape):
            return [x_shape[0], -(-x_shape[1] // stride), -(-x_shape[2] // stride), w_shape[0]]

        self.conv = ops.Custom(f"{library}:ConvBiasReluNhwc", out_shape=output_shape, out_dtype=first_input_type,
                               func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        if self.channels_first_input:
            x = self.transpose(x, TO_CHANNELS_LAST)
        return self.conv(x, self.weight, self.bias, self.kernel_spec)


class MaxPoolNhwc(nn.Cell):
    """``nn.MaxPool2d(kernel_size, stride, pad_mode="same")`` on NHWC input."""

    def __init__(self, kernel_size: int, stride: int, library: Path) -> None:
        super().__init__()
        self.spec = Tensor(np.array([kernel_size, stride], np.int64))

        def output_shape(x_shape, spec_shape):
            return [x_shape[0], math.ceil(x_shape[1] / stride), math.ceil(x_shape[2] / stride), x_shape[3]]

        self.pool = ops.Custom(f"{library}:MaxPoolNhwc", out_shape=output_shape, out_dtype=first_input_type,
                               func_type="aot")

    def construct(self, x: Tensor) -> Tensor:
        return self.pool(x, self.spec)


class ConcatChannelsFirst(nn.Cell):
    """Concatenation on the last axis of NHWC tensors, the result transposed back to NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.concat = ops.Concat(axis=3)
        self.transpose = ops.Transpose()

    def construct(self, tensors):
        return self.transpose(self.concat(tensors), TO_CHANNELS_FIRST)


def to_channels_last(net: GoogleNet, library: Path) -> GoogleNet:
    """The folded ``net`` on NHWC activations and the oneDNN kernels of ``library``, in place (see the
    module's docstring). Call it after ``fold_batchnorm`` and before the network's first call."""
    if not isinstance(net.conv1, ConvBiasReLU):
        raise ValueError("to_channels_last needs a network whose convolution blocks are folded (fold_batchnorm)")
    first = net.conv1

    def replace(cell: nn.Cell) -> nn.Cell | None:
        if isinstance(cell, ConvBiasReLU):
            return ConvBiasReLUNhwc(cell, library, channels_first_input=cell is first)
        if isinstance(cell, (nn.MaxPool2d, CompiledMaxPool2d)):
            return MaxPoolNhwc(window_side(cell.kernel_size), window_side(cell.stride), library)
        return None

    replace_children(net, replace)
    inceptions = [cell for _, cell in net.cells_and_names() if isinstance(cell, Inception)]
    for inception in inceptions:
        inception.concat = ops.Concat(axis=3)
    inceptions[-1].concat = ConcatChannelsFirst()
    restore_parameter_names(net)
    return net
