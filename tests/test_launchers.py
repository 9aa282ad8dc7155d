"""The shell launchers' argument handling and the exact processes they start.

Ascend and GPU hardware (and their HCCL/NCCL stacks, mpirun) cannot exist here, so those launchers
run against stand-ins put first on PATH: a ``python`` that records its arguments, working
directory and environment instead of training, and ``msrun`` / ``mpirun`` / ``taskset`` that record
theirs and then start the rest of their command line as the real tools would. The CPU launchers
also run for real in tests/test_distributed.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts"
LAUNCHERS = ["run_train.sh", "run_train_gpu.sh", "run_train_cpu.sh", "run_distribute_train_cpu.sh",
             "run_eval.sh", "run_eval_gpu.sh", "run_eval_cpu.sh", "launch_common.sh"]

# One program for every stand-in: what it does depends on the name it is called by.
STANDIN = textwrap.dedent('''\
    #!{python}
    import json, os, subprocess, sys, time
    name = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if name == "python" and args[:1] == ["-c"]:  # the launchers' "can it import mindspore" check
        sys.exit(int(os.environ.get("STANDIN_NO_MINDSPORE", "0")))
    record = {{"tool": name, "argv": args, "cwd": os.getcwd(), "env": dict(os.environ)}}
    path = os.path.join(os.environ["STANDIN_RECORDS"], f"{{name}}-{{os.getpid()}}.json")
    with open(path + ".tmp", "w") as out:
        json.dump(record, out)
    os.replace(path + ".tmp", path)
    if name == "taskset":                     # taskset -c RANGE COMMAND...
        os.execvp(args[2], args[2:])
    if name == "msrun" and os.environ.get("STANDIN_SLEEP"):  # a long job; SIGINT is how it is stopped
        import signal
        def stop(*_):
            open(os.path.join(os.environ["STANDIN_RECORDS"], "msrun-got-SIGINT"), "w").close()
            sys.exit(1)
        signal.signal(signal.SIGINT, stop)
        time.sleep(float(os.environ["STANDIN_SLEEP"]))
    if name == "msrun":                       # msrun --opt=... SCRIPT ARGS: starts `python` from PATH
        task = [a for a in args if not a.startswith("--")][:1]
        start = args.index(task[0])
        sys.exit(subprocess.call(["python"] + args[start:]))
    if name == "mpirun":                      # mpirun -n N [flags] COMMAND...
        start = next(i for i, a in enumerate(args) if os.path.isfile(a) and os.access(a, os.X_OK))
        sys.exit(subprocess.call(args[start:]))
    rank = os.environ.get("RANK_ID", "")
    if rank and rank == os.environ.get("STANDIN_FAIL_RANK"):
        sys.exit(3)
    time.sleep(float(os.environ.get("STANDIN_SLEEP", "0")))
''')


@pytest.fixture
def standins(tmp_path) -> dict:
    """A bin folder of stand-in tools, a folder for their records, and an environment using them."""
    bin_dir = tmp_path / "bin"
    records = tmp_path / "records"
    bin_dir.mkdir()
    records.mkdir()
    for name in ("python", "msrun", "mpirun", "taskset"):
        tool = bin_dir / name
        tool.write_text(STANDIN.format(python=sys.executable))
        tool.chmod(0o755)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "OUTPUT_DIR"))}
    env.update(PATH=f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin", STANDIN_RECORDS=str(records),
               OUTPUT_DIR=str(tmp_path / "out"))
    return {"bin": bin_dir, "records": records, "env": env, "out": tmp_path / "out", "cwd": tmp_path}


def launch(script: str, *args: str, standins: dict, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=standins["cwd"],
                          env={**standins["env"], **env}, capture_output=True, text=True, timeout=timeout)


def records(standins: dict, tool: str) -> list[dict]:
    found = [json.loads(p.read_text()) for p in standins["records"].glob(f"{tool}-*.json")]
    return sorted(found, key=lambda r: r["env"].get("RANK_ID", ""))


def assert_usage(result: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    if code == 2:
        assert "usage: bash scripts/" in result.stderr


def rank_table(path: Path, devices: int) -> Path:
    entries = [{"device_id": str(i), "device_ip": f"192.98.92.{100 + i}", "rank_id": str(i)} for i in range(devices)]
    path.write_text(json.dumps({"version": "1.0", "server_count": "1",
                                "server_list": [{"server_id": "10.0.0.1", "device": entries}],
                                "status": "completed"}, indent=1))
    return path


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))


# ---- Ascend: rank table, one process per device ------------------------------------------------

def test_ascend_starts_one_process_per_device_with_its_env_folder_and_cores(standins):
    table = rank_table(standins["cwd"] / "hccl_2p.json", 2)
    (standins["cwd"] / "data").mkdir()
    result = launch("run_train.sh", "hccl_2p.json", "imagenet", "--train_data_path=data", "--epoch_size=2",
                    standins=standins)
    assert result.returncode == 0, result.stdout + result.stderr
    out = standins["out"]
    runs = records(standins, "python")
    assert len(runs) == 2
    for rank, run in enumerate(runs):
        folder = out / f"train_parallel{rank}"
        assert run["cwd"] == str(folder)
        assert (folder / "env.log").is_file()
        env = run["env"]
        assert (env["DEVICE_ID"], env["RANK_ID"], env["RANK_SIZE"]) == (str(rank), str(rank), "2")
        assert env["RANK_TABLE_FILE"] == str(table)
        assert run["argv"] == [str(REPO / "train.py"), f"--config_path={REPO / 'imagenet_config.yaml'}",
                               "--device_target=Ascend", f"--ckpt_save_dir={out / 'train_parallel0' / 'ckpt'}",
                               f"--train_data_path={standins['cwd'] / 'data'}", "--epoch_size=2"]
    bindings = sorted(r["argv"][:2] for r in records(standins, "taskset"))
    if cpu_count() >= 2:
        per = cpu_count() // 2
        assert bindings == [["-c", f"0-{per - 1}"], ["-c", f"{per}-{2 * per - 1}"]]
    else:
        assert bindings == [] and "not binding cores" in result.stdout
    assert f"{out}/train_parallel0/ckpt" in result.stdout


def test_ascend_eight_devices_on_few_cores_skip_binding(standins):
    rank_table(standins["cwd"] / "hccl_8p.json", 8)
    result = launch("run_train.sh", str(standins["cwd"] / "hccl_8p.json"), standins=standins)
    assert result.returncode == 0, result.stdout + result.stderr
    runs = records(standins, "python")
    assert [r["env"]["RANK_ID"] for r in runs] == [str(i) for i in range(8)]
    assert all(f"--config_path={REPO / 'cifar10_config.yaml'}" in r["argv"] for r in runs)
    assert (records(standins, "taskset") == []) == (cpu_count() < 8)


def test_ascend_failed_rank_stops_the_others(standins):
    rank_table(standins["cwd"] / "hccl_2p.json", 2)
    start = time.monotonic()
    result = launch("run_train.sh", "hccl_2p.json", standins=standins, STANDIN_FAIL_RANK="1", STANDIN_SLEEP="120")
    assert time.monotonic() - start < 60
    assert_usage(result, 1, "training failed", "train_parallel")


def test_ascend_argument_errors(standins):
    assert_usage(launch("run_train.sh", standins=standins), 2, "missing RANK_TABLE_FILE")
    assert_usage(launch("run_train.sh", "nowhere.json", standins=standins), 3, "rank table", "nowhere.json")
    rank_table(standins["cwd"] / "t.json", 2)
    assert_usage(launch("run_train.sh", "t.json", "mnist", standins=standins), 2, "dataset 'mnist'")
    assert_usage(launch("run_train.sh", "t.json", "cifar10", "epoch_size=3", standins=standins), 2, "'epoch_size=3'")
    rank_table(standins["cwd"] / "t16.json", 16)
    assert_usage(launch("run_train.sh", "t16.json", standins=standins), 2, "16 devices", "1..8")
    assert_usage(launch("run_train.sh", "t.json", standins=standins, STANDIN_NO_MINDSPORE="1"), 4,
                 "cannot import mindspore", "PYTHON=")
    assert records(standins, "python") == []


# ---- GPU: msrun by default, mpirun on request ---------------------------------------------------

def test_gpu_msrun_command_env_and_python_on_path(standins):
    result = launch("run_train_gpu.sh", "2", "4,5", "--batch_size=64", standins=standins, MASTER_PORT="29123")
    assert result.returncode == 0, result.stdout + result.stderr
    out = standins["out"]
    (msrun,) = records(standins, "msrun")
    train_args = [str(REPO / "train.py"), f"--config_path={REPO / 'cifar10_config.yaml'}", "--device_target=GPU",
                  f"--ckpt_save_dir={out / 'ckpt'}", "--batch_size=64"]
    assert msrun["argv"] == ["--worker_num=2", "--local_worker_num=2", "--master_addr=127.0.0.1",
                             "--master_port=29123", "--node_rank=0", f"--log_dir={out / 'logs'}", "--join=True",
                             "--cluster_time_out=600", *train_args]
    assert msrun["env"]["CUDA_VISIBLE_DEVICES"] == "4,5"
    # msrun started plain `python` from PATH: the launcher made that the chosen interpreter.
    (worker,) = records(standins, "python")
    assert worker["argv"] == train_args
    python_on_path = shutil.which("python", path=msrun["env"]["PATH"])
    assert python_on_path != str(standins["bin"] / "python")  # a wrapper, first on PATH, that runs it
    assert str(standins["bin"] / "python") in Path(python_on_path).read_text()
    assert f"{out}/logs/worker_<rank>.log" in result.stdout


def test_gpu_second_machine_of_a_cluster(standins):
    result = launch("run_train_gpu.sh", "8", "0,1,2,3,4,5,6,7", "imagenet", standins=standins, WORKER_NUM="16",
                    NODE_RANK="1", MASTER_ADDR="10.0.0.1", MASTER_PORT="29000")
    assert result.returncode == 0, result.stdout + result.stderr
    (msrun,) = records(standins, "msrun")
    assert msrun["argv"][:5] == ["--worker_num=16", "--local_worker_num=8", "--master_addr=10.0.0.1",
                                 "--master_port=29000", "--node_rank=1"]


def test_gpu_mpirun_when_asked(standins):
    result = launch("run_train_gpu.sh", "2", "0,1", "imagenet", "--epoch_size=1", standins=standins,
                    LAUNCHER="mpirun")
    assert result.returncode == 0, result.stdout + result.stderr
    out = standins["out"]
    (mpirun,) = records(standins, "mpirun")
    python = str(standins["bin"] / "python")
    start = mpirun["argv"].index(python)
    assert mpirun["argv"][:2] == ["-n", "2"]
    assert mpirun["argv"][start - 3:start] == ["--output-filename", str(out / "logs"), "--merge-stderr-to-stdout"]
    assert mpirun["argv"][start + 1:] == [str(REPO / "train.py"), f"--config_path={REPO / 'imagenet_config.yaml'}",
                                          "--device_target=GPU", f"--ckpt_save_dir={out / 'ckpt'}", "--epoch_size=1"]
    assert mpirun["env"]["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_gpu_argument_errors(standins):
    for device_num in ("0", "9", "x", ""):
        assert_usage(launch("run_train_gpu.sh", device_num, "0", standins=standins), 2, f"DEVICE_NUM={device_num};")
    assert_usage(launch("run_train_gpu.sh", "2", "0", standins=standins), 2, "names 1 GPUs but DEVICE_NUM=2")
    assert_usage(launch("run_train_gpu.sh", "2", "1,1", standins=standins), 2, "repeats")
    assert_usage(launch("run_train_gpu.sh", "2", "0;1", standins=standins), 2, "VISIBLE_DEVICES=0;1")
    assert_usage(launch("run_train_gpu.sh", "2", standins=standins), 2, "DEVICE_NUM and VISIBLE_DEVICES")
    assert_usage(launch("run_train_gpu.sh", "2", "0,1", standins=standins, LAUNCHER="srun"), 2, "LAUNCHER=srun")
    assert_usage(launch("run_train_gpu.sh", "2", "0,1", standins=standins, MASTER_PORT="80"), 2, "MASTER_PORT=80")
    (standins["bin"] / "mpirun").unlink()
    if shutil.which("mpirun", path=f"/usr/bin{os.pathsep}/bin") is None:
        assert_usage(launch("run_train_gpu.sh", "2", "0,1", standins=standins, LAUNCHER="mpirun"), 4,
                     "mpirun is not installed")
    assert records(standins, "python") == [] and records(standins, "msrun") == []


def test_interrupted_launcher_stops_msrun_and_exits_130(standins):
    process = subprocess.Popen(["bash", str(SCRIPTS / "run_distribute_train_cpu.sh"), "2"], cwd=standins["cwd"],
                               env={**standins["env"], "STANDIN_SLEEP": "60"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while not records(standins, "msrun"):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)
    process.terminate()
    assert process.wait(timeout=15) == 130
    assert (standins["records"] / "msrun-got-SIGINT").is_file()  # msrun then kills its workers


# ---- CPU launchers and evaluation ---------------------------------------------------------------

def test_cpu_launchers_commands(standins):
    out = standins["out"]
    result = launch("run_train_cpu.sh", "--epoch_size=1", standins=standins)
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = records(standins, "python")
    assert run["argv"] == [str(REPO / "train.py"), f"--config_path={REPO / 'cifar10_config_cpu.yaml'}",
                           f"--ckpt_save_dir={out / 'ckpt'}", "--epoch_size=1"]
    assert (out / "train.log").is_file()

    result = launch("run_distribute_train_cpu.sh", "4", "imagenet", standins=standins, LOCAL_WORKER_NUM="2",
                    NODE_RANK="1", MASTER_PORT="29555", MASTER_ADDR="10.1.1.1")
    assert result.returncode == 0, result.stdout + result.stderr
    (msrun,) = records(standins, "msrun")
    assert msrun["argv"] == ["--worker_num=4", "--local_worker_num=2", "--master_addr=10.1.1.1",
                             "--master_port=29555", "--node_rank=1", f"--log_dir={out / 'logs'}", "--join=True",
                             "--cluster_time_out=600", str(REPO / "train.py"),
                             f"--config_path={REPO / 'imagenet_config.yaml'}", "--device_target=CPU",
                             "--amp_level=O0", f"--ckpt_save_dir={out / 'ckpt'}"]


def test_cpu_distribute_argument_errors(standins):
    launcher = "run_distribute_train_cpu.sh"
    assert_usage(launch(launcher, standins=standins), 2, "missing WORKER_NUM")
    assert_usage(launch(launcher, "0", standins=standins), 2, "WORKER_NUM=0")
    assert_usage(launch(launcher, "2", standins=standins, LOCAL_WORKER_NUM="3"), 2, "LOCAL_WORKER_NUM=3")
    assert_usage(launch(launcher, "3", standins=standins, LOCAL_WORKER_NUM="2"), 2, "does not divide")
    assert_usage(launch(launcher, "2", standins=standins, LOCAL_WORKER_NUM="1", NODE_RANK="2"), 2,
                 "NODE_RANK=2", "0..1")
    assert_usage(launch(launcher, "2", standins=standins, MASTER_PORT="70000"), 2, "MASTER_PORT=70000")
    assert_usage(launch(launcher, "2", "--ok=1", "bad", standins=standins), 2, "'bad'")
    assert records(standins, "msrun") == []


@pytest.mark.parametrize(("script", "device"), [("run_eval.sh", "Ascend"), ("run_eval_gpu.sh", "GPU"),
                                                ("run_eval_cpu.sh", "CPU")])
def test_eval_launchers(standins, script, device):
    checkpoint = standins["cwd"] / "net.ckpt"
    checkpoint.write_bytes(b"")
    result = launch(script, "net.ckpt", "imagenet", "--val_data_path=/data/val", standins=standins, DEVICE_ID="3")
    assert result.returncode == 0, result.stdout + result.stderr
    (run,) = records(standins, "python")
    extra = ["--amp_level=O0"] if device == "CPU" else []
    assert run["argv"] == [str(REPO / "eval.py"), f"--config_path={REPO / 'imagenet_config.yaml'}",
                           f"--device_target={device}", *extra, f"--checkpoint_path={checkpoint}",
                           "--val_data_path=/data/val"]
    assert run["env"]["DEVICE_ID"] == "3"
    assert (standins["out"] / "eval.log").is_file()
    assert_usage(launch(script, standins=standins), 2, "missing CHECKPOINT")
    assert_usage(launch(script, "missing.ckpt", standins=standins), 3, "checkpoint", "missing.ckpt")


def test_failed_python_gives_exit_code_1(standins):
    (standins["cwd"] / "net.ckpt").write_bytes(b"")
    assert_usage(launch("run_eval_cpu.sh", "net.ckpt", standins=standins, STANDIN_FAIL_RANK="0", RANK_ID="0"), 1,
                 "evaluation failed", "eval.log")
    assert_usage(launch("run_train_cpu.sh", standins=standins, STANDIN_FAIL_RANK="0", RANK_ID="0"), 1,
                 "training failed", "train.log")


def test_launchers_are_shellcheck_clean():
    if shutil.which("shellcheck") is None and not os.environ.get("REQUIRE_SHELLCHECK"):
        pytest.skip("shellcheck is not installed (CI installs it: apt-get install shellcheck)")
    result = subprocess.run(["shellcheck", "-x", *(f"scripts/{name}" for name in LAUNCHERS)], cwd=REPO,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout
