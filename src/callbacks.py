"""The callbacks of training: the model-zoo log lines (and the metrics log), periodic checkpoints,
evaluation with a best checkpoint, and the assembly of the list train.py passes to ``Model.train``."""

from __future__ import annotations

import time
from dataclasses import dataclass

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore.train import Callback

from src.checkpoint import read_checkpoint, save_checkpoint_file
from src.logger import logger
from src.metrics import primary_metric, split_image_count
from src.metrics_log import MetricsLog
from src.model_utils.device_adapter import Ranks
from src.rank_debug import ParameterDump, debug_dir
from src.resume import RunFiles
from src.train_step import EmaUpdate, ema_pairs, ema_weights

BEST_METRIC_KEY = "best_metric"


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


class EmaUpdater(Callback):
    """The EMA update (src/train_step.py) after every optimizer update: every ``accumulation_steps`` batches."""

    def __init__(self, train_network, accumulation_steps: int) -> None:
        super().__init__()
        self.update = EmaUpdate(train_network)
        self.accumulation_steps = accumulation_steps

    def on_train_step_end(self, run_context) -> None:
        if global_step(run_context.original_args()) % self.accumulation_steps == 0:
            self.update()


def _due(epoch: int, every: int, last_epoch: int) -> bool:
    return epoch % every == 0 or epoch == last_epoch


class CheckpointSaver(Callback):
    """``<prefix>-<epoch>_<step>.ckpt`` every ``every_epochs`` epochs and at the last one, keeping the
    newest ``keep_max`` of the run. Each holds the training network and ``epoch_num``/``step_num``."""

    def __init__(self, files: RunFiles, every_epochs: int, keep_max: int, last_epoch: int) -> None:
        super().__init__()
        self.files = files
        self.every_epochs = every_epochs
        self.keep_max = keep_max
        self.last_epoch = last_epoch

    def on_train_epoch_end(self, run_context) -> None:
        params = run_context.original_args()
        epoch = params.cur_epoch_num
        if not _due(epoch, self.every_epochs, self.last_epoch):
            return
        save_checkpoint_file(params.train_network, self.files.checkpoint(epoch, params.batch_num),
                             {"epoch_num": epoch, "step_num": global_step(params)})
        for _, old in self.files.epoch_checkpoints()[:-self.keep_max]:
            old.unlink(missing_ok=True)


@dataclass
class BestScore:
    value: float
    epoch: int


def read_best_score(files: RunFiles, resumed_epoch: int) -> BestScore | None:
    """The score of the run's best checkpoint, when it was saved before ``resumed_epoch`` ended
    (a best checkpoint of the interrupted epochs after it is overwritten by the next evaluation)."""
    if not resumed_epoch or not files.best.is_file():
        return None
    stored = read_checkpoint(files.best)
    if BEST_METRIC_KEY not in stored or "epoch_num" not in stored:
        return None
    epoch = int(stored["epoch_num"].asnumpy())
    if epoch > resumed_epoch:
        return None
    return BestScore(float(stored[BEST_METRIC_KEY].asnumpy()), epoch)


class EpochEvaluator(Callback):
    """Evaluate every ``interval`` epochs and after the last one; keep the best as ``<prefix>-best.ckpt``.
    A training network with an EMA is evaluated with its averaged weights (what eval.py will load)."""

    def __init__(self, model: ms.Model, dataset: ds.Dataset, dataset_name: str, interval: int, last_epoch: int,
                 files: RunFiles, metrics_log: MetricsLog | None, best: BestScore | None = None) -> None:
        super().__init__()
        self.model = model
        self.dataset = dataset
        self.metric = primary_metric(dataset_name)
        self.interval = interval
        self.last_epoch = last_epoch
        self.files = files
        self.metrics_log = metrics_log
        self.best = best

    def on_train_epoch_end(self, run_context) -> None:
        params = run_context.original_args()
        epoch = params.cur_epoch_num
        if not _due(epoch, self.interval, self.last_epoch):
            return
        with ema_weights(params.train_network):
            results, images = split_image_count(self.model.eval(self.dataset, dataset_sink_mode=False))
        value = float(results[self.metric])
        # The saved best score is float32: compare at that precision, so an equal score is no improvement.
        improved = self.best is None or np.float32(value) > np.float32(self.best.value)
        if improved:
            self.best = BestScore(value, epoch)
            save_checkpoint_file(params.train_network, self.files.best,
                                 {"epoch_num": epoch, "step_num": global_step(params), BEST_METRIC_KEY: value})
        saved = f", saved {self.files.best}" if improved else ""
        print(f"epoch: {epoch} val: {results} on {images} images; best {self.metric} {self.best.value:.6g} "
              f"at epoch {self.best.epoch}{saved}", flush=True)
        if self.metrics_log is not None:
            values = {f"val_{key}": float(v) for key, v in results.items()}
            self.metrics_log.append("eval", epoch, global_step(params), **values, best=self.best.value)


def create_callbacks(config, ranks: Ranks, *, learning_rates, files: RunFiles, first_epoch: int, model: ms.Model,
                     eval_dataset: ds.Dataset | None) -> list[Callback]:
    """The EMA update and log lines on every rank; on the main rank also the metrics log, checkpoints and
    evaluation."""
    images_per_step = config.batch_size * ranks.rank_size
    ema: list[Callback] = []
    if ema_pairs(model.train_network):
        ema.append(EmaUpdater(model.train_network, config.grad_accumulation_steps))
    if not ranks.is_main:
        callbacks: list[Callback] = [*ema, TrainMonitor(config.log_interval, images_per_step)]
    else:
        metrics_log = MetricsLog(files.metrics)
        metrics_log.start(first_epoch)
        logger.info("checkpoints and metrics go to %s/%s-*", files.directory.resolve(), files.prefix)
        callbacks = [
            *ema,
            TrainMonitor(config.log_interval, images_per_step, learning_rates, metrics_log),
            CheckpointSaver(files, config.save_checkpoint_epochs, config.keep_checkpoint_max, config.epoch_size),
        ]
        if eval_dataset is not None:
            callbacks.append(EpochEvaluator(model, eval_dataset, config.dataset_name, config.eval_interval,
                                            config.epoch_size, files, metrics_log,
                                            read_best_score(files, first_epoch)))
    folder = debug_dir()
    if folder is not None:
        callbacks.append(ParameterDump(folder, ranks.rank_id, model.predict_network))
    return callbacks
