"""A training process killed with SIGKILL loses at most one save interval, and --resume=auto finishes the run.

Two kill points, both on the real train.py:
- during a step: the process is killed right after it logged step 3 of epoch 2 (so while it runs
  step 4), after the epoch-1 checkpoint was saved;
- during a checkpoint write: the test watches the checkpoint folder and kills the process the
  moment the temporary file of the epoch-2 checkpoint appears (writing the 45 MB checkpoint takes
  ~0.1 s, the folder is polled every 0.5 ms). That the kill really hit the write is checked
  afterwards: the temporary file is still there and the checkpoint's real name is not.
Then a checkpoint damaged after it was written (cut to a third) is skipped by --resume=auto with a
warning, which takes the one before.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, SMALL_CIFAR, script_env

STEPS_PER_EPOCH = 6  # 96 training records in batches of 16
SAVE_INTERVAL_STEPS = STEPS_PER_EPOCH  # save_checkpoint_epochs=1
PREFIX = "train_googlenet_cifar10"
LOG_LINE = re.compile(r"^epoch: (\d+) step: (\d+), loss is", re.M)
RESUMED = re.compile(r"resumed from (\S+): epoch (\d+) done \(global step (\d+)\)")


class Training:
    """train.py running in the background, its output collected line by line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=script_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        start_new_session=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.lines):
            assert self.process.poll() is None, f"train.py ended before '{text}':\n{self.output[-3000:]}"
            assert time.monotonic() < deadline, f"no '{text}' within {timeout} s:\n{self.output[-3000:]}"
            time.sleep(0.01)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=60)
        self.reader.join(timeout=10)

    def finish(self, timeout: float = 600) -> str:
        try:
            self.process.wait(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.kill()
        self.reader.join(timeout=10)
        return self.output


def steps_done(output: str) -> int:
    """Global step of the last logged step."""
    epoch, step = LOG_LINE.findall(output)[-1]
    return (int(epoch) - 1) * STEPS_PER_EPOCH + int(step)


def resumed_step(output: str) -> tuple[str, int]:
    """(checkpoint name, global step) the run resumed from."""
    match = RESUMED.search(output)
    assert match, output[-3000:]
    return Path(match.group(1)).name, int(match.group(3))


def kill_during_write(training: Training, folder: Path, checkpoint: str, timeout: float = 300) -> str:
    """Kill ``training`` as soon as a temporary file of ``checkpoint`` shows in ``folder``; its name."""
    partial_prefix = "." + checkpoint.removesuffix(".ckpt") + ".partial"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.scandir(folder):
            if entry.name.startswith(partial_prefix):
                training.kill()
                return entry.name
        assert training.process.poll() is None, f"train.py ended before writing {checkpoint}"
        time.sleep(0.0005)
    raise AssertionError(f"{checkpoint} was never written within {timeout} s")


def load(path: Path) -> dict:
    import mindspore as ms

    return ms.load_checkpoint(str(path))


@dataclass
class CrashRun:
    folder: Path
    outputs: dict[str, str]
    progress: dict[str, int]
    partial_seen: str
    after_write_kill: list[str]


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory) -> CrashRun:
    """train.py for 3 epochs: killed during a step, resumed and killed during a checkpoint write,
    resumed again to the end."""
    from src.demo_data import write_cifar10_layout

    root = tmp_path_factory.mktemp("crash")
    data = write_cifar10_layout(root / "data", num_train=96, num_test=16, seed=7)
    folder = root / "ckpt"
    args = [*SMALL_CIFAR, f"--train_data_path={data}", "--epoch_size=3", "--log_interval=1",
            "--save_checkpoint_epochs=1", f"--ckpt_save_dir={folder}", "--lr_init=0.01"]
    outputs, progress = {}, {}

    first = Training(args, root)
    first.wait_for("epoch: 2 step: 3,")
    first.kill()
    outputs["step_kill"], progress["step_kill"] = first.output, steps_done(first.output)

    second = Training([*args, "--resume=auto"], root)
    second.wait_for("epoch: 2 step: 5,")
    partial_seen = kill_during_write(second, folder, f"{PREFIX}-2_{STEPS_PER_EPOCH}.ckpt")
    outputs["write_kill"], progress["write_kill"] = second.output, steps_done(second.output)
    after_write_kill = sorted(os.listdir(folder))

    outputs["final"] = Training([*args, "--resume=auto"], root).finish()
    return CrashRun(folder, outputs, progress, partial_seen, after_write_kill)


