"""`edgekd export`: a run's student -> a deployment bundle (see export/README.md).

Order of work: check every input (run, checkpoint, data, flags, and for
--int8-search the gate, budget and search images) and compute PyTorch's reference
on the val split; then build every file inside an atomic folder, FP32 first (which
must match PyTorch), then FP16, INT8, INT8 for CPUs (plain, or the INT8 search's
choice) and the TensorRT engines; write manifest.json last. Any failure on the way
leaves no bundle. An INT8 search that finds no passing file still writes the bundle
without that file, then fails (Int8SearchError, exit 1).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

import edgekd
from edgekd.calibration import METRIC_KEYS, calibration_metrics
from edgekd.contracts import PRECISIONS, BundleManifest
from edgekd.deploy import parity
from edgekd.deploy.fp16 import convert_fp16
from edgekd.deploy.int8 import (CPU_INT8, TENSORRT_INT8, Int8Result, Int8Settings, calibration_file,
                                check_settings, pick_calibration, quantization_entry, quantize_int8)
from edgekd.deploy.int8_search import (SearchData, SearchOutcome, SearchPlan, check_budget, held_apart,
                                       requested_settings, run_search, search_split)
from edgekd.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME, export_fp32, opset_of
from edgekd.deploy.source import Student, load_run_student, resolve_run, split_images
from edgekd.deploy.temperature import FIT, Temperature, append_division, parse_temperature, scaled
from edgekd.deploy.temperature import resolve as resolve_temperature
from edgekd.drift import top1_agreement
from edgekd.export_defaults import CALIB_METHOD, CALIB_SAMPLES, MAX_BATCH
from edgekd.errors import CheckpointError, ExportError, Int8SearchError, MissingDependencyError, ParityError
from edgekd.files import atomic_dir, sha256_file, write_json
from edgekd.models import count_parameters
from edgekd.progress import SearchProgress
from edgekd.saved_recipe import saved_sections

if TYPE_CHECKING:
    from torch import nn

# model_fp32.onnx ... model_int8_cpu.onnx, in bundle order. int8_cpu: asymmetric uint8 activations,
# fast in ONNX Runtime on CPUs; TensorRT cannot read it, so no engine is ever built from it
# (ENGINE_FILES has fp16 and int8 only).
ONNX_FILES = {p: f"model_{p}.onnx" for p in PRECISIONS}
ENGINE_FILES = {"fp16": "model_fp16.engine", "int8": "model_int8.engine"}
RANGES_FILE = "int8_calibration.json"
INT8_FLAVOURS = {"int8": TENSORRT_INT8, "int8_cpu": CPU_INT8}
REFERENCE_METRICS = METRIC_KEYS  # the manifest's reference: PyTorch's every calibration metric
# A train.quantize run's INT8 file against its fake-quantized PyTorch model, top-1 on val:
# both compute the same quantized network, up to the float rounding of the dequantized arithmetic.
QAT_MIN_AGREEMENT = 0.995


def parse_formats(formats: Sequence[str] | None) -> list[str]:
    """The ONNX precisions to write, in ONNX_FILES order; fp32 always (everything is checked against it)."""
    requested = list(ONNX_FILES) if formats is None else list(formats)
    unknown = [f for f in requested if f not in ONNX_FILES]
    if unknown:
        raise ExportError(f"unknown format {unknown[0]!r}; allowed: {', '.join(ONNX_FILES)}")
    return [f for f in ONNX_FILES if f == "fp32" or f in requested]


def export_bundle(*, run_dir: str | Path | None = None, out: str | Path | None = None,
                  formats: Sequence[str] | None = None, trt: bool = False, calib_samples: int = CALIB_SAMPLES,
                  calib_method: str = CALIB_METHOD, max_batch: int = MAX_BATCH, overwrite: bool = False,
                  log: Callable[[str], Any] = print, keep_first_last_fp32: bool | None = None,
                  int8_search: bool | None = None, search_budget: float | None = None,
                  model: nn.Module | None = None, temperature: float | str | None = None) -> Path:
    """Write the bundle of RUN_DIR's student to OUT (default export/<run-name>/ under the current directory).

    `model`: a module of the student's class, into a copy of which student.pt's weights
    are loaded (required for a user model; by default the arch is rebuilt by name).
    Returns the bundle's path. With trt=True on a machine without TensorRT or a
    GPU, the ONNX bundle is still written, then MissingDependencyError is raised.
    int8_search / search_budget: None takes the run's recipe (export.int8_search,
    export.search_budget); when no INT8 file passes, the bundle is written without
    it, then Int8SearchError (exit 1) is raised. temperature: None, a value, or "fit"
    (on the run's tune split): every file's output divided by it (deploy/temperature.py).
    """
    chosen = parse_formats(formats)
    temperature = parse_temperature(temperature)
    if search_budget is not None:
        check_budget(search_budget)
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
    # The run's saved validate: and export: sections, read once: the manifest's gate and the search's.
    sections = saved_sections(student.recipe, str(student.path))
    int8_files = [p for p in INT8_FLAVOURS if p in chosen]
    search = requested_settings(sections, int8_files, int8_search, search_budget, int8)
    trained = student.quantized_flavour
    if search is not None and trained in chosen:
        raise ExportError(f"{run.name} trained its {trained} file's quantization (train.quantize {trained}); the INT8 "
                          f"search would replace those learned ranges by a post-training calibration. Export without "
                          f"--int8-search (or export.int8_search: false), or leave {trained} out with --formats")

    trt_target, trt_missing = None, None
    if trt:
        from edgekd.deploy.tensorrt import find_target, profile_shapes

        profile_shapes(max_batch, 1, 1)  # a bad --max-batch fails now, not after the ONNX files
        try:
            trt_target = find_target()
        except MissingDependencyError as e:
            trt_missing = e
            log(f"{e}; writing the ONNX files only")

    shipped = _temperature(student, temperature, log) if temperature is not None else None
    t = None if shipped is None else shipped.value
    val = split_images(student, "val")
    x_val = student.preprocess(val)
    reference, ref_metrics = _pytorch_reference(student, x_val, val.labels, t)
    calibration = calibration_images(student, int8) if any(p in chosen for p in INT8_FLAVOURS) else None
    plan = None if search is None else SearchPlan(search, search_data(student, calibration[0], int8.seed), t)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = BundleWriter(tmp, student, x_val, val.labels, reference, ref_metrics, log, t)
        files, searched = writer.write_onnx(chosen, int8, calibration, plan)
        if trt_target is not None:  # from the INT8 file only if the search kept one
            files.update(writer.write_engines(trt_target, [p for p in engines if ONNX_FILES[p] in files], max_batch))
        manifest = _manifest(student, run, val.labels, ref_metrics, files, trt_target, sections.gate.model_dump())
        if shipped is not None:
            manifest = replace(manifest, temperature=shipped.record())
        if searched is not None:
            manifest = replace(manifest, int8_search=searched.record())
            if not searched.passed:  # `edgekd validate` without a bundle named skips it
                manifest = replace(manifest, incomplete=f"the INT8 search found no file for "
                                                        f"{', '.join(searched.failed_files)}")
        manifest.write(tmp)
    _print_table(log, ref_metrics, manifest.files)
    if searched is not None:
        log("INT8 search:")
        for line in searched.table():
            log(f"  {line}")
    log(f"bundle {out}")
    if searched is not None and not searched.passed:
        missing = searched.failed_files
        raise Int8SearchError(f"INT8 search: {searched.failure()}; {out} is written without "
                              f"{' and '.join(missing)}, marked incomplete (details: manifest.json's int8_search)")
    if trt_missing is not None:
        raise MissingDependencyError(f"{trt_missing}; the ONNX files in {out} are complete")
    return out


def calibration_images(student: Student, s: Int8Settings) -> tuple[np.ndarray, np.ndarray]:
    """The training-split indices that calibrate the INT8 files, and those images preprocessed."""
    train = split_images(student, "train")  # calibration never sees a val image
    picked = pick_calibration(len(train.labels), s)
    return picked, student.preprocess(train.take(picked))


def search_data(student: Student, picked: np.ndarray, seed: int) -> SearchData:
    """The images the INT8 search judges on (int8_search.search_split): never val or test."""
    which = search_split(student.split_info.sizes)
    if which == "tune":
        tune = split_images(student, "tune")
        return SearchData("tune", student.preprocess(tune), tune.labels, "the tune split")
    train = split_images(student, "train")
    held = train.take(held_apart(len(train.labels), picked, seed))
    return SearchData("train", student.preprocess(held), held.labels,
                      f"training images held apart from the {len(picked)} calibration images (the run has no tune split)")


def _temperature(student: Student, spec: float | str, log: Callable[[str], Any]) -> Temperature:
    """The temperature to ship: `spec` as given, or fitted on the run's tune split (FIT), with its
    effect there. Found before anything is written: FIT without a tune split is bad input."""
    has_tune = student.split_info.size("tune") > 0
    if spec == FIT and not has_tune:
        raise ExportError(f"--temperature fit fits on the run's tune split, and {student.run_dir} has none (never "
                          "val, whose figures the bundle reports); train with data.tune_fraction or data.tune_size, "
                          "or give a value: --temperature 1.5")
    if not has_tune:
        shipped = resolve_temperature(spec, None, None)
    else:
        tune = split_images(student, "tune")
        shipped = resolve_temperature(spec, student.logits(student.preprocess(tune)), tune.labels)
    log(shipped.line())
    return shipped


def _pytorch_reference(student: Student, x_val: np.ndarray, labels: np.ndarray,
                       temperature: float | None = None) -> tuple[np.ndarray, dict]:
    """PyTorch's logits and metrics on the val split, divided by the bundle's temperature (if any) as
    every file's are: what every exported file is compared with."""
    logits = student.logits(x_val)
    if not np.all(np.isfinite(logits)):
        raise CheckpointError(f"{student.path} gives NaN or infinite logits on the val split "
                              "(a diverged run?)")
    logits = scaled(logits, temperature)
    return logits, calibration_metrics(logits, labels)


class BundleWriter:
    """Writes the model files into the (temporary) bundle folder, each checked on the val split
    against PyTorch's logits, and returns their manifest entries."""

    def __init__(self, folder: Path, student: Student, x_val: np.ndarray, labels: np.ndarray,
                 reference: np.ndarray, ref_metrics: dict, log: Callable[[str], Any], temperature: float | None = None):
        self.folder, self.student, self.x_val, self.labels = folder, student, x_val, labels
        self.reference, self.ref_metrics, self.log = reference, ref_metrics, log
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
            parity.require_fp32_parity(fp32.name, self.reference, logits)
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
        import copy

        import torch

        from edgekd.training import quantize

        name = ONNX_FILES[flavour]
        self.log(f"writing {name} (from the ranges learned in training: train.quantize {flavour}; no calibration)")
        ck = self.student.checkpoint
        trained = quantize.restore(copy.deepcopy(self.student.model), ck.quantize, self.channels, self.size, ck.arch)
        with torch.no_grad():
            fake = parity.batched(lambda batch: trained(torch.from_numpy(batch)).numpy(), self.x_val)
        export_fp32(trained.converted(), self.folder / name, self.channels, self.size)
        onnx_logits = parity.onnxruntime_logits(self.folder / name, self.x_val)
        agreement = top1_agreement(onnx_logits, fake)
        max_diff = float(np.max(np.abs(onnx_logits - fake)))
        if agreement < QAT_MIN_AGREEMENT:
            raise ParityError(f"{name} agrees with the fake-quantized PyTorch model on {agreement:.2%} of the val "
                              f"images (at least {QAT_MIN_AGREEMENT:.1%} required; max |logit diff| {max_diff:.4g}); "
                              "no bundle was written")
        self._ship(self.folder / name)
        quantization = {"method": "train.quantize", "flavour": flavour, "samples": None, "split": "train",
                        "weights": "int8, symmetric, per output channel",
                        "activations": ("int8, symmetric, per tensor" if flavour == "int8"
                                        else "uint8, asymmetric, per tensor"),
                        "ranges": "learned in training (fake quantization, torchao PT2E)",
                        "fake_quant_agreement": agreement, "max_abs_logit_diff": max_diff,
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


def _tool_versions(trt_target) -> dict[str, str | None]:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    return {"edgekd": edgekd.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "onnxscript": onnxscript.__version__,
            "tensorrt": trt_target.version if trt_target is not None else None}


def _manifest(student: Student, run: Path, labels: np.ndarray, ref_metrics: dict, files: dict, trt_target,
              gate: dict) -> BundleManifest:
    ck = student.checkpoint
    return BundleManifest.describe(
        arch=ck.arch, options=ck.options, params=count_parameters(student.model), num_classes=ck.num_classes,
        channels=ck.in_channels, image_size=ck.image_size, input_name=INPUT_NAME, output_name=OUTPUT_NAME,
        preprocessing=ck.preprocessing, class_names=ck.class_names, run=str(run), recipe_name=ck.recipe_name,
        recipe_hash=ck.recipe_hash, student_sha256=student.sha256, data=student.split_info,
        reference_n=int(len(labels)), reference_metrics={m: ref_metrics[m] for m in REFERENCE_METRICS},
        gate=gate,  # the recipe's validate: section as the schema read it (saved_sections)
        files=files, tools=_tool_versions(trt_target), created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    )  # fmt: skip


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
