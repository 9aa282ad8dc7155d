"""Evaluate a GoogleNet checkpoint on every image of the validation set.

    python eval.py --config_path=cifar10_config_cpu.yaml --val_data_path=... --checkpoint_path=ckpt/x.ckpt

Prints ``accuracy: {'acc': ...}`` for CIFAR-10, top-1 and top-5 accuracy for ImageNet.
"""

from __future__ import annotations

import time

import mindspore as ms

from src.CrossEntropySmooth import create_loss
from src.dataset import create_dataset_from_config
from src.errors import run_main
from src.logger import setup_logging
from src.metrics import create_eval_metrics, split_image_count
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device
from src.model_utils.moxing_adapter import moxing_wrapper
from src.models import create_inference_model
from src.resources import batch_must_fit


@moxing_wrapper
def main() -> None:
    setup_logging()
    config = load_config()
    configure_device(config)
    print(config.summary(), flush=True)

    dataset = create_dataset_from_config(config, training=False)
    net = create_inference_model(config, config.checkpoint_path)
    model = ms.Model(net, loss_fn=create_loss(config),
                     metrics=create_eval_metrics(config.dataset_name, config.num_classes))

    start = time.perf_counter()
    with batch_must_fit(config.batch_size, (config.image_height, config.image_width), config.device_target):
        metrics, images = split_image_count(model.eval(dataset, dataset_sink_mode=False))
    seconds = time.perf_counter() - start
    print(f"accuracy: {metrics}", flush=True)
    print(f"evaluated {images} images of {config.val_data_path} in {seconds:.2f} s "
          f"({images / seconds:.1f} images/s), checkpoint {config.checkpoint_path}", flush=True)


if __name__ == "__main__":
    run_main(main)
