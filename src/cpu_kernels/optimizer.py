"""Momentum SGD with the whole update in one call of a compiled CPU kernel (kernels/optimizer.cc).

``nn.Momentum`` updates each parameter with its own operations: weight decay (Mul, AddN), loss
scaling (Mul) and ApplyMomentum, about 290 operations for GoogleNet, whose launches cost more than
their arithmetic in a 32x32 training step (docs/PERFORMANCE.md, "Changes tried"). ``CompiledMomentum`` is
``nn.Momentum`` (same arguments, parameter groups, learning-rate schedules, the same ``moments``
state, so checkpoints and resumption are unchanged) whose step is one kernel call doing the same
arithmetic in the same order. The kernel writes the parameters and moments in place, and is declared
to MindSpore as doing so (``writes_inputs``), as nn.Momentum's ApplyMomentum is.
"""

from __future__ import annotations

from pathlib import Path

import mindspore.nn as nn
import mindspore.ops as ops
import numpy as np
from mindspore import Tensor
from mindspore import dtype as mstype

from src.cpu_kernels.build import kernel_library, kernels_apply, writes_inputs


class CompiledMomentum(nn.Momentum):
    """``nn.Momentum(params, learning_rate, momentum, weight_decay, loss_scale)`` (float32
    parameters, weight decay fixed per group, no gradient centralisation) on the compiled kernel
    ``library``."""

    def __init__(self, params, learning_rate, momentum: float, library: Path, weight_decay: float = 0.0,
                 loss_scale: float = 1.0) -> None:
        super().__init__(params, learning_rate, momentum, weight_decay=weight_decay, loss_scale=loss_scale)
        self.library = library
        if self.dynamic_weight_decay or self.is_group and any(self.grad_centralization_flags):
            raise ValueError("CompiledMomentum: fixed weight decay and no gradient centralisation only")
        count = len(self._parameters)
        # The weight decay each parameter gets in nn.Optimizer.decay_weight (0: none).
        decays = np.zeros(count, np.float32)
        if self.exec_weight_decay:
            per_group = self.weight_decay if self.is_group else (self.weight_decay,) * count
            decays = np.array([float(decay) if flag else 0.0 for decay, flag in zip(per_group, self.decay_flags,
                                                                                     strict=True)], np.float32)
        self.update_settings = Tensor(np.concatenate([[momentum, 1.0 / loss_scale], decays]).astype(np.float32))
        self.stack = ops.Stack()

        def done_shape(*shapes):
            return [1]

        # inputs: settings, lr, the parameters and the moments (both written), the gradients
        self.update = writes_inputs(
            ops.Custom(f"{library}:MomentumUpdate", out_shape=done_shape, out_dtype=mstype.float32, func_type="aot"),
            [False, False] + [True] * (2 * count) + [False] * count)

    def construct(self, gradients):
        lr = self.get_lr()
        self.assignadd(self.global_step, self.global_step_increase_tensor)
        lr = self.stack(lr) if self.is_group_lr else lr.reshape((1,))
        return self.update(self.update_settings, lr, *self._parameters, *self.moments, *gradients)


def compiled_optimizer_wanted(config) -> bool:
    """The config's ``compiled_optimizer`` where it applies: on CPU, in float32 (amp_level O0)."""
    return bool(config.compiled_optimizer) and kernels_apply(config)


def create_momentum(params, learning_rate, momentum: float, weight_decay: float = 0.0, loss_scale: float = 1.0,
                    compiled: bool = False) -> nn.Momentum:
    """nn.Momentum, or CompiledMomentum when asked for and the kernel is available."""
    library = kernel_library("optimizer") if compiled else None
    if library is not None:
        return CompiledMomentum(params, learning_rate, momentum, library, weight_decay=weight_decay,
                                loss_scale=loss_scale)
    return nn.Momentum(params, learning_rate, momentum, weight_decay=weight_decay, loss_scale=loss_scale)
