"""Learning-rate schedules: pure functions returning one float32 value per training step.

All three follow the model zoo's GoogleNet: the CIFAR-10 step schedule, and for ImageNet linear
warm-up followed by step decay ("exponential") or by cosine annealing that is constant within
an epoch.
"""

from __future__ import annotations

import math

import numpy as np

from src.errors import ConfigError

# CIFAR-10: x0.1 after 30%, x0.01 after 60%, x0.001 after 80% of all steps.
CIFAR_STEP_FRACTIONS = ((3, 10), (6, 10), (8, 10))


def _warmup(step: int, warmup_steps: int, base_lr: float) -> float:
    """Linear ramp that reaches base_lr on the last warm-up step."""
    return base_lr * (step + 1) / warmup_steps


def cifar_step_lr(lr_max: float, total_steps: int) -> np.ndarray:
    """lr_max until 30% of the steps, then x0.1, x0.01 from 60%, x0.001 from 80%."""
    # Step i is decayed once i >= fraction * total_steps; ceil keeps that exact in integers.
    boundaries = [-(-total_steps * num // den) for num, den in CIFAR_STEP_FRACTIONS]
    steps = np.arange(total_steps)
    decays = np.searchsorted(boundaries, steps, side="right")
    return (lr_max * np.power(0.1, decays)).astype(np.float32)


def warmup_step_lr(base_lr: float, steps_per_epoch: int, total_epochs: int, milestones: list[int],
                   gamma: float, warmup_epochs: int = 0) -> np.ndarray:
    """Linear warm-up, then base_lr x gamma^(number of milestone epochs reached)."""
    warmup_steps = warmup_epochs * steps_per_epoch
    milestone_steps = [m * steps_per_epoch for m in milestones]
    values = []
    for step in range(total_epochs * steps_per_epoch):
        if step < warmup_steps:
            values.append(_warmup(step, warmup_steps, base_lr))
        else:
            values.append(base_lr * gamma ** sum(step >= m for m in milestone_steps))
    return np.array(values, dtype=np.float32)


def warmup_cosine_annealing_lr(base_lr: float, steps_per_epoch: int, total_epochs: int, t_max: int,
                               eta_min: float = 0.0, warmup_epochs: int = 0) -> np.ndarray:
    """Linear warm-up, then eta_min + (base_lr - eta_min)(1 + cos(pi * epoch / t_max)) / 2."""
    warmup_steps = warmup_epochs * steps_per_epoch
    values = []
    for step in range(total_epochs * steps_per_epoch):
        if step < warmup_steps:
            values.append(_warmup(step, warmup_steps, base_lr))
        else:
            epoch = step // steps_per_epoch
            values.append(eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / t_max)) / 2)
    return np.array(values, dtype=np.float32)


SCHEDULES = ("step", "exponential", "cosine_annealing")


def create_lr_schedule(config, steps_per_epoch: int) -> np.ndarray:
    """The per-step learning rates of a whole run, chosen by ``config.lr_scheduler``."""
    total_epochs = config.epoch_size
    if config.lr_scheduler == "step":
        return cifar_step_lr(config.lr_init, total_epochs * steps_per_epoch)
    if config.lr_scheduler == "exponential":
        return warmup_step_lr(config.lr_init, steps_per_epoch, total_epochs, config.lr_epochs,
                              config.lr_gamma, config.warmup_epochs)
    if config.lr_scheduler == "cosine_annealing":
        return warmup_cosine_annealing_lr(config.lr_init, steps_per_epoch, total_epochs, config.T_max,
                                          config.eta_min, config.warmup_epochs)
    raise ConfigError(f"unknown lr_scheduler '{config.lr_scheduler}'; expected one of: {', '.join(SCHEDULES)}")
