"""The machine-readable training log: one JSON object per line.

Three kinds of record, each with ``kind``, ``epoch`` and ``step`` (the global step, counted from
the start of training over all epochs):

- ``train``: every log_interval steps: ``loss``, ``lr``;
- ``epoch``: at each epoch end: ``loss`` (mean over the epoch), ``lr``, ``images_per_s``, ``seconds``;
- ``eval``: after each evaluation during training: the validation metrics (``val_acc`` or
  ``val_top_1_accuracy``/``val_top_5_accuracy``) and ``best``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from src.atomic_io import atomic_write_text, disk_full_error
from src.errors import UserError


class MetricsLog:
    """Appends records to a JSON-lines file, flushing each line so a crash loses nothing written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def start(self, resumed_epoch: int) -> None:
        """A fresh run empties the file; a run resumed after ``resumed_epoch`` keeps the records up
        to that epoch and drops those of the interrupted epochs after it."""
        kept = [r for r in read_metrics(self.path) if r["epoch"] <= resumed_epoch] if resumed_epoch else []
        atomic_write_text(self.path, "".join(_line(record) for record in kept))

    def append(self, kind: str, epoch: int, step: int, **values: float) -> None:
        record = {"kind": kind, "epoch": epoch, "step": step, **values}
        try:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(_line(record))
        except OSError as err:
            full = disk_full_error(err, self.path)
            if full is None:
                raise
            raise full from None


def _line(record: dict) -> str:
    clean = {key: (None if isinstance(v, float) and not math.isfinite(v) else v) for key, v in record.items()}
    return json.dumps(clean) + "\n"


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics log; a missing file has none, a damaged line is a UserError."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError:
                if not text.endswith("\n"):
                    break  # the last line of a run that was killed while writing it
                raise UserError(f"{path}:{number} is not a JSON object; expected a metrics log "
                                "written by train.py (one JSON object per line)") from None
            if not isinstance(record, dict) or not {"kind", "epoch", "step"} <= record.keys():
                raise UserError(f"{path}:{number} lacks kind/epoch/step; expected a metrics log written by train.py")
            records.append(record)
    return records
