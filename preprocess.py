"""Prepare inputs of the offline inference app (ascend310_infer).

    python preprocess.py --dataset=cifar10 --data_path=/data/cifar-10-batches-bin --output_path=./preprocess_Result
    python preprocess.py --dataset=imagenet --data_path=/data/imagenet/val --output_path=./preprocess_Result

CIFAR-10: the evaluation images go through src/dataset.py's eval transforms and are written as
float32 NCHW files ``00_data/cifar10_<i>.bin`` (``batch_size`` images each, the last one may hold
fewer), with the int32 labels of the same images in ``01_label/cifar10_<i>.bin``.
ImageNet: the app reads the JPEGs itself; from a tree of class folders (sorted names = class index,
as in training) this writes the label file ``imagenet_label.txt``: one line
``<image path relative to data_path> <class index>`` per image.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from src.errors import ArgumentParser, ConfigError, UserError, run_main

CIFAR_DATA_FOLDER = "00_data"
CIFAR_LABEL_FOLDER = "01_label"
IMAGENET_LABEL_FILE = "imagenet_label.txt"
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dataset", choices=("cifar10", "imagenet"), default="cifar10")
    parser.add_argument("--data_path", required=True,
                        help="CIFAR-10 folder with test_batch.bin (or a .bin file); ImageNet val/ class folders")
    parser.add_argument("--output_path", default="./preprocess_Result")
    parser.add_argument("--image_height", type=int, default=224, help="CIFAR-10: the model's input height")
    parser.add_argument("--image_width", type=int, default=224, help="CIFAR-10: the model's input width")
    parser.add_argument("--batch_size", type=int, default=1, help="CIFAR-10: images per .bin file (the model's batch)")
    args = parser.parse_args(argv)
    for key in ("image_height", "image_width", "batch_size"):
        if getattr(args, key) <= 0:
            raise ConfigError(f"--{key}={getattr(args, key)} is invalid; expected a value > 0")
    return args


def write_cifar10(data_path: str, output: Path, image_size: tuple[int, int], batch_size: int) -> int:
    """Write the transformed evaluation set in batches; returns the number of images."""
    from src.dataset import create_dataset

    dataset = create_dataset("cifar10", data_path, training=False, batch_size=batch_size, image_size=image_size,
                             num_parallel_workers=1, shuffle=False)
    data_dir, label_dir = output / CIFAR_DATA_FOLDER, output / CIFAR_LABEL_FOLDER
    for folder in (data_dir, label_dir):
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("cifar10_*.bin"):
            stale.unlink()
    images = 0
    for index, (image, label) in enumerate(dataset.create_tuple_iterator(output_numpy=True)):
        name = f"cifar10_{index:05d}.bin"
        image.astype("float32").tofile(data_dir / name)
        label.astype("int32").tofile(label_dir / name)
        images += len(label)
    return images


def imagenet_labels(data_path: str) -> list[tuple[str, int]]:
    """(relative image path, class index) for every image of a class-folder tree."""
    root = Path(data_path)
    if not root.is_dir():
        raise UserError(f"ImageNet folder {root} does not exist; expected one sub-folder of images per class")
    classes = sorted(child.name for child in root.iterdir() if child.is_dir())
    if not classes:
        raise UserError(f"ImageNet folder {root} has no class sub-folders; expected {root}/<class>/<image>.JPEG "
                        "(for a flat folder of images, write the label file yourself; see README)")
    labels = []
    for index, name in enumerate(classes):
        for image in sorted((root / name).iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS:
                labels.append((f"{name}/{image.name}", index))
    if not labels:
        raise UserError(f"ImageNet folder {root}: no .JPEG/.jpg/.png images in its class folders")
    return labels


def main() -> None:
    args = parse_args()
    output = Path(args.output_path)
    if args.dataset == "cifar10":
        images = write_cifar10(args.data_path, output, (args.image_height, args.image_width), args.batch_size)
        print(f"wrote {images} images of {args.data_path} to {output / CIFAR_DATA_FOLDER} "
              f"(batches of {args.batch_size}, {args.image_height}x{args.image_width}) "
              f"and labels to {output / CIFAR_LABEL_FOLDER}", flush=True)
        return
    labels = imagenet_labels(args.data_path)
    output.mkdir(parents=True, exist_ok=True)
    label_file = output / IMAGENET_LABEL_FILE
    partial = label_file.with_suffix(".tmp")
    partial.write_text("".join(f"{name} {index}\n" for name, index in labels), encoding="utf-8")
    os.replace(partial, label_file)
    print(f"wrote labels of {len(labels)} images of {args.data_path} to {label_file}", flush=True)


if __name__ == "__main__":
    run_main(main)
