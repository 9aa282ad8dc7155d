"""Dropout whose masks are a pure function of (seed, training step, element): the same in every run.

MindSpore 2.10's CPU Dropout draws every mask from one random engine shared by the threads of an
auto-tuned parallel launch: after its first few calls the threads race on the engine, so the same
seed gives other masks run to run, and any two training runs part within a few steps. Here the mask
of element ``i`` at step ``t`` is ``hash32(i ^ hash32(t * golden + seed)) < keep * 2**32``, with a
32-bit integer hash computed by MindSpore's own integer operations on every device. The step is a
parameter of the cell, so a checkpoint holds it and a resumed run draws the masks an uninterrupted
run would have drawn.
"""

from __future__ import annotations

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Parameter, Tensor
from mindspore import dtype as mstype

STEP_PARAMETER = "step"  # name of the counter inside the cell (``dropout.step`` in GoogleNet)
_LOW_32_BITS = 0xFFFFFFFF
_GOLDEN = 0x9E3779B1  # odd: consecutive steps land far apart before hashing
_MIX = 0x45D9F3B      # the multiplier of a well-tested 32-bit integer hash (two rounds)


def hash32(values: np.ndarray) -> np.ndarray:
    """The cell's hash in NumPy (int64 arrays holding unsigned 32-bit values)."""
    values = values.astype(np.int64) & _LOW_32_BITS
    for _ in range(2):
        values = (((values >> 16) ^ values) * _MIX) & _LOW_32_BITS
    return (values >> 16) ^ values


def reference_mask(seed: int, step: int, shape: tuple[int, ...], p: float) -> np.ndarray:
    """The elements ``KeyedDropout(p, seed)`` keeps at ``step`` of an input of ``shape``, in NumPy."""
    key = hash32(np.array([(step * _GOLDEN + seed) & _LOW_32_BITS]))[0]
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    return hash32(index ^ key) < int((1.0 - p) * 2**32)


class KeyedDropout(nn.Cell):
    """``nn.Dropout(p)`` with masks keyed by ``seed``, a step counter and the element index.

    In training each call zeroes an element with probability ``p``, scales the others by ``1 / (1 - p)``
    and advances the counter; out of training (and with ``p = 0``) the cell is the identity.
    """

    def __init__(self, p: float, seed: int = 0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must lie in [0, 1), got {p}")
        self.p = p
        self.keep = 1.0 - p
        self.threshold = int(self.keep * 2**32)  # keep an element when its hash lies below
        self.seed = int(seed) & _LOW_32_BITS
        self.step = Parameter(Tensor(np.zeros(1, np.int64)), name=STEP_PARAMETER, requires_grad=False)
        self.one = Tensor(np.ones(1, np.int64))
        self.shift = ops.RightShift()
        self.sixteen = Tensor(16, mstype.int64)

    def _hash32(self, values: Tensor) -> Tensor:
        for _ in range(2):
            values = ops.bitwise_and(ops.bitwise_xor(self.shift(values, self.sixteen), values) * _MIX, _LOW_32_BITS)
        return ops.bitwise_xor(self.shift(values, self.sixteen), values)

    def construct(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        key = self._hash32(ops.bitwise_and(self.step * _GOLDEN + self.seed, _LOW_32_BITS))
        ops.assign_add(self.step, self.one)
        index = ops.arange(0, x.size, dtype=mstype.int64).reshape(x.shape)
        keep = ops.cast(self._hash32(ops.bitwise_xor(index, key)) < self.threshold, x.dtype)
        return x * keep * (1.0 / self.keep)
