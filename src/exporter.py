"""Exporting the network to MINDIR, ONNX or AIR, with the output appearing only when complete."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import mindspore as ms
import mindspore.nn as nn
import numpy as np

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
    target.parent.mkdir(parents=True, exist_ok=True)
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
            raise UserError(f"export to {file_format} produced no {written.name}")
        os.replace(written, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
