"""The network as the entry scripts build it from a config: src/googlenet.py's cells, then the CPU
layer (src/cpu_kernels) where the config and the machine allow it."""

from __future__ import annotations

from src.checkpoint import load_weights
from src.cpu_kernels import accelerate, fold_for_inference
from src.googlenet import GoogleNet, create_model


def create_model_from_config(config) -> GoogleNet:
    """The network train.py trains. export.py uses ``create_model`` alone: MindSpore's own operators,
    so that the exported graph runs anywhere."""
    return accelerate(_plain_model(config), config)


def _plain_model(config) -> GoogleNet:
    return create_model(config.num_classes, dropout_rate=config.dropout_rate, seed=config.seed)


def create_inference_model(config, checkpoint_path: str | None) -> GoogleNet:
    """The network eval.py, predict.py and the benchmark's inference run: built from the config,
    weights from ``checkpoint_path`` (None: as initialised), BatchNorm folded if the config says so
    (src/cpu_kernels: ``fold_for_inference``), else as train.py trains it, in evaluation mode."""
    net = _plain_model(config)  # the CPU layer is applied after the weights are loaded
    if checkpoint_path is not None:
        load_weights(net, checkpoint_path)
    if config.fold_batchnorm:
        fold_for_inference(net, config)
    else:
        accelerate(net, config)
    net.set_train(False)
    return net
