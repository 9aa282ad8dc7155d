"""BatchNorm followed by ReLU, with the training step's pair on the compiled CPU kernel.

At a 32x32 input GoogleNet's 57 BatchNorms run on planes of 1 to 256 values: MindSpore 2.10's CPU
BatchNorm, ReLU and their two gradients cost far more to launch than their arithmetic
(docs/PERFORMANCE.md, "Changes tried"). ``BatchNormReLU2d`` is ``nn.BatchNorm2d`` (same parameters, same
names, so checkpoints move freely) followed by ReLU; in training, on the kernel, the pair is one
operation and its gradient one more (src/cpu_kernels/kernels/conv.cc, ``BatchNormReluTrain``): batch statistics
normalise, and the moving statistics are updated in place, with MindSpore's rule (weight
1 - momentum for the batch's mean and unbiased variance), the kernel declared to MindSpore as writing
them (``writes_inputs``), as MindSpore's BatchNorm is. Outputs and gradients equal MindSpore's up
to float32 rounding. In evaluation, and without the kernel, it is MindSpore's BatchNorm and ReLU.
"""

from __future__ import annotations

from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Tensor
from mindspore import dtype as mstype

from src.cpu_kernels.build import writes_inputs
from src.cpu_kernels.conv import CompiledConv2d


class BatchNormReLU2d(nn.BatchNorm2d):
    """``relu(nn.BatchNorm2d(num_features, eps)(x))``; in training through the compiled kernel
    ``library`` when given (NCHW float32)."""

    def __init__(self, num_features: int, eps: float = 1e-3, library: Path | None = None) -> None:
        super().__init__(num_features, eps=eps)
        self.relu = ops.ReLU()
        self.fused = None
        if library is None:
            return
        # The kernel reads epsilon and the batch statistics' weight (MindSpore's momentum attribute).
        self.settings = Tensor(np.array([self.eps, self.momentum], np.float32))

        def statistics_shape(z_shape, *channels):
            return z_shape, [z_shape[1]], [z_shape[1]]

        def gradient_shape(dy_shape, z_shape, y_shape, gamma_shape, *channels):
            return dy_shape, gamma_shape, gamma_shape

        float32 = (mstype.float32,) * 3
        gradient = ops.Custom(f"{library}:BatchNormReluGrad", out_shape=gradient_shape, out_dtype=float32,
                              func_type="aot")
        zeros_like = ops.ZerosLike()

        def bprop(z, gamma, beta, moving_mean, moving_variance, settings, out, dout):
            dz, dgamma, dbeta = gradient(dout[0], z, out[0], gamma, out[1], out[2])
            return (dz, dgamma, dbeta, zeros_like(moving_mean), zeros_like(moving_variance),
                    zeros_like(settings))

        # inputs: z, gamma, beta, moving mean and variance (written), settings
        self.fused = writes_inputs(ops.Custom(f"{library}:BatchNormReluTrain", out_shape=statistics_shape,
                                              out_dtype=float32, func_type="aot", bprop=bprop),
                                   [False, False, False, True, True, False])

    def on_kernel(self) -> bool:
        """Whether this call normalises with batch statistics on the kernel (``uses_batch_statistics``)."""
        return self.fused is not None and uses_batch_statistics(self)

    def construct(self, x: Tensor) -> Tensor:
        if self.on_kernel():
            return self.fused(x, self.gamma, self.beta, self.moving_mean, self.moving_variance, self.settings)[0]
        return self.relu(super().construct(x))


def uses_batch_statistics(bn: nn.BatchNorm2d) -> bool:
    """Whether ``bn`` normalises with the batch's statistics, as ``nn.BatchNorm2d`` decides it: in
    training, unless ``use_batch_statistics`` says otherwise (False: moving statistics, as a frozen
    backbone has)."""
    return bn.training if bn.use_batch_statistics is None else bn.use_batch_statistics


def fused_conv_batch_norm_relu(conv: nn.Cell, bn: BatchNormReLU2d) -> ops.Custom | None:
    """For training: the stride-1 ``CompiledConv2d`` ``conv`` followed by ``bn`` as one kernel call
    (``ConvBatchNormReluTrain``: outputs y, the convolution's output z, the batch mean and inverse
    standard deviation; inputs x, the filter and ``bn``'s parameters and settings), its gradient as one
    more; None unless both are on the kernel."""
    if not isinstance(conv, CompiledConv2d) or conv.kernel_stride != 1 or bn.fused is None:
        return None
    library = conv.library

    def output_shape(x_shape, w_shape, *channels):
        y_shape = [x_shape[0], w_shape[0], x_shape[2], x_shape[3]]
        return y_shape, y_shape, [w_shape[0]], [w_shape[0]]

    def gradient_shape(dy_shape, x_shape, w_shape, *others):
        return x_shape, w_shape, [w_shape[0]], [w_shape[0]]

    gradient = ops.Custom(f"{library}:ConvBatchNormReluGrad", out_shape=gradient_shape,
                          out_dtype=(mstype.float32,) * 4, func_type="aot")
    zeros_like = ops.ZerosLike()

    def bprop(x, weight, gamma, beta, moving_mean, moving_variance, settings, out, dout):
        dx, dweight, dgamma, dbeta = gradient(dout[0], x, weight, out[1], out[0], gamma, out[2], out[3])
        return (dx, dweight, dgamma, dbeta, zeros_like(moving_mean), zeros_like(moving_variance),
                zeros_like(settings))

    # inputs: x, the filter, gamma, beta, moving mean and variance (written), settings
    return writes_inputs(ops.Custom(f"{library}:ConvBatchNormReluTrain", out_shape=output_shape,
                                    out_dtype=(mstype.float32,) * 4, func_type="aot", bprop=bprop),
                         [False, False, False, False, True, True, False])
