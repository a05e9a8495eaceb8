"""`edgekd export`: a run's student -> a deployment bundle (see export/README.md).

Order of work: check every input (run, checkpoint, data, flags) and compute
PyTorch's reference on the val split; then build every file inside an atomic
folder, FP32 first (which must match PyTorch), then FP16, INT8, INT8 for CPUs
and the TensorRT engines; write manifest.json last. Any failure on the way
leaves no bundle.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

import edgekd
from edgekd.bundle_schema import BUNDLE_KIND, MANIFEST_FILE, PRECISIONS, SCHEMA_VERSION
from edgekd.calibration import METRIC_KEYS, calibration_metrics
from edgekd.deploy import parity
from edgekd.deploy.fp16 import convert_fp16
from edgekd.deploy.int8 import (CPU_INT8, TENSORRT_INT8, Int8Settings, calibration_file, check_settings,
                                pick_calibration, quantization_entry, quantize_int8)
from edgekd.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, export_fp32, opset_of
from edgekd.deploy.source import Student, load_run_student, resolve_run, split_images
from edgekd.errors import CheckpointError, ExportError, MissingDependencyError, ParityError
from edgekd.files import atomic_dir, sha256_file, write_json
from edgekd.models import count_parameters

if TYPE_CHECKING:
    from torch import nn

# model_fp32.onnx ... model_int8_cpu.onnx, in bundle order. int8_cpu: asymmetric uint8 activations,
# fast in ONNX Runtime on CPUs; TensorRT cannot read it, so no engine is ever built from it
# (ENGINE_FILES has fp16 and int8 only).
ONNX_FILES = {p: f"model_{p}.onnx" for p in PRECISIONS}
ENGINE_FILES = {"fp16": "model_fp16.engine", "int8": "model_int8.engine"}
RANGES_FILE = "int8_calibration.json"
REFERENCE_METRICS = METRIC_KEYS  # manifest["reference"]: PyTorch's every calibration metric


def parse_formats(formats: Sequence[str] | None) -> list[str]:
    """The ONNX precisions to write, in ONNX_FILES order; fp32 always (everything is checked against it)."""
    requested = list(ONNX_FILES) if formats is None else list(formats)
    unknown = [f for f in requested if f not in ONNX_FILES]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r}; allowed: {', '.join(ONNX_FILES)}")
    return [f for f in ONNX_FILES if f == "fp32" or f in requested]


def export_bundle(*, run_dir: str | Path | None = None, out: str | Path | None = None,
                  formats: Sequence[str] | None = None, trt: bool = False, calib_samples: int = 512,
                  calib_method: str = "minmax", max_batch: int = 64, overwrite: bool = False,
                  log: Callable[[str], Any] = print, keep_first_last_fp32: bool | None = None,
                  model: nn.Module | None = None) -> Path:
    """Write the bundle of RUN_DIR's student to OUT (default export/<run-name>/ under the current directory).

    `model`: a module of the student's class, into a copy of which student.pt's weights
    are loaded (required for a user model; by default the arch is rebuilt by name).
    Returns the bundle's path. With trt=True on a machine without TensorRT or a
    GPU, the ONNX bundle is still written, then MissingDependencyError is raised.
    """
    chosen = parse_formats(formats)
    int8 = Int8Settings(method=calib_method, samples=calib_samples)
    if keep_first_last_fp32 is not None:
        int8 = replace(int8, keep_first_last_fp32=keep_first_last_fp32)
    check_settings(int8)
    engines = [p for p in ENGINE_FILES if p in chosen] if trt else []
    if trt and not engines:
        raise ExportError("--trt builds engines from the fp16 and int8 files (never int8_cpu, which TensorRT "
                          "cannot read); add one of them to --formats")
    run = resolve_run(run_dir, log)
    out = Path(out) if out is not None else Path("export") / run.name
    student = load_run_student(run, model)

    trt_target, trt_missing = None, None
    if trt:
        from edgekd.deploy.tensorrt import find_target, profile_shapes

        profile_shapes(max_batch, 1, 1)  # a bad --max-batch fails now, not after the ONNX files
        try:
            trt_target = find_target()
        except MissingDependencyError as e:
            trt_missing = e
            log(f"{e}; writing the ONNX files only")

    val = split_images(student, "val")
    x_val = student.preprocess(val)
    reference, ref_metrics = _pytorch_reference(student, x_val, val.labels)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = BundleWriter(tmp, student, x_val, val.labels, reference, ref_metrics, log)
        files = writer.write_onnx(chosen, int8)
        if trt_target is not None:
            files.update(writer.write_engines(trt_target, engines, max_batch))
        manifest = _manifest(student, run, val.labels, ref_metrics, files, trt_target)
        write_json(tmp / MANIFEST_FILE, manifest)
    _print_table(log, ref_metrics, manifest["files"])
    log(f"bundle {out}")
    if trt_missing is not None:
        raise MissingDependencyError(f"{trt_missing}; the ONNX files in {out} are complete")
    return out


def _pytorch_reference(student: Student, x_val: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, dict]:
    """PyTorch's logits and metrics on the val split: what every exported file is compared with."""
    logits = student.logits(x_val)
    if not np.all(np.isfinite(logits)):
        raise CheckpointError(f"{student.run_dir / 'student.pt'} gives NaN or infinite logits on the val split "
                              "(a diverged run?)")
    return logits, calibration_metrics(logits, labels)


