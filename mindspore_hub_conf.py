"""MindSpore Hub entry: build the network by name, as the model zoo's hub configs do.

    from mindspore_hub_conf import create_network
    net = create_network("googlenet", num_classes=1000)

The network is src/googlenet.py's, with upstream's parameter names, so upstream checkpoints load into it.
"""

from __future__ import annotations

from typing import Any

from src.googlenet import GoogleNet, create_model

NETWORKS = ("googlenet",)


def create_network(name: str, *args: Any, **kwargs: Any) -> GoogleNet:
    """The network called ``name``; other arguments go to ``src.googlenet.create_model``
    (``num_classes`` defaults to 10, CIFAR-10's)."""
    if name not in NETWORKS:
        raise NotImplementedError(f"{name} is not implemented in this repository; available: {', '.join(NETWORKS)}")
    if not args:
        kwargs.setdefault("num_classes", 10)
    return create_model(*args, **kwargs)
