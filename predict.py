"""Classify image files with a trained checkpoint or an exported MINDIR: top-k classes and probabilities.

    python predict.py --config_path=imagenet_config.yaml --predict_model=googlenet.mindir \
        --predict_images=cat.jpg,photos/ --class_names_file=imagenet_class_index.json --top_k=5

Prints one line per image: ``<path>: <name> 0.9312, <name> 0.0211, ...``. Runs on any device_target,
and as a ModelArts startup file (``enable_modelarts=True``: data_url and checkpoint_url are fetched first).
"""

from __future__ import annotations

from src.errors import ConfigError, run_main
from src.logger import logger, setup_logging
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device
from src.model_utils.moxing_adapter import moxing_wrapper
from src.predictor import collect_images, load_classifier, predict_probabilities, read_class_names, top_k


@moxing_wrapper
def main() -> None:
    setup_logging()
    config = load_config()
    configure_device(config)
    images = collect_images(config.predict_images)
    classifier = load_classifier(config.predict_model, config)
    logger.info("classifying %d images with %s", len(images), classifier.source)

    names = None
    for path, probabilities in predict_probabilities(classifier, images, config.dataset_name, config.batch_size):
        if names is None:
            num_classes = len(probabilities)
            if config.top_k > num_classes:
                raise ConfigError(f"top_k={config.top_k} is more than the model's {num_classes} classes")
            names = (read_class_names(config.class_names_file, num_classes) if config.class_names_file
                     else [str(i) for i in range(num_classes)])
        ranked = ", ".join(f"{names[i]} {p:.4f}" for i, p in top_k(probabilities, config.top_k))
        print(f"{path}: {ranked}", flush=True)


if __name__ == "__main__":
    run_main(main)
