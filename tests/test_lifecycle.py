"""Training lifecycle: exact resume, fine-tuning, evaluation with a best checkpoint, the metrics log
and its curves, and predict.py — real entry scripts on generated data in the real formats."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import IMAGENET_CONFIG, REPO, SMALL_CIFAR, assert_user_error, run_script, script_env

PREFIX = "train_googlenet_cifar10"
# With the default dropout: its masks are keyed by a step counter that the checkpoints hold.
RESUMABLE = [*SMALL_CIFAR, "--epoch_size=2", "--lr_init=0.01", "--eval_interval=1"]
SMALL_IMAGENET = [f"--config_path={IMAGENET_CONFIG}", "--device_target=CPU", "--amp_level=O0", "--loss_scale=1",
                  "--num_classes=4", "--image_height=32", "--image_width=32", "--batch_size=8",
                  "--num_parallel_workers=1", "--log_interval=2"]


def _checkpoint(path: Path) -> dict[str, np.ndarray]:
    import mindspore as ms

    return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(path)).items()}


def _timeless(path: Path) -> list[dict]:
    """Metrics records without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("images_per_s", "seconds")}
            for line in path.read_text().splitlines()]


def _train_until_killed(args: list[str], cwd: Path, kill_at_line: str) -> str:
    """Run train.py and SIGKILL it as soon as it prints ``kill_at_line``: a real interruption."""
    process = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=script_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if line.startswith(kill_at_line):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(lines)[-3000:]
    return "".join(lines)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, cifar_dir) -> Path:
    """Two epochs in one go, evaluating after each."""
    work = tmp_path_factory.mktemp("whole")
    result = run_script("train.py", *RESUMABLE, f"--train_data_path={cifar_dir}", f"--val_data_path={cifar_dir}",
                        cwd=work)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return work / "ckpt"


def test_resume_after_a_kill_ends_bit_identical(uninterrupted, cifar_dir, tmp_path):
    data = [f"--train_data_path={cifar_dir}", f"--val_data_path={cifar_dir}"]
    killed = _train_until_killed([*RESUMABLE, *data], tmp_path, kill_at_line="epoch: 2 step: 5,")
    assert "epoch: 1 val: {'acc'" in killed
    result = run_script("train.py", *RESUMABLE, *data, "--resume=auto", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert f"newest complete checkpoint is {tmp_path / 'ckpt' / PREFIX}-1_30.ckpt" in out
    epochs = re.findall(r"^epoch: (\d+) step: (\d+),", out, re.M)
    assert epochs[0] == ("2", "5") and {e for e, _ in epochs} == {"2"}, out[-2000:]
    assert "not loaded" not in out + result.stderr

    # Parameters, BatchNorm statistics, momentum buffers, global_step and the dropout's step: all bit-identical.
    whole = _checkpoint(uninterrupted / f"{PREFIX}-2_30.ckpt")
    resumed = _checkpoint(tmp_path / "ckpt" / f"{PREFIX}-2_30.ckpt")
    assert whole.keys() == resumed.keys()
    assert any(name.startswith("moments.") for name in whole) and "global_step" in whole
    assert int(whole["dropout.step"][0]) == int(whole["global_step"][0]) == 60
    different = [name for name in whole if not np.array_equal(whole[name], resumed[name])]
    assert different == []
    # The metrics log continues where the kill left it: the same records as the uninterrupted run.
    metrics = f"{PREFIX}-metrics.jsonl"
    assert _timeless(tmp_path / "ckpt" / metrics) == _timeless(uninterrupted / metrics)
    assert (tmp_path / "ckpt" / f"{PREFIX}-best.ckpt").is_file()


def test_best_checkpoint_and_metrics_log(uninterrupted):
    records = _timeless(uninterrupted / f"{PREFIX}-metrics.jsonl")
    evals = [r for r in records if r["kind"] == "eval"]
    assert [r["epoch"] for r in evals] == [1, 2] and [r["step"] for r in evals] == [30, 60]
    assert all(r["best"] == max(e["val_acc"] for e in evals[:i + 1]) for i, r in enumerate(evals))
    lines = (uninterrupted / f"{PREFIX}-metrics.jsonl").read_text().splitlines()
    epochs = [record for record in map(json.loads, lines) if record["kind"] == "epoch"]
    assert [r["epoch"] for r in epochs] == [1, 2]
    assert all(r["images_per_s"] > 0 and r["loss"] > 0 and r["lr"] > 0 for r in epochs)
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60]
    # The step schedule at 30/60/80% of 60 steps: 0.01 until step 18, then x0.1.
    assert train[2]["lr"] == pytest.approx(0.01) and train[4]["lr"] == pytest.approx(0.001)

    best = _checkpoint(uninterrupted / f"{PREFIX}-best.ckpt")
    best_eval = max(evals, key=lambda r: r["val_acc"])
    assert int(best["epoch_num"]) == best_eval["epoch"]
    assert float(best["best_metric"]) == pytest.approx(best_eval["val_acc"])
    names = sorted(p.name for p in uninterrupted.iterdir())
    assert names == ["config.yaml", f"{PREFIX}-1_30.ckpt", f"{PREFIX}-2_30.ckpt", f"{PREFIX}-best.ckpt",
                     f"{PREFIX}-curves.png", f"{PREFIX}-metrics.jsonl"]


