"""Where a training run writes its files, and how it continues an interrupted run.

A run in ``ckpt_save_dir`` names its files after one prefix: ``<prefix>-<epoch>_<step>.ckpt``,
``<prefix>-best.ckpt``, ``<prefix>-metrics.jsonl``, ``<prefix>-curves.png``. A fresh run whose
prefix is already taken in that folder uses ``<prefix>_1``, ``<prefix>_2``, ... (as MindSpore's
ModelCheckpoint does); a resumed run keeps the prefix of the checkpoint it continues.

Resuming restores the whole training network (weights, BatchNorm statistics, momentum buffers,
``global_step`` and so the position in the learning-rate schedule) and moves the data pipeline to
the first step of the next epoch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import mindspore.dataset as ds
import mindspore.nn as nn

from src.checkpoint import EMA_PREFIX, EPOCH_CHECKPOINT, OPTIONAL_STATE, read_checkpoint, shape_problem
from src.errors import UserError
from src.logger import logger

AUTO = "auto"
# Optimizer hyper-parameters stored in a checkpoint; a resumed run takes them from its config.
_FROM_CONFIG = re.compile(r"^(learning_rate.*|momentum)$")
# Gradient accumulation's buffers: empty at every epoch end (each epoch has whole updates), so a
# checkpoint without them (one of a run without accumulation) resumes with this run's zeros.
_ACCUMULATION_STATE = re.compile(r"^(accumulated\..*|accumulation_step)$")


@dataclass(frozen=True)
class RunFiles:
    """The files of one training run: ``directory/<prefix>-...``."""

    directory: Path
    prefix: str

    def checkpoint(self, epoch: int, step_in_epoch: int) -> Path:
        return self.directory / f"{self.prefix}-{epoch}_{step_in_epoch}.ckpt"

    @property
    def best(self) -> Path:
        return self.directory / f"{self.prefix}-best.ckpt"

    @property
    def metrics(self) -> Path:
        return self.directory / f"{self.prefix}-metrics.jsonl"

    @property
    def curves(self) -> Path:
        return self.directory / f"{self.prefix}-curves.png"

    def epoch_checkpoints(self) -> list[tuple[int, Path]]:
        """This run's periodic checkpoints as (epoch, path), oldest epoch first."""
        found = []
        for path in self.directory.glob(f"{glob_escape(self.prefix)}-*_*.ckpt"):
            match = EPOCH_CHECKPOINT.match(path.name)
            if match and match["prefix"] == self.prefix:
                found.append((int(match["epoch"]), path))
        return sorted(found)


@dataclass(frozen=True)
class ResumePoint:
    """A checkpoint to continue from, already read."""

    path: Path
    stored: dict


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _prefix_family(directory: Path, base: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(base)}(?:_(\d+))?-")


def run_files(directory: str | Path, base_prefix: str, resume: ResumePoint | None) -> RunFiles:
    """The files of this run: the resumed checkpoint's prefix when it lies in ``directory``, else
    ``base_prefix`` or, when that is taken, ``base_prefix_<n>``."""
    directory = Path(directory)
    if resume is not None and resume.path.parent.resolve() == directory.resolve():
        match = EPOCH_CHECKPOINT.match(resume.path.name) or re.match(r"^(?P<prefix>.+)-best\.ckpt$", resume.path.name)
        if match:
            return RunFiles(directory, match["prefix"])
    family = _prefix_family(directory, base_prefix)
    taken = [family.match(p.name) for p in directory.glob("*.ckpt")] if directory.is_dir() else []
    numbers = [int(m.group(1) or 0) for m in taken if m]
    return RunFiles(directory, f"{base_prefix}_{max(numbers) + 1}" if numbers else base_prefix)


def _resume_candidates(directory: Path, base_prefix: str) -> list[Path]:
    """Periodic checkpoints of every run of ``base_prefix`` in ``directory``, newest first."""
    family = _prefix_family(directory, base_prefix)
    paths = [p for p in directory.glob("*.ckpt") if family.match(p.name) and EPOCH_CHECKPOINT.match(p.name)]
    return sorted(paths, key=lambda p: (p.stat().st_mtime_ns, int(EPOCH_CHECKPOINT.match(p.name)["epoch"])),
                  reverse=True)


