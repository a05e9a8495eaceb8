"""PyTorch -> one self-contained FP32 ONNX file (the dynamo exporter).

The file has a dynamic batch axis and a fixed H x W: edge runtimes (TensorRT in
particular) build for one image size, but the batch is chosen at run time.
Opset 18 is the highest TensorRT 10 parses, and the dynamo exporter's own.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from edgekd.errors import ExportError, first_line
from edgekd.models.registry import arch_name

OPSET = 18
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
# An example batch of 1 would let torch.export specialize the batch axis to a constant.
EXAMPLE_BATCH = 2


def export_fp32(model: nn.Module, path: Path, in_channels: int, image_size: int) -> None:
    """Write `model` (in eval mode) to `path` and check it with onnx's full checker."""
    model.eval()  # not `model = model.eval()`: a converted PT2E graph's eval() returns None
    example = torch.zeros(EXAMPLE_BATCH, in_channels, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        # The exporter reports progress on stdout and warns about its own internals;
        # neither is the user's business unless it fails.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},), external_data=False, verbose=False,
            )  # fmt: skip
            # external_data=False: weights inside the .onnx file, so the bundle has no .data side file.
            program.save(path, external_data=False)
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:  # noqa: BLE001 - torch.export/onnx raise many unrelated types
        first = first_line(e)
        raise ExportError(f"ONNX export of {arch_name(model)} failed: {first[:200]}") from e


def opset_of(path: Path) -> int:
    """The default-domain opset the file declares."""
    model = onnx.load(str(path), load_external_data=False)
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
