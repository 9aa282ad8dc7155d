"""Reading and writing checkpoints, with errors that say what does not fit.

Every checkpoint the package writes goes through ``save_checkpoint_file``; reading goes through
``read_checkpoint``. Training checkpoints hold the whole training network (weights, BatchNorm
statistics, optimizer moments and ``global_step``) plus ``epoch_num`` and ``step_num``.
"""

from __future__ import annotations

import re
from pathlib import Path

import mindspore as ms
import mindspore.nn as nn

from src.atomic_io import atomic_output
from src.errors import UserError
from src.logger import logger

# ``<prefix>-<epoch>_<step>.ckpt``: the periodic training checkpoints (not ``<prefix>-best.ckpt``).
EPOCH_CHECKPOINT = re.compile(r"^(?P<prefix>.+)-(?P<epoch>\d+)_(?P<step>\d+)\.ckpt$")
# Parameters of the classifier, which fine-tuning re-initialises when its shape differs.
HEAD_PREFIX = "classifier."
# Run state rather than weights: checkpoints written before it existed (and upstream's) lack it, and a
# network loading them keeps its own value (the dropout's step counter, src/dropout.py).
OPTIONAL_STATE = ("dropout.step",)
# This package's names before it took upstream's (``inception3a.branch4.1.conv.weight`` ->
# ``block3a.b4.conv.weight``), also inside optimizer state (``moments.inception3a...``).
_EARLIER_NAMES = [(re.compile(r"(^|\.)inception(\d[a-e])\."), r"\1block\2."),
                  (re.compile(r"\.branch4\.1\."), ".b4."), (re.compile(r"\.branch([123])\."), r".b\1.")]


def upstream_names(stored: dict, path: str | Path = "") -> dict:
    """``stored`` with this package's earlier parameter names replaced by upstream's (one info line
    when any was)."""
    renamed, count = {}, 0
    for name, value in stored.items():
        new = name
        for pattern, replacement in _EARLIER_NAMES:
            new = pattern.sub(replacement, new)
        if new != name:
            count += 1
            if isinstance(value, ms.Parameter):
                value.name = new
        renamed[new] = value
    if count:
        logger.info("checkpoint %s: %d parameters renamed from this package's earlier names (inception*.branch*) "
                    "to upstream's (block*.b*)", path, count)
    return renamed


def read_checkpoint(path: str | Path) -> dict:
    """The parameters stored in a MindSpore .ckpt file; a missing or unreadable file is a UserError."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give the path of a .ckpt file")
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} cannot be read (the file is empty, 0 bytes); "
                        "expected a complete MindSpore .ckpt file")
    try:
        stored = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} cannot be read ({reason[:200]}); "
                        "expected a complete MindSpore .ckpt file") from None
    return upstream_names(stored, path)


# The averaged weights of a run with ema_decay (src/train_step.py): ``ema.<parameter name>``.
EMA_PREFIX = "ema."


def prefer_ema_weights(stored: dict, path: str | Path = "") -> dict:
    """``stored`` with every parameter that has an EMA average (``ema.<name>``) replaced by it: the
    weights inference and fine-tuning use (one info line when the checkpoint has averages)."""
    averages = {name[len(EMA_PREFIX):]: value for name, value in stored.items() if name.startswith(EMA_PREFIX)}
    if not averages:
        return stored
    logger.info("checkpoint %s: using the EMA weights (%d averaged parameters)", path, len(averages))
    chosen = dict(stored)
    for name, value in averages.items():
        chosen[name] = ms.Parameter(ms.Tensor(value.asnumpy()), name=name)
    return chosen


def save_checkpoint_file(network: nn.Cell, path: str | Path, extra: dict | None = None) -> Path:
    """Write the parameters of ``network`` (and ``extra`` scalars such as epoch_num) to ``path``.

    The file is complete under ``path`` or not there: it is written under a temporary name and
    renamed when done, so a crash never leaves a truncated checkpoint (see src/atomic_io.py).
    """
    with atomic_output(path) as partial:
        ms.save_checkpoint(network, str(partial), append_dict=extra)
    return Path(path)


def shape_problem(param: ms.Parameter, stored: dict) -> str | None:
    """Why ``param`` cannot be loaded from ``stored``, or None when it can."""
    if param.name not in stored:
        return "missing"
    shape = tuple(stored[param.name].shape)
    if shape != tuple(param.shape):
        return f"shape {shape} in the checkpoint, {tuple(param.shape)} in the network"
    return None


def _load(net: nn.Cell, stored: dict, path: str | Path) -> None:
    # Optional state the checkpoint lacks keeps the network's own value.
    stored = {**{p.name: p.copy() for p in net.get_parameters() if p.name in OPTIONAL_STATE}, **stored}
    not_loaded, _ = ms.load_param_into_net(net, stored, strict_load=True)
    if not_loaded:
        raise UserError(f"checkpoint {path}: could not load {', '.join(not_loaded[:3])}")


def load_weights(net: nn.Cell, path: str | Path) -> None:
    """Load every parameter of ``net`` from the checkpoint at ``path`` (its EMA weights where it has them).

    All network parameters must be present with the network's shapes (``OPTIONAL_STATE`` may be
    missing); extra entries (optimizer state, step counters) are ignored.
    """
    stored = prefer_ema_weights(read_checkpoint(path), path)
    for param in net.get_parameters():
        problem = shape_problem(param, stored)
        if problem == "missing" and param.name in OPTIONAL_STATE:
            continue
        if problem == "missing":
            raise UserError(f"checkpoint {path} has no parameter '{param.name}'; "
                            "expected a checkpoint of this GoogleNet")
        if problem:
            raise UserError(f"checkpoint {path}: parameter '{param.name}' has {problem} (check num_classes)")
    _load(net, stored, path)


def load_pretrained(net: nn.Cell, path: str | Path) -> list[str]:
    """Initialise ``net`` from ``path`` for fine-tuning; returns the names that kept their initialisation.

    Classifier parameters that are missing or have another shape (a checkpoint trained with
    another num_classes) keep their fresh initialisation; every other parameter must load. A checkpoint
    with EMA weights gives those.
    """
    stored = prefer_ema_weights(read_checkpoint(path), path)
    skipped: dict[str, str] = {}
    for param in net.get_parameters():
        problem = shape_problem(param, stored)
        if problem is None or problem == "missing" and param.name in OPTIONAL_STATE:
            continue
        if not param.name.startswith(HEAD_PREFIX):
            raise UserError(f"checkpoint {path}: backbone parameter '{param.name}' is {problem}; "
                            "expected a checkpoint of this GoogleNet (only the classifier may differ)")
        skipped[param.name] = problem
    # Exactly the network's names (MindSpore's non-strict loading would match moments.<name> too);
    # skipped parameters load their own fresh values.
    usable = {p.name: p.copy() if p.name in skipped else stored[p.name] for p in net.get_parameters()
              if p.name in stored or p.name in skipped}
    _load(net, usable, path)
    loaded = len(usable) - len(skipped)
    logger.info("pre_trained %s: loaded %d parameters", path, loaded)
    if skipped:
        logger.info("pre_trained: skipped, re-initialised: %s",
                    "; ".join(f"{name} ({problem})" for name, problem in skipped.items()))
    return list(skipped)