def find_resume_point(resume: str, directory: str | Path, base_prefix: str) -> ResumePoint | None:
    """The checkpoint named by ``resume``: a path, ``auto`` (the newest complete checkpoint in
    ``directory``; None when there is none) or '' (None)."""
    if not resume:
        return None
    if resume != AUTO:
        return ResumePoint(Path(resume), _read_training_checkpoint(resume))
    directory = Path(directory)
    for path in _resume_candidates(directory, base_prefix) if directory.is_dir() else []:
        try:
            point = ResumePoint(path, _read_training_checkpoint(path))
        except UserError as err:
            logger.warning("resume=auto: skipping %s: %s", path.name, err)
            continue
        logger.info("resume=auto: newest complete checkpoint is %s", path.resolve())
        return point
    logger.info("resume=auto: no checkpoint of %s in %s; training from the start", base_prefix, directory)
    return None


def _read_training_checkpoint(path: str | Path) -> dict:
    stored = read_checkpoint(path)
    for key in ("epoch_num", "step_num", "global_step"):
        if key not in stored:
            raise UserError(f"resume: {path} has no '{key}', so it is not a training checkpoint of train.py; "
                            f"to start from its weights use --pre_trained={path}")
    return stored


def restore_training_state(train_network: nn.Cell, point: ResumePoint, steps_per_epoch: int,
                           epoch_size: int) -> int:
    """Load the training state of ``point`` into ``train_network``; returns the epoch it completed.

    The learning-rate schedule and momentum come from the config (so they follow epoch_size);
    everything else must be in the checkpoint with the network's shapes.
    """
    path, stored = point.path, point.stored
    epoch = int(stored["epoch_num"].asnumpy())
    step = int(stored["step_num"].asnumpy())
    if step != epoch * steps_per_epoch:
        raise UserError(f"resume: {path} was saved after step {step} at epoch {epoch}, which does not match "
                        f"{steps_per_epoch} steps per epoch here; resume with the same data, batch_size and "
                        "number of devices, from a checkpoint saved at an epoch end")
    if epoch >= epoch_size:
        raise UserError(f"resume: {path} has finished epoch {epoch} and epoch_size={epoch_size}: nothing is "
                        "left to train; raise epoch_size to train longer")
    state = {name: value for name, value in stored.items() if not _FROM_CONFIG.match(name)}
    for param in train_network.get_parameters():
        if _FROM_CONFIG.match(param.name):
            state[param.name] = param.copy()  # keep this run's value
            continue
        problem = shape_problem(param, state)
        if problem == "missing" and _ACCUMULATION_STATE.match(param.name):
            state[param.name] = param.copy()
            continue
        if problem == "missing" and param.name.startswith(EMA_PREFIX) and param.name[len(EMA_PREFIX):] in state:
            # A run that starts averaging here (its checkpoint had no EMA): the average starts at the weights.
            state[param.name] = ms.Parameter(ms.Tensor(state[param.name[len(EMA_PREFIX):]].asnumpy()), name=param.name)
            continue
        if problem == "missing" and param.name in OPTIONAL_STATE:
            # A checkpoint from before the counter existed: continue it where an uninterrupted run stands.
            state[param.name] = ms.Parameter(ms.Tensor([step], param.dtype), name=param.name)
            logger.info("resume: %s has no '%s'; set to the global step %d", path, param.name, step)
            continue
        if problem == "missing":
            raise UserError(f"resume: {path} has no '{param.name}'; expected a checkpoint written by "
                            "train.py with this network and optimizer (same num_classes, freeze_backbone)")
        if problem:
            raise UserError(f"resume: '{param.name}' has {problem} ({path}); "
                            "resume with the config of the interrupted run")
    ms.load_param_into_net(train_network, state, strict_load=True)
    logger.info("resumed from %s: epoch %d done (global step %d); continuing at epoch %d",
                path, epoch, step, epoch + 1)
    return epoch


def skip_trained_epochs(dataset: ds.Dataset, epochs: int, steps_per_epoch: int, exact: bool) -> None:
    """Start ``dataset`` at the first step after ``epochs`` epochs.

    ``exact`` replays the skipped epochs' random augmentations so that every later batch is the one an
    uninterrupted run would see (this costs the pipeline time of those epochs); otherwise the
    image order is the same but the skipped epochs' augmentations are not recomputed (fast).
    """
    ds.config.set_fast_recovery(not exact)
    dataset.set_init_step(epochs * steps_per_epoch)
