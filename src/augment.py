"""Training augmentations beyond upstream's crop and flip, all operators of MindSpore's dataset engine:
RandAugment / AutoAugment / TrivialAugmentWide on the uint8 image, RandomErasing on the normalised CHW
tensor, and MixUpBatch / CutMixBatch on batches with one-hot labels.

``auto_augment`` (config key) is one of ``none``, ``randaugment-m<M>`` or ``randaugment-m<M>-n<N>``
(N operations of magnitude M in 0..30 per image; N defaults to 2), ``autoaugment-imagenet``,
``autoaugment-cifar10`` (the learned policies) or ``trivialaugment``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import mindspore as ms
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as V

AUTO_AUGMENT_FORMS = ("none, randaugment-m<magnitude 0..30>[-n<ops>], autoaugment-imagenet, autoaugment-cifar10 "
                      "or trivialaugment")
# RandAugment's and TrivialAugmentWide's magnitudes are bins 0..30 (MindSpore's default of 31 bins).
MAGNITUDE_BINS = 31
_RANDAUGMENT = re.compile(r"^randaugment-m(?P<magnitude>\d+)(?:-n(?P<ops>\d+))?$")
_POLICIES = {"autoaugment-imagenet": V.AutoAugmentPolicy.IMAGENET, "autoaugment-cifar10": V.AutoAugmentPolicy.CIFAR10}


@dataclass(frozen=True)
class AutoAugment:
    """A parsed ``auto_augment`` value."""

    kind: str  # none, randaugment, autoaugment-imagenet, autoaugment-cifar10, trivialaugment
    magnitude: int = 0
    num_ops: int = 0


def parse_auto_augment(text: str) -> AutoAugment | None:
    """The ``auto_augment`` value ``text`` parsed, or None when it is not one of AUTO_AUGMENT_FORMS."""
    text = text.strip().lower()
    if text in ("none", "trivialaugment") or text in _POLICIES:
        return AutoAugment(text)
    match = _RANDAUGMENT.match(text)
    if match is None:
        return None
    magnitude, ops = int(match["magnitude"]), int(match["ops"] or 2)
    if magnitude >= MAGNITUDE_BINS or ops < 1:
        return None
    return AutoAugment("randaugment", magnitude, ops)


def auto_augment_ops(text: str) -> list:
    """The engine operator of an ``auto_augment`` value (on HWC uint8 images); [] for none."""
    spec = parse_auto_augment(text)
    if spec is None:
        raise ValueError(f"auto_augment={text!r}; expected {AUTO_AUGMENT_FORMS}")
    if spec.kind == "randaugment":
        return [V.RandAugment(num_ops=spec.num_ops, magnitude=spec.magnitude, num_magnitude_bins=MAGNITUDE_BINS)]
    if spec.kind == "trivialaugment":
        return [V.TrivialAugmentWide(num_magnitude_bins=MAGNITUDE_BINS)]
    if spec.kind in _POLICIES:
        return [V.AutoAugment(policy=_POLICIES[spec.kind])]
    return []


def random_erasing_ops(probability: float) -> list:
    """RandomErasing of one rectangle (2-33 % of the image, filled with 0 = the mean after
    normalisation) with ``probability``, on the CHW float tensor; [] for 0."""
    return [V.RandomErasing(prob=probability)] if probability > 0 else []


# With both mixup and cutmix on, RandomChoice picks one per batch from this many slots, round(switch_prob * slots)
# of them CutMix: switch_prob in steps of 0.05.
SWITCH_SLOTS = 20


def batch_mixing_op(mixup_alpha: float, cutmix_alpha: float, switch_prob: float):
    """The engine's batch operator for (image NCHW, one-hot label) columns: MixUpBatch, CutMixBatch, or with
    both alphas > 0 a random choice per batch (CutMix with probability ``switch_prob``); None when both are 0.
    They run inside the pipeline, whose random state advances from batch to batch (called one at a time
    after ``ms.set_seed``, every call would draw the same)."""
    mixup = V.MixUpBatch(alpha=mixup_alpha) if mixup_alpha > 0 else None
    cutmix = V.CutMixBatch(V.ImageBatchFormat.NCHW, alpha=cutmix_alpha) if cutmix_alpha > 0 else None
    if mixup is None or cutmix is None:
        return mixup or cutmix
    cut_slots = round(SWITCH_SLOTS * switch_prob)
    return T.RandomChoice([cutmix] * cut_slots + [mixup] * (SWITCH_SLOTS - cut_slots))


def one_hot_ops(num_classes: int) -> list:
    """Integer labels to float32 one-hot rows (what MixUpBatch and CutMixBatch mix)."""
    return [T.OneHot(num_classes), T.TypeCast(ms.float32)]