def test_kill_during_a_step_loses_less_than_one_save_interval(crash_run):
    killed_at = crash_run.progress["step_kill"]
    assert killed_at == STEPS_PER_EPOCH + 3
    name, resumed_at = resumed_step(crash_run.outputs["write_kill"])
    assert name == f"{PREFIX}-1_{STEPS_PER_EPOCH}.ckpt"
    assert 0 <= killed_at - resumed_at <= SAVE_INTERVAL_STEPS


def test_kill_during_a_checkpoint_write_leaves_no_truncated_checkpoint(crash_run):
    # The kill hit the write: its temporary file was left and the real name never appeared.
    partial_prefix = f".{PREFIX}-2_{STEPS_PER_EPOCH}.partial"
    assert crash_run.partial_seen.startswith(partial_prefix)
    assert any(name.startswith(partial_prefix) for name in crash_run.after_write_kill), crash_run.after_write_kill
    assert f"{PREFIX}-2_{STEPS_PER_EPOCH}.ckpt" not in crash_run.after_write_kill
    # What carries a real checkpoint name is complete.
    complete = [n for n in crash_run.after_write_kill if n.endswith(".ckpt") and not n.startswith(".")]
    assert complete == [f"{PREFIX}-1_{STEPS_PER_EPOCH}.ckpt"]
    # The next run cleared the leftover, resumed from epoch 1 and finished.
    final = crash_run.outputs["final"]
    assert "incomplete file left by an interrupted run" in final
    name, resumed_at = resumed_step(final)
    assert name == f"{PREFIX}-1_{STEPS_PER_EPOCH}.ckpt"
    assert 0 <= crash_run.progress["write_kill"] - resumed_at <= SAVE_INTERVAL_STEPS
    assert "train success" in final
    assert not [n for n in os.listdir(crash_run.folder) if ".partial" in n or n.endswith(".tmp")]


def test_every_epoch_is_logged_once_after_two_crashes(crash_run):
    import json

    lines = (crash_run.folder / f"{PREFIX}-metrics.jsonl").read_text().splitlines()
    epochs = [json.loads(line)["epoch"] for line in lines if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2, 3]
    for epoch in (1, 2, 3):
        stored = load(crash_run.folder / f"{PREFIX}-{epoch}_{STEPS_PER_EPOCH}.ckpt")
        assert int(stored["epoch_num"].asnumpy()) == epoch


def test_resume_auto_skips_a_truncated_checkpoint(crash_run, tmp_path):
    folder = crash_run.folder
    newest = folder / f"{PREFIX}-3_{STEPS_PER_EPOCH}.ckpt"
    os.chmod(newest, 0o600)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # damaged after it was written (e.g. a copy cut short)
    data_dir = next((folder.parent / "data").glob("*"))
    args = [*SMALL_CIFAR, f"--train_data_path={data_dir}", "--epoch_size=4", "--log_interval=1",
            f"--ckpt_save_dir={folder}", "--lr_init=0.01", "--resume=auto"]
    output = Training(args, tmp_path).finish()
    assert re.search(rf"\[WARNING\] resume=auto: skipping {PREFIX}-3_{STEPS_PER_EPOCH}\.ckpt: .*cannot be read",
                     output), output[-3000:]
    name, _ = resumed_step(output)
    assert name == f"{PREFIX}-2_{STEPS_PER_EPOCH}.ckpt"
    assert "train success" in output
    assert int(load(folder / f"{PREFIX}-4_{STEPS_PER_EPOCH}.ckpt")["epoch_num"].asnumpy()) == 4
