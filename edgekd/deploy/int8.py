"""FP32 ONNX -> INT8 QDQ ONNX, calibrated on training images, plus the ranges it used.

The QDQ format (QuantizeLinear/DequantizeLinear around each quantized op), with
symmetric INT8 activations (zero point 0) and per-channel symmetric INT8 weights,
is what TensorRT's explicit-quantization mode reads, so the one file serves ONNX
Runtime on a CPU and TensorRT on a GPU. Calibration images come from the TRAINING
split only: the val split stays unseen by everything export tunes.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.calibrate import load_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgekd.deploy.onnx_export import INPUT_NAME
from edgekd.errors import ExportError

CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}
CALIB_BATCH = 64
# Ops whose weights make a "layer" for the keep-first/last-layer-in-FP32 option.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# What TensorRT's explicit quantization accepts: INT8 with zero point 0 everywhere, and
# biases left in float (TensorRT's parser rejects an INT32 DequantizeLinear; it quantizes
# biases itself). ONNX Runtime still fuses such a Conv into QLinearConv.
QDQ_OPTIONS = {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
WEIGHTS_SCHEME = "per-channel symmetric int8"
ACTIVATIONS_SCHEME = "per-tensor symmetric int8"


@dataclass
class Int8Settings:
    method: str = "minmax"
    samples: int = 512
    # Stem conv and classifier left in FP32 (nodes_to_exclude). Off: on MobileNetV2/CIFAR-10
    # quantizing every layer already stays within 0.5 point of FP32 (docs/performance.md).
    keep_first_last_fp32: bool = False
    seed: int = 0  # which training images calibrate


@dataclass
class Int8Result:
    excluded_nodes: list[str]
    ranges: dict = field(repr=False)  # tensor name -> {min, max, scale, zero_point}

    def quantization_entry(self, s: Int8Settings, samples: int, ranges_file: str) -> dict:
        """The manifest's files.model_int8.onnx.quantization object."""
        return {"method": s.method, "samples": samples, "split": "train", "seed": s.seed,
                "weights": WEIGHTS_SCHEME, "activations": ACTIVATIONS_SCHEME,
                "excluded_nodes": self.excluded_nodes, "ranges_file": ranges_file}


def check_settings(s: Int8Settings) -> None:
    if s.method not in CALIB_METHODS:
        raise ExportError(f"unknown calibration method {s.method!r}; allowed: {', '.join(CALIB_METHODS)}")
    if isinstance(s.samples, bool) or not isinstance(s.samples, int) or s.samples < 1:
        raise ExportError(f"--calib-samples must be an integer >= 1, got {s.samples!r}")


def pick_calibration(n_train: int, s: Int8Settings) -> np.ndarray:
    """Indices of `samples` training images, drawn at random with a fixed seed.

    The train split is stored in source order (for an image folder: class by
    class), so its first N images would all be one class.
    """
    n = min(s.samples, n_train)
    return np.sort(np.random.default_rng(s.seed).choice(n_train, size=n, replace=False))


class BatchReader(CalibrationDataReader):
    """Feeds preprocessed float32 NCHW images to the calibrator in equal batches of at most `batch`.

    Equal: ONNX Runtime's histogram calibrators (entropy, percentile) stack the
    per-batch outputs into one array and fail on a shorter last batch, so the
    batch is the largest divisor of the image count that is <= `batch`.
    """

    def __init__(self, images: np.ndarray, batch: int = CALIB_BATCH):
        self._images = images
        self._batch = max(d for d in range(1, min(batch, len(images)) + 1) if len(images) % d == 0)
        self._it = self._batches()

    def _batches(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self._images), self._batch):
            yield {INPUT_NAME: self._images[i : i + self._batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = self._batches()


def first_and_last_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the first and last weighted nodes (the stem conv and the classifier), in graph order."""
    weighted = [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    return sorted(set(weighted[:1] + weighted[-1:]), key=weighted.index)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """onnxruntime.quantization logs advice through the root logger and prints the histogram
    calibrators' progress; keep errors only (they still raise)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_int8(src: Path, dst: Path, calib_images: np.ndarray, s: Int8Settings) -> Int8Result:
    """Calibrate `src` on `calib_images` (float32 NCHW, preprocessed as for eval) and write `dst`."""
    check_settings(s)
    with tempfile.TemporaryDirectory(prefix="edgekd-int8-") as tmp:
        # Shape inference + ONNX Runtime's basic graph optimizations first, as ONNX
        # Runtime recommends: the quantizer needs every tensor's shape.
        prepared = Path(tmp) / "prepared.onnx"
        cache = Path(tmp) / "ranges.json"
        with _quiet_quantizer():
            quant_pre_process(str(src), str(prepared))
            model = onnx.load(str(prepared))
            excluded = first_and_last_layers(model) if s.keep_first_last_fp32 else []
            try:
                quantize_static(
                    str(prepared), str(dst), BatchReader(calib_images),
                    quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CALIB_METHODS[s.method], nodes_to_exclude=excluded,
                    extra_options=QDQ_OPTIONS,
                    calibration_cache_path=str(cache),
                )  # fmt: skip
            except Exception as e:  # noqa: BLE001 - the quantizer raises many unrelated types
                raise ExportError(f"INT8 quantization failed: {str(e).strip().splitlines()[0][:200]}") from e
        onnx.checker.check_model(str(dst), full_check=True)
        ranges = activation_ranges(onnx.load(str(dst)), load_tensors_data(cache))
    return Int8Result(excluded_nodes=excluded, ranges=ranges)


def activation_ranges(quantized: onnx.ModelProto, calibrated) -> dict[str, dict]:
    """Per quantized activation: the range the calibrator measured and the scale the model uses.

    The scale and zero point are read from the model's own QuantizeLinear nodes
    (the ground truth every runtime applies: amax = 127 * scale); min/max are the
    calibrator's raw measurements (ONNX Runtime's TensorsData), where it has them.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    ranges = {}
    for node in quantized.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue  # a weight's QuantizeLinear (none in ONNX Runtime's output) is not an activation
        tensor = node.input[0]
        scale = consts[node.input[1]]
        zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        entry = {"scale": float(scale), "zero_point": int(zero)}
        if tensor in calibrated:
            low, high = calibrated[tensor].range_value
            entry = {"min": float(np.min(low)), "max": float(np.max(high)), **entry}
        ranges[tensor] = entry
    return ranges


def calibration_file(result: Int8Result, s: Int8Settings, samples: Sequence[int], split_fingerprint: str | None) -> dict:
    """The content of int8_calibration.json."""
    return {
        "format": "edgekd.int8_calibration/1",
        "method": s.method,
        "split": "train",
        "samples": len(samples),
        "seed": s.seed,
        "split_fingerprint": split_fingerprint,
        "source": "scale/zero_point: the QuantizeLinear nodes of model_int8.onnx, the range it uses is "
                  "[-127 * scale, 127 * scale]; min/max: what ONNX Runtime's calibrator measured on the "
                  "calibration images (a Conv output shares the range of the ReLU after it)",
        "weights": WEIGHTS_SCHEME,
        "activations": ACTIVATIONS_SCHEME,
        "excluded_nodes": result.excluded_nodes,
        "tensors": result.ranges,
    }
