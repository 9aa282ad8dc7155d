"""The training step with the recipe options around the optimizer: gradient accumulation, clipping by
global norm, and an exponential moving average (EMA) of the weights.

``RecipeTrainStep`` is ``nn.TrainOneStepCell`` (same loss scaling, same data-parallel gradient
reduction) whose optimizer call is wrapped:

- ``accumulation_steps`` N > 1: the reduced gradients of N consecutive batches are summed into
  ``accumulated.<name>`` buffers; every N-th batch the optimizer applies their mean and the buffers are
  cleared. With a mean loss this is the gradient of one batch N times larger.
- ``clip_norm`` > 0: the gradients the optimizer receives are scaled down to that global L2 norm
  (of the unscaled gradients: the threshold is multiplied by the fixed loss scale they carry).
- ``ema_decay`` d > 0: the training network holds ``ema.<name>``, an average of every float parameter
  of the network (weights and BatchNorm statistics), so checkpoints hold them. ``EmaUpdate``, run after
  every update (``src.callbacks.EmaUpdater``), sets ``ema.<name> = decay * ema.<name> + (1 - decay) * <name>``
  with ``decay = min(d, (1 + u) / (10 + u))`` after u updates, so that early averages do not drag the
  initial weights along. It is a graph of its own: the compiled optimizer writes the parameters in place
  without the training graph knowing, so a read of them later in that graph may see the old values.

The optimizer is whatever ``create_optimizer`` built (the compiled CPU kernel or ``nn.Momentum``); its
``global_step`` counts updates, not batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import mindspore as ms
import mindspore.nn as nn
import mindspore.ops as ops
from mindspore import Parameter, ParameterTuple, Tensor

EMA_PREFIX = "ema."
ACCUMULATED_PREFIX = "accumulated."
ACCUMULATION_COUNTER = "accumulation_step"
# At the start the average follows the weights closely: decay = min(ema_decay, (1 + u) / (10 + u)).
_EMA_WARMUP = 10.0

_ema_update = ops.MultitypeFuncGraph("ema_update")
_accumulate = ops.MultitypeFuncGraph("accumulate")
_clear = ops.MultitypeFuncGraph("clear")


@_ema_update.register("Tensor", "Tensor", "Tensor")
def _ema_update_one(decay, average, value):
    return ops.assign_sub(average, (1 - decay) * (average - ops.cast(value, average.dtype)))


@_accumulate.register("Tensor", "Tensor")
def _accumulate_one(total, grad):
    return ops.assign_add(total, ops.cast(grad, total.dtype))


@_clear.register("Tensor")
def _clear_one(total):
    return ops.assign(total, ops.zeros_like(total))


def averaged_parameters(network: nn.Cell) -> list[Parameter]:
    """The parameters the EMA follows: every float parameter of ``network`` (not counters)."""
    return [p for p in network.get_parameters() if p.dtype in (ms.float32, ms.float16, ms.bfloat16)]


class RecipeTrainStep(nn.TrainOneStepCell):
    """One training step: loss and gradients of ``network`` (a loss cell), reduced across ranks, then
    accumulation, clipping and the optimizer update as configured (module docstring). With ``ema_decay``
    it holds the averages of ``averaged``'s parameters, which ``EmaUpdate`` updates."""

    def __init__(self, network: nn.Cell, optimizer: nn.Optimizer, sens: float = 1.0, *, accumulation_steps: int = 1,
                 clip_norm: float = 0.0, ema_decay: float = 0.0, averaged: nn.Cell | None = None) -> None:
        super().__init__(network, optimizer, sens)
        self.accumulation_steps = accumulation_steps
        self.clip = clip_norm > 0
        self.clip_norm = float(clip_norm) * float(self.sens)
        self.hyper_map = ops.HyperMap()
        if accumulation_steps > 1:
            self.accumulated = self.weights.clone(prefix=ACCUMULATED_PREFIX.rstrip("."), init="zeros")
            self.counter = Parameter(Tensor(0, ms.int32), name=ACCUMULATION_COUNTER, requires_grad=False)
            self.mean_factor = Tensor(1.0 / accumulation_steps, ms.float32)
        self.ema = ema_decay > 0
        if self.ema:
            if averaged is None:
                raise ValueError("RecipeTrainStep: ema_decay needs the network to average")
            values = averaged_parameters(averaged)
            self.averaged = ParameterTuple(values)
            self.averages = ParameterTuple(
                Parameter(p.data.copy(), name=EMA_PREFIX + p.name, requires_grad=False) for p in values)
            self.ema_decay = ema_decay

    def _update(self, grads):
        if self.clip:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        return self.optimizer(grads)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        sens = ops.fill(loss.dtype, loss.shape, self.sens)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.grad_reducer(grads)
        if self.accumulation_steps == 1:
            return ops.depend(loss, self._update(grads))
        loss = ops.depend(loss, self.hyper_map(_accumulate, self.accumulated, grads))
        loss = ops.depend(loss, ops.assign_add(self.counter, 1))
        if self.counter % self.accumulation_steps == 0:
            mean = self.hyper_map(ops.partial(ops.mul, self.mean_factor), self.accumulated)
            done = self._update(mean)
            loss = ops.depend(loss, self.hyper_map(_clear, ops.depend(self.accumulated, done)))
        return loss


class EmaUpdate(nn.Cell):
    """One EMA update of a RecipeTrainStep's averages from its network's current parameters, the decay
    warmed up by the optimizer's update count; call it after each update."""

    def __init__(self, step: RecipeTrainStep) -> None:
        super().__init__(auto_prefix=False)
        self.averages = step.averages
        self.averaged = step.averaged
        self.global_step = step.optimizer.global_step
        self.decay = Tensor(step.ema_decay, ms.float32)
        self.warmup = Tensor(_EMA_WARMUP, ms.float32)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        updates = ops.cast(self.global_step, ms.float32).reshape(())
        decay = ops.minimum(self.decay, (1 + updates) / (self.warmup + updates))
        return self.hyper_map(ops.partial(_ema_update, decay), self.averages, self.averaged)


def needs_recipe_step(config) -> bool:
    """Whether the config asks for an option of RecipeTrainStep."""
    return config.ema_decay > 0 or config.clip_grad_norm > 0 or config.grad_accumulation_steps > 1


def ema_pairs(train_network: nn.Cell) -> list[tuple[Parameter, Parameter]]:
    """(parameter, its average) for a training network with an EMA; empty otherwise."""
    if not isinstance(train_network, RecipeTrainStep) or not train_network.ema:
        return []
    return list(zip(train_network.averaged, train_network.averages, strict=True))


@contextmanager
def ema_weights(train_network: nn.Cell) -> Iterator[bool]:
    """Inside the block the network holds its EMA weights (yields whether it has any); after it, its own."""
    pairs = ema_pairs(train_network)
    kept = [param.data.copy() for param, _ in pairs]
    try:
        for param, average in pairs:
            param.set_data(average.data.copy())
        yield bool(pairs)
    finally:
        for (param, _), value in zip(pairs, kept, strict=True):
            param.set_data(value)
