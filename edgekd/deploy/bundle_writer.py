"""Writing a bundle's model files: each one into the (temporary) bundle folder, checked on the val
split against PyTorch's logits, with its manifest entry. What is written, from which inputs and
in what order is decided by export_bundle (bundle.py); here is how each file is made.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd.contracts import PRECISIONS
from edgekd.deploy import parity
from edgekd.deploy.fp16 import convert_fp16
from edgekd.deploy.int8 import (CPU_INT8, TENSORRT_INT8, Int8Result, Int8Settings, calibration_file,
                                quantization_entry, quantize_int8)
from edgekd.deploy.int8_search import SearchOutcome, SearchPlan, run_search
from edgekd.deploy.onnx_export import export_fp32, opset_of
from edgekd.deploy.source import Student
from edgekd.deploy.temperature import append_division
from edgekd.errors import ExportError, ParityError
from edgekd.files import sha256_file, write_json
from edgekd.progress import SearchProgress


# model_fp32.onnx ... model_int8_cpu.onnx, in bundle order. int8_cpu: asymmetric uint8 activations,
# fast in ONNX Runtime on CPUs; TensorRT cannot read it, so no engine is ever built from it
# (ENGINE_FILES has fp16 and int8 only).
ONNX_FILES = {p: f"model_{p}.onnx" for p in PRECISIONS}
ENGINE_FILES = {"fp16": "model_fp16.engine", "int8": "model_int8.engine"}
RANGES_FILE = "int8_calibration.json"
INT8_FLAVOURS = {"int8": TENSORRT_INT8, "int8_cpu": CPU_INT8}
# A train.quantize run's INT8 file against its fake-quantized PyTorch model, top-1 on val: both compute
# the same quantized network, up to the float rounding of the arithmetic around each quantize step, which
# moves an activation by one step now and then and a logit by a little (mobilenet_v3_small: up to 0.24).
# An image whose two best fake-quant logits are closer than twice what PyTorch's own converted network
# (real quantize/dequantize ops) differs from the fake-quant one is a near-tie: its top-1 follows that
# rounding, not the export, so the agreement that must reach QAT_MIN_AGREEMENT leaves near-ties out.
QAT_MIN_AGREEMENT = 0.995


class BundleWriter:
    """Writes the model files into the (temporary) bundle folder, each checked on the val split
    against PyTorch's logits, and returns their manifest entries."""

    def __init__(self, folder: Path, student: Student, x_val: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray, ref_metrics: dict, log: Callable[[str], Any], temperature: float | None = None,
                 float_reference: np.ndarray | None = None, trained_logits: np.ndarray | None = None):
        self.folder, self.student, self.x_val, self.labels = folder, student, x_val, labels
        # reference: the trained network (drift, parity); float_reference: the float weights, which the
        # FP32 file must reproduce (the same array unless the run trained quantized)
        self.reference, self.ref_metrics, self.log = reference, ref_metrics, log
        self.float_reference = reference if float_reference is None else float_reference
        # the trained network's logits on x_val before the temperature (export_bundle's reference, unscaled;
        # a train.quantize run's fake-quantized ones): its INT8 file's fidelity check compares with them
        self.trained_logits = trained_logits
        self.temperature = temperature
        self.channels, self.size = student.checkpoint.in_channels, student.checkpoint.image_size

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

    def write_onnx(self, chosen: list[str], int8: Int8Settings, calibration: tuple[np.ndarray, np.ndarray] | None,
                   search: SearchPlan | None = None) -> tuple[dict[str, dict], SearchOutcome | None]:
        """The ONNX files' manifest entries, and the INT8 search's outcome (None without a search)."""
        files: dict[str, dict] = {}
        fp32 = self.folder / ONNX_FILES["fp32"]
        self.log(f"writing {fp32.name}")
        with tempfile.TemporaryDirectory(prefix="edgekd-export-") as work:
            # Every file is made from the FP32 file without the temperature; each gets its own Div.
            raw = Path(work) / fp32.name
            export_fp32(self.student.model, raw, self.channels, self.size)
            shutil.copyfile(raw, fp32)
            self._ship(fp32)
            logits, figures = self._measure(fp32.name)
            parity.require_fp32_parity(fp32.name, self.float_reference, logits)
            files[fp32.name] = self._entry(fp32.name, "onnx", "fp32", **figures)
            if "fp16" in chosen:
                name = ONNX_FILES["fp16"]
                self.log(f"writing {name}")
                kept = convert_fp16(raw, self.folder / name)
                self._ship(self.folder / name)
                files[name] = self._entry(name, "onnx", "fp16", **self._measure(name)[1], fp32_ops=kept)
            trained = self.student.quantized_flavour
            if trained in chosen:  # a train.quantize run: that file from its learned ranges, no calibration
                files.update(self._write_trained_int8(trained))
                chosen = [p for p in chosen if p != trained]
            if trained is not None and any(p in chosen for p in INT8_FLAVOURS):
                self.log(f"note: the other INT8 files quantize this train.quantize {trained} run's float weights after "
                         f"training, which without its learned ranges are another network; their drift below is "
                         f"from the trained one")
            if search is not None:
                searched, outcome = self._search_int8(raw, chosen, calibration, search)
                return {**files, **searched}, outcome
            if calibration is not None and any(p in chosen for p in INT8_FLAVOURS):
                files.update(self._write_int8(raw, int8, chosen, calibration))
        return files, None

    def _write_trained_int8(self, flavour: str) -> dict[str, dict]:
        """The INT8 file of a train.quantize run: its fake-quantized network converted (PT2E) and
        exported as it is, QDQ with the scales and zero points learned in training. It must make the
        fake-quant PyTorch model's predictions on the val split (QAT_MIN_AGREEMENT), else no bundle."""
        import torch

        name = ONNX_FILES[flavour]
        self.log(f"writing {name} (from the ranges learned in training: train.quantize {flavour}; no calibration)")
        if self.trained_logits is None:
            raise ValueError("BundleWriter needs the trained network's unscaled val logits (trained_logits) to "
                             f"write the {flavour} file of a train.quantize run")
        fake = self.trained_logits
        converted = self.student.trained_network.converted()
        with torch.no_grad():
            exact = parity.batched(lambda batch: converted(torch.from_numpy(batch)).numpy(), self.x_val)
        export_fp32(converted, self.folder / name, self.channels, self.size)
        onnx_logits = parity.onnxruntime_logits(self.folder / name, self.x_val)
        fidelity = qat_fidelity(fake, exact, onnx_logits)
        if fidelity["decisive_agreement"] < QAT_MIN_AGREEMENT:
            raise ParityError(
                f"{name} agrees with the fake-quantized PyTorch model on {fidelity['decisive_agreement']:.2%} of the "
                f"{fidelity['n'] - fidelity['near_ties']} val images that are not near-ties (at least "
                f"{QAT_MIN_AGREEMENT:.1%} required; {fidelity['agreement']:.2%} of all {fidelity['n']}, max |logit "
                f"diff| {fidelity['max_abs_logit_diff']:.4g}); no bundle was written")
        self._ship(self.folder / name)
        quantization = {"method": "train.quantize", "flavour": flavour, "samples": None, "split": "train",
                        "weights": "int8, symmetric, per output channel",
                        "activations": ("int8, symmetric, per tensor" if flavour == "int8"
                                        else "uint8, asymmetric, per tensor"),
                        "ranges": "learned in training (fake quantization, torchao PT2E)",
                        "fake_quant_agreement": fidelity["agreement"],
                        "max_abs_logit_diff": fidelity["max_abs_logit_diff"],
                        "decisive_agreement": fidelity["decisive_agreement"], "near_ties": fidelity["near_ties"],
                        "rounding_tolerance": fidelity["rounding_tolerance"],
                        "excluded_nodes": [], "ranges_file": None}
        return {name: self._entry(name, "onnx", flavour, **self._measure(name)[1], quantization=quantization)}

    def _ship(self, path: Path) -> None:
        """The bundle's temperature into the file just written (nothing without one)."""
        if self.temperature is not None:
            append_division(path, self.temperature)

    def _int8_entry(self, name: str, result: Int8Result, s: Int8Settings, picked: np.ndarray,
                    **extra) -> dict[str, dict]:
        """The manifest entries of one INT8 file already in the folder (model_int8.onnx: + its ranges file)."""
        files: dict[str, dict] = {}
        ranges_file = None
        if result.flavour is TENSORRT_INT8:
            write_json(self.folder / RANGES_FILE,
                       calibration_file(result, s, picked, self.student.split_info.fingerprint))
            ranges_file = RANGES_FILE
        quantization = {**quantization_entry(result, s, len(picked), ranges_file), **extra}
        files[name] = self._entry(name, "onnx", result.flavour.precision, **self._measure(name)[1],
                                  quantization=quantization)
        if ranges_file is not None:
            files[RANGES_FILE] = self._entry(RANGES_FILE, "json", None)
        return files

    def _search_int8(self, fp32: Path, chosen: list[str], calibration: tuple[np.ndarray, np.ndarray],
                     plan: SearchPlan) -> tuple[dict, SearchOutcome]:
        """The INT8 search's chosen file per flavour (none where nothing passed), from the same
        calibration images as plain export."""
        picked, calib = calibration
        flavours = {ONNX_FILES[p]: INT8_FLAVOURS[p] for p in INT8_FLAVOURS if p in chosen}
        files: dict[str, dict] = {}
        with (tempfile.TemporaryDirectory(prefix="edgekd-int8-search-") as tmp,
              SearchProgress(plan.settings.budget_s) as bar):
            outcome = run_search(plan, fp32, calib, flavours, Path(tmp), log=self.log, on_candidate=bar.candidate)
            for name, found in outcome.flavours.items():
                pick = found.chosen
                if pick is None:
                    continue  # no file that fails the gate is written
                shutil.move(pick.path, self.folder / name)  # the temp folder may be on another file system
                self._ship(self.folder / name)
                files.update(self._int8_entry(name, pick.result, pick.settings, picked,
                                              search={"candidate": pick.index}))
        return files, outcome

    def _write_int8(self, fp32: Path, s: Int8Settings, chosen: list[str],
                    calibration: tuple[np.ndarray, np.ndarray]) -> dict[str, dict]:
        """model_int8.onnx (+ its ranges file) and/or model_int8_cpu.onnx, from ONE calibration:
        the same training images, method and measured ranges for both."""
        picked, calib = calibration
        files: dict[str, dict] = {}
        with tempfile.TemporaryDirectory(prefix="edgekd-calib-") as tmp:
            cache = Path(tmp) / "ranges.json"  # written by the first quantization, read by the second
            if "int8" in chosen:
                name = ONNX_FILES["int8"]
                self.log(f"writing {name} ({s.method} calibration on {len(picked)} training images)")
                result = quantize_int8(fp32, self.folder / name, calib, s, TENSORRT_INT8, calibration_cache=cache)
                self._ship(self.folder / name)
                files.update(self._int8_entry(name, result, s, picked))
            if "int8_cpu" in chosen:
                name = ONNX_FILES["int8_cpu"]
                how = "the same calibration" if cache.is_file() else \
                    f"{s.method} calibration on {len(picked)} training images"
                self.log(f"writing {name} (uint8 activations for ONNX Runtime on CPUs, not TensorRT; {how})")
                result = quantize_int8(fp32, self.folder / name, calib, s, CPU_INT8, calibration_cache=cache)
                self._ship(self.folder / name)
                files.update(self._int8_entry(name, result, s, picked))
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


def qat_fidelity(fake: np.ndarray, exact: np.ndarray, deployed: np.ndarray) -> dict:
    """The INT8 file's logits (`deployed`) against the fake-quantized model's (`fake`), with PyTorch's
    converted network (`exact`) giving the rounding tolerance: the largest logit difference between two
    PyTorch forms of one quantized network. Near-ties: fake-quant top-2 margin <= 2 x that tolerance."""
    top2 = np.sort(fake, axis=1)[:, -2:]
    tolerance = float(np.max(np.abs(exact - fake)))
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * tolerance
    same = deployed.argmax(1) == fake.argmax(1)
    return {"agreement": float(np.mean(same)), "max_abs_logit_diff": float(np.max(np.abs(deployed - fake))),
            "rounding_tolerance": tolerance, "near_ties": int(np.sum(~decisive)), "n": int(len(fake)),
            "decisive_agreement": float(np.mean(same[decisive])) if decisive.any() else 1.0}
