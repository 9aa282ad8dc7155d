"""GoogleNet (Inception v1): Szegedy et al., "Going Deeper with Convolutions", CVPR 2015.

Layer for layer the model-zoo variant, which departs from the paper in three places:
- every convolution is followed by BatchNorm (eps 1e-3) and ReLU, and has no bias;
- the "5x5" branch of each Inception block uses a 3x3 kernel;
- the pool before inception 5a is 2x2 (stride 2) instead of 3x3;
and has no auxiliary classifiers and no local response normalisation. Unlike upstream, the dropout
before the classifier is applied in training (upstream defines it but never calls it), with masks
that repeat run to run (src/dropout.py).

Parameter names are upstream's (mindspore-ai/models, research/cv/googlenet), so checkpoints move both
ways unchanged: ``conv1.conv.weight``, ``conv1.bn.{gamma,beta,moving_mean,moving_variance}``, ``conv2``,
``conv3``; Inception blocks ``block3a`` ... ``block5b`` with branches ``b1`` (a Conv2dBlock), ``b2`` and
``b3`` (sequences of two: ``b2.0``, ``b2.1``), ``maxpool`` (no parameters) and ``b4`` (the pool
projection); ``classifier.{weight,bias}``; and ``dropout.step``, ours alone (src/checkpoint.py,
OPTIONAL_STATE). Checkpoints with this package's earlier names (``inception3a.branch4.1...``) are
renamed when read (src/checkpoint.py).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Tensor
from mindspore.common.initializer import TruncatedNormal

from src.batch_norm import BatchNormReLU2d, create_batch_norm_relu, fused_conv_batch_norm_relu
from src.checkpoint import load_weights
from src.compiled_kernels import kernel_library
from src.conv import CompiledConv2d, ConvBiasReLU, compiled_conv_wanted, create_conv
from src.dropout import KeyedDropout
from src.logger import logger
from src.max_pool import CompiledMaxPool2d, compiled_max_pool_wanted, create_max_pool

# (kernel_size, stride) -> a max pool with 'same' padding
MaxPoolFactory = Callable[[int, int], nn.Cell]
# (in_channels, out_channels, kernel_size, stride) -> a convolution without bias, 'same' padding
ConvFactory = Callable[[int, int, int, int], nn.Cell]
# (channels, eps) -> BatchNorm followed by ReLU
NormFactory = Callable[[int, float], BatchNormReLU2d]


class Conv2dBlock(nn.Cell):
    """Conv (no bias, 'same' padding) -> BatchNorm -> ReLU (``bn``: BatchNorm and ReLU in one cell)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 conv: ConvFactory = create_conv, norm: NormFactory = create_batch_norm_relu) -> None:
        super().__init__()
        self.conv = conv(in_channels, out_channels, kernel_size, stride)
        self.bn = norm(out_channels, 1e-3)
        self.fused = fused_conv_batch_norm_relu(self.conv, self.bn)

    def construct(self, x: Tensor) -> Tensor:
        # decided when the graph is compiled: batch statistics, and the convolution on the kernel for this plane
        if self.fused is not None and self.bn.on_kernel() and self.conv.on_kernel(x):
            bn = self.bn
            return self.fused(x, self.conv.weight, bn.gamma, bn.beta, bn.moving_mean, bn.moving_variance,
                              bn.settings)[0]
        return self.bn(self.conv(x))

    def folded(self) -> ConvBiasReLU:
        """The same function in inference: BatchNorm's moving statistics folded into the convolution,
        weight * s and bias beta - mean * s per output channel, where s = gamma / sqrt(var + eps)."""
        bn = self.bn
        variance = bn.moving_variance.asnumpy().astype(np.float64)
        scale = bn.gamma.asnumpy().astype(np.float64) / np.sqrt(variance + bn.eps)
        weight = self.conv.weight.asnumpy() * scale[:, None, None, None]
        bias = bn.beta.asnumpy() - bn.moving_mean.asnumpy() * scale
        return ConvBiasReLU(self.conv, weight.astype(np.float32), bias.astype(np.float32))


