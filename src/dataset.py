"""Input pipelines on the MindSpore dataset engine: CIFAR-10 binary files and ImageNet class folders.

CIFAR-10 records (1 label byte + 3,072 image bytes, CHW) are read through ``np.memmap`` as a
random-access source of the engine instead of ``Cifar10Dataset``, which only accepts files of
exactly 10,000 records; any whole number of records per file works here. Transforms, batching,
shuffling and sharding are the engine's own.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import mindspore.dataset as ds
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as V
import numpy as np

from src.augment import auto_augment_ops, batch_mixing_op, one_hot_ops, random_erasing_ops
from src.errors import UserError
from src.logger import logger
from src.rank_debug import record_samples

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet evaluation resizes the shorter side to 256 for a 224 crop; other crop sizes keep the ratio.
IMAGENET_RESIZE_RATIO = 256 / 224

CIFAR_FOLDER = "cifar-10-batches-bin"


def get_cifar_hint(path: Path) -> str:
    """The exact command that puts CIFAR-10 where ``path`` expects it."""
    dest = path.parent if path.name == CIFAR_FOLDER else path
    return f"get it with: python -m src.data_fetch cifar10 --dest {dest} (writes {dest / CIFAR_FOLDER})"


def cifar10_files(data_dir: str | Path, training: bool) -> list[Path]:
    """The .bin files of one split: data_batch_*.bin for training, test_batch.bin for evaluation.

    A folder holding only evaluation files under other names (upstream's ``cifar-10-verify-bin``)
    is read whole for evaluation; a path to one .bin file is taken as it is. A folder without .bin
    files that holds exactly one folder of them (``cifar-10-batches-bin``, what unpacking
    cifar-10-binary.tar.gz leaves) stands for that folder.
    """
    path = Path(data_dir)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"CIFAR-10 data folder {path} does not exist; {get_cifar_hint(path)}")
    path = _folder_of_bin_files(path)
    if training:
        files = sorted(path.glob("data_batch_*.bin"))
        if not files:
            raise UserError(f"no data_batch_*.bin in {path} (CIFAR-10 training files); {_cifar_layout_hint(path)}")
        _check_batch_numbers(path, files)
        return files
    if (path / "test_batch.bin").is_file():
        return [path / "test_batch.bin"]
    files = sorted(p for p in path.glob("*.bin") if not p.name.startswith("data_batch_"))
    if not files:
        raise UserError(f"no test_batch.bin in {path} (CIFAR-10 evaluation file); {_cifar_layout_hint(path)}")
    return files


def _folder_of_bin_files(path: Path) -> Path:
    """``path``, or its one sub-folder holding .bin files when ``path`` itself holds none."""
    if any(path.glob("*.bin")):
        return path
    holders = sorted(child for child in path.iterdir() if child.is_dir() and any(child.glob("*.bin")))
    if len(holders) > 1:
        raise UserError(f"CIFAR-10 data folder {path} holds no .bin files but {len(holders)} folders of them "
                        f"({', '.join(child.name for child in holders)}); pass the one to use")
    if holders:
        logger.info("CIFAR-10 data: using %s", holders[0])
        return holders[0]
    return path


def _cifar_layout_hint(path: Path) -> str:
    """What is wrong with a folder without CIFAR-10 binary files, and how to fix it."""
    if (path / "data_batch_1").is_file() or (path / "test_batch").is_file():
        return f"this is the Python version of CIFAR-10; the binary version is needed, {get_cifar_hint(path.parent)}"
    return get_cifar_hint(path)


def _check_batch_numbers(path: Path, files: Sequence[Path]) -> None:
    """data_batch_1..N without gaps (N is 5 for CIFAR-10, fewer for subsets): a gap means an incomplete copy."""
    numbers = sorted(int(f.stem.rsplit("_", 1)[1]) for f in files if f.stem.rsplit("_", 1)[1].isdigit())
    missing = [n for n in range(1, max(numbers, default=0) + 1) if n not in numbers]
    if missing:
        found = ", ".join(f.name for f in files)
        raise UserError(f"{path}: data_batch_{missing[0]}.bin is missing (found {found}); the copy is incomplete, "
                        f"{get_cifar_hint(path)}")


class CifarBinarySource:
    """Random-access rows ``(image HWC uint8, label int32)`` over CIFAR-10 binary files."""

    def __init__(self, files: Sequence[str | Path], num_classes: int | None = None) -> None:
        self.records = []
        for file in files:
            size = Path(file).stat().st_size
            if size == 0 or size % CIFAR_RECORD_BYTES:
                raise UserError(f"{file}: {size} bytes is not a whole, non-zero number of "
                                f"{CIFAR_RECORD_BYTES}-byte CIFAR-10 records (1 label byte + 3072 image bytes): "
                                "a truncated copy, or not the binary version of CIFAR-10")
            records = np.memmap(file, dtype=np.uint8, mode="r").reshape(-1, CIFAR_RECORD_BYTES)
            if num_classes is not None:
                top = int(records[:, 0].max())
                if top >= num_classes:
                    raise UserError(f"{file}: label {top} found, but num_classes={num_classes} "
                                    f"(labels must be 0..{num_classes - 1})")
            self.records.append(records)
        self.offsets = np.cumsum([0] + [len(r) for r in self.records])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        file_index = int(np.searchsorted(self.offsets, index, side="right")) - 1
        record = self.records[file_index][index - self.offsets[file_index]]
        image = record[1:].reshape(CIFAR_IMAGE_SHAPE).transpose(1, 2, 0)
        return np.ascontiguousarray(image), np.array(record[0], dtype=np.int32)


def _normalize(mean: Sequence[float], std: Sequence[float]) -> V.Normalize:
    """Normalise uint8 pixels: (x / 255 - mean) / std in one op."""
    return V.Normalize(mean=[255 * m for m in mean], std=[255 * s for s in std])


def train_transforms(dataset_name: str, *, image_size: tuple[int, int], auto_augment: str = "none",
                     random_erasing: float = 0.0) -> list:
    """Augmentation + normalisation for training; CIFAR ops take decoded HWC uint8 images,
    ImageNet ops take encoded JPEG bytes. ``auto_augment`` (src/augment.py) runs after the flip (for
    ImageNet in place of the colour jitter, as the policies hold colour operations of their own);
    ``random_erasing`` is RandomErasing's probability on the normalised CHW tensor."""
    policy = auto_augment_ops(auto_augment)
    erasing = random_erasing_ops(random_erasing)
    if dataset_name == "cifar10":
        ops = [V.RandomCrop((32, 32), (4, 4, 4, 4)), V.RandomHorizontalFlip(), *policy]
        if tuple(image_size) != (32, 32):
            ops.append(V.Resize(image_size))
        return ops + [_normalize(CIFAR_MEAN, CIFAR_STD), V.HWC2CHW(), *erasing]
    return [
        V.RandomCropDecodeResize(image_size, scale=(0.08, 1.0), ratio=(0.75, 1.333)),
        V.RandomHorizontalFlip(prob=0.5),
        *(policy or [V.RandomColorAdjust(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)]),
        _normalize(IMAGENET_MEAN, IMAGENET_STD),
        V.HWC2CHW(),
        *erasing,
    ]


def eval_transforms(dataset_name: str, *, image_size: tuple[int, int]) -> list:
    """Deterministic preprocessing for evaluation, export checks and offline inference."""
    if dataset_name == "cifar10":
        ops = [] if tuple(image_size) == (32, 32) else [V.Resize(image_size)]
        return ops + [_normalize(CIFAR_MEAN, CIFAR_STD), V.HWC2CHW()]
    return [
        V.Decode(),
        V.Resize(round(image_size[0] * IMAGENET_RESIZE_RATIO)),
        V.CenterCrop(image_size),
        _normalize(IMAGENET_MEAN, IMAGENET_STD),
        V.HWC2CHW(),
    ]


def _image_folder(data_dir: str | Path) -> Path:
    path = Path(data_dir)
    check = f"check a tree with: python -m src.data_fetch imagenet {path}"
    if not path.is_dir():
        raise UserError(f"ImageNet folder {path} does not exist; expected one sub-folder of images per class "
                        f"(ImageNet cannot be downloaded automatically: see the README, then {check})")
    classes = sorted(child for child in path.iterdir() if child.is_dir())
    if not classes:
        raise UserError(f"ImageNet folder {path} has no class sub-folders; expected {path}/<class>/<image>.JPEG")
    empty = [folder for folder in classes if not any(entry.is_file() for entry in os.scandir(folder))]
    if empty:
        raise UserError(f"ImageNet class folder {empty[0]} holds no image files ({len(empty)} of {len(classes)} "
                        f"class folders are empty); every class needs images, {check}")
    return path


@dataclass(frozen=True)
class Augmentation:
    """The training options beyond crop and flip (src/augment.py); the default is upstream's pipeline."""

    auto_augment: str = "none"
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mixup_switch_prob: float = 0.5

    @classmethod
    def from_config(cls, config) -> Augmentation:
        return cls(config.auto_augment, config.random_erasing, config.mixup_alpha, config.cutmix_alpha,
                   config.mixup_switch_prob)


def create_dataset(dataset_name: str, data_dir: str | Path, *, training: bool, batch_size: int,
                   image_size: tuple[int, int], num_parallel_workers: int = 2, num_classes: int | None = None,
                   rank_id: int = 0, rank_size: int = 1, shuffle: bool | None = None,
                   augmentation: Augmentation | None = None) -> ds.Dataset:
    """Batched (image float32 NCHW, label) pipeline for ``dataset_name`` in {cifar10, imagenet}.

    Training batches drop the last partial batch; evaluation keeps every image. ``rank_size`` > 1
    reads the ``rank_id``-th of ``rank_size`` disjoint shards. Labels are int32 class indices, except
    in training with mixup or cutmix (``augmentation``, training only): then float32 rows of
    ``num_classes`` class weights summing to 1.
    """
    augmentation = augmentation if training and augmentation is not None else Augmentation()
    shuffle = training if shuffle is None else shuffle
    shard = {"num_shards": rank_size, "shard_id": rank_id} if rank_size > 1 else {}
    if dataset_name == "cifar10":
        source = CifarBinarySource(cifar10_files(data_dir, training), num_classes)
        if training:
            source = record_samples(source, rank_id)
        data = ds.GeneratorDataset(source, column_names=["image", "label"], shuffle=shuffle,
                                   python_multiprocessing=False, **shard)
    elif dataset_name == "imagenet":
        data = ds.ImageFolderDataset(str(_image_folder(data_dir)), shuffle=shuffle,
                                     num_parallel_workers=num_parallel_workers, **shard)
    else:
        raise UserError(f"unknown dataset_name '{dataset_name}'; expected one of: cifar10, imagenet")

    if training:
        transforms = train_transforms(dataset_name, image_size=image_size, auto_augment=augmentation.auto_augment,
                                      random_erasing=augmentation.random_erasing)
    else:
        transforms = eval_transforms(dataset_name, image_size=image_size)
    data = data.map(transforms, input_columns="image", num_parallel_workers=num_parallel_workers)
    data = data.map(T.TypeCast(ms.int32), input_columns="label", num_parallel_workers=1)
    data = data.batch(batch_size, drop_remainder=training)
    mixing = batch_mixing_op(augmentation.mixup_alpha, augmentation.cutmix_alpha, augmentation.mixup_switch_prob)
    if mixing is None:
        return data
    if num_classes is None:
        raise ValueError("mixup / cutmix need num_classes for the one-hot labels")
    data = data.map(one_hot_ops(num_classes), input_columns="label", num_parallel_workers=1)
    return data.map(mixing, input_columns=["image", "label"], num_parallel_workers=1)


def create_dataset_from_config(config, *, training: bool, rank_id: int = 0, rank_size: int = 1,
                               batch_size: int | None = None) -> ds.Dataset:
    """``create_dataset`` with the data keys of a loaded config (and its augmentation keys in training)."""
    return create_dataset(
        config.dataset_name,
        config.train_data_path if training else config.val_data_path,
        training=training,
        batch_size=batch_size or config.batch_size,
        image_size=(config.image_height, config.image_width),
        num_parallel_workers=config.num_parallel_workers,
        num_classes=config.num_classes,
        rank_id=rank_id,
        rank_size=rank_size,
        augmentation=Augmentation.from_config(config) if training else None,
    )
