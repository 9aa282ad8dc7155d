"""Training pieces built from a config: optimiser, loss scaling, the Model wrapper, callbacks."""

from __future__ import annotations

import time

import mindspore as ms
import mindspore.nn as nn
import numpy as np
from mindspore.train import Callback, DynamicLossScaleManager, FixedLossScaleManager

from src.compiled_kernels import compiled_kernels_apply, kernel_library
from src.CrossEntropySmooth import create_loss
from src.finetune import is_head_parameter
from src.logger import logger
from src.metrics_log import MetricsLog
from src.optimizer import CompiledMomentum, create_momentum


def checkpoint_prefix(dataset_name: str) -> str:
    """Checkpoint files are ``<prefix>-<epoch>_<step>.ckpt``."""
    return f"train_googlenet_{dataset_name}"


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


def compiled_optimizer_wanted(config) -> bool:
    """The config's ``compiled_optimizer`` where it applies: on CPU, in float32 (amp_level O0)."""
    return bool(config.compiled_optimizer) and compiled_kernels_apply(config)


def create_optimizer(config, net: nn.Cell, learning_rate: np.ndarray) -> nn.Optimizer:
    """Momentum SGD with per-step learning rates; BN and bias parameters undecayed when asked, the
    backbone at ``backbone_lr_scale`` times the classifier's learning rate; the update as one call of
    the compiled kernel when the config's ``compiled_optimizer`` applies (src/optimizer.py)."""
    loss_scale = 1.0 if config.is_dynamic_loss_scale else config.loss_scale
    compiled = compiled_optimizer_wanted(config)
    if config.no_decay_bn_bias or config.backbone_lr_scale != 1.0:
        optimizer = create_momentum(_parameter_groups(config, net, learning_rate), ms.Tensor(learning_rate),
                                    config.momentum, loss_scale=loss_scale, compiled=compiled)
    else:
        optimizer = create_momentum(net.trainable_params(), ms.Tensor(learning_rate), config.momentum,
                                    weight_decay=config.weight_decay, loss_scale=loss_scale, compiled=compiled)
    if isinstance(optimizer, CompiledMomentum):
        logger.info("optimizer: compiled CPU kernel %s", kernel_library("optimizer"))
    return optimizer


def create_loss_scale_manager(config):
    """A fixed loss scale that never skips a step, or a dynamic one starting at loss_scale."""
    if config.is_dynamic_loss_scale:
        return DynamicLossScaleManager(init_loss_scale=config.loss_scale, scale_factor=2, scale_window=2000)
    return FixedLossScaleManager(config.loss_scale, drop_overflow_update=False)


def create_train_model(config, net: nn.Cell, learning_rate: np.ndarray, metrics: dict | None = None) -> ms.Model:
    """The Model train.py runs: loss, optimiser, AMP level and loss scaling from the config;
    ``metrics`` (for evaluation during training) builds its evaluation network too."""
    return ms.Model(net, loss_fn=create_loss(config), optimizer=create_optimizer(config, net, learning_rate),
                    metrics=metrics, amp_level=config.amp_level,
                    loss_scale_manager=create_loss_scale_manager(config))


def _loss_tensor(outputs) -> ms.Tensor:
    """The loss from a train step's outputs (the loss-scale cell adds overflow flag and scale)."""
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def step_in_epoch(params) -> int:
    """The 1-based step within the current epoch."""
    return (params.cur_step_num - 1) % params.batch_num + 1


def global_step(params) -> int:
    """Steps since the start of training, also in a run resumed at a later epoch."""
    return (params.cur_epoch_num - 1) * params.batch_num + step_in_epoch(params)


class TrainMonitor(Callback):
    """Model-zoo log lines: ``epoch: N step: M, loss is X`` every ``log_interval`` steps and at
    each epoch end, then the epoch's time and throughput over all ranks. With a ``metrics_log``,
    the same numbers (and the learning rate) also go to that JSON-lines file."""

    def __init__(self, log_interval: int, images_per_step: int, learning_rates: np.ndarray | None = None,
                 metrics_log: MetricsLog | None = None) -> None:
        super().__init__()
        self.log_interval = log_interval
        self.images_per_step = images_per_step
        self.learning_rates = learning_rates
        self.metrics_log = metrics_log
        self.epoch_start = 0.0
        self.epoch_losses: list[ms.Tensor] = []

    def _lr(self, step: int) -> float:
        """The learning rate of global step ``step`` (1-based)."""
        if self.learning_rates is None:
            return float("nan")
        return float(self.learning_rates[min(step, len(self.learning_rates)) - 1])

    def on_train_epoch_begin(self, run_context) -> None:
        self.epoch_start = time.perf_counter()
        self.epoch_losses = []

    def on_train_step_end(self, run_context) -> None:
        params = run_context.original_args()
        loss_tensor = _loss_tensor(params.net_outputs)
        self.epoch_losses.append(loss_tensor)
        step = step_in_epoch(params)
        if step % self.log_interval == 0 or step == params.batch_num:
            loss = float(np.mean(loss_tensor.asnumpy()))
            print(f"epoch: {params.cur_epoch_num} step: {step}, loss is {loss:.7g}", flush=True)
            if self.metrics_log is not None:
                total = global_step(params)
                self.metrics_log.append("train", params.cur_epoch_num, total, loss=loss, lr=self._lr(total))

    def on_train_epoch_end(self, run_context) -> None:
        params = run_context.original_args()
        seconds = time.perf_counter() - self.epoch_start
        images = params.batch_num * self.images_per_step
        print(f"epoch: {params.cur_epoch_num} time: {seconds:.2f} s, per step time: "
              f"{1000 * seconds / params.batch_num:.1f} ms, {images / seconds:.1f} images/s", flush=True)
        if self.metrics_log is not None:
            step = global_step(params)
            mean_loss = float(np.mean([np.mean(t.asnumpy()) for t in self.epoch_losses]))
            self.metrics_log.append("epoch", params.cur_epoch_num, step, loss=mean_loss, lr=self._lr(step),
                                    images_per_s=images / seconds, seconds=seconds)
