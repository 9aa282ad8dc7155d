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

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor
from mindspore.common.initializer import TruncatedNormal

from src.dropout import KeyedDropout


def max_pool(kernel_size: int, stride: int) -> nn.MaxPool2d:
    """A max pool with 'same' padding."""
    return nn.MaxPool2d(kernel_size=kernel_size, stride=stride, pad_mode="same")


class Conv2dBlock(nn.Cell):
    """Conv (no bias, 'same' padding, TruncatedNormal(0.02) weights) -> BatchNorm (eps 1e-3) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="same",
                              has_bias=False, weight_init=TruncatedNormal(0.02))
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU()

    def construct(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Cell):
    """Four parallel branches concatenated on channels; arguments are the paper's table columns."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.b1 = Conv2dBlock(in_channels, ch1x1, 1)
        self.b2 = nn.SequentialCell(Conv2dBlock(in_channels, ch3x3red, 1), Conv2dBlock(ch3x3red, ch3x3, 3))
        # The paper's 5x5 branch; 3x3 here, as in the model zoo.
        self.b3 = nn.SequentialCell(Conv2dBlock(in_channels, ch5x5red, 1), Conv2dBlock(ch5x5red, ch5x5, 3))
        self.maxpool = max_pool(3, 1)
        self.b4 = Conv2dBlock(in_channels, pool_proj, 1)
        self.concat = ops.Concat(axis=1)

    def construct(self, x: Tensor) -> Tensor:
        return self.concat((self.b1(x), self.b2(x), self.b3(x), self.b4(self.maxpool(x))))


class GoogleNet(nn.Cell):
    """Inception v1. Output: logits (N, num_classes), or with ``include_top=False`` the
    (N, 1024, H/32, W/32) feature map, in training and evaluation alike."""

    def __init__(self, num_classes: int = 1000, include_top: bool = True, dropout_rate: float = 0.2,
                 seed: int = 0) -> None:
        super().__init__()
        self.include_top = include_top
        self.conv1 = Conv2dBlock(3, 64, kernel_size=7, stride=2)
        self.maxpool1 = max_pool(3, 2)
        self.conv2 = Conv2dBlock(64, 64, kernel_size=1)
        self.conv3 = Conv2dBlock(64, 192, kernel_size=3)
        self.maxpool2 = max_pool(3, 2)

        self.block3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.block3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = max_pool(3, 2)

        self.block4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.block4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.block4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.block4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.block4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = max_pool(2, 2)

        self.block5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.block5b = Inception(832, 384, 192, 384, 48, 128, 128)

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


def create_model(num_classes: int, include_top: bool = True, dropout_rate: float = 0.2, seed: int = 0) -> GoogleNet:
    """The network the entry scripts train, evaluate and export, of MindSpore's own cells (the CPU
    layer, src/cpu_kernels, is applied to it afterwards where it helps). ``seed`` keys the dropout masks."""
    return GoogleNet(num_classes=num_classes, include_top=include_top, dropout_rate=dropout_rate, seed=seed)
