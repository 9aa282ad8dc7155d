"""Training callbacks beyond the log lines: periodic checkpoints, evaluation with a best checkpoint,
and the assembly of the callback list train.py passes to ``Model.train``."""

from __future__ import annotations

from dataclasses import dataclass

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
from mindspore.train import Callback

from src.checkpoint import read_checkpoint, save_checkpoint_file
from src.logger import logger
from src.metrics import primary_metric, split_image_count
from src.metrics_log import MetricsLog
from src.resume import RunFiles
from src.trainer import TrainMonitor, global_step

BEST_METRIC_KEY = "best_metric"


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
    """Evaluate every ``interval`` epochs and after the last one; keep the best as ``<prefix>-best.ckpt``."""

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


def create_callbacks(config, *, is_main: bool, images_per_step: int, learning_rates, files: RunFiles,
                     first_epoch: int, model: ms.Model, eval_dataset: ds.Dataset | None) -> list[Callback]:
    """Log lines on every rank; on the main rank also the metrics log, checkpoints and evaluation."""
    if not is_main:
        return [TrainMonitor(config.log_interval, images_per_step)]
    metrics_log = MetricsLog(files.metrics)
    metrics_log.start(first_epoch)
    logger.info("checkpoints and metrics go to %s/%s-*", files.directory.resolve(), files.prefix)
    callbacks: list[Callback] = [
        TrainMonitor(config.log_interval, images_per_step, learning_rates, metrics_log),
        CheckpointSaver(files, config.save_checkpoint_epochs, config.keep_checkpoint_max, config.epoch_size),
    ]
    if eval_dataset is not None:
        callbacks.append(EpochEvaluator(model, eval_dataset, config.dataset_name, config.eval_interval,
                                        config.epoch_size, files, metrics_log, read_best_score(files, first_epoch)))
    return callbacks
