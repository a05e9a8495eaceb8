"""FP32 ONNX -> FP16 weights and compute, FP32 input and output.

keep_io_types=True puts one Cast at each end, so the bundle's input/output
contract (float32) is the same for every file and a device feeds all of them
the same preprocessed batch. Ops in onnxconverter-common's default block list
(no FP16 kernel in common runtimes) stay FP32 behind Casts. ONNX Runtime's CPU
provider runs the result as is: where it lacks an FP16 kernel it inserts Casts
itself (checked for every architecture in the model registry).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import onnx
from onnxconverter_common import float16

from edgekd.errors import ExportError, first_line


def convert_fp16(src: Path, dst: Path) -> list[str]:
    """Write the FP16 version of `src` to `dst`; return the op types kept in FP32."""
    model = onnx.load(str(src))
    try:
        # Weights below FP16's smallest normal are flushed (with one warning per value): expected.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            fp16 = float16.convert_float_to_float16(model, keep_io_types=True)
    except Exception as e:  # noqa: BLE001 - the converter raises bare Exceptions
        raise ExportError(f"FP16 conversion failed: {first_line(e, 200)}") from e
    onnx.save(fp16, str(dst))
    onnx.checker.check_model(str(dst), full_check=True)
    blocked = set(float16.DEFAULT_OP_BLOCK_LIST)
    return sorted({n.op_type for n in model.graph.node if n.op_type in blocked})
