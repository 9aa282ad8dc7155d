"""Training pieces built from a config: optimiser, loss scaling, the Model wrapper, callbacks."""

from __future__ import annotations

import time

import mindspore as ms
import mindspore.nn as nn
import numpy as np
from mindspore.train import Callback, CheckpointConfig, DynamicLossScaleManager, FixedLossScaleManager, ModelCheckpoint

from src.CrossEntropySmooth import create_loss


def checkpoint_prefix(dataset_name: str) -> str:
    """Checkpoint files are ``<prefix>-<epoch>_<step>.ckpt``."""
    return f"train_googlenet_{dataset_name}"


def _is_no_decay(param: ms.Parameter) -> bool:
    """BatchNorm gamma/beta and biases are not weight-decayed."""
    return param.name.endswith((".gamma", ".beta", ".bias"))


def create_optimizer(config, net: nn.Cell, learning_rate: np.ndarray) -> nn.Optimizer:
    """Momentum SGD with per-step learning rates; BN and bias parameters undecayed when asked."""
    params = net.trainable_params()
    loss_scale = 1.0 if config.is_dynamic_loss_scale else config.loss_scale
    if config.no_decay_bn_bias:
        groups = [
            {"params": [p for p in params if not _is_no_decay(p)], "weight_decay": config.weight_decay},
            {"params": [p for p in params if _is_no_decay(p)], "weight_decay": 0.0},
            {"order_params": params},
        ]
        return nn.Momentum(groups, ms.Tensor(learning_rate), config.momentum, loss_scale=loss_scale)
    return nn.Momentum(params, ms.Tensor(learning_rate), config.momentum,
                       weight_decay=config.weight_decay, loss_scale=loss_scale)


def create_loss_scale_manager(config):
    """A fixed loss scale that never skips a step, or a dynamic one starting at loss_scale."""
    if config.is_dynamic_loss_scale:
        return DynamicLossScaleManager(init_loss_scale=config.loss_scale, scale_factor=2, scale_window=2000)
    return FixedLossScaleManager(config.loss_scale, drop_overflow_update=False)


def create_train_model(config, net: nn.Cell, learning_rate: np.ndarray) -> ms.Model:
    """The Model train.py runs: loss, optimiser, AMP level and loss scaling from the config."""
    return ms.Model(net, loss_fn=create_loss(config), optimizer=create_optimizer(config, net, learning_rate),
                    amp_level=config.amp_level, loss_scale_manager=create_loss_scale_manager(config))


def create_checkpoint_callback(config, steps_per_epoch: int) -> ModelCheckpoint:
    """Save ``train_googlenet_<dataset>-<epoch>_<step>.ckpt`` every save_checkpoint_epochs."""
    policy = CheckpointConfig(save_checkpoint_steps=steps_per_epoch * config.save_checkpoint_epochs,
                              keep_checkpoint_max=config.keep_checkpoint_max)
    return ModelCheckpoint(prefix=checkpoint_prefix(config.dataset_name), directory=config.ckpt_save_dir,
                           config=policy)


def _loss_value(outputs) -> float:
    """The loss from a train step's outputs (the loss-scale cell adds overflow flag and scale)."""
    if isinstance(outputs, (tuple, list)):
        outputs = outputs[0]
    return float(np.mean(outputs.asnumpy()))


class TrainMonitor(Callback):
    """Model-zoo log lines: ``epoch: N step: M, loss is X`` every ``log_interval`` steps and at
    each epoch end, then the epoch's time and throughput over all ranks."""

    def __init__(self, log_interval: int, images_per_step: int) -> None:
        super().__init__()
        self.log_interval = log_interval
        self.images_per_step = images_per_step
        self.epoch_start = 0.0

    def on_train_epoch_begin(self, run_context) -> None:
        self.epoch_start = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        params = run_context.original_args()
        step_in_epoch = (params.cur_step_num - 1) % params.batch_num + 1
        if step_in_epoch % self.log_interval == 0 or step_in_epoch == params.batch_num:
            loss = _loss_value(params.net_outputs)
            print(f"epoch: {params.cur_epoch_num} step: {step_in_epoch}, loss is {loss:.7g}", flush=True)

    def on_train_epoch_end(self, run_context) -> None:
        params = run_context.original_args()
        seconds = time.perf_counter() - self.epoch_start
        images = params.batch_num * self.images_per_step
        print(f"epoch: {params.cur_epoch_num} time: {seconds:.2f} s, per step time: "
              f"{1000 * seconds / params.batch_num:.1f} ms, {images / seconds:.1f} images/s", flush=True)
