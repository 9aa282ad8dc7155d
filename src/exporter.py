"""Exporting the network to MINDIR, ONNX or AIR, with the output appearing only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mindspore as ms
import mindspore.nn as nn
import numpy as np

from src.atomic_io import disk_full_error, ensure_folder
from src.errors import ConfigError, UserError

EXTENSIONS = {"MINDIR": ".mindir", "ONNX": ".onnx", "AIR": ".air"}


def check_export_target(file_format: str, device_target: str) -> None:
    """AIR models are built by the Ascend toolchain only."""
    if file_format == "AIR" and device_target != "Ascend":
        raise ConfigError(f"file_format=AIR needs device_target=Ascend (got {device_target}); "
                          "use MINDIR or ONNX on this device")


def export_network(net: nn.Cell, input_shape: tuple[int, ...], file_name: str | Path, file_format: str) -> Path:
    """Export ``net`` for a float32 input of ``input_shape``; returns the written file.

    The export runs in a temporary folder beside the destination and is moved into place only
    when MindSpore has finished, so a failed or interrupted export leaves no partial model.
    """
    target = Path(str(file_name) + EXTENSIONS[file_format])
    ensure_folder(target.parent, "file_name")
    dummy = ms.Tensor(np.zeros(input_shape, dtype=np.float32))
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        partial = scratch / target.stem
        if file_format == "ONNX":
            from mindspore.onnx import export as onnx_export

            onnx_export(net, dummy, file_name=str(partial), input_names=["x"], output_names=["logits"])
        else:
            ms.export(net, dummy, file_name=str(partial), file_format=file_format)
        written = scratch / target.name
        if not written.is_file():
            # MindSpore's ONNX writer logs a failed write (e.g. a full disk) instead of raising.
            free_mb = shutil.disk_usage(target.parent).free / 2**20
            raise UserError(f"export to {file_format} produced no {target.name} in {target.parent} "
                            f"({free_mb:.0f} MB free there; see MindSpore's log above); expected a writable "
                            "folder with room for the model")
        os.replace(written, target)
    except (OSError, RuntimeError) as err:
        full = disk_full_error(err, target)
        if full is None:
            raise
        raise full from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