class BundleWriter:
    """Writes the model files into the (temporary) bundle folder, each checked on the val split
    against PyTorch's logits, and returns their manifest entries."""

    def __init__(self, folder: Path, student: Student, x_val: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray, ref_metrics: dict, log: Callable[[str], Any]):
        self.folder, self.student, self.x_val, self.labels = folder, student, x_val, labels
        self.reference, self.ref_metrics, self.log = reference, ref_metrics, log
        ck = student.ckpt
        self.channels, self.size = int(ck["in_channels"]), int(ck["image_size"])

    def _measure(self, name: str) -> tuple[np.ndarray, dict]:
        """Run the file on the val split in ONNX Runtime (CPU): its logits and its figures vs PyTorch."""
        logits = parity.onnxruntime_logits(self.folder / name, self.x_val)
        if not np.all(np.isfinite(logits)):
            if name == ONNX_FILES["fp32"]:
                raise ParityError(f"{name} gives NaN or infinite logits where PyTorch does not; no bundle was written")
            # No metric is defined on such logits, and a file that overflows is no use on a device.
            raise ExportError(f"{name} gives NaN or infinite logits on the val split (values beyond its precision's "
                              f"range); leave it out with --formats")
        return logits, parity.compare(self.reference, logits, self.labels, self.ref_metrics)

    def _entry(self, name: str, fmt: str, precision: str | None, **extra) -> dict:
        path = self.folder / name
        entry = {"sha256": sha256_file(path), "bytes": path.stat().st_size, "format": fmt, "precision": precision}
        if fmt == "onnx":
            entry["opset"] = opset_of(path)
        return {**entry, **extra}

    def write_onnx(self, chosen: list[str], int8: Int8Settings) -> dict[str, dict]:
        files: dict[str, dict] = {}
        fp32 = self.folder / ONNX_FILES["fp32"]
        self.log(f"writing {fp32.name}")
        export_fp32(self.student.model, fp32, self.channels, self.size)
        logits, figures = self._measure(fp32.name)
        parity.require_fp32_parity(fp32.name, self.reference, logits)
        files[fp32.name] = self._entry(fp32.name, "onnx", "fp32", **figures)
        if "fp16" in chosen:
            name = ONNX_FILES["fp16"]
            self.log(f"writing {name}")
            kept = convert_fp16(fp32, self.folder / name)
            files[name] = self._entry(name, "onnx", "fp16", **self._measure(name)[1], fp32_ops=kept)
        if "int8" in chosen or "int8_cpu" in chosen:
            files.update(self._write_int8(fp32, int8, chosen))
        return files

    def _write_int8(self, fp32: Path, s: Int8Settings, chosen: list[str]) -> dict[str, dict]:
        """model_int8.onnx (+ its ranges file) and/or model_int8_cpu.onnx, from ONE calibration:
        the same training images, method and measured ranges for both."""
        train = split_images(self.student, "train")  # calibration never sees a val image
        picked = pick_calibration(len(train.labels), s)
        calib = self.student.preprocess(train.take(picked))
        files: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="edgekd-calib-") as tmp:
            cache = Path(tmp) / "ranges.json"  # written by the first quantization, read by the second
            if "int8" in chosen:
                name = ONNX_FILES["int8"]
                self.log(f"writing {name} ({s.method} calibration on {len(picked)} training images)")
                result = quantize_int8(fp32, self.folder / name, calib, s, TENSORRT_INT8, calibration_cache=cache)
                write_json(self.folder / RANGES_FILE,
                           calibration_file(result, s, picked, self.student.split_info.get("fingerprint")))
                quantization = quantization_entry(result, s, len(picked), RANGES_FILE)
                files[name] = self._entry(name, "onnx", "int8", **self._measure(name)[1], quantization=quantization)
                files[RANGES_FILE] = self._entry(RANGES_FILE, "json", None)
            if "int8_cpu" in chosen:
                name = ONNX_FILES["int8_cpu"]
                how = "the same calibration" if cache.is_file() else \
                    f"{s.method} calibration on {len(picked)} training images"
                self.log(f"writing {name} (uint8 activations for ONNX Runtime on CPUs, not TensorRT; {how})")
                result = quantize_int8(fp32, self.folder / name, calib, s, CPU_INT8, calibration_cache=cache)
                quantization = quantization_entry(result, s, len(picked))
                files[name] = self._entry(name, "onnx", "int8_cpu", **self._measure(name)[1],
                                          quantization=quantization)
        return files

    def write_engines(self, target, precisions: list[str], max_batch: int) -> dict[str, dict]:
        from edgekd.deploy.tensorrt import build_engine

        files = {}
        for precision in precisions:
            name = ENGINE_FILES[precision]
            self.log(f"building {name} with TensorRT {target.version} on {target.gpu_name}")
            facts = build_engine(target, self.folder / ONNX_FILES[precision], self.folder / name, precision,
                                 max_batch, self.channels, self.size)
            files[name] = self._entry(name, "tensorrt", precision, **facts)
        return files


