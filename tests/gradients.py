"""A cell giving a cell's gradients, shared by the kernel tests."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class Gradients(nn.Cell):
    """Gradients of sum(cell(x) * dy) with respect to x and to the cell's trainable parameters:
    ((dx,), (d parameter, ...))."""

    def __init__(self, cell: nn.Cell) -> None:
        super().__init__()
        self.cell = cell
        self.weights = ms.ParameterTuple(cell.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

    def construct(self, x, dy):
        return self.grad(self.cell, self.weights)(x, dy)
