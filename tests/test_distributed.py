"""Data-parallel training for real: msrun with 2 CPU worker processes through the launcher.

Each rank's pipeline logs the index of every record it reads and dumps its trainable parameters
at the end (GOOGLENET_RANK_DEBUG_DIR, see src/rank_debug.py). BatchNorm moving statistics are not
synchronised in data-parallel mode (each rank keeps its own), so only trainable parameters are
compared.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import REPO, run_script, script_env

LAUNCHER = REPO / "scripts" / "run_distribute_train_cpu.sh"
TRAIN_FLAGS = ["--image_height=32", "--image_width=32", "--batch_size=16", "--log_interval=2", "--lr_init=0.01"]
NUM_TRAIN = 192  # 96 records per rank: 6 steps of 16 per epoch
EPOCHS = 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tagged_processes(tag: str) -> list[str]:
    """Command lines of the live processes whose environment carries ``tag``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if tag.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return found


def launch(data_dir: Path, out: Path, debug: Path, port: int, *flags: str, **env: str) -> subprocess.Popen:
    """Start the CPU launcher for 2 workers (or this node's share of them) in the background."""
    environment = script_env(OUTPUT_DIR=str(out), MASTER_PORT=str(port), GOOGLENET_RANK_DEBUG_DIR=str(debug),
                             CLUSTER_TIME_OUT="240", **env)
    environment.pop("PYTHON", None)
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.out", "w") as log:
        return subprocess.Popen(["bash", str(LAUNCHER), "2", *TRAIN_FLAGS, f"--train_data_path={data_dir}", *flags],
                                cwd=out.parent, env=environment, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def finish(process: subprocess.Popen, out: Path, timeout: float = 420) -> str:
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=60)
        raise
    return (out.parent / f"{out.name}.out").read_text()


def worker_logs(out: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted((out / "logs").glob("worker_*.log")))


def samples(debug: Path, rank: int) -> list[int]:
    return [int(line) for line in (debug / f"samples_rank{rank}.txt").read_text().split()]


def assert_same_trainable_params(debug: Path) -> None:
    rank0 = np.load(debug / "params_rank0.npz")
    rank1 = np.load(debug / "params_rank1.npz")
    assert sorted(rank0.files) == sorted(rank1.files) and len(rank0.files) > 100
    worst = max(float(np.abs(rank0[name] - rank1[name]).max()) for name in rank0.files)
    assert worst <= 1e-6, worst


@pytest.fixture(scope="module")
def small_cifar(tmp_path_factory) -> Path:
    from src.demo_data import write_cifar10_layout

    return write_cifar10_layout(tmp_path_factory.mktemp("dist_data"), num_train=NUM_TRAIN, num_test=40, seed=5)


@pytest.fixture(scope="module")
def two_worker_run(tmp_path_factory, small_cifar):
    root = tmp_path_factory.mktemp("dist")
    out, debug = root / "job", root / "debug"
    process = launch(small_cifar, out, debug, free_port(), f"--epoch_size={EPOCHS}")
    stdout = finish(process, out)
    assert process.returncode == 0, stdout[-3000:] + worker_logs(out)[-5000:]
    return out, debug, stdout


def test_two_workers_train_on_disjoint_shards(two_worker_run):
    out, debug, stdout = two_worker_run
    logs = worker_logs(out)
    assert "rank 0/2: 6 steps per epoch" in logs
    assert len(re.findall(r"^train success", logs, re.M)) == 2
    assert f"{out}/logs/worker_<rank>.log" in stdout and f"{out}/ckpt" in stdout
    shard = NUM_TRAIN // 2
    rank0, rank1 = samples(debug, 0), samples(debug, 1)
    assert len(rank0) == len(rank1) == EPOCHS * shard
    for epoch in range(EPOCHS):
        read0 = set(rank0[epoch * shard:(epoch + 1) * shard])
        read1 = set(rank1[epoch * shard:(epoch + 1) * shard])
        assert len(read0) == len(read1) == shard
        assert not read0 & read1, f"epoch {epoch + 1}: both ranks read {sorted(read0 & read1)[:10]}"
        assert read0 | read1 == set(range(NUM_TRAIN))


def test_gradients_were_averaged_so_ranks_end_identical(two_worker_run):
    _, debug, _ = two_worker_run
    assert_same_trainable_params(debug)