class Inception(nn.Cell):
    """Four parallel branches concatenated on channels; arguments are the paper's table columns."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int, max_pool: MaxPoolFactory = create_max_pool,
                 conv: ConvFactory = create_conv, norm: NormFactory = create_batch_norm_relu) -> None:
        super().__init__()
        block = functools.partial(Conv2dBlock, conv=conv, norm=norm)
        self.b1 = block(in_channels, ch1x1, 1)
        self.b2 = nn.SequentialCell(block(in_channels, ch3x3red, 1), block(ch3x3red, ch3x3, 3))
        # The paper's 5x5 branch; 3x3 here, as in the model zoo.
        self.b3 = nn.SequentialCell(block(in_channels, ch5x5red, 1), block(ch5x5red, ch5x5, 3))
        self.maxpool = max_pool(3, 1)
        self.b4 = block(in_channels, pool_proj, 1)
        self.concat = ops.Concat(axis=1)

    def construct(self, x: Tensor) -> Tensor:
        return self.concat((self.b1(x), self.b2(x), self.b3(x), self.b4(self.maxpool(x))))


class GoogleNet(nn.Cell):
    """Inception v1. Output: logits (N, num_classes), or with ``include_top=False`` the
    (N, 1024, H/32, W/32) feature map, in training and evaluation alike."""

    def __init__(self, num_classes: int = 1000, include_top: bool = True, dropout_rate: float = 0.2,
                 max_pool: MaxPoolFactory = create_max_pool, conv: ConvFactory = create_conv,
                 norm: NormFactory = create_batch_norm_relu, seed: int = 0) -> None:
        super().__init__()
        self.include_top = include_top
        block = functools.partial(Conv2dBlock, conv=conv, norm=norm)
        self.conv1 = block(3, 64, kernel_size=7, stride=2)
        self.maxpool1 = max_pool(3, 2)
        self.conv2 = block(64, 64, kernel_size=1)
        self.conv3 = block(64, 192, kernel_size=3)
        self.maxpool2 = max_pool(3, 2)

        self.block3a = Inception(192, 64, 96, 128, 16, 32, 32, max_pool, conv, norm)
        self.block3b = Inception(256, 128, 128, 192, 32, 96, 64, max_pool, conv, norm)
        self.maxpool3 = max_pool(3, 2)

        self.block4a = Inception(480, 192, 96, 208, 16, 48, 64, max_pool, conv, norm)
        self.block4b = Inception(512, 160, 112, 224, 24, 64, 64, max_pool, conv, norm)
        self.block4c = Inception(512, 128, 128, 256, 24, 64, 64, max_pool, conv, norm)
        self.block4d = Inception(512, 112, 144, 288, 32, 64, 64, max_pool, conv, norm)
        self.block4e = Inception(528, 256, 160, 320, 32, 128, 128, max_pool, conv, norm)
        self.maxpool4 = max_pool(2, 2)

        self.block5a = Inception(832, 256, 160, 320, 32, 128, 128, max_pool, conv, norm)
        self.block5b = Inception(832, 384, 192, 384, 48, 128, 128, max_pool, conv, norm)

        self.mean = ops.ReduceMean(keep_dims=True)
        self.flatten = nn.Flatten()
        self.dropout = KeyedDropout(dropout_rate, seed)
        self.classifier = nn.Dense(1024, num_classes, weight_init=TruncatedNormal(0.02),
                                   bias_init=TruncatedNormal(0.02))

    def construct(self, x: Tensor) -> Tensor:
        # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))
        # N x 64 x 56 x 56
        x = self.maxpool2(self.conv3(self.conv2(x)))
        # N x 192 x 28 x 28
        x = self.block3b(self.block3a(x))
        # N x 480 x 28 x 28
        x = self.maxpool3(x)
        x = self.block4a(x)
        x = self.block4b(x)
        x = self.block4c(x)
        x = self.block4d(x)
        x = self.block4e(x)
        # N x 832 x 14 x 14
        x = self.maxpool4(x)
        x = self.block5b(self.block5a(x))
        # N x 1024 x 7 x 7
        if not self.include_top:
            return x
        if x.shape[2] * x.shape[3] > 1:  # decided when the graph is compiled: a 1x1 map is its own mean
            x = self.mean(x, (2, 3))
        x = self.flatten(x)
        # N x 1024
        x = self.dropout(x)
        return self.classifier(x)  # N x num_classes


def fold_batchnorm(net: nn.Cell) -> nn.Cell:
    """For inference only: every Conv2dBlock of ``net`` replaced, in place, by its ``folded()`` form
    (one operation fewer per convolution, and one kernel call on the compiled kernel's planes).
    Call it after the weights are loaded and before the network's first call (graph mode compiles a
    cell once; a network already run keeps its compiled graph). The result cannot be trained. Returns
    ``net``."""
    _fold_children(net)
    # Cells put in after construction know only their own attribute name: give every parameter its
    # full name again (MindSpore wants them unique).
    for name, param in net.parameters_and_names():
        param.name = name
    return net


def _fold_children(cell: nn.Cell) -> None:
    for name, child in list(cell.name_cells().items()):
        if not isinstance(child, Conv2dBlock):
            _fold_children(child)
        elif isinstance(cell, nn.SequentialCell):
            cell[int(name)] = child.folded()
        else:
            setattr(cell, name, child.folded())


def create_model(num_classes: int, include_top: bool = True, dropout_rate: float = 0.2,
                 compiled_max_pool: bool = False, compiled_conv: bool = False, seed: int = 0) -> GoogleNet:
    """The network the entry scripts train, evaluate and export. ``compiled_max_pool``,
    ``compiled_conv``: max pooling, and the stride-1 convolutions with the BatchNorm + ReLU of training,
    through the compiled CPU kernels of src/max_pool.py, src/conv.py and src/batch_norm.py (same
    function and parameters, faster on CPU); never for export. ``seed`` keys the dropout masks."""
    max_pool = functools.partial(create_max_pool, compiled=True) if compiled_max_pool else create_max_pool
    conv = functools.partial(create_conv, compiled=True) if compiled_conv else create_conv
    norm = functools.partial(create_batch_norm_relu, compiled=True) if compiled_conv else create_batch_norm_relu
    return GoogleNet(num_classes=num_classes, include_top=include_top, dropout_rate=dropout_rate,
                     max_pool=max_pool, conv=conv, norm=norm, seed=seed)


def create_model_from_config(config) -> GoogleNet:
    """The network as train.py, eval.py and predict.py build it; export.py uses ``create_model``
    (MindSpore's own operators only, so that the exported graph runs anywhere)."""
    net = create_model(config.num_classes, dropout_rate=config.dropout_rate,
                       compiled_max_pool=compiled_max_pool_wanted(config), compiled_conv=compiled_conv_wanted(config),
                       seed=config.seed)
    if isinstance(net.maxpool1, CompiledMaxPool2d):
        logger.info("max pooling: compiled CPU kernel %s", kernel_library("max_pool"))
    if isinstance(net.conv2.conv, CompiledConv2d):
        logger.info("stride-1 convolutions: compiled CPU kernel %s", kernel_library("conv"))
    return net


def create_inference_model(config, checkpoint_path: str | None) -> GoogleNet:
    """The network eval.py, predict.py and the benchmark's inference run: built from the config,
    weights from ``checkpoint_path`` (None: as initialised), BatchNorm folded if the config says so,
    in evaluation mode."""
    net = create_model_from_config(config)
    if checkpoint_path is not None:
        load_weights(net, checkpoint_path)
    if config.fold_batchnorm:
        fold_batchnorm(net)
        logger.info("inference: BatchNorm folded into the convolutions")
    net.set_train(False)
    return net
