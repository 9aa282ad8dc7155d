"""Prepare inputs of the offline inference app (ascend310_infer), from the same config as export.py.

    python preprocess.py --config_path=cifar10_config.yaml --val_data_path=/data/cifar-10-batches-bin \
        --output_path=./preprocess_Result
    python preprocess.py --config_path=imagenet_config.yaml --val_data_path=/data/imagenet/val \
        --output_path=./preprocess_Result

Reads the config's ``dataset_name``, ``val_data_path``, ``image_height`` x ``image_width`` and
``export_batch_size`` (the exported model's batch) and writes under ``output_path``, as upstream's
preprocess.py does.
CIFAR-10: the evaluation images go through src/dataset.py's eval transforms and are written as
float32 NCHW files ``00_data/cifar10_<i>.bin`` (``export_batch_size`` images each, the last one may
hold fewer), with the int32 labels of the same images in ``01_label/cifar10_<i>.bin``.
ImageNet: the app reads the JPEGs itself; from a tree of class folders (sorted names = class index,
as in training) this writes the label file ``imagenet_label.txt``: one line
``<image path relative to val_data_path> <class index>`` per image.
"""

from __future__ import annotations

import os
from pathlib import Path

from src.atomic_io import ensure_folder
from src.errors import UserError, run_main
from src.logger import setup_logging
from src.model_utils.config import load_config

CIFAR_DATA_FOLDER = "00_data"
CIFAR_LABEL_FOLDER = "01_label"
IMAGENET_LABEL_FILE = "imagenet_label.txt"
IMAGE_EXTENSIONS = {".jpeg", ".jpg", ".png"}


def write_cifar10(data_path: str, output: Path, image_size: tuple[int, int], batch_size: int) -> int:
    """Write the transformed evaluation set in batches; returns the number of images."""
    from src.dataset import create_dataset

    dataset = create_dataset("cifar10", data_path, training=False, batch_size=batch_size, image_size=image_size,
                             num_parallel_workers=1, shuffle=False)
    data_dir = ensure_folder(output / CIFAR_DATA_FOLDER, "output_path")
    label_dir = ensure_folder(output / CIFAR_LABEL_FOLDER, "output_path")
    for folder in (data_dir, label_dir):
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
                        "(for a flat folder of images, write the label file yourself; see docs/INFERENCE.md)")
    labels = []
    for index, name in enumerate(classes):
        for image in sorted((root / name).iterdir()):
            if image.suffix.lower() in IMAGE_EXTENSIONS:
                labels.append((f"{name}/{image.name}", index))
    if not labels:
        raise UserError(f"ImageNet folder {root}: no .JPEG/.jpg/.png images in its class folders")
    return labels


def main() -> None:
    setup_logging()
    config = load_config()
    data_path, batch = config.val_data_path, config.export_batch_size
    if config.dataset_name == "cifar10":
        size = (config.image_height, config.image_width)
        output = Path(config.output_path)
        images = write_cifar10(data_path, output, size, batch)
        print(f"wrote {images} images of {data_path} to {output / CIFAR_DATA_FOLDER} "
              f"(batches of {batch}, {size[0]}x{size[1]}) and labels to {output / CIFAR_LABEL_FOLDER}", flush=True)
        return
    labels = imagenet_labels(data_path)
    label_file = ensure_folder(config.output_path, "output_path") / IMAGENET_LABEL_FILE
    partial = label_file.with_suffix(".tmp")
    partial.write_text("".join(f"{name} {index}\n" for name, index in labels), encoding="utf-8")
    os.replace(partial, label_file)
    print(f"wrote labels of {len(labels)} images of {data_path} to {label_file}", flush=True)


if __name__ == "__main__":
    run_main(main)
