"""Distributed jobs whose workers cannot start end quickly, say why, and leave no process behind.

(A worker killed in the middle of training is tests/test_distributed.py's
test_killed_worker_ends_the_whole_job.) Here, with real msrun processes on the CPU launcher:
- every worker stops at startup on a bad flag: the job ends within seconds and the launcher's
  error line carries the worker's own message;
- the second machine of a two-machine job never runs its launcher: the workers that did start
  give up after CLUSTER_TIME_OUT seconds with a message saying not every process joined.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

from tests.conftest import REPO, script_env
from tests.test_distributed import free_port, tagged_processes

LAUNCHER = REPO / "scripts" / "run_distribute_train_cpu.sh"
FLAGS = ["--image_height=32", "--image_width=32", "--batch_size=16", "--epoch_size=1"]


def run_launcher(tmp_path: Path, data: Path, *flags: str, **env: str) -> tuple[subprocess.CompletedProcess, float, str]:
    """Run the 2-worker CPU launcher to its end; (result, seconds, tag of its processes)."""
    tag = f"faulttest-{uuid.uuid4().hex}"
    environment = script_env(OUTPUT_DIR=str(tmp_path / "job"), MASTER_PORT=str(free_port()), JOB_TAG=tag, **env)
    environment.pop("PYTHON", None)
    start = time.monotonic()
    result = subprocess.run(["bash", str(LAUNCHER), "2", *FLAGS, f"--train_data_path={data}", *flags],
                            cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    return result, time.monotonic() - start, tag


def launcher_error(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: distributed training failed")]
    assert len(lines) == 1, result.stdout[-2000:] + result.stderr[-2000:]
    return lines[0]


def test_workers_that_cannot_start_end_the_job_with_their_reason(tmp_path, cifar_dir):
    result, seconds, tag = run_launcher(tmp_path, cifar_dir, "--lr_init=-1")
    assert result.returncode == 1
    assert "says: lr_init=-1.0 (command line) is invalid; expected a value > 0" in launcher_error(result)
    assert seconds < 90, seconds
    time.sleep(1)
    assert tagged_processes(tag) == []


def test_a_machine_that_never_joins_fails_the_job_after_the_cluster_timeout(tmp_path, cifar_dir):
    result, seconds, tag = run_launcher(tmp_path, cifar_dir, LOCAL_WORKER_NUM="1", NODE_RANK="0",
                                        CLUSTER_TIME_OUT="10")
    assert result.returncode == 1
    assert "not every process of the job joined within 10 s (workers expected: 2)" in launcher_error(result)
    assert seconds < 10 + 90, seconds
    time.sleep(1)
    assert tagged_processes(tag) == []
