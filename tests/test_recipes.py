"""Training recipes: mixup/cutmix labels from the real pipeline, the soft-label loss, random erasing and the
augmentation policies in the pipeline; the training step's accumulation, clipping and EMA against their
definitions, through the Model train.py builds (create_train_model, the compiled momentum kernel or nn.Momentum)."""

from __future__ import annotations

import mindspore as ms
import mindspore.dataset.vision as V
import numpy as np
import pytest
from mindspore import nn

from src import trainer
from src.augment import batch_mixing_op
from src.cpu_kernels.optimizer import CompiledMomentum
from src.CrossEntropySmooth import CrossEntropySmooth
from src.dataset import Augmentation, CifarBinarySource, cifar10_files, create_dataset, train_transforms
from src.errors import UserError
from src.model_utils.config import load_config
from src.train_step import EmaUpdate, RecipeTrainStep, ema_weights
from tests.conftest import CPU_CONFIG, build_kernel

NUM_CLASSES = 10


def _batches(cifar_dir, augmentation: Augmentation, batch_size: int = 16):
    data = create_dataset("cifar10", cifar_dir, training=True, batch_size=batch_size, image_size=(32, 32),
                          num_classes=NUM_CLASSES, shuffle=False, num_parallel_workers=1, augmentation=augmentation)
    return [(row["image"], row["label"]) for row in data.create_dict_iterator(num_epochs=1, output_numpy=True)]


def _true_labels(cifar_dir, count: int) -> np.ndarray:
    source = CifarBinarySource(cifar10_files(cifar_dir, training=True))
    return np.array([int(source[i][1]) for i in range(count)])


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)], ids=["mixup", "cutmix", "both"])
def test_mixed_labels_are_convex_mixes_of_two_one_hots(cifar_dir, mixup, cutmix):
    ms.set_seed(1)  # as train.py does: the engine's operators then draw from a seeded state
    batches = _batches(cifar_dir, Augmentation(mixup_alpha=mixup, cutmix_alpha=cutmix, mixup_switch_prob=0.5))
    truth = _true_labels(cifar_dir, 16 * len(batches)).reshape(len(batches), 16)
    mixed_rows, draws, weights = 0, set(), set()
    for (images, labels), true in zip(batches, truth, strict=True):
        assert images.shape == (16, 3, 32, 32) and images.dtype == np.float32
        assert labels.shape == (16, NUM_CLASSES) and labels.dtype == np.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        assert (labels >= 0).all() and ((labels > 0).sum(axis=1) <= 2).all()
        # Each row mixes its own image's class (weight > 0) with one partner's.
        own = labels[np.arange(16), true]
        assert (own > 0).all()
        mixed_rows += int(((own > 0) & (own < 1)).sum())
        draws.add(tuple(np.round(own, 5)))
        if mixup and not cutmix:
            # MixUpBatch draws one weight per batch: every row whose partner has another class gives its own
            # class that same weight.
            partner = own[own < 1 - 1e-6]
            if partner.size:
                np.testing.assert_allclose(partner, partner[0], atol=1e-6)
                weights.add(round(float(partner[0]), 5))
    assert mixed_rows > 16, "the labels were hardly mixed"
    assert len(draws) > len(batches) // 2, "the batches were mixed alike: the same draw every time"
    if mixup and not cutmix:
        assert len(weights) > len(batches) // 2, f"MixUp drew the same weight for every batch: {weights}"


