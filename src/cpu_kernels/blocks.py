"""The network's cells substituted by their kernel forms, after construction.

``Conv2dBlock`` (convolution, BatchNorm, ReLU) becomes ``KernelConv2dBlock``: the same parameters under
the same names, the convolution on the kernel for small planes and, in training, convolution +
BatchNorm + ReLU as one kernel call. ``nn.MaxPool2d`` becomes ``CompiledMaxPool2d``. For inference,
``fold_batchnorm`` turns either block into ``ConvBiasReLU``.
"""

from __future__ import annotations

import mindspore.nn as nn
import numpy as np
from mindspore import Tensor

from src.cpu_kernels.batch_norm import BatchNormReLU2d, fused_conv_batch_norm_relu
from src.cpu_kernels.build import kernel_library
from src.cpu_kernels.conv import CompiledConv2d, ConvBiasReLU, check_kernel_threads
from src.cpu_kernels.max_pool import KERNEL_SHAPES, CompiledMaxPool2d
from src.googlenet import Conv2dBlock


class KernelConv2dBlock(nn.Cell):
    """A ``Conv2dBlock`` on the compiled kernel: ``conv`` a ``CompiledConv2d``, ``bn`` BatchNorm and
    ReLU in one cell (``BatchNormReLU2d``), parameter names as the block's."""

    def __init__(self, block: Conv2dBlock, conv_library, norm_library) -> None:
        super().__init__()
        plain = block.conv
        self.conv = CompiledConv2d(plain.in_channels, plain.out_channels, plain.kernel_size[0], conv_library,
                                   weight_init=plain.weight.data.copy(), stride=plain.stride[0])
        self.bn = BatchNormReLU2d(block.bn.num_features, block.bn.eps, norm_library)
        for name in ("gamma", "beta", "moving_mean", "moving_variance"):
            getattr(self.bn, name).set_data(getattr(block.bn, name).data)
        self.fused = fused_conv_batch_norm_relu(self.conv, self.bn)

    def construct(self, x: Tensor) -> Tensor:
        # decided when the graph is compiled: batch statistics, and the convolution on the kernel for this plane
        if self.fused is not None and self.bn.on_kernel() and self.conv.on_kernel(x):
            bn = self.bn
            return self.fused(x, self.conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
                              bn.settings)[0]
        return self.bn(self.conv(x))


def replace_children(cell: nn.Cell, replace) -> None:
    """Every descendant cell ``c`` of ``cell`` for which ``replace(c)`` is not None, replaced in place."""
    for name, child in list(cell.name_cells().items()):
        substitute = replace(child)
        if substitute is None:
            replace_children(child, replace)
        elif isinstance(cell, nn.SequentialCell):
            cell[int(name)] = substitute
        else:
            setattr(cell, name, substitute)


def _kernel_fits(conv: nn.Conv2d) -> bool:
    """The convolutions the kernel computes: odd square kernels, stride 1 or 2."""
    return conv.kernel_size[0] % 2 == 1 and conv.stride[0] in (1, 2)


def window_side(value) -> int:
    """A square window's side, given as an int or a tuple."""
    return value if isinstance(value, int) else value[-1]


def restore_parameter_names(net: nn.Cell) -> None:
    # Cells put in after construction know only their own attribute name: give every parameter its
    # full name again (the names checkpoints use; MindSpore wants them unique).
    for name, param in net.parameters_and_names():
        param.name = name


def substitute_kernels(net: nn.Cell, max_pool: bool, conv: bool) -> dict[str, object]:
    """Put the kernel forms into ``net`` in place, before its first call: max pools when ``max_pool``,
    convolution blocks when ``conv``, each where its kernel library builds. Returns the libraries used."""
    libraries = {"max_pool": kernel_library("max_pool") if max_pool else None,
                 "conv": kernel_library("conv") if conv else None}

    def replace(cell: nn.Cell) -> nn.Cell | None:
        if libraries["max_pool"] is not None and isinstance(cell, nn.MaxPool2d):
            shape = (window_side(cell.kernel_size), window_side(cell.stride))
            return CompiledMaxPool2d(*shape, libraries["max_pool"]) if shape in KERNEL_SHAPES else None
        if libraries["conv"] is not None and isinstance(cell, Conv2dBlock) and _kernel_fits(cell.conv):
            return KernelConv2dBlock(cell, libraries["conv"], libraries["conv"])
        return None

    if libraries["conv"] is not None:
        check_kernel_threads()
    replace_children(net, replace)
    restore_parameter_names(net)
    return {name: path for name, path in libraries.items() if path is not None}


def folded_block(block: Conv2dBlock | KernelConv2dBlock) -> ConvBiasReLU:
    """The block's function in inference: BatchNorm's moving statistics folded into the convolution,
    weight * s and bias beta - mean * s per output channel, where s = gamma / sqrt(var + eps)."""
    bn = block.bn
    variance = bn.moving_variance.asnumpy().astype(np.float64)
    scale = bn.gamma.asnumpy().astype(np.float64) / np.sqrt(variance + bn.eps)
    weight = block.conv.weight.asnumpy() * scale[:, None, None, None]
    bias = bn.beta.asnumpy() - bn.moving_mean.asnumpy() * scale
    return ConvBiasReLU(block.conv, weight.astype(np.float32), bias.astype(np.float32))


def fold_batchnorm(net: nn.Cell) -> nn.Cell:
    """For inference only: every convolution block of ``net`` replaced, in place, by its folded form
    (one operation fewer per convolution, and one kernel call on the kernel's planes). Call it after
    the weights are loaded and before the network's first call (graph mode compiles a cell once; a
    network already run keeps its compiled graph). The result cannot be trained. Returns ``net``."""
    replace_children(net, lambda cell: folded_block(cell) if isinstance(cell, (Conv2dBlock, KernelConv2dBlock))
                      else None)
    restore_parameter_names(net)
    return net
