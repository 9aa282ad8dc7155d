"""Learning-rate schedules as per-step arrays."""

from src.lr_scheduler.schedules import (
    SCHEDULES,
    cifar_step_lr,
    create_lr_schedule,
    warmup_cosine_annealing_lr,
    warmup_step_lr,
)

__all__ = ["SCHEDULES", "cifar_step_lr", "create_lr_schedule", "warmup_cosine_annealing_lr", "warmup_step_lr"]
