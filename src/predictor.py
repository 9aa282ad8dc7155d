"""Classifying image files with a checkpoint or an exported MINDIR: top-k classes with probabilities.

Images go through the evaluation preprocessing of ``dataset_name`` (ImageNet: resize 256, centre
crop; CIFAR-10: resize to the network input), decoded by MindSpore's own image decoder.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import mindspore.dataset.transforms as T
import mindspore.dataset.vision as V
import numpy as np

from src.dataset import eval_transforms
from src.errors import UserError
from src.models import create_inference_model

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def collect_images(paths: Sequence[str]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively (sorted)."""
    if not paths:
        raise UserError("predict_images is empty; give --predict_images=<image file or folder>[,...]")
    images: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_file():
            images.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"predict_images: folder {path} holds no images ({', '.join(IMAGE_SUFFIXES)})")
            images.extend(found)
        else:
            raise UserError(f"predict_images: {path} does not exist; expected an image file or a folder of images")
    return images


def read_class_names(path: str | Path, num_classes: int) -> list[str]:
    """Class names in class-index order, from a text file (one name per line) or an ImageNet-style
    JSON class index (``{"0": ["n01440764", "tench"], ...}``, ``{"0": "tench"}`` or a list)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"class_names_file {path} does not exist; expected one class name per line or a JSON index")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        names = _json_class_names(path, text)
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if len(names) != num_classes:
        raise UserError(f"class_names_file {path} has {len(names)} names, the model has {num_classes} classes")
    return names


def _json_class_names(path: Path, text: str) -> list[str]:
    try:
        index = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"class_names_file {path}: invalid JSON ({err.msg} at line {err.lineno})") from None
    if isinstance(index, dict):
        try:
            entries = [index[key] for key in sorted(index, key=int)]
        except ValueError:
            raise UserError(f"class_names_file {path}: keys must be class indices (\"0\", \"1\", ...)") from None
    elif isinstance(index, list):
        entries = index
    else:
        raise UserError(f"class_names_file {path}: expected an object or a list of class names")
    # ImageNet's index gives [wordnet id, readable name]; show the readable name.
    return [str(e[-1]) if isinstance(e, list) and e else str(e) for e in entries]


def image_transforms(dataset_name: str, image_size: tuple[int, int]) -> Callable[[np.ndarray], np.ndarray]:
    """Encoded image bytes -> normalised CHW float32 image for the network."""
    if dataset_name == "imagenet":
        ops = eval_transforms("imagenet", image_size=image_size)
    else:
        # Files can have any size: decode and resize first, then CIFAR-10's normalisation at its own size.
        ops = [V.Decode(), V.Resize(image_size)] + eval_transforms("cifar10", image_size=(32, 32))
    return T.Compose(ops)


@dataclass
class Classifier:
    """A network with a fixed input size; ``batch_size`` None means any batch."""

    run: Callable[[np.ndarray], np.ndarray]
    image_size: tuple[int, int]
    batch_size: int | None
    source: str


def _mindir_input_shape(path: Path) -> tuple[int, ...]:
    from mindspore.train import mind_ir_pb2

    model = mind_ir_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    inputs = [list(tensor.dims) for item in model.graph.input for tensor in item.tensor]
    if len(inputs) != 1 or len(inputs[0]) != 4:
        raise UserError(f"predict_model {path}: expected one N x 3 x H x W input, found {inputs}")
    return tuple(int(d) for d in inputs[0])


def load_classifier(model_path: str, config) -> Classifier:
    """A checkpoint (network built from the config) or an exported MINDIR (its own input size)."""
    path = Path(model_path)
    if not model_path or not path.is_file():
        raise UserError(f"predict_model '{model_path}' does not exist; give a .ckpt checkpoint or an exported .mindir")
    suffix = path.suffix.lower()
    if suffix == ".ckpt":
        net = create_inference_model(config, str(path))
        return Classifier(lambda x: net(ms.Tensor(x)).asnumpy(), (config.image_height, config.image_width), None,
                          f"checkpoint {path}")
    if suffix == ".mindir":
        batch, _, height, width = _mindir_input_shape(path)
        try:
            graph = ms.nn.GraphCell(ms.load(str(path)))
        except (RuntimeError, ValueError) as err:
            raise UserError(f"predict_model {path} cannot be loaded ({str(err).splitlines()[0][:200]})") from None
        return Classifier(lambda x: graph(ms.Tensor(x)).asnumpy(), (height, width), batch if batch > 0 else None,
                          f"MINDIR {path} (input {batch}x3x{height}x{width})")
    raise UserError(f"predict_model {path}: unknown model type '{suffix}'; expected .ckpt or .mindir")


def _load_image(path: Path, transform: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    try:
        return np.asarray(transform(np.fromfile(path, dtype=np.uint8)), dtype=np.float32)
    except (RuntimeError, ValueError):
        raise UserError(f"{path} cannot be decoded as an image; expected JPEG, PNG, BMP or TIFF") from None


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict_probabilities(classifier: Classifier, images: Sequence[Path], dataset_name: str,
                          batch_size: int) -> Iterator[tuple[Path, np.ndarray]]:
    """(image, class probabilities) for each image, in batches of the model's batch size."""
    transform = image_transforms(dataset_name, classifier.image_size)
    step = classifier.batch_size or batch_size
    for start in range(0, len(images), step):
        chunk = images[start:start + step]
        batch = np.stack([_load_image(path, transform) for path in chunk])
        if classifier.batch_size and len(chunk) < classifier.batch_size:  # a fixed-batch MINDIR: pad
            batch = np.concatenate([batch, np.zeros((step - len(chunk),) + batch.shape[1:], np.float32)])
        probabilities = softmax(classifier.run(batch).astype(np.float64))
        yield from zip(chunk, probabilities[:len(chunk)], strict=True)


def top_k(probabilities: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The ``k`` most probable classes, most probable first (ties: lower index first)."""
    order = sorted(range(len(probabilities)), key=lambda i: (-probabilities[i], i))[:k]
    return [(i, float(probabilities[i])) for i in order]
