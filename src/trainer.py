"""Training pieces built from a config: optimiser, loss scaling and the Model wrapper."""

from __future__ import annotations

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn
import numpy as np
from mindspore.train import DynamicLossScaleManager, FixedLossScaleManager

from src.cpu_kernels import create_momentum
from src.CrossEntropySmooth import create_loss
from src.errors import UserError
from src.finetune import is_head_parameter
from src.logger import logger
from src.train_step import RecipeTrainStep, needs_recipe_step


def checkpoint_prefix(dataset_name: str) -> str:
    """Checkpoint files are ``<prefix>-<epoch>_<step>.ckpt``."""
    return f"train_googlenet_{dataset_name}"


def whole_updates(dataset: ds.Dataset, accumulation_steps: int) -> ds.Dataset:
    """``dataset`` cut to a whole number of ``accumulation_steps`` batches per epoch (an update never
    spans two epochs, so every epoch-end checkpoint is taken between updates)."""
    batches = dataset.get_dataset_size()
    if accumulation_steps == 1:
        return dataset
    if batches < accumulation_steps:
        raise UserError(f"grad_accumulation_steps={accumulation_steps} is more than the {batches} batches of an "
                        "epoch; lower it or batch_size")
    used = batches - batches % accumulation_steps
    logger.info("gradient accumulation: %d updates of %d batches per epoch%s", used // accumulation_steps,
                accumulation_steps, f" (the last {batches - used} batches of each epoch unused)" if used < batches
                else "")
    return dataset.take(used) if used < batches else dataset


def _is_no_decay(param: ms.Parameter) -> bool:
    """BatchNorm gamma/beta and biases are not weight-decayed."""
    return param.name.endswith((".gamma", ".beta", ".bias"))


def _parameter_groups(config, net: nn.Cell, learning_rate: np.ndarray) -> list[dict]:
    """Optimizer groups: weight decay per no_decay_bn_bias, the backbone's LR scaled by backbone_lr_scale."""
    groups: dict[tuple[bool, bool], list[ms.Parameter]] = {}
    for param in net.trainable_params():
        scaled = config.backbone_lr_scale != 1.0 and not is_head_parameter(param)
        undecayed = config.no_decay_bn_bias and _is_no_decay(param)
        groups.setdefault((scaled, undecayed), []).append(param)
    result = []
    for (scaled, undecayed), params in groups.items():
        group = {"params": params, "weight_decay": 0.0 if undecayed else config.weight_decay}
        if scaled:
            group["lr"] = ms.Tensor(learning_rate * np.float32(config.backbone_lr_scale))
        result.append(group)
    return result + [{"order_params": net.trainable_params()}]


def create_optimizer(config, net: nn.Cell, learning_rate: np.ndarray) -> nn.Optimizer:
    """Momentum SGD with per-step learning rates; BN and bias parameters undecayed when asked, the
    backbone at ``backbone_lr_scale`` times the classifier's learning rate; the optimizer itself comes
    from the CPU layer (one kernel call per step where the config allows it)."""
    loss_scale = 1.0 if config.is_dynamic_loss_scale else config.loss_scale
    if config.no_decay_bn_bias or config.backbone_lr_scale != 1.0:
        return create_momentum(config, _parameter_groups(config, net, learning_rate), ms.Tensor(learning_rate),
                               loss_scale=loss_scale)
    return create_momentum(config, net.trainable_params(), ms.Tensor(learning_rate),
                           weight_decay=config.weight_decay, loss_scale=loss_scale)


def create_loss_scale_manager(config):
    """A fixed loss scale that never skips a step, or a dynamic one starting at loss_scale."""
    if config.is_dynamic_loss_scale:
        return DynamicLossScaleManager(init_loss_scale=config.loss_scale, scale_factor=2, scale_window=2000)
    return FixedLossScaleManager(config.loss_scale, drop_overflow_update=False)


class _RecipeModel(ms.Model):
    """``ms.Model`` whose training step is ``RecipeTrainStep``: the Model builds its usual step (AMP,
    loss cell, fixed loss scale), whose loss cell and optimizer the recipe step then takes over."""

    def __init__(self, net: nn.Cell, *, accumulation_steps: int, clip_norm: float, ema_decay: float,
                 **kwargs) -> None:
        self._recipe = {"accumulation_steps": accumulation_steps, "clip_norm": clip_norm, "ema_decay": ema_decay,
                        "averaged": net}
        super().__init__(net, **kwargs)

    def _build_train_network(self):
        step = super()._build_train_network()
        return RecipeTrainStep(step.network, step.optimizer, step.sens, **self._recipe).set_train()


def create_train_model(config, net: nn.Cell, learning_rate: np.ndarray, metrics: dict | None = None) -> ms.Model:
    """The Model train.py runs: loss, optimiser, AMP level and loss scaling from the config;
    ``metrics`` (for evaluation during training) builds its evaluation network too. With
    ema_decay, clip_grad_norm or grad_accumulation_steps its training step is ``RecipeTrainStep``
    (``learning_rate`` then has one entry per optimizer update)."""
    kwargs = {"loss_fn": create_loss(config), "optimizer": create_optimizer(config, net, learning_rate),
              "metrics": metrics, "amp_level": config.amp_level,
              "loss_scale_manager": create_loss_scale_manager(config)}
    if not needs_recipe_step(config):
        return ms.Model(net, **kwargs)
    return _RecipeModel(net, accumulation_steps=config.grad_accumulation_steps, clip_norm=config.clip_grad_norm,
                        ema_decay=config.ema_decay, **kwargs)
