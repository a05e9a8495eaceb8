"""FP32 ONNX -> INT8 QDQ ONNX files, calibrated on training images, plus the ranges used.

Two flavours (Int8Flavour), both written by `quantize_int8`; a plain export calibrates them
identically (same training images, method and measured ranges), the INT8 search
(deploy/int8_search/) picks each file's settings on its own:

- TENSORRT_INT8 (model_int8.onnx): QDQ (QuantizeLinear/DequantizeLinear around
  each quantized op) with symmetric INT8 activations (zero point 0) and per-channel
  symmetric INT8 weights: what TensorRT's explicit-quantization mode reads, so the
  file serves TensorRT on a GPU (and runs, slowly, in ONNX Runtime on a CPU).
- CPU_INT8 (model_int8_cpu.onnx): QDQ with asymmetric UINT8 activations (per
  tensor, with a zero point) and symmetric INT8 weights (per channel by default):
  what ONNX Runtime's CPU kernels are fast with (ReLU6 folds into the activation
  range, every Conv becomes a QLinearConv). TensorRT rejects non-zero zero points,
  so this file is for ONNX Runtime on CPUs only.

Calibration images come from the TRAINING split only: the val split stays unseen
by everything export tunes.
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
from onnxruntime.quantization.calibrate import create_calibrator, load_tensors_data, save_tensors_data
from onnxruntime.quantization.shape_inference import quant_pre_process

from edgekd import export_defaults
from edgekd.deploy.onnx_export import INPUT_NAME
from edgekd.errors import ExportError, first_line
from edgekd.files import finite_or_none

# ONNX Runtime's calibrator for each method edgekd offers (export_defaults.CALIB_METHODS, the one list
# of them): a name added there without a calibrator here fails at import, not in an export.
_ORT_CALIBRATORS = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile}
CALIB_METHODS = {name: _ORT_CALIBRATORS[name] for name in export_defaults.CALIB_METHODS}
CALIB_BATCH = 64
# Entropy (KL) calibration's histograms. ONNX Runtime's EntropyCalibrater defaults to 128
# histogram bins and 128 quantized bins, and with the two equal its KL search has one candidate,
# the full range: "entropy" then gives exactly MinMax's ranges (measured: 142 of 142 tensors of a
# MobileNetV3-small), and quantize_static does not pass these two options on. So edgekd
# calibrates entropy itself with a 2048-bin histogram (as ONNX Runtime's percentile and
# TensorRT's entropy calibrators do) searched over 128-bin windows, and hands quantize_static the
# ranges through its calibration cache.
ENTROPY_BINS = {"num_bins": 2048, "num_quantized_bins": 128}
# Ops whose weights make a "layer" for the keep-first/last-layer-in-FP32 option.
WEIGHTED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_TYPE_NAMES = {QuantType.QInt8: "int8", QuantType.QUInt8: "uint8"}


@dataclass(frozen=True)
class Int8Flavour:
    """What one INT8 file is: its quantizer settings and the manifest's description of them, in one place
    (as ONNX Runtime's StaticQuantConfig groups a quantization's settings).

    The manifest's scheme strings are derived from the settings, so they cannot disagree.
    What both files share (calibration images and method, per-channel weights or not) is Int8Settings.
    """

    precision: str  # the bundle's name for the file's precision: "int8" or "int8_cpu"
    what: str  # for error messages
    activation_type: QuantType
    activation_symmetric: bool  # zero point 0 (what TensorRT needs) or a zero point per tensor
    quantize_bias: bool  # int32 biases, or biases left in float
    tensorrt: bool  # TensorRT can read the file (explicit quantization)
    runtime: str | None = None  # the manifest's note on where the file runs; None: no note
    quant_format: QuantFormat = QuantFormat.QDQ
    weight_type: QuantType = QuantType.QInt8
    weight_symmetric: bool = True

    @property
    def extra_options(self) -> dict:
        """quantize_static's extra_options."""
        return {"ActivationSymmetric": self.activation_symmetric, "WeightSymmetric": self.weight_symmetric,
                "QuantizeBias": self.quantize_bias}

    @property
    def activations(self) -> str:
        return f"per-tensor {_symmetry(self.activation_symmetric)} {_TYPE_NAMES[self.activation_type]}"

    @property
    def biases(self) -> str:
        return "int32" if self.quantize_bias else "float"

    def weights(self, per_channel: bool) -> str:
        scope = "per-channel" if per_channel else "per-tensor"
        return f"{scope} {_symmetry(self.weight_symmetric)} {_TYPE_NAMES[self.weight_type]}"


def _symmetry(symmetric: bool) -> str:
    return "symmetric" if symmetric else "asymmetric"


