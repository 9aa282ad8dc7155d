"""The PyTorch peer of ``src.googlenet.GoogleNet`` for benchmark.py (optional: needs ``torch``).

Same layers, channel counts, output shapes and parameter count (5,610,154 for 10 classes) as the
MindSpore network, written with plain ``torch.nn`` because torchvision is not always importable.
MindSpore's ``pad_mode="same"`` pads odd totals at the bottom/right, PyTorch pads symmetrically:
the arithmetic per step is the same, so the speed comparison is like for like.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv2dBlock(nn.Sequential):
    """Conv (no bias) -> BatchNorm (eps 1e-3, MindSpore's momentum 0.9 = PyTorch's 0.1) -> ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels, eps=1e-3, momentum=0.1),
            nn.ReLU(inplace=True),
        )


class Inception(nn.Module):
    """Four branches concatenated on channels; the "5x5" branch uses a 3x3 kernel, as ours does."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int,
                 ch5x5red: int, ch5x5: int, pool_proj: int) -> None:
        super().__init__()
        self.branch1 = Conv2dBlock(in_channels, ch1x1, 1)
        self.branch2 = nn.Sequential(Conv2dBlock(in_channels, ch3x3red, 1), Conv2dBlock(ch3x3red, ch3x3, 3))
        self.branch3 = nn.Sequential(Conv2dBlock(in_channels, ch5x5red, 1), Conv2dBlock(ch5x5red, ch5x5, 3))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), Conv2dBlock(in_channels, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat((self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)), dim=1)


class GoogleNet(nn.Module):
    """Inception v1 as in src/googlenet.py; output: logits (N, num_classes)."""

    def __init__(self, num_classes: int = 1000, dropout_rate: float = 0.2) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            Conv2dBlock(3, 64, 7, stride=2), nn.MaxPool2d(3, stride=2, padding=1),
            Conv2dBlock(64, 64, 1), Conv2dBlock(64, 192, 3), nn.MaxPool2d(3, stride=2, padding=1),
        )
        self.blocks = nn.Sequential(
            Inception(192, 64, 96, 128, 16, 32, 32),
            Inception(256, 128, 128, 192, 32, 96, 64),
            nn.MaxPool2d(3, stride=2, padding=1),
            Inception(480, 192, 96, 208, 16, 48, 64),
            Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64),
            Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128),
            nn.MaxPool2d(2, stride=2),
            Inception(832, 256, 160, 320, 32, 128, 128),
            Inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        x = torch.flatten(x.mean(dim=(2, 3)), 1)
        return self.classifier(self.dropout(x))


def create_optimizer(net: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """Momentum SGD with BatchNorm and bias parameters undecayed, as the CPU config trains ours."""
    decay = [p for name, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for name, p in net.named_parameters() if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay},
                            {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=momentum)
