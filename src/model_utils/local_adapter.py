"""Device and rank numbers of a local (non-ModelArts) job, from the launcher's environment."""

from __future__ import annotations

import os


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip().isdigit() else default


def get_device_id() -> int:
    """DEVICE_ID: which accelerator of this machine (0 when unset)."""
    return _env_int("DEVICE_ID", 0)


def get_device_num() -> int:
    """RANK_SIZE: number of processes of the job (1 when unset)."""
    return _env_int("RANK_SIZE", 1)


def get_rank_id() -> int:
    """RANK_ID: this process's rank (0 when unset)."""
    return _env_int("RANK_ID", 0)


def get_job_id() -> str:
    return "Local Job"