# model_int8.onnx, what TensorRT's explicit quantization accepts: INT8 with zero point 0
# everywhere, and biases left in float (TensorRT's parser rejects an INT32 DequantizeLinear;
# it quantizes biases itself). ONNX Runtime still fuses such a Conv into QLinearConv.
TENSORRT_INT8 = Int8Flavour(precision="int8", what="INT8", activation_type=QuantType.QInt8,
                            activation_symmetric=True, quantize_bias=False, tensorrt=True)
# model_int8_cpu.onnx, what ONNX Runtime's CPU provider runs fastest (x86 with or without VNNI,
# ARM): uint8 activations with a zero point, so a ReLU/ReLU6 (Clip) is dropped into the range of
# the QuantizeLinear after it; int8 weights per channel, symmetric; int32 biases. QDQ rather
# than QOperator (QLinearConv written out): ONNX Runtime fuses both into the same kernels
# (on MobileNetV2: 52 QLinearConv, 10 QLinearAdd, 1 QGemm) and ran them at the same speed
# (docs/performance.md), and QDQ is the format ONNX Runtime recommends.
CPU_INT8 = Int8Flavour(precision="int8_cpu", what="INT8 (CPU)", activation_type=QuantType.QUInt8,
                       activation_symmetric=False, quantize_bias=True, tensorrt=False,
                       runtime="ONNX Runtime on CPUs; not for TensorRT (it rejects non-zero zero points): "
                               "use model_int8.onnx there")


@dataclass
class Int8Settings:
    """What both INT8 files share: one calibration (images, method) and the same kind of weights."""

    method: str = export_defaults.CALIB_METHOD
    samples: int = export_defaults.CALIB_SAMPLES
    # Stem conv and classifier left in FP32 (nodes_to_exclude). Off: on MobileNetV2/CIFAR-10
    # quantizing every layer already stays within 0.5 point of FP32 (docs/performance.md).
    keep_first_last_fp32: bool = False
    seed: int = 0  # which training images calibrate
    # One weight scale per output channel. Per tensor makes ONNX Runtime's CPU kernels a few
    # percent faster, but one scale for a whole depthwise layer is what makes MobileNetV2
    # fragile under INT8 (docs/performance.md), so export keeps per channel.
    per_channel: bool = True


@dataclass
class Int8Result:
    flavour: Int8Flavour
    excluded_nodes: list[str]
    ranges: dict = field(repr=False)  # tensor name -> {min, max, scale, zero_point}


def quantization_entry(result: Int8Result, s: Int8Settings, samples: int, ranges_file: str | None = None) -> dict:
    """The manifest's files.<INT8 file>.quantization object: `s` is what this file was quantized with.

    model_int8_cpu.onnx has no ranges file. In a plain export its min/max are the same
    measurements as model_int8.onnx's (int8_calibration.json, the same method and
    per-channel weights); under --int8-search each file is the candidate chosen for it,
    so its method and weights may differ and this entry records its own. Either way the
    scale and zero point of every activation are in the file's own QuantizeLinear nodes.
    """
    f = result.flavour
    entry = {"method": s.method, "samples": samples, "split": "train", "seed": s.seed,
             "weights": f.weights(s.per_channel), "activations": f.activations, "biases": f.biases,
             "quant_format": f.quant_format.name, "tensorrt": f.tensorrt}
    if f.runtime is not None:
        entry["runtime"] = f.runtime
    return {**entry, "excluded_nodes": result.excluded_nodes, "ranges_file": ranges_file}


def check_settings(s: Int8Settings) -> None:
    if s.method not in CALIB_METHODS:
        raise ExportError(f"unknown calibration method {s.method!r}; allowed: {', '.join(CALIB_METHODS)}")
    if isinstance(s.samples, bool) or not isinstance(s.samples, int) or s.samples < 1:
        raise ExportError(f"--calib-samples must be an integer >= 1, got {s.samples!r}")
    if not isinstance(s.per_channel, bool):
        raise ExportError(f"per_channel must be true or false, got {s.per_channel!r}")


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


def prepare(src: Path, dst: Path) -> None:
    """Shape inference + ONNX Runtime's basic graph optimizations (BatchNorm folded into Conv),
    as ONNX Runtime recommends before quantizing: the quantizer needs every tensor's shape.

    The node names of `dst` are what nodes_to_exclude (float_nodes) refers to, so every node
    gets one: the optimizer leaves the nodes it creates unnamed (on MobileNetV3, a third of them).
    """
    with _quiet_quantizer():
        quant_pre_process(str(src), str(dst))
    model = onnx.load(str(dst))
    taken = {n.name for n in model.graph.node}
    unnamed = [n for n in model.graph.node if not n.name]
    for i, node in enumerate(unnamed):
        node.name = next(name for k in range(len(taken) + 1)
                         if (name := f"{node.op_type}_{i}" + (f"_{k}" if k else "")) not in taken)
        taken.add(node.name)
    if unnamed:
        onnx.save(model, str(dst))


