"""Score the offline inference app's results: top-1 (and for ImageNet top-5) accuracy.

    python postprocess.py --dataset=cifar10 --result_path=./result_Files --label_file=./preprocess_Result/01_label
    python postprocess.py --dataset=imagenet --result_path=./result_Files --label_file=imagenet_label.txt

The flags are upstream's; ``--label_path`` is accepted for ``--label_file``.

CIFAR-10: every label file ``01_label/<name>.bin`` (int32, one label per image of the batch) is
matched with ``result_Files/<name>_0.bin`` (float32 logits, one row per image). ImageNet: every
line ``<image name> <class index>`` of the label file is matched with ``<image stem>_0.bin``.
Prints the model-zoo lines ``after allreduce eval: top1_correct=..., tot=..., acc=...%``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from src.errors import ArgumentParser, ConfigError, UserError, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--dataset", choices=("cifar10", "imagenet"), default="cifar10")
    parser.add_argument("--result_path", default="./result_Files", help="folder of <name>_0.bin logits")
    parser.add_argument("--label_file", "--label_path", dest="label_file", required=True,
                        help="CIFAR-10: the 01_label folder from preprocess.py; ImageNet: the label file")
    parser.add_argument("--num_classes", type=int, default=0,
                        help="classes of the model (0 = infer from the result file sizes)")
    args = parser.parse_args(argv)
    if args.num_classes < 0 or args.num_classes == 1:
        raise ConfigError(f"--num_classes={args.num_classes} is invalid; expected 0 (infer) or at least 2")
    return args


def cifar10_labels(label_dir: Path) -> list[tuple[str, np.ndarray]]:
    """(result name, int32 labels of that batch) per label file of preprocess.py."""
    if not label_dir.is_dir():
        raise UserError(f"label folder {label_dir} does not exist; expected the 01_label folder of preprocess.py")
    files = sorted(label_dir.glob("*.bin"))
    if not files:
        raise UserError(f"no label .bin files in {label_dir}; run preprocess.py first")
    labels = []
    for file in files:
        if file.stat().st_size == 0 or file.stat().st_size % 4:
            raise UserError(f"{file}: {file.stat().st_size} bytes is not a whole, non-zero number of int32 labels")
        labels.append((file.stem, np.fromfile(file, dtype=np.int32)))
    return labels


def imagenet_labels(label_file: Path) -> list[tuple[str, np.ndarray]]:
    """(result name, [class index]) per line ``<image name> <class index>`` of the label file."""
    if not label_file.is_file():
        raise UserError(f"label file {label_file} does not exist; expected lines '<image name> <class index>'")
    labels = []
    for number, line in enumerate(label_file.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise UserError(f"{label_file} line {number}: '{line.strip()}' is not '<image name> <class index>'")
        labels.append((Path(parts[0]).stem, np.array([int(parts[1])], dtype=np.int32)))
    if not labels:
        raise UserError(f"label file {label_file} lists no images")
    return labels


def read_logits(result_dir: Path, name: str, images: int, num_classes: int) -> np.ndarray:
    """The ``images`` x classes logits of ``<name>_0.bin``; classes inferred when ``num_classes`` is 0."""
    path = result_dir / f"{name}_0.bin"
    if not path.is_file():
        raise UserError(f"result file {path} is missing; run the inference app on every preprocessed input")
    size = path.stat().st_size
    classes = num_classes or size // (4 * images)
    if classes < 2 or size != 4 * images * classes:
        expected = f"{images} x {num_classes} float32 logits" if num_classes else f"{images} rows of float32 logits"
        raise UserError(f"result file {path} has {size} bytes; expected {expected} (does the model match the data?)")
    return np.fromfile(path, dtype=np.float32).reshape(images, classes)


def count_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """Images whose label is among the ``k`` highest logits (k=1: the arg-max, first on ties)."""
    if k == 1:
        return int(np.sum(np.argmax(logits, axis=1) == labels))
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return int(np.sum(np.any(top == labels[:, None], axis=1)))


def main() -> None:
    args = parse_args()
    result_dir = Path(args.result_path)
    if not result_dir.is_dir():
        raise UserError(f"result folder {result_dir} does not exist; run the inference app first")
    label_path = Path(args.label_file)
    entries = cifar10_labels(label_path) if args.dataset == "cifar10" else imagenet_labels(label_path)

    top1 = top5 = total = 0
    classes = args.num_classes
    for name, labels in entries:
        logits = read_logits(result_dir, name, len(labels), classes)
        classes = logits.shape[1]  # every file must agree with the first one
        if labels.min() < 0 or labels.max() >= classes:
            raise UserError(f"labels of {name}: class {int(labels.max())} outside 0..{classes - 1} of the model")
        top1 += count_correct(logits, labels, 1)
        top5 += count_correct(logits, labels, min(5, classes))
        total += len(labels)
    print(f"after allreduce eval: top1_correct={top1}, tot={total}, acc={100 * top1 / total:.2f}%", flush=True)
    if args.dataset == "imagenet":
        print(f"after allreduce eval: top5_correct={top5}, tot={total}, acc={100 * top5 / total:.2f}%", flush=True)


if __name__ == "__main__":
    run_main(main)
