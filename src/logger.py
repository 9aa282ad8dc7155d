"""The package's one logger: INFO on rank 0, warnings only on the other ranks."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("googlenet")


def setup_logging() -> logging.Logger:
    """Send the package's log to stdout as ``[LEVEL] message``, at INFO; idempotent."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def quiet_unless_main_rank(rank_id: int) -> None:
    """Once a process knows its data-parallel rank (after the communication start-up), ranks other
    than 0 keep only warnings, so that a job's log holds each info line once."""
    logger.setLevel(logging.INFO if rank_id == 0 else logging.WARNING)
