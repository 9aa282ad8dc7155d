"""The package's one logger: INFO on rank 0, warnings only on the other ranks."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("googlenet")


def setup_logging(rank_id: int = 0) -> logging.Logger:
    """Send the package's log to stdout as ``[LEVEL] message``; idempotent."""
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[%(levelname)s] %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO if rank_id == 0 else logging.WARNING)
    return logger
