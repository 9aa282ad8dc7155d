"""Evaluation metrics per dataset, plus an image count to prove every image was scored."""

from __future__ import annotations

from mindspore.train import Accuracy, Metric, Top1CategoricalAccuracy, Top5CategoricalAccuracy

IMAGE_COUNT = "images"


class ImageCount(Metric):
    """Number of images evaluated."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def clear(self) -> None:
        self.count = 0

    def update(self, *inputs) -> None:
        self.count += int(inputs[1].shape[0])

    def eval(self) -> int:
        return self.count


def create_eval_metrics(dataset_name: str, num_classes: int = 1000) -> dict[str, Metric]:
    """CIFAR-10: acc (the model-zoo key); ImageNet: top_1_accuracy and top_5_accuracy (top-5 only
    with more than 5 classes, where it means something)."""
    if dataset_name == "cifar10":
        metrics = {"acc": Accuracy()}
    else:
        metrics = {"top_1_accuracy": Top1CategoricalAccuracy()}
        if num_classes > 5:
            metrics["top_5_accuracy"] = Top5CategoricalAccuracy()
    metrics[IMAGE_COUNT] = ImageCount()
    return metrics


def split_image_count(results: dict) -> tuple[dict, int]:
    """Separate the image count from the accuracy metrics of ``Model.eval``."""
    metrics = {key: value for key, value in results.items() if key != IMAGE_COUNT}
    return metrics, int(results[IMAGE_COUNT])


def primary_metric(dataset_name: str) -> str:
    """The metric that decides which checkpoint is the best: acc (CIFAR-10) or top-1 accuracy."""
    return "acc" if dataset_name == "cifar10" else "top_1_accuracy"