def test_curves_png_after_training_and_by_command(uninterrupted, tmp_path):
    from PIL import Image

    with Image.open(uninterrupted / f"{PREFIX}-curves.png") as image:
        assert image.format == "PNG" and image.size[0] > 600
    result = subprocess.run([sys.executable, "-m", "src.curves", str(uninterrupted / f"{PREFIX}-metrics.jsonl"),
                             f"--output={tmp_path / 'c.png'}"], cwd=REPO, env=script_env(), capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    with Image.open(tmp_path / "c.png") as image:
        assert image.format == "PNG"


def test_resume_errors(uninterrupted, cifar_dir, tmp_path):
    finished = uninterrupted / f"{PREFIX}-2_30.ckpt"
    data = [f"--train_data_path={cifar_dir}", f"--val_data_path={cifar_dir}"]
    result = run_script("train.py", *RESUMABLE, *data, f"--resume={finished}", cwd=tmp_path)
    assert_user_error(result, 1, "finished epoch 2", "epoch_size=2", "raise epoch_size")
    result = run_script("train.py", *RESUMABLE, *data, f"--resume={finished}", "--batch_size=32", "--epoch_size=3",
                        cwd=tmp_path)
    assert_user_error(result, 1, "step 60 at epoch 2", "15 steps per epoch", "batch_size")
    result = run_script("train.py", *RESUMABLE, *data, f"--resume={tmp_path}/no.ckpt", cwd=tmp_path)
    assert_user_error(result, 1, f"{tmp_path}/no.ckpt", "does not exist")


def _save_small_checkpoint(path: Path, epoch: int) -> None:
    import mindspore as ms

    ms.save_checkpoint(ms.nn.Dense(2, 2), str(path),
                       append_dict={"epoch_num": epoch, "step_num": epoch * 10, "global_step": epoch * 10})


def test_resume_auto_takes_newest_complete_checkpoint_and_prefixes(tmp_path):
    from src.resume import find_resume_point, run_files

    assert find_resume_point("auto", tmp_path, PREFIX) is None
    assert run_files(tmp_path, PREFIX, None).prefix == PREFIX
    _save_small_checkpoint(tmp_path / f"{PREFIX}-1_10.ckpt", 1)
    _save_small_checkpoint(tmp_path / f"{PREFIX}_1-2_10.ckpt", 2)  # a later run into the same folder
    _save_small_checkpoint(tmp_path / f"{PREFIX}-best.ckpt", 5)
    truncated = tmp_path / f"{PREFIX}_1-3_10.ckpt"                  # killed while being written
    truncated.write_bytes((tmp_path / f"{PREFIX}_1-2_10.ckpt").read_bytes()[:100])
    os.utime(truncated, ns=(2 * 10**18, 2 * 10**18))

    point = find_resume_point("auto", tmp_path, PREFIX)
    assert point.path.name == f"{PREFIX}_1-2_10.ckpt"
    assert run_files(tmp_path, PREFIX, point).prefix == f"{PREFIX}_1"   # a resumed run keeps its prefix
    assert run_files(tmp_path, PREFIX, None).prefix == f"{PREFIX}_2"    # a fresh one takes a new prefix
    assert run_files(tmp_path / "elsewhere", PREFIX, point).prefix == PREFIX


def test_fine_tune_frozen_backbone_from_other_num_classes(trained_cifar, image_tree, tmp_path):
    # matplotlib hidden: training must still succeed, without curves.
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "matplotlib.py").write_text("raise ImportError('matplotlib hidden by the test')\n")
    env = script_env(PYTHONPATH=f"{hide}{os.pathsep}{REPO}")
    result = run_script("train.py", *SMALL_IMAGENET, f"--train_data_path={image_tree / 'train'}",
                        f"--val_data_path={image_tree / 'val'}", f"--pre_trained={trained_cifar.checkpoint}",
                        "--freeze_backbone=true", "--epoch_size=1", "--lr_init=0.05", "--eval_interval=1",
                        cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"skipped, re-initialised: classifier\.weight \(shape \(10, 1024\) in the checkpoint, "
                     r"\(4, 1024\) in the network\); classifier\.bias", out), out[-3000:]
    assert "matplotlib is not installed" in out and out.rstrip().endswith("train success")
    assert "epoch: 1 val: {'top_1_accuracy'" in out

    ckpt = tmp_path / "ckpt"
    assert not list(ckpt.glob("*.png")) and (ckpt / "train_googlenet_imagenet-metrics.jsonl").is_file()
    before = _checkpoint(trained_cifar.checkpoint)
    after = _checkpoint(ckpt / "train_googlenet_imagenet-1_6.ckpt")
    backbone = [name for name in after if name in before and not name.startswith(("classifier.", "moments.",
                                                                                   "learning_rate", "global_step",
                                                                                   "momentum", "epoch_num",
                                                                                   "step_num", "dropout."))]
    assert len(backbone) == 285  # every conv weight, BN gamma/beta and moving statistics
    moved = [name for name in backbone if not np.array_equal(before[name], after[name])]
    assert moved == []
    assert after["classifier.weight"].shape == (4, 1024)
    assert sorted(n for n in after if n.startswith("moments.")) == ["moments.classifier.bias",
                                                                    "moments.classifier.weight"]

    # And the curves command says clearly that it needs matplotlib.
    result = subprocess.run([sys.executable, "-m", "src.curves", str(ckpt / "train_googlenet_imagenet-metrics.jsonl")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert_user_error(result, 1, "matplotlib is needed", "pip install matplotlib")


def test_backbone_learns_at_a_fraction_of_the_rate():
    from src.googlenet import create_model
    from src.model_utils.config import load_config
    from src.trainer import create_optimizer
    from tests.conftest import CPU_CONFIG

    config = load_config([f"--config_path={CPU_CONFIG}", "--backbone_lr_scale=0.1"])
    net = create_model(10)
    schedule = np.array([0.1, 0.05], dtype=np.float32)
    optimizer = create_optimizer(config, net, schedule)
    params = {p.name: p for p in net.trainable_params()}
    head = optimizer.get_lr_parameter(params["classifier.weight"]).asnumpy()
    conv = optimizer.get_lr_parameter(params["conv1.conv.weight"]).asnumpy()
    bn = optimizer.get_lr_parameter(params["conv1.bn.gamma"]).asnumpy()
    np.testing.assert_allclose(head, schedule)
    np.testing.assert_allclose(conv, schedule * np.float32(0.1))
    np.testing.assert_allclose(bn, schedule * np.float32(0.1))
    decay = dict(zip([p.name for p in optimizer.parameters], optimizer.group_weight_decay, strict=True))
    assert decay["conv1.bn.gamma"] == 0 and decay["classifier.bias"] == 0
    assert decay["conv1.conv.weight"] == decay["classifier.weight"] == pytest.approx(config.weight_decay)


# ---- predict.py

@pytest.fixture(scope="module")
def labelled_images(tmp_path_factory) -> tuple[Path, list[int]]:
    """PNG files of the synthetic classes (the ones trained_cifar learned), true label in the name."""
    from PIL import Image

    from src.demo_data import synthetic_images

    folder = tmp_path_factory.mktemp("images")
    labels = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 3]
    images = synthetic_images(np.array(labels), 32, np.random.default_rng(11))
    for index, (label, image) in enumerate(zip(labels, images, strict=True)):
        Image.fromarray(image).save(folder / f"img{index:02d}_label{label}.png")
    return folder, labels


def _predictions(stdout: str) -> dict[str, list[tuple[str, float]]]:
    result = {}
    for line in stdout.splitlines():
        match = re.match(r"^(\S+): (.+)$", line)
        if match and not line.startswith("["):
            pairs = [item.rsplit(" ", 1) for item in match.group(2).split(", ")]
            result[Path(match.group(1)).name] = [(name, float(p)) for name, p in pairs]
    return result


def test_predict_top_k_from_checkpoint_and_mindir(trained_cifar, labelled_images, tmp_path):
    folder, labels = labelled_images
    names_file = trained_cifar.data_dir / "batches.meta.txt"
    class_names = names_file.read_text().split()
    common = [*SMALL_CIFAR, f"--predict_images={folder}", f"--class_names_file={names_file}", "--top_k=3"]
    result = run_script("predict.py", *common, f"--predict_model={trained_cifar.checkpoint}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    from_ckpt = _predictions(result.stdout)
    assert len(from_ckpt) == len(labels)
    for ranked in from_ckpt.values():
        probabilities = [p for _, p in ranked]
        assert len(ranked) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert sum(probabilities) <= 1.0001
    correct = sum(ranked[0][0] == class_names[int(name.split("label")[1][0])] for name, ranked in from_ckpt.items())
    assert correct >= 0.6 * len(labels), result.stdout  # 10 classes: chance is 0.1

    export = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={trained_cifar.checkpoint}",
                        f"--file_name={tmp_path}/gnet", "--export_batch_size=5", cwd=tmp_path)
    assert export.returncode == 0, export.stderr[-2000:]
    # 12 images through a MINDIR of fixed batch 5: batches of 5, 5 and a padded 2.
    result = run_script("predict.py", *common, f"--predict_model={tmp_path}/gnet.mindir", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "input 5x3x32x32" in result.stdout
    from_mindir = _predictions(result.stdout)
    assert from_mindir.keys() == from_ckpt.keys()
    for name, ranked in from_ckpt.items():
        assert [c for c, _ in from_mindir[name]] == [c for c, _ in ranked]
        assert np.allclose([p for _, p in from_mindir[name]], [p for _, p in ranked], atol=2e-4)


def test_class_names_from_imagenet_json_index(tmp_path):
    from src.predictor import read_class_names

    index = tmp_path / "imagenet_class_index.json"
    index.write_text(json.dumps({"1": ["n01443537", "goldfish"], "0": ["n01440764", "tench"]}))
    assert read_class_names(index, 2) == ["tench", "goldfish"]
    (tmp_path / "plain.json").write_text(json.dumps(["cat", "dog"]))
    assert read_class_names(tmp_path / "plain.json", 2) == ["cat", "dog"]
