"""Training in channels-last (NHWC) layout, every convolution block and max pool on oneDNN
(kernels/dnnl.cc, MindSpore's own oneDNN library).

``to_channels_last_training(net)`` takes a network as built (plain cells) and, in place:

- every ``Conv2dBlock`` becomes ``ConvBatchNormReLUNhwc``, the block's own convolution and BatchNorm
  parameters under the same names; with batch statistics (training) convolution, BatchNorm and ReLU are
  one kernel call (oneDNN's convolution, batch normalisation and ReLU primitives, the moving statistics
  updated in place, declared to MindSpore) and their gradient one more (oneDNN's backward primitives);
  with the moving statistics (evaluation, a frozen backbone) the convolution on oneDNN, then BatchNorm
  and ReLU as MindSpore operations, differentiable as they are;
- every max pool becomes ``MaxPoolNhwcTrain`` (oneDNN's pooling, which keeps where each maximum was
  for the gradient); every Inception concatenates on the last axis;
- the layout changes twice per call: NCHW to NHWC before conv1, back to NCHW after block5b's
  concatenation, so the feature map, the head and the outputs are those of the network before.

Folded inference runs on oneDNN's channel-blocked layout instead (``blocked.py``).
"""

from __future__ import annotations

import math
from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Tensor
from mindspore import dtype as mstype

from src.cpu_kernels.batch_norm import uses_batch_statistics
from src.cpu_kernels.blocks import replace_children, restore_parameter_names, window_side
from src.cpu_kernels.build import writes_inputs
from src.cpu_kernels.conv import first_input_type
from src.googlenet import Conv2dBlock, GoogleNet, Inception

TO_CHANNELS_LAST = (0, 2, 3, 1)
TO_CHANNELS_FIRST = (0, 3, 1, 2)


def same_output_shape(x_shape, stride: int, channels: int) -> list:
    """The NHWC output shape of a 'same' convolution or pooling of NHWC ``x_shape`` with ``stride``."""
    return [x_shape[0], math.ceil(x_shape[1] / stride), math.ceil(x_shape[2] / stride), channels]


class ConcatChannelsFirst(nn.Cell):
    """Concatenation on the last axis of NHWC tensors, the result transposed back to NCHW."""

    def __init__(self) -> None:
        super().__init__()
        self.concat = ops.Concat(axis=3)
        self.transpose = ops.Transpose()

    def construct(self, tensors):
        return self.transpose(self.concat(tensors), TO_CHANNELS_FIRST)


class ConvBatchNormReLUNhwc(nn.Cell):
    """A ``Conv2dBlock`` (convolution, BatchNorm, ReLU; 'same' padding) on NHWC ``x`` (NCHW when
    ``channels_first_input``: it is transposed first, and the kernel skips the gradient for ``x``,
    an image, returning zeros). ``conv`` and ``bn`` are the block's own cells, kept for their
    parameters; the computation is the kernel's."""

    def __init__(self, block: Conv2dBlock, library: Path, channels_first_input: bool = False) -> None:
        super().__init__()
        self.conv, self.bn = block.conv, block.bn
        stride = window_side(block.conv.stride)
        self.channels_first_input = channels_first_input
        self.transpose = ops.Transpose()
        self.relu = ops.ReLU()
        self.sqrt = ops.Sqrt()
        # {stride, whether the gradient for x is wanted}; {epsilon, weight of the batch statistics}
        self.spec = Tensor(np.array([stride, 0 if channels_first_input else 1], np.int64))
        self.settings = Tensor(np.array([self.bn.eps, self.bn.momentum], np.float32))
        zeros_like = ops.ZerosLike()

        def output_shape(x_shape, w_shape, *others):
            return same_output_shape(x_shape, stride, w_shape[0])

        def conv_gradient_shape(dz_shape, x_shape, w_shape, spec_shape):
            return x_shape, w_shape

        conv_gradient = ops.Custom(f"{library}:ConvNhwcGrad", out_shape=conv_gradient_shape,
                                   out_dtype=(mstype.float32,) * 2, func_type="aot")

        def conv_bprop(x, weight, spec, out, dout):
            dx, dweight = conv_gradient(dout, x, weight, spec)
            return dx, dweight, zeros_like(spec)

        self.conv_nhwc = ops.Custom(f"{library}:ConvNhwc", out_shape=output_shape, out_dtype=first_input_type,
                                    func_type="aot", bprop=conv_bprop)

        def train_shape(x_shape, w_shape, *others):
            y_shape = output_shape(x_shape, w_shape)
            return y_shape, y_shape, [w_shape[0]], [w_shape[0]]

        def train_gradient_shape(dy_shape, x_shape, w_shape, *others):
            return x_shape, w_shape, [w_shape[0]], [w_shape[0]]

        train_gradient = ops.Custom(f"{library}:ConvBatchNormReluNhwcGrad", out_shape=train_gradient_shape,
                                    out_dtype=(mstype.float32,) * 4, func_type="aot")

        def train_bprop(x, weight, gamma, beta, moving_mean, moving_variance, settings, spec, out, dout):
            y, z, mean, variance = out
            dx, dweight, dgamma, dbeta = train_gradient(dout[0], x, weight, z, y, gamma, mean, variance, settings,
                                                        spec)
            return (dx, dweight, dgamma, dbeta, zeros_like(moving_mean), zeros_like(moving_variance),
                    zeros_like(settings), zeros_like(spec))

        # inputs: x, the filter, gamma, beta, moving mean and variance (written), settings, spec;
        # outputs: y, the convolution's output z, the batch's mean and variance
        self.train_nhwc = writes_inputs(ops.Custom(f"{library}:ConvBatchNormReluNhwcTrain", out_shape=train_shape,
                                                   out_dtype=(mstype.float32,) * 4, func_type="aot",
                                                   bprop=train_bprop),
                                        [False, False, False, False, True, True, False, False])

    def batch_statistics(self) -> bool:
        """Whether BatchNorm normalises with the batch's statistics (as ``nn.BatchNorm2d`` decides it)."""
        return uses_batch_statistics(self.bn)

    def construct(self, x: Tensor) -> Tensor:
        if self.channels_first_input:
            x = self.transpose(x, TO_CHANNELS_LAST)
        bn = self.bn
        if self.batch_statistics():  # decided when the graph is compiled
            return self.train_nhwc(x, self.conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
                                   self.settings, self.spec)[0]
        scale = bn.gamma / self.sqrt(bn.moving_variance + bn.eps)
        return self.relu(self.conv_nhwc(x, self.conv.weight, self.spec) * scale + (bn.beta - bn.moving_mean * scale))


class MaxPoolNhwcTrain(nn.Cell):
    """``nn.MaxPool2d(kernel_size, stride, pad_mode="same")`` on NHWC input, with its gradient."""

    def __init__(self, kernel_size: int, stride: int, library: Path) -> None:
        super().__init__()
        self.spec = Tensor(np.array([kernel_size, stride], np.int64))
        zeros_like = ops.ZerosLike()

        def output_shape(x_shape, spec_shape):
            shape = same_output_shape(x_shape, stride, x_shape[3])
            return shape, shape

        def like_input(dy, workspace, x, spec):
            return x

        gradient = ops.Custom(f"{library}:MaxPoolNhwcGrad", out_shape=like_input, out_dtype=like_input,
                              func_type="aot")

        def bprop(x, spec, out, dout):
            return gradient(dout[0], out[1], x, spec), zeros_like(spec)

        # outputs: y, and where each maximum was (oneDNN's workspace, one byte per output value)
        self.pool = ops.Custom(f"{library}:MaxPoolNhwcTrain", out_shape=output_shape,
                               out_dtype=(mstype.float32, mstype.uint8), func_type="aot", bprop=bprop)

    def construct(self, x: Tensor) -> Tensor:
        return self.pool(x, self.spec)[0]


def to_channels_last_training(net: GoogleNet, library: Path) -> GoogleNet:
    """``net``, as built (plain cells), on NHWC activations and the oneDNN kernels of ``library`` for
    training and evaluation, in place (see the module's docstring). Call it before the first call."""
    if not isinstance(net.conv1, Conv2dBlock):
        raise ValueError("expected a network whose convolution blocks are Conv2dBlock cells")
    first = net.conv1

    def replace(cell: nn.Cell) -> nn.Cell | None:
        if isinstance(cell, Conv2dBlock):
            return ConvBatchNormReLUNhwc(cell, library, channels_first_input=cell is first)
        if isinstance(cell, nn.MaxPool2d):
            return MaxPoolNhwcTrain(window_side(cell.kernel_size), window_side(cell.stride), library)
        return None

    replace_children(net, replace)
    inceptions = [cell for _, cell in net.cells_and_names() if isinstance(cell, Inception)]
    for inception in inceptions:
        inception.concat = ops.Concat(axis=3)
    inceptions[-1].concat = ConcatChannelsFirst()
    restore_parameter_names(net)
    return net