def _tool_versions(trt_target) -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {"edgekd": edgekd.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
            "tensorrt": trt_target.version if trt_target is not None else None}


def _manifest(student: Student, run: Path, labels: np.ndarray, ref_metrics: dict, files: dict, trt_target) -> dict:
    ck, recipe = student.ckpt, student.recipe
    c, k, size = int(ck["in_channels"]), int(ck["num_classes"]), int(ck["image_size"])
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": BUNDLE_KIND,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"arch": ck["arch"], "num_classes": k, "params": count_parameters(student.model),
                  "options": dict(ck.get("options") or {})},
        "input": {"name": INPUT_NAME, "shape": ["batch", c, size, size], "dtype": "float32", "layout": "NCHW"},
        "output": {"name": OUTPUT_NAME, "shape": ["batch", k], "dtype": "float32"},
        "preprocessing": ck["preprocessing"],
        "class_names": list(ck["class_names"]),
        "source": {"run": str(run), "recipe": recipe.get("name"), "recipe_hash": ck.get("recipe_hash"),
                   "student_sha256": student.sha256},
        "data": student.split_info,
        "reference": {"runtime": "pytorch", "split": "val", "n": int(len(labels)),
                      **{m: ref_metrics[m] for m in REFERENCE_METRICS}},
        "gate": dict(recipe.get("validate") or {}),
        "files": files,
        "tools": _tool_versions(trt_target),
    }


def _print_table(log: Callable[[str], Any], ref: dict, files: dict) -> None:
    log(f"{'file':<20}{'MB':>7}{'acc':>9}{'ECE':>8}{'acc drop':>10}{'ECE drift':>11}  parity vs PyTorch")
    log(f"{'(PyTorch reference)':<20}{'':>7}{100 * ref['accuracy']:>8.2f}%{100 * ref['ece']:>7.2f}%")
    for name, e in files.items():
        if "metrics" not in e:
            continue
        m, d, p = e["metrics"], e["drift"], e["parity"]
        log(f"{name:<20}{e['bytes'] / 1e6:>7.3f}{100 * m['accuracy']:>8.2f}%{100 * m['ece']:>7.2f}%"
            f"{100 * d['accuracy_drop']:>+9.2f}p{100 * d['ece_drift']:>+10.2f}p  "
            f"max|diff| {p['max_abs_logit_diff']:.1e}, top-1 agree {100 * p['top1_agreement']:.2f}%")
    for name, e in files.items():
        if e.get("format") == "tensorrt":
            log(f"{name:<20}{e['bytes'] / 1e6:>7.3f}  TensorRT {e['tensorrt_version']}, {e['gpu_name']} "
                f"(sm {e['compute_capability']}), batch {e['profile']['min']}..{e['profile']['max']}")
