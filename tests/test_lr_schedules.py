"""LR schedules: exact values at the boundaries, without a device."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.errors import ConfigError
from src.lr_scheduler import cifar_step_lr, create_lr_schedule, warmup_cosine_annealing_lr, warmup_step_lr
from src.model_utils.config import load_config
from tests.conftest import CPU_CONFIG, IMAGENET_CONFIG


def test_cifar_step_boundaries_upstream_run():
    lr = cifar_step_lr(0.1, 125 * 390)
    assert len(lr) == 48_750 and lr.dtype == np.float32
    changes = np.flatnonzero(np.diff(lr)) + 1
    assert changes.tolist() == [14_625, 29_250, 39_000]
    expected = np.float32([0.1, 0.01, 0.001, 0.0001])
    assert lr[[0, 14_624, 14_625, 29_249, 29_250, 38_999, 39_000, 48_749]].tolist() == pytest.approx(
        expected[[0, 0, 1, 1, 2, 2, 3, 3]].tolist(), rel=1e-6)


def test_cifar_step_boundaries_round_up_for_uneven_totals():
    # 0.3 * 7 = 2.1, 0.6 * 7 = 4.2, 0.8 * 7 = 5.6: the first decayed steps are 3, 5 and 6.
    lr = cifar_step_lr(1.0, 7)
    assert lr.tolist() == pytest.approx([1, 1, 1, 0.1, 0.1, 0.01, 0.001])


def test_warmup_step_decay():
    lr = warmup_step_lr(0.1, steps_per_epoch=10, total_epochs=8, milestones=[3, 6], gamma=0.3, warmup_epochs=2)
    assert len(lr) == 80
    assert lr[:20].tolist() == pytest.approx([0.1 * (i + 1) / 20 for i in range(20)])
    assert lr[20:30].tolist() == pytest.approx([0.1] * 10)
    assert lr[29] == pytest.approx(0.1) and lr[30] == pytest.approx(0.03)
    assert lr[59] == pytest.approx(0.03) and lr[60] == pytest.approx(0.009)


def test_warmup_step_decay_without_warmup_matches_upstream_milestones():
    lr = warmup_step_lr(0.1, steps_per_epoch=5004, total_epochs=300, milestones=[70, 140, 210, 280], gamma=0.3)
    for epoch, value in [(0, 0.1), (69, 0.1), (70, 0.03), (139, 0.03), (140, 0.009), (210, 0.0027),
                         (280, 0.00081), (299, 0.00081)]:
        assert lr[epoch * 5004] == pytest.approx(value, rel=1e-6)


def test_warmup_cosine_is_constant_within_an_epoch():
    lr = warmup_cosine_annealing_lr(0.1, steps_per_epoch=4, total_epochs=10, t_max=8, eta_min=0.001, warmup_epochs=1)
    assert lr[:4].tolist() == pytest.approx([0.025, 0.05, 0.075, 0.1])
    for epoch in range(1, 10):
        expected = 0.001 + (0.1 - 0.001) * (1 + math.cos(math.pi * epoch / 8)) / 2
        assert lr[epoch * 4: epoch * 4 + 4].tolist() == pytest.approx([expected] * 4, rel=1e-6)
    assert lr[8 * 4] == pytest.approx(0.001)


def test_factory_dispatches_on_config():
    cifar = load_config([f"--config_path={CPU_CONFIG}", "--epoch_size=125", "--lr_init=0.1"])
    assert np.array_equal(create_lr_schedule(cifar, 390), cifar_step_lr(0.1, 125 * 390))
    imagenet = load_config([f"--config_path={IMAGENET_CONFIG}", "--epoch_size=4", "--lr_epochs=2",
                            "--warmup_epochs=1"])
    assert np.array_equal(create_lr_schedule(imagenet, 3), warmup_step_lr(0.1, 3, 4, [2], 0.3, 1))
    imagenet.lr_scheduler = "bogus"
    with pytest.raises(ConfigError, match="unknown lr_scheduler 'bogus'"):
        create_lr_schedule(imagenet, 3)
