"""`edgekd export`: a run's student -> a deployment bundle (see export/README.md).

Order of work: check every input (run, checkpoint, data, flags, and for
--int8-search the gate, budget and search images) and compute PyTorch's reference
on the val split; then build every file inside an atomic folder, FP32 first (which
must match PyTorch), then FP16, INT8, INT8 for CPUs (plain, or the INT8 search's
choice) and the TensorRT engines; write manifest.json last. Any failure on the way
leaves no bundle. An INT8 search that finds no passing file still writes the bundle
without that file, then fails (Int8SearchError, exit 1).

This module decides what is written, from what, in which order, and describes it in the
manifest; how each model file is made and checked is bundle_writer.py's.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

import edgekd
from edgekd.calibration import METRIC_KEYS, calibration_metrics
from edgekd.contracts import BundleManifest
from edgekd.deploy.bundle_writer import ENGINE_FILES, INT8_FLAVOURS, ONNX_FILES, BundleWriter
from edgekd.deploy.int8 import Int8Settings, check_settings, pick_calibration
from edgekd.deploy.int8_search import (SearchData, SearchPlan, check_budget, held_apart, requested_settings,
                                       search_split)
from edgekd.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME
from edgekd.deploy.source import Student, load_run_student, resolve_run, split_images
from edgekd.deploy.temperature import FIT, Temperature, parse_temperature, scaled
from edgekd.deploy.temperature import resolve as resolve_temperature
from edgekd.errors import CheckpointError, ExportError, Int8SearchError, MissingDependencyError
from edgekd.export_defaults import CALIB_METHOD, CALIB_SAMPLES, MAX_BATCH
from edgekd.files import atomic_dir
from edgekd.models import count_parameters
from edgekd.saved_recipe import saved_sections

if TYPE_CHECKING:
    from torch import nn

REFERENCE_METRICS = METRIC_KEYS  # the manifest's reference: PyTorch's every calibration metric


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
    trained_logits = _trained_logits(student, x_val)
    reference = scaled(trained_logits, t)
    ref_metrics = calibration_metrics(reference, val.labels)
    # A train.quantize run's float weights alone are not the network it trained: the FP32 file must
    # reproduce them, but every file's drift is measured from the fake-quantized network.
    float_reference = reference if student.quantized_flavour is None else scaled(student.logits(x_val), t)
    calibration = calibration_images(student, int8) if any(p in chosen for p in INT8_FLAVOURS) else None
    plan = None if search is None else SearchPlan(search, search_data(student, calibration[0], int8.seed), t)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        writer = BundleWriter(tmp, student, x_val, val.labels, reference, ref_metrics, log, t, float_reference,
                              trained_logits)
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
        shipped = resolve_temperature(spec, student.trained_logits(student.preprocess(tune)), tune.labels)
    log(shipped.line())
    return shipped


def _trained_logits(student: Student, x_val: np.ndarray) -> np.ndarray:
    """The trained network's logits on the val split (PyTorch), before any temperature: what every
    exported file is compared with once divided by the bundle's temperature, as every file's are."""
    logits = student.trained_logits(x_val)
    if not np.all(np.isfinite(logits)):
        raise CheckpointError(f"{student.path} gives NaN or infinite logits on the val split "
                              "(a diverged run?)")
    return logits


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
        reference_file=student.quantized_flavour or "fp32",
        reference_model=("the float student" if student.quantized_flavour is None
                         else f"the fake-quantized student (train.quantize {student.quantized_flavour})"),
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