def quantize_int8(src: Path, dst: Path, calib_images: np.ndarray, s: Int8Settings, flavour: Int8Flavour,
                  calibration_cache: Path | None = None) -> Int8Result:
    """Calibrate `src` on `calib_images` (float32 NCHW, preprocessed as for eval) and write `dst`
    as the INT8 `flavour` (TENSORRT_INT8: model_int8.onnx; CPU_INT8: model_int8_cpu.onnx).

    `calibration_cache`: a file for the calibrator's measured ranges, shared by both flavours
    for the same `src`, images and settings: the first call writes it, the next one reads it
    instead of running the images again (the measurements are the same either way; symmetric
    or not is decided after calibration).
    """
    check_settings(s)
    with tempfile.TemporaryDirectory(prefix="edgekd-int8-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        prepare(src, prepared)
        cache = Path(calibration_cache) if calibration_cache is not None else Path(tmp) / "ranges.json"
        return quantize_prepared(prepared, dst, calib_images, s, flavour, cache)


def quantize_prepared(prepared: Path, dst: Path, calib_images: np.ndarray, s: Int8Settings, flavour: Int8Flavour,
                      calibration_cache: Path, float_nodes: Sequence[str] = ()) -> Int8Result:
    """quantize_int8 on a file `prepare` already wrote (the INT8 search quantizes one file many
    times), with `float_nodes` (node names of `prepared`) left in float: no QDQ around them.
    `calibration_cache` must be a path (read if it exists, else written)."""
    check_settings(s)
    if s.method == "entropy" and not Path(calibration_cache).is_file():
        calibrate_entropy(prepared, calib_images, Path(calibration_cache))
    with _quiet_quantizer():
        model = onnx.load(str(prepared))
        excluded = first_and_last_layers(model) if s.keep_first_last_fp32 else []
        excluded += [n for n in float_nodes if n not in excluded]
        try:
            quantize_static(
                str(prepared), str(dst), BatchReader(calib_images),
                quant_format=flavour.quant_format, per_channel=s.per_channel,
                activation_type=flavour.activation_type, weight_type=flavour.weight_type,
                calibrate_method=CALIB_METHODS[s.method], nodes_to_exclude=list(excluded),
                extra_options=flavour.extra_options,
                calibration_cache_path=str(calibration_cache),
            )  # fmt: skip
        except Exception as e:  # noqa: BLE001 - the quantizer raises many unrelated types
            raise ExportError(f"{flavour.what} quantization failed: {first_line(e, 200)}") from e
    onnx.checker.check_model(str(dst), full_check=True)
    ranges = activation_ranges(onnx.load(str(dst)), load_tensors_data(calibration_cache))
    return Int8Result(flavour=flavour, excluded_nodes=excluded, ranges=ranges)


def calibrate_entropy(prepared: Path, calib_images: np.ndarray, cache: Path) -> None:
    """Entropy ranges of every activation of `prepared`, with ENTROPY_BINS, written to `cache`
    (ONNX Runtime's calibration-cache format, which quantize_static then reads)."""
    with tempfile.TemporaryDirectory(prefix="edgekd-entropy-") as tmp, _quiet_quantizer():
        try:
            calibrator = create_calibrator(Path(prepared), [], augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                           calibrate_method=CalibrationMethod.Entropy, extra_options=dict(ENTROPY_BINS))
            calibrator.collect_data(BatchReader(calib_images))
            ranges = calibrator.compute_data()
        except Exception as e:  # noqa: BLE001 - the calibrator raises many unrelated types
            raise ExportError(f"entropy calibration failed: {first_line(e, 200)}") from e
    save_tensors_data(ranges, cache, smooth_quant=False)


def activation_ranges(quantized: onnx.ModelProto, calibrated) -> dict[str, dict]:
    """Per quantized activation: the range the calibrator measured and the scale the model uses.

    The scale and zero point are read from the model's own QuantizeLinear nodes
    (the ground truth every runtime applies: for model_int8.onnx amax = 127 * scale);
    min/max are the calibrator's raw measurements (ONNX Runtime's TensorsData), where
    it has them.
    """
    consts = {t.name: numpy_helper.to_array(t) for t in quantized.graph.initializer}
    ranges = {}
    for node in quantized.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in consts:
            continue  # a weight's QuantizeLinear (none in ONNX Runtime's output) is not an activation
        tensor = node.input[0]
        scale = consts[node.input[1]]
        zero = consts[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros((), np.int8)
        # None where a figure is not finite (an activation that overflows on a calibration image):
        # int8_calibration.json is strict JSON.
        entry = {"scale": finite_or_none(float(scale)), "zero_point": int(zero)}
        if tensor in calibrated:
            low, high = calibrated[tensor].range_value
            entry = {"min": finite_or_none(float(np.min(low))), "max": finite_or_none(float(np.max(high))), **entry}
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
        "weights": result.flavour.weights(s.per_channel),
        "activations": result.flavour.activations,
        "excluded_nodes": result.excluded_nodes,
        "tensors": result.ranges,
    }
