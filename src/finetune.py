"""Fine-tuning helpers: freezing the backbone and telling head from backbone parameters."""

from __future__ import annotations

import mindspore as ms
import mindspore.nn as nn

from src.checkpoint import HEAD_PREFIX
from src.logger import logger


def is_head_parameter(param: ms.Parameter) -> bool:
    """The classifier's weight and bias; everything else is the backbone."""
    return param.name.startswith(HEAD_PREFIX)


def freeze_backbone(net: nn.Cell) -> None:
    """Train only the classifier: backbone weights get no gradient and BatchNorm keeps its statistics.

    BatchNorm layers switch to their moving statistics (and stop updating them), so that the
    frozen backbone computes exactly what it computed before fine-tuning.
    """
    frozen = [p for p in net.trainable_params() if not is_head_parameter(p)]
    for param in frozen:
        param.requires_grad = False
    for _, cell in net.cells_and_names():
        if isinstance(cell, nn.BatchNorm2d):
            cell.use_batch_statistics = False
    trainable = sum(int(p.size) for p in net.trainable_params())
    logger.info("freeze_backbone: %d backbone parameters frozen (BatchNorm statistics too); "
                "training %d weights of the classifier", len(frozen), trainable)
