"""A cell shaped like the upstream model zoo's GoogleNet (mindspore-ai/models, research/cv/googlenet),
written here from its architecture and parameter names, to stand for checkpoints trained there.

Upstream's structure: every convolution is a ``Conv2dBlock`` of ``conv`` (no bias, 'same' padding),
``bn`` (BatchNorm, eps 1e-3) and ``relu``; an Inception block has branches ``b1``, ``b2`` and ``b3`` (the
last two a sequence of two blocks), a separate ``maxpool`` cell and ``b4``; the head averages the feature
map, flattens and applies ``classifier`` (its dropout is defined but never called).
"""

from __future__ import annotations

import mindspore.nn as nn
import mindspore.ops as ops
from mindspore.common.initializer import TruncatedNormal


class Conv2dBlock(nn.Cell):
    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, pad_mode="same",
                              has_bias=False, weight_init=TruncatedNormal(0.02))
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-3)
        self.relu = nn.ReLU()

    def construct(self, x):
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Cell):
    def __init__(self, in_channels: int, n1x1: int, n3x3red: int, n3x3: int, n5x5red: int, n5x5: int,
                 pool_planes: int) -> None:
        super().__init__()
        self.b1 = Conv2dBlock(in_channels, n1x1)
        self.b2 = nn.SequentialCell([Conv2dBlock(in_channels, n3x3red), Conv2dBlock(n3x3red, n3x3, 3)])
        self.b3 = nn.SequentialCell([Conv2dBlock(in_channels, n5x5red), Conv2dBlock(n5x5red, n5x5, 3)])
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=1, pad_mode="same")
        self.b4 = Conv2dBlock(in_channels, pool_planes)
        self.concat = ops.Concat(axis=1)

    def construct(self, x):
        return self.concat((self.b1(x), self.b2(x), self.b3(x), self.b4(self.maxpool(x))))


class UpstreamGoogleNet(nn.Cell):
    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.conv1 = Conv2dBlock(3, 64, 7, stride=2)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        self.conv2 = Conv2dBlock(64, 64)
        self.conv3 = Conv2dBlock(64, 192, 3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        self.block3a = Inception(192, 64, 96, 128, 16, 32, 32)
        self.block3b = Inception(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        self.block4a = Inception(480, 192, 96, 208, 16, 48, 64)
        self.block4b = Inception(512, 160, 112, 224, 24, 64, 64)
        self.block4c = Inception(512, 128, 128, 256, 24, 64, 64)
        self.block4d = Inception(512, 112, 144, 288, 32, 64, 64)
        self.block4e = Inception(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(kernel_size=2, stride=2, pad_mode="same")
        self.block5a = Inception(832, 256, 160, 320, 32, 128, 128)
        self.block5b = Inception(832, 384, 192, 384, 48, 128, 128)
        self.mean = ops.ReduceMean(keep_dims=True)
        self.dropout = nn.Dropout(p=0.2)
        self.flatten = nn.Flatten()
        self.classifier = nn.Dense(1024, num_classes, weight_init=TruncatedNormal(0.02),
                                   bias_init=TruncatedNormal(0.02))

    def construct(self, x):
        x = self.maxpool2(self.conv3(self.conv2(self.maxpool1(self.conv1(x)))))
        x = self.maxpool3(self.block3b(self.block3a(x)))
        x = self.block4e(self.block4d(self.block4c(self.block4b(self.block4a(x)))))
        x = self.block5b(self.block5a(self.maxpool4(x)))
        return self.classifier(self.flatten(self.mean(x, (2, 3))))