def test_imagenet_pipeline_mixes_and_erases_too(image_tree):
    data = create_dataset("imagenet", image_tree / "train", training=True, batch_size=8, image_size=(32, 32),
                          num_classes=4, augmentation=Augmentation(random_erasing=1.0, mixup_alpha=0.4,
                                                                   cutmix_alpha=1.0))
    for images, labels in data.create_tuple_iterator(num_epochs=1, output_numpy=True):
        assert images.shape == (8, 3, 32, 32) and labels.shape == (8, 4) and labels.dtype == np.float32
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        assert ((labels > 0).sum(axis=1) <= 2).all()


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (0.4, 1.0)], ids=["mixup", "cutmix", "both"])
def test_label_weights_are_the_shares_of_each_image_in_the_mix(mixup, cutmix):
    """Images filled with (class + 1): after mixing, an image's mean value is the label-weighted mean of the
    classes' values, so each label weight is the share of that class's image (MixUp's blend, CutMix's area)."""
    rng = np.random.default_rng(2)
    mixing = batch_mixing_op(mixup, cutmix, 0.5)
    for _ in range(5):
        classes = rng.permutation(NUM_CLASSES)[:8]
        images = np.broadcast_to((classes + 1.0)[:, None, None, None], (8, 3, 32, 32)).astype(np.float32).copy()
        mixed, labels = mixing(images, np.eye(NUM_CLASSES, dtype=np.float32)[classes])
        np.testing.assert_allclose(labels.sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_allclose(mixed.mean(axis=(1, 2, 3)), labels @ np.arange(1.0, NUM_CLASSES + 1), rtol=1e-5)
        assert (labels[np.arange(8), classes] < 1).any(), "nothing was mixed"


def test_soft_label_loss_is_linear_in_the_targets_and_composes_with_smoothing():
    rng = np.random.default_rng(0)
    logits = ms.Tensor(rng.standard_normal((6, 5)).astype(np.float32))
    classes = np.array([0, 1, 2, 3, 4, 0])
    partner = np.array([1, 1, 4, 0, 2, 3])
    one_hot = np.eye(5, dtype=np.float32)
    lam = np.float32(0.3)
    for factor in (0.0, 0.1):
        loss = CrossEntropySmooth(5, factor, reduction="none")
        hard = loss(logits, ms.Tensor(classes.astype(np.int32))).asnumpy()
        soft = loss(logits, ms.Tensor(one_hot[classes])).asnumpy()
        np.testing.assert_allclose(soft, hard, rtol=1e-6)
        other = loss(logits, ms.Tensor(partner.astype(np.int32))).asnumpy()
        mixed = loss(logits, ms.Tensor(lam * one_hot[classes] + (1 - lam) * one_hot[partner])).asnumpy()
        np.testing.assert_allclose(mixed, lam * hard + (1 - lam) * other, rtol=1e-5)


def test_random_erasing_zeroes_a_rectangle_of_every_image(cifar_dir):
    (images, labels), *_ = _batches(cifar_dir, Augmentation(random_erasing=1.0))
    (plain, _), *_ = _batches(cifar_dir, Augmentation())
    assert labels.dtype == np.int32  # no mixing: class indices as before
    zeros = (images == 0).all(axis=1)  # (N, H, W): pixels erased on every channel
    assert (plain == 0).all(axis=1).sum() == 0
    for mask in zeros:
        rows, cols = np.nonzero(mask)
        assert 0.01 * 1024 <= len(rows) <= 0.4 * 1024  # 2-33 % of the area, rounded to whole rows and columns
        assert len(rows) == (np.ptp(rows) + 1) * (np.ptp(cols) + 1), "the erased pixels are not one rectangle"


@pytest.mark.parametrize("text, operator", [("randaugment-m9-n3", V.RandAugment),
                                            ("autoaugment-cifar10", V.AutoAugment),
                                            ("autoaugment-imagenet", V.AutoAugment),
                                            ("trivialaugment", V.TrivialAugmentWide)])
def test_auto_augment_policies_run_in_both_pipelines(cifar_dir, image_tree, text, operator):
    for dataset in ("cifar10", "imagenet"):
        ops = train_transforms(dataset, image_size=(32, 32), auto_augment=text)
        assert sum(isinstance(op, operator) for op in ops) == 1
        assert not any(isinstance(op, V.RandomColorAdjust) for op in ops)  # the policy replaces the jitter
    images, _ = _batches(cifar_dir, Augmentation(auto_augment=text))[0]
    assert images.shape == (16, 3, 32, 32) and np.isfinite(images).all()
    data = create_dataset("imagenet", image_tree / "train", training=True, batch_size=4, image_size=(32, 32),
                          augmentation=Augmentation(auto_augment=text))
    assert next(data.create_tuple_iterator(output_numpy=True))[0].shape == (4, 3, 32, 32)


# --- the training step -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return build_kernel("optimizer", tmp_path_factory.mktemp("kernel_cache"))


@pytest.fixture
def graph_mode():
    mode = ms.get_context("mode")
    ms.set_context(mode=ms.GRAPH_MODE)
    yield
    ms.set_context(mode=mode)


class _Small(nn.Cell):
    """Convolution, BatchNorm and a classifier; ``frozen`` BatchNorm normalises with its moving statistics."""

    def __init__(self, frozen: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, pad_mode="same", has_bias=False)
        self.bn = nn.BatchNorm2d(6, use_batch_statistics=False if frozen else None)
        self.flatten = nn.Flatten()
        self.classifier = nn.Dense(6 * 4 * 4, 5)

    def construct(self, x):
        return self.classifier(self.flatten(self.bn(self.conv(x))))


def _model(flags: list[str], learning_rates, frozen: bool = True, seed: int = 4):
    config = load_config([f"--config_path={CPU_CONFIG}", "--num_classes=5", *flags])
    ms.set_seed(seed)
    net = _Small(frozen)
    model = trainer.create_train_model(config, net, np.asarray(learning_rates, np.float32))
    return net, model.train_network


def _data(count: int, scale: float = 1.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    images = (scale * rng.standard_normal((count, 3, 4, 4))).astype(np.float32)
    return images, rng.integers(0, 5, count).astype(np.int32)


def _params(net) -> dict[str, np.ndarray]:
    return {p.name: p.asnumpy().copy() for p in net.get_parameters()}


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled_optimizer", "nn.Momentum"])
def test_accumulated_steps_equal_one_step_on_the_concatenated_batch(kernel_cache, graph_mode, compiled):
    flags = [f"--compiled_optimizer={compiled}", "--weight_decay=0.01", "--loss_scale=8"]
    rates = [0.2, 0.1]
    images, labels = _data(32)
    big_net, big_step = _model(flags, rates)
    small_net, small_step = _model([*flags, "--grad_accumulation_steps=4"], rates)
    assert isinstance(small_step, RecipeTrainStep) and not isinstance(big_step, RecipeTrainStep)
    assert isinstance(small_step.optimizer, CompiledMomentum) == compiled
    for update in range(2):
        batch = slice(16 * update, 16 * (update + 1))
        big_step(ms.Tensor(images[batch]), ms.Tensor(labels[batch]))
        before = _params(small_net)
        for micro in range(4):
            part = slice(16 * update + 4 * micro, 16 * update + 4 * (micro + 1))
            small_step(ms.Tensor(images[part]), ms.Tensor(labels[part]))
            if micro < 3:  # no update until the 4th batch
                assert all(np.array_equal(before[k], v) for k, v in _params(small_net).items())
    expected, got = _params(big_net), _params(small_net)
    assert any(not np.allclose(expected[k], before[k]) for k in expected)
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for a, b in zip(big_step.optimizer.moments, small_step.optimizer.moments, strict=True):
        np.testing.assert_allclose(b.asnumpy(), a.asnumpy(), rtol=1e-5, atol=1e-6, err_msg=a.name)
    assert int(small_step.optimizer.global_step.asnumpy()[0]) == int(big_step.optimizer.global_step.asnumpy()[0]) == 2
    assert all(not buffer.asnumpy().any() for buffer in small_step.accumulated)


def _update_norm(net, before: dict, rate: float) -> float:
    after = {p.name: p.asnumpy() for p in net.trainable_params()}
    return float(np.sqrt(sum(((before[k] - v) ** 2).sum() for k, v in after.items()))) / rate


@pytest.mark.parametrize("loss_scale", [1, 128])
def test_clip_grad_norm_limits_the_global_gradient_norm(kernel_cache, graph_mode, loss_scale):
    """The first momentum step moves the weights by lr * gradient: its norm over all weights is lr * clip_norm
    when the gradient is larger, and the step is the plain one when the gradient is smaller."""
    images, labels = _data(8, scale=50.0)
    flags = ["--weight_decay=0", f"--loss_scale={loss_scale}"]
    results = {}
    for clip in (0.0, 0.5, 1e6):
        net, step = _model([*flags, f"--clip_grad_norm={clip}"], [0.1])
        before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
        step(ms.Tensor(images), ms.Tensor(labels))
        results[clip] = (_update_norm(net, before, 0.1), _params(net))
    assert results[0.0][0] > 5.0, "the test's gradient should be far above the clipping norm"
    np.testing.assert_allclose(results[0.5][0], 0.5, rtol=1e-4)
    for name, value in results[0.0][1].items():
        np.testing.assert_allclose(results[1e6][1][name], value, rtol=1e-5, atol=1e-7, err_msg=name)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled_optimizer", "nn.Momentum"])
def test_ema_follows_its_definition_and_evaluates_with_the_averages(kernel_cache, graph_mode, compiled):
    decay = 0.9
    net, step = _model([f"--ema_decay={decay}", f"--compiled_optimizer={compiled}"], [0.1] * 4, frozen=False)
    update_ema = EmaUpdate(step)  # what the EmaUpdater callback runs after each update
    averaged = [p.name for p in step.averaged]
    assert "bn.moving_mean" in averaged and "classifier.weight" in averaged
    assert [p.name for p in step.averages] == [f"ema.{name}" for name in averaged]
    expected = {name: value for name, value in _params(net).items() if name in averaged}
    images, labels = _data(32, seed=1)
    for update in range(1, 5):
        step(ms.Tensor(images[8 * (update - 1):8 * update]), ms.Tensor(labels[8 * (update - 1):8 * update]))
        update_ema()
        weights = _params(net)
        d = min(decay, (1 + update) / (10 + update))
        expected = {name: d * value + (1 - d) * weights[name] for name, value in expected.items()}
    for average in step.averages:
        np.testing.assert_allclose(average.asnumpy(), expected[average.name[4:]], rtol=1e-5, atol=1e-7)
    raw = _params(net)
    assert not np.allclose(raw["classifier.weight"], expected["classifier.weight"])
    with ema_weights(step) as swapped:
        assert swapped
        np.testing.assert_allclose(net.classifier.weight.asnumpy(), expected["classifier.weight"], rtol=1e-5)
    assert all(np.array_equal(v, raw[k]) for k, v in _params(net).items())


def test_an_epoch_keeps_whole_accumulation_steps(cifar_dir):
    data = create_dataset("cifar10", cifar_dir, training=True, batch_size=16, image_size=(32, 32))
    assert data.get_dataset_size() == 30
    assert trainer.whole_updates(data, 4).get_dataset_size() == 28
    with pytest.raises(UserError, match="grad_accumulation_steps=31 is more than the 30 batches"):
        trainer.whole_updates(data, 31)