def test_only_rank_0_writes_checkpoints_and_eval_scores_them(two_worker_run, small_cifar):
    out, _, _ = two_worker_run
    checkpoints = sorted(p.name for p in out.rglob("*.ckpt"))
    assert checkpoints == [f"train_googlenet_cifar10-{epoch}_6.ckpt" for epoch in range(1, EPOCHS + 1)]

    checkpoint = out / "ckpt" / f"train_googlenet_cifar10-{EPOCHS}_6.ckpt"
    result = run_script("scripts/run_eval_cpu.sh", str(checkpoint), "--image_height=32", "--image_width=32",
                        f"--val_data_path={small_cifar}", cwd=out.parent,
                        env=script_env(OUTPUT_DIR=str(out / "eval")), timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    accuracy = re.search(r"^accuracy: \{'acc': ([0-9.]+)\}", result.stdout, re.M)
    assert accuracy and 0.0 <= float(accuracy.group(1)) <= 1.0, result.stdout[-2000:]
    assert "evaluated 40 images" in result.stdout
    assert (out / "eval" / "eval.log").read_text().count("accuracy:") == 1


def test_killed_worker_ends_the_whole_job(tmp_path, small_cifar):
    tag = f"killtest-{uuid.uuid4().hex}"
    out = tmp_path / "job"
    process = launch(small_cifar, out, tmp_path / "debug", free_port(), "--epoch_size=20", JOB_TAG=tag)
    worker_log = out / "logs" / "worker_1.log"
    try:
        deadline = time.monotonic() + 300
        while not (worker_log.is_file() and "epoch: 1 step: 2," in worker_log.read_text(errors="replace")):
            assert process.poll() is None, finish(process, out)[-3000:]
            assert time.monotonic() < deadline, "rank 1 never trained"
            time.sleep(0.5)
        victim = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_worker(p, tag, rank=1)]
        assert len(victim) == 1
        os.kill(int(victim[0].name), signal.SIGKILL)
        killed_at = time.monotonic()
        stdout = finish(process, out, timeout=180)
        took = time.monotonic() - killed_at
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 1, stdout[-3000:]
    assert "error: distributed training failed" in stdout
    assert took < 120, took
    time.sleep(1)
    assert tagged_processes(tag) == []


def _is_worker(proc: Path, tag: str, rank: int) -> bool:
    try:
        command = (proc / "cmdline").read_bytes()
        items = (proc / "environ").read_text(errors="replace").split("\0")
        env = dict(item.split("=", 1) for item in items if "=" in item)
    except OSError:
        return False
    if b"train.py" not in command:  # msrun's `tail -f` of the log shares the env
        return False
    return env.get("JOB_TAG") == tag and env.get("MS_ROLE") == "MS_WORKER" and env.get("RANK_ID") == str(rank)


def test_two_nodes_form_one_job(tmp_path, small_cifar):
    port = free_port()
    debug = tmp_path / "debug"
    nodes = [launch(small_cifar, tmp_path / f"node{rank}", debug, port, "--epoch_size=1", LOCAL_WORKER_NUM="1",
                    NODE_RANK=str(rank), MASTER_ADDR="127.0.0.1") for rank in (0, 1)]
    outputs = [finish(node, tmp_path / f"node{rank}") for rank, node in enumerate(nodes)]
    for node, stdout in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, stdout[-3000:]
    assert "rank 0/2" in worker_logs(tmp_path / "node0")
    assert (tmp_path / "node1" / "logs" / "worker_1.log").is_file()
    # msrun also starts a scheduler on node 1 (its master address is local here): it steps aside.
    assert "the job's scheduler runs on node 0" in (tmp_path / "node1" / "logs" / "scheduler.log").read_text()
    assert_same_trainable_params(debug)
    assert not set(samples(debug, 0)) & set(samples(debug, 1))
    assert [p.name for p in (tmp_path / "node0" / "ckpt").glob("*.ckpt")] == ["train_googlenet_cifar10-1_6.ckpt"]
    assert not list((tmp_path / "node1").rglob("*.ckpt"))


def test_two_workers_train_with_the_recipes(tmp_path, small_cifar):
    """EMA, clipping, accumulation (6 batches per rank: 3 updates) and the batch/augmentation options, data-parallel."""
    out, debug = tmp_path / "job", tmp_path / "debug"
    process = launch(small_cifar, out, debug, free_port(), "--epoch_size=1", "--ema_decay=0.9", "--clip_grad_norm=1",
                     "--grad_accumulation_steps=2", "--mixup_alpha=0.4", "--cutmix_alpha=1.0",
                     "--auto_augment=randaugment-m9", "--random_erasing=0.25")
    stdout = finish(process, out)
    assert process.returncode == 0, stdout[-3000:] + worker_logs(out)[-5000:]
    assert len(re.findall(r"^train success", worker_logs(out), re.M)) == 2
    assert_same_trainable_params(debug)
    from src.checkpoint import read_checkpoint

    stored = read_checkpoint(out / "ckpt" / "train_googlenet_cifar10-1_6.ckpt")
    assert int(stored["global_step"].asnumpy()[0]) == 3
    averaged = [name for name in stored if name.startswith("ema.")]
    assert len(averaged) > 100
    assert any(not np.array_equal(stored[n].asnumpy(), stored[n[4:]].asnumpy()) for n in averaged)
