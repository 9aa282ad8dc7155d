"""The keyed dropout (src/dropout.py): masks that are a pure function of (seed, step, element), the
rate they drop at, and one step of the counter per training step of the real trainer."""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest

from src.dropout import KeyedDropout, reference_mask
from src.model_utils.config import load_config
from tests.conftest import CPU_CONFIG


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_masks_are_the_documented_function_of_seed_step_and_element(p):
    ms.set_context(mode=ms.GRAPH_MODE)
    shape = (32, 1024)
    cell = KeyedDropout(p, seed=7)
    cell.set_train(True)
    ones = ms.Tensor(np.ones(shape, np.float32))
    masks = []
    for step in range(3):
        out = cell(ones).asnumpy()
        mask = reference_mask(7, step, shape, p)
        np.testing.assert_allclose(out, mask / np.float32(1.0 - p), rtol=1e-6)
        masks.append(mask)
        # The rate: within 5 standard deviations of p over 32768 elements.
        dropped = 1.0 - mask.mean()
        assert abs(dropped - p) < 5 * np.sqrt(p * (1 - p) / mask.size), dropped
    assert int(cell.step.asnumpy()[0]) == 3
    assert not np.array_equal(masks[0], masks[1]) and not np.array_equal(masks[1], masks[2])
    # Another seed, other masks; the same seed and step, the same mask in a new cell.
    assert not np.array_equal(reference_mask(8, 0, shape, p), masks[0])
    again = KeyedDropout(p, seed=7)
    again.set_train(True)
    np.testing.assert_array_equal(again(ones).asnumpy() != 0, masks[0])


def test_masks_of_neighbouring_elements_and_steps_are_independent():
    """No visible structure: the mask agrees with its neighbour element, and with the same element at
    the next step, as often as two independent draws would (p^2 + (1-p)^2)."""
    p, shape = 0.2, (64, 1024)
    a, b = reference_mask(1, 0, shape, p), reference_mask(1, 1, shape, p)
    expected = p * p + (1 - p) * (1 - p)
    tolerance = 5 * np.sqrt(expected * (1 - expected) / a.size)
    assert abs(np.mean(a[:, 1:] == a[:, :-1]) - expected) < tolerance
    assert abs(np.mean(a[1:] == a[:-1]) - expected) < tolerance
    assert abs(np.mean(a == b) - expected) < tolerance


def test_identity_out_of_training_and_at_rate_zero():
    x = ms.Tensor(np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32))
    cell = KeyedDropout(0.5)
    cell.set_train(False)
    np.testing.assert_array_equal(cell(x).asnumpy(), x.asnumpy())
    assert int(cell.step.asnumpy()[0]) == 0  # evaluation draws no mask
    off = KeyedDropout(0.0)
    off.set_train(True)
    np.testing.assert_array_equal(off(x).asnumpy(), x.asnumpy())
    with pytest.raises(ValueError, match="dropout probability"):
        KeyedDropout(1.0)


def test_one_counter_step_per_training_step_of_the_trainer():
    """The loss and the gradients share one forward pass: three training steps draw three masks."""
    from src.googlenet import create_model
    from src.trainer import create_train_model

    ms.set_context(mode=ms.GRAPH_MODE)
    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=4", "--compiled_conv=False",
                          "--compiled_max_pool=False", "--compiled_optimizer=False"])
    net = create_model(10, dropout_rate=0.2)
    model = create_train_model(config, net, np.full(3, 0.01, np.float32))
    rng = np.random.default_rng(0)
    images = ms.Tensor(rng.standard_normal((4, 3, 32, 32)).astype(np.float32))
    labels = ms.Tensor(np.arange(4, dtype=np.int32))
    train_step = model.train_network
    train_step.set_train(True)
    for _ in range(3):
        train_step(images, labels)
    assert int(net.dropout.step.asnumpy()[0]) == 3


def test_checkpoints_without_the_counter_still_load(tmp_path):
    """Checkpoints written before the counter existed: weights load, and a resumed run continues the
    counter at the checkpoint's global step (where an uninterrupted run would stand)."""
    from src.checkpoint import load_pretrained, load_weights
    from src.googlenet import create_model
    from src.resume import ResumePoint, restore_training_state
    from src.trainer import create_train_model

    ms.set_context(mode=ms.GRAPH_MODE)
    source = create_model(10)
    entries = [{"name": p.name, "data": p.data} for p in source.get_parameters() if p.name != "dropout.step"]
    weights_only = tmp_path / "old.ckpt"
    ms.save_checkpoint(entries, str(weights_only))

    net = create_model(10)
    load_weights(net, weights_only)
    np.testing.assert_array_equal(net.classifier.weight.asnumpy(), source.classifier.weight.asnumpy())
    assert load_pretrained(create_model(10), weights_only) == []

    config = load_config([f"--config_path={CPU_CONFIG}", "--batch_size=4", "--compiled_optimizer=False"])
    model = create_train_model(config, net, np.full(20, 0.01, np.float32))
    stored = {p.name: p for p in model.train_network.get_parameters() if p.name != "dropout.step"}
    stored.update({name: ms.Parameter(ms.Tensor(value, ms.int32), name=name)
                   for name, value in (("epoch_num", 2), ("step_num", 10))})
    assert restore_training_state(model.train_network, ResumePoint(weights_only, stored), 5, 4) == 2
    assert int(net.dropout.step.asnumpy()[0]) == 10
