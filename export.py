"""Export a GoogleNet checkpoint to MINDIR, ONNX or AIR (Ascend only).

    python export.py --config_path=cifar10_config_cpu.yaml --ckpt_file=ckpt/x.ckpt --file_format=ONNX

Writes ``<file_name>.mindir`` / ``.onnx`` / ``.air`` for an input of
export_batch_size x 3 x image_height x image_width.
"""

from __future__ import annotations

from src.checkpoint import load_weights
from src.errors import run_main
from src.exporter import check_export_target, export_network
from src.googlenet import create_model
from src.logger import setup_logging
from src.model_utils.config import load_config
from src.model_utils.device_adapter import configure_device
from src.model_utils.moxing_adapter import moxing_wrapper


@moxing_wrapper
def main() -> None:
    setup_logging()
    config = load_config()
    check_export_target(config.file_format, config.device_target)
    configure_device(config)
    print(config.summary(), flush=True)

    net = create_model(config.num_classes, dropout_rate=config.dropout_rate)
    load_weights(net, config.ckpt_file)
    net.set_train(False)
    shape = (config.export_batch_size, 3, config.image_height, config.image_width)
    path = export_network(net, shape, config.file_name, config.file_format)
    print(f"exported {config.ckpt_file} to {path} (input {'x'.join(map(str, shape))})", flush=True)


if __name__ == "__main__":
    run_main(main)
