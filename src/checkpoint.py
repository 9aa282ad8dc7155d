"""Reading checkpoints into the network, with errors that say what does not fit."""

from __future__ import annotations

from pathlib import Path

import mindspore as ms
import mindspore.nn as nn

from src.errors import UserError


def read_checkpoint(path: str | Path) -> dict:
    """The parameters stored in a MindSpore .ckpt file; a missing or unreadable file is a UserError."""
    path = Path(path)
    if not str(path) or not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; give the path of a .ckpt file")
    try:
        return ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"checkpoint {path} cannot be read ({reason[:200]}); "
                        "expected a complete MindSpore .ckpt file") from None


def load_weights(net: nn.Cell, path: str | Path) -> None:
    """Load every parameter of ``net`` from the checkpoint at ``path``.

    All network parameters must be present with the network's shapes; extra entries (optimizer
    state, step counters) are ignored.
    """
    stored = read_checkpoint(path)
    for param in net.get_parameters():
        if param.name not in stored:
            raise UserError(f"checkpoint {path} has no parameter '{param.name}'; "
                            "expected a checkpoint of this GoogleNet")
        shape = tuple(stored[param.name].shape)
        if shape != tuple(param.shape):
            raise UserError(f"checkpoint {path}: parameter '{param.name}' has shape {shape}, the network "
                            f"expects {tuple(param.shape)} (check num_classes)")
    not_loaded, _ = ms.load_param_into_net(net, stored, strict_load=True)
    if not_loaded:
        raise UserError(f"checkpoint {path}: could not load {', '.join(not_loaded[:3])}")
