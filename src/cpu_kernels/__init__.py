"""The CPU layer: compiled C++ kernels for the operations MindSpore 2.10 runs slowly on a CPU.

Applied to a network built from plain MindSpore cells (src/googlenet.py), never part of it:

- ``accelerate(net, config)``, for training, substitutes after construction the kernel forms of the
  convolution blocks (convolution + BatchNorm + ReLU) and the max pools, with the same parameters
  under the same names: where ``channels_last`` applies (CPU, float32) channels-last, every
  convolution block and max pool on oneDNN (MindSpore's own copy, ``channels_last.py``); otherwise
  the NCHW kernels the ``compiled_*`` keys ask for (``blocks.py``);
- ``fold_for_inference(net, config)``, for inference, folds BatchNorm into the convolutions
  (``fold_batchnorm``) and runs the folded network on oneDNN in its channel-blocked layout, every
  Inception one kernel call (``blocked.py``), or on the NCHW kernels;
- ``create_momentum(config, ...)`` is the optimizer the trainer asks for: the momentum update as one
  kernel call, or ``nn.Momentum``.

Without a C++ compiler every part falls back to MindSpore's operators after one warning, with the
same results (the blocked-layout inference also without oneDNN's headers: it keeps the folded NCHW
network). The kernels' sources are in ``kernels/``; ``build.py`` compiles them on first use.
"""

from __future__ import annotations

from pathlib import Path

import mindspore.nn as nn

from src.cpu_kernels.blocked import to_blocked_layout
from src.cpu_kernels.blocks import fold_batchnorm, substitute_kernels
from src.cpu_kernels.build import kernel_library, kernels_apply
from src.cpu_kernels.channels_last import to_channels_last_training
from src.cpu_kernels.conv import check_kernel_threads, compiled_conv_wanted
from src.cpu_kernels.max_pool import compiled_max_pool_wanted
from src.cpu_kernels.optimizer import CompiledMomentum, compiled_optimizer_wanted
from src.cpu_kernels.optimizer import create_momentum as _create_momentum
from src.logger import logger
from src.model_utils.device_adapter import lift_cpu_kernel_cap

__all__ = ["accelerate", "create_momentum", "fold_batchnorm", "fold_for_inference", "kernels_apply"]

_LOG_LINES = {"max_pool": "max pooling: compiled CPU kernel %s",
              "conv": "stride-1 convolutions: compiled CPU kernel %s"}


def _channels_last_library(config) -> Path | None:
    """The oneDNN kernel library when the config's ``channels_last`` applies (CPU, float32) and it
    builds, else None."""
    if not (config.channels_last and kernels_apply(config)):
        return None
    check_kernel_threads()
    library = kernel_library("dnnl")
    if library is not None:
        lift_cpu_kernel_cap()  # no MindSpore convolution runs: oneDNN may use the whole instruction set
    return library


def accelerate(net: nn.Cell, config) -> nn.Cell:
    """``net`` (plain cells, as built) for training, in place, logged: channels-last on oneDNN where
    ``channels_last`` applies; else the NCHW kernel forms the ``compiled_*`` keys ask for and this
    machine allows. Returns ``net``. The channels-last network's gradient for its input image is zeros
    (conv1 skips its backward-data pass, about 9% of a 224x224 step): differentiate the plain network
    for input gradients."""
    library = _channels_last_library(config)
    if library is not None:
        to_channels_last_training(net, library)
        logger.info("convolution blocks and max pools: channels-last on oneDNN, compiled CPU kernel %s", library)
        return net
    libraries = substitute_kernels(net, max_pool=compiled_max_pool_wanted(config), conv=compiled_conv_wanted(config))
    for name, library in libraries.items():
        logger.info(_LOG_LINES[name], library)
    return net


def fold_for_inference(net: nn.Cell, config) -> nn.Cell:
    """``net`` (plain cells, weights loaded) for inference only, in place: BatchNorm folded into the
    convolutions, then on oneDNN's blocked layout where ``channels_last`` applies, else on the NCHW
    kernels the ``compiled_*`` keys ask for (logged). Returns ``net``."""
    library = _channels_last_library(config)
    if library is None:
        accelerate(net, config)
    fold_batchnorm(net)
    logger.info("inference: BatchNorm folded into the convolutions")
    if library is not None:
        to_blocked_layout(net, library)
        logger.info("inference: convolutions, max pools and Inceptions on oneDNN (blocked layout), compiled CPU "
                    "kernel %s", library)
    return net


def create_momentum(config, params, learning_rate, weight_decay: float = 0.0, loss_scale: float = 1.0) -> nn.Momentum:
    """Momentum SGD with ``config.momentum``: one kernel call per step when ``compiled_optimizer``
    applies (the same arithmetic and state as ``nn.Momentum``), else ``nn.Momentum``."""
    optimizer = _create_momentum(params, learning_rate, config.momentum, weight_decay=weight_decay,
                                 loss_scale=loss_scale, compiled=compiled_optimizer_wanted(config))
    if isinstance(optimizer, CompiledMomentum):
        logger.info("optimizer: compiled CPU kernel %s", optimizer.library)
    return optimizer
