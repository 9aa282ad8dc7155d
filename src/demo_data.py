"""A small synthetic, learnable dataset in the real on-disk formats (NOT CIFAR-10 or ImageNet).

Each class has its own colour and stripe direction, plus noise, so a short training run can
learn it. ``write_cifar10_layout`` writes ``cifar-10-batches-bin/`` (data_batch_1..5.bin,
test_batch.bin, batches.meta.txt) in the CIFAR-10 binary format; ``write_image_folder`` writes a
JPEG class-folder tree like ImageNet's ``train/`` or ``val/``.

    python -m src.demo_data --dest ./demo_data [--train 1000 --test 200]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

CLASS_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "purple", "grey", "white")
PALETTE = np.array([
    (220, 40, 40), (40, 200, 40), (40, 60, 220), (230, 220, 40), (220, 40, 220),
    (40, 210, 210), (240, 140, 20), (120, 40, 170), (128, 128, 128), (240, 240, 240),
], dtype=np.float32)


def synthetic_images(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """HWC uint8 images whose colour (and stripe direction) tells the label."""
    n = len(labels)
    base = PALETTE[labels % len(PALETTE)][:, None, None, :]
    stripes = (np.arange(size) // 4 % 2).astype(np.float32) * 40 - 20
    horizontal = (labels // len(PALETTE) + labels) % 2 == 0
    pattern = np.where(horizontal[:, None, None], stripes[None, :, None], stripes[None, None, :])
    noise = rng.normal(0, 25, size=(n, size, size, 3)).astype(np.float32)
    images = base + pattern[..., None] + noise
    return np.clip(images, 0, 255).astype(np.uint8)


def cifar_records(labels: np.ndarray, images_hwc: np.ndarray) -> bytes:
    """Pack labels and 32x32 HWC images as CIFAR-10 binary records (label byte + CHW pixels)."""
    chw = images_hwc.transpose(0, 3, 1, 2).reshape(len(labels), -1)
    return np.concatenate([labels.astype(np.uint8)[:, None], chw], axis=1).tobytes()


def write_cifar10_layout(dest: str | Path, num_train: int = 1000, num_test: int = 200,
                         num_classes: int = 10, seed: int = 0) -> Path:
    """Write ``dest/cifar-10-batches-bin`` with five training files and one test file."""
    rng = np.random.default_rng(seed)
    folder = Path(dest) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels = rng.integers(0, num_classes, num_train)
    for index, part in enumerate(np.array_split(train_labels, 5), start=1):
        (folder / f"data_batch_{index}.bin").write_bytes(cifar_records(part, synthetic_images(part, 32, rng)))
    test_labels = rng.integers(0, num_classes, num_test)
    (folder / "test_batch.bin").write_bytes(cifar_records(test_labels, synthetic_images(test_labels, 32, rng)))
    names = [CLASS_NAMES[i] if i < len(CLASS_NAMES) else f"class_{i}" for i in range(num_classes)]
    (folder / "batches.meta.txt").write_text("\n".join(names) + "\n")
    return folder


def write_image_folder(dest: str | Path, num_classes: int = 4, per_class: int = 8, size: int = 64,
                       seed: int = 0) -> Path:
    """Write ``dest/<class>/<n>.JPEG`` (one folder per class, sorted names = class index)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(dest)
    for label in range(num_classes):
        folder = root / f"n{label:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        labels = np.full(per_class, label)
        for index, image in enumerate(synthetic_images(labels, size, rng)):
            Image.fromarray(image).save(folder / f"img_{label}_{index}.JPEG", quality=95)
    return root


def write_png_images(dest: str | Path, count: int = 6, num_classes: int = 10, seed: int = 0) -> Path:
    """Write ``count`` 32x32 PNG files ``<n>_<class name>.png`` (inputs for predict.py)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(dest)
    folder.mkdir(parents=True, exist_ok=True)
    labels = np.arange(count) % num_classes
    for index, (label, image) in enumerate(zip(labels, synthetic_images(labels, 32, rng), strict=True)):
        Image.fromarray(image).save(folder / f"{index:03d}_{CLASS_NAMES[label % len(CLASS_NAMES)]}.png")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default="./demo_data", help="folder that receives cifar-10-batches-bin/")
    parser.add_argument("--train", type=int, default=1000, help="training images (split over 5 files)")
    parser.add_argument("--test", type=int, default=200, help="test images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--png", type=int, default=0, help="also write this many PNG images to <dest>/images")
    args = parser.parse_args()
    if args.train < 5 or args.test < 1:
        parser.error("--train must be >= 5 and --test >= 1")
    folder = write_cifar10_layout(args.dest, args.train, args.test, seed=args.seed)
    print(f"wrote a synthetic dataset in the CIFAR-10 binary layout (not CIFAR-10): {folder}")
    if args.png > 0:
        images = write_png_images(Path(args.dest) / "images", args.png, seed=args.seed + 1)
        print(f"wrote {args.png} PNG images: {images}")


if __name__ == "__main__":
    main()
