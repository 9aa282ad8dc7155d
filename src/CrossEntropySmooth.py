"""Softmax cross entropy with label smoothing (file name kept from the model zoo)."""

from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Tensor


class CrossEntropySmooth(nn.LossBase):
    """Cross entropy against smoothed one-hot targets: 1 - factor on the true class,
    factor / (num_classes - 1) on each other class. ``smooth_factor=0`` is plain cross entropy.

    Labels are class indices (N,) or soft labels (N, num_classes) summing to 1 per row (mixup, cutmix);
    soft labels are smoothed by the same affine map as one-hot rows, so the targets still sum to 1."""

    def __init__(self, num_classes: int, smooth_factor: float = 0.0, reduction: str = "mean") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.onehot = ops.OneHot()
        self.on_value = Tensor(1.0 - smooth_factor, ms.float32)
        self.off_value = Tensor(smooth_factor / (num_classes - 1), ms.float32)
        self.ce = nn.SoftmaxCrossEntropyWithLogits(reduction=reduction)

    def construct(self, logits: Tensor, label: Tensor) -> Tensor:
        if label.ndim == 1:
            target = self.onehot(label, self.num_classes, self.on_value, self.off_value)
        else:
            target = label * (self.on_value - self.off_value) + self.off_value
        return self.ce(logits, target)


def create_loss(config) -> CrossEntropySmooth:
    """The training loss of a config: label smoothing when use_label_smooth is set."""
    factor = config.label_smooth_factor if config.use_label_smooth else 0.0
    return CrossEntropySmooth(num_classes=config.num_classes, smooth_factor=factor)
