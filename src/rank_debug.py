"""Evidence of data-parallel training, written only when GOOGLENET_RANK_DEBUG_DIR names a folder.

Every rank then writes into that folder
- ``samples_rank<r>.txt``: the index of each training record its pipeline read, one per line, in
  reading order (so each epoch is a block of ``shard size`` lines);
- ``params_rank<r>.npz``: its trainable parameters after training.
Tests and users debugging a cluster use them to check that the ranks read disjoint shards and
finished with the same weights. Unset (the default), nothing is recorded and nothing is slowed: the
data pipeline reads its records directly and train.py's callbacks hold no ParameterDump.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
from mindspore.train import Callback

DEBUG_DIR_VARIABLE = "GOOGLENET_RANK_DEBUG_DIR"


def debug_dir() -> Path | None:
    """The folder named by GOOGLENET_RANK_DEBUG_DIR (created), or None when unset."""
    value = os.environ.get(DEBUG_DIR_VARIABLE, "")
    if not value:
        return None
    path = Path(value)
    path.mkdir(parents=True, exist_ok=True)
    return path


class RecordedSource:
    """A random-access source that appends every index it is asked for to a file."""

    def __init__(self, source, path: Path) -> None:
        self.source = source
        self.path = path
        self.lock = threading.Lock()
        path.write_text("")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int):
        with self.lock, self.path.open("a") as log:
            log.write(f"{int(index)}\n")
        return self.source[index]


def record_samples(source, rank_id: int):
    """``source`` itself, or a recording wrapper of it when the debug folder is set."""
    folder = debug_dir()
    return source if folder is None else RecordedSource(source, folder / f"samples_rank{rank_id}.txt")


class ParameterDump(Callback):
    """After training, this rank's trainable parameters into ``params_rank<r>.npz`` of ``folder``."""

    def __init__(self, folder: Path, rank_id: int, net) -> None:
        super().__init__()
        self.path = folder / f"params_rank{rank_id}.npz"
        self.net = net

    def on_train_end(self, run_context) -> None:
        np.savez(self.path, **{p.name: p.asnumpy() for p in self.net.trainable_params()})
