"""train.py with the recipe options on, end to end: the EMA weights in the checkpoints, scored during training,
loaded by eval.py / export.py / predict.py and restored on resume; accumulation counting updates."""

from __future__ import annotations

import json
import re
import shutil

import mindspore as ms
import numpy as np
import pytest

from src.checkpoint import load_weights, read_checkpoint
from src.googlenet import create_model
from src.lr_scheduler import create_lr_schedule
from src.model_utils.config import load_config
from src.models import create_model_from_config
from src.predictor import load_classifier
from src.resume import find_resume_point, restore_training_state
from src.train_step import averaged_parameters
from src.trainer import create_train_model
from tests.conftest import SMALL_CIFAR, TrainedRun, run_script

RECIPE_FLAGS = ["--ema_decay=0.9", "--grad_accumulation_steps=2", "--clip_grad_norm=5", "--mixup_alpha=0.4",
                "--cutmix_alpha=1.0", "--auto_augment=trivialaugment", "--random_erasing=0.25", "--lr_init=0.01",
                "--use_label_smooth=True"]
BATCHES, UPDATES = 30, 15  # per epoch: 480 images in batches of 16, 2 batches per update
ACCURACY = re.compile(r"^accuracy: \{'acc': ([0-9.]+)\}", re.M)


@pytest.fixture(scope="module")
def recipe_run(tmp_path_factory, cifar_dir) -> TrainedRun:
    workdir = tmp_path_factory.mktemp("recipes")
    result = run_script("train.py", *SMALL_CIFAR, *RECIPE_FLAGS, f"--train_data_path={cifar_dir}",
                        f"--val_data_path={cifar_dir}", "--epoch_size=2", "--eval_interval=1", cwd=workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return TrainedRun(workdir, workdir / "ckpt" / f"train_googlenet_cifar10-2_{BATCHES}.ckpt", result.stdout, cifar_dir)


def _config(run: TrainedRun, *flags: str):
    return load_config([f"--config_path={run.checkpoint.parent / 'config.yaml'}", *flags])


def test_log_counts_batches_and_the_optimizer_counts_updates(recipe_run):
    assert f"epoch: 2 step: {BATCHES}," in recipe_run.stdout
    stored = read_checkpoint(recipe_run.checkpoint)
    assert int(stored["step_num"].asnumpy()) == 2 * BATCHES
    assert int(stored["global_step"].asnumpy()[0]) == 2 * UPDATES
    assert stored["learning_rate"].shape == (2 * UPDATES,)
    records = [json.loads(line) for line in (recipe_run.checkpoint.parent / "train_googlenet_cifar10-metrics.jsonl")
               .read_text().splitlines()]
    assert max(r["step"] for r in records if r["kind"] == "train") == 2 * BATCHES


def test_checkpoint_holds_an_average_of_every_float_parameter(recipe_run):
    stored = read_checkpoint(recipe_run.checkpoint)
    names = [p.name for p in averaged_parameters(create_model(10))]
    assert sorted(k[4:] for k in stored if k.startswith("ema.")) == sorted(names)
    differing = [n for n in names if not np.array_equal(stored[n].asnumpy(), stored[f"ema.{n}"].asnumpy())]
    assert len(differing) > len(names) // 2


def test_eval_during_training_scored_the_ema_weights_eval_py_loads(recipe_run):
    best = recipe_run.checkpoint.parent / "train_googlenet_cifar10-best.ckpt"
    stored = read_checkpoint(best)
    result = run_script("eval.py", *SMALL_CIFAR, f"--val_data_path={recipe_run.data_dir}",
                        f"--checkpoint_path={best}", "--fold_batchnorm=False", cwd=recipe_run.workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "using the EMA weights" in result.stdout + result.stderr
    assert float(ACCURACY.search(result.stdout).group(1)) == pytest.approx(float(stored["best_metric"].asnumpy()))


def _ema_and_raw_outputs(checkpoint, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the network with the checkpoint's EMA weights (load_weights) and with its raw weights."""
    ema = create_model(10)
    load_weights(ema, checkpoint)
    raw = create_model(10)
    stored = read_checkpoint(checkpoint)
    ms.load_param_into_net(raw, {p.name: stored[p.name] for p in raw.get_parameters() if p.name in stored})
    for param in averaged_parameters(ema):
        np.testing.assert_array_equal(param.asnumpy(), stored[f"ema.{param.name}"].asnumpy())
    ema.set_train(False)
    raw.set_train(False)
    return ema(ms.Tensor(images)).asnumpy(), raw(ms.Tensor(images)).asnumpy()


def test_export_and_predict_use_the_ema_weights(recipe_run, tmp_path):
    images = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    ema, raw = _ema_and_raw_outputs(recipe_run.checkpoint, images)
    assert np.abs(ema - raw).max() > 1e-3
    result = run_script("export.py", *SMALL_CIFAR, f"--ckpt_file={recipe_run.checkpoint}", "--export_batch_size=2",
                        f"--file_name={tmp_path / 'net'}", "--file_format=MINDIR", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    exported = ms.nn.GraphCell(ms.load(str(tmp_path / "net.mindir")))(ms.Tensor(images)).asnumpy()
    np.testing.assert_allclose(exported, ema, rtol=1e-4, atol=1e-4)
    classifier = load_classifier(str(recipe_run.checkpoint), _config(recipe_run, "--fold_batchnorm=False"))
    np.testing.assert_allclose(classifier.run(images), ema, rtol=1e-4, atol=1e-4)


def _fresh_train_network(run: TrainedRun, *flags: str):
    config = _config(run, *flags)
    net = create_model_from_config(config)
    return create_train_model(config, net, create_lr_schedule(config, UPDATES)).train_network


def test_resume_restores_the_averages_exactly(recipe_run):
    epoch_one = recipe_run.checkpoint.parent / f"train_googlenet_cifar10-1_{BATCHES}.ckpt"
    stored = read_checkpoint(epoch_one)
    step = _fresh_train_network(recipe_run)
    point = find_resume_point(str(epoch_one), recipe_run.checkpoint.parent, "train_googlenet_cifar10")
    assert restore_training_state(step, point, BATCHES, 2) == 1
    for average in step.averages:
        np.testing.assert_array_equal(average.asnumpy(), stored[average.name].asnumpy())
    assert all(not buffer.asnumpy().any() for buffer in step.accumulated)
    assert int(step.counter.asnumpy()) == BATCHES


def test_a_checkpoint_without_averages_starts_them_at_its_weights(recipe_run, tmp_path):
    epoch_one = recipe_run.checkpoint.parent / f"train_googlenet_cifar10-1_{BATCHES}.ckpt"
    stored = {name: value for name, value in read_checkpoint(epoch_one).items() if not name.startswith("ema.")}
    plain = tmp_path / "plain-1_30.ckpt"
    ms.save_checkpoint([{"name": name, "data": value} for name, value in stored.items()], str(plain))
    step = _fresh_train_network(recipe_run)
    restore_training_state(step, find_resume_point(str(plain), tmp_path, "plain"), BATCHES, 2)
    for average in step.averages:
        np.testing.assert_array_equal(average.asnumpy(), stored[average.name[4:]].asnumpy())


def test_training_resumes_with_the_recipes(recipe_run, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(recipe_run.checkpoint.parent, folder)
    result = run_script("train.py", *SMALL_CIFAR, *RECIPE_FLAGS, f"--train_data_path={recipe_run.data_dir}",
                        "--epoch_size=3", "--resume=auto", f"--ckpt_save_dir={folder}", cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "continuing at epoch 3" in result.stdout + result.stderr
    stored = read_checkpoint(folder / f"train_googlenet_cifar10-3_{BATCHES}.ckpt")
    assert int(stored["global_step"].asnumpy()[0]) == 3 * UPDATES
