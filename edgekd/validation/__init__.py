"""`edgekd validate`: check an exported bundle on this device - accuracy AND calibration, pass/fail.

Torch-free on purpose: a device has numpy, Pillow and ONNX Runtime (or OpenVINO, or
TensorRT), nothing more. Nothing on this path may import torch, directly or indirectly.

Definitions (also in the --report text):
- metrics (accuracy, ECE, MCE, adaptive/classwise ECE, NLL, Brier) use the raw
  softmax of each format's logits; temperature scaling is only a diagnostic
  (`ts_headroom`), never applied.
- `agreement`: the manifest stores PyTorch's reference METRICS, not its
  predictions, so agreement is top-1 agreement with the bundle's FP32 ONNX model
  run in the same validation (FP32 against itself is 1.0; None without FP32).
  Export measured FP32 ONNX against PyTorch itself (manifest files.*.parity).
- `acc_drop` (reference accuracy - accuracy) and `ece_drift` (|ECE - reference
  ECE|): against the manifest's PyTorch reference when the data is the run's val
  split (the default), else against this run's FP32 ONNX results.
- ONNX files run in ONNX Runtime, or with --runtime openvino in OpenVINO on the
  CPU (every ONNX file, both INT8 flavours included; inference precision pinned
  to f32, see runtime.openvino_cpu); engines always run in TensorRT. --runtime
  picks which files are validated by default (see bundle.select_formats). int8_cpu
  (asymmetric uint8 activations) is CPU-only: --runtime tensorrt refuses it and
  ONNX Runtime's TensorRT provider is never given it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from edgekd.files import write_json
from edgekd.errors import EdgeKDError
from edgekd.runtime import (OnnxRuntimeSession, OpenVinoCpu, Runner, TensorRTEngine, choose_providers,
                            onnxruntime_version, openvino_version)
from edgekd.validation import gate, report
from edgekd.validation.bundle import (Bundle, check_model_io, float_weights_of_quantized_run, is_engine, load_bundle,
                                    onnx_providers_for, select_formats)
from edgekd.validation.data import EvalData, load_eval_data
from edgekd.validation.metrics import TimingBudget, comparisons, format_metrics, run_format
from edgekd.validation.report import Report

__all__ = ["Report", "run_validation", "open_runtimes", "validate_formats"]


@contextmanager
def open_runtimes(bundle: Bundle, formats: list[str], providers: list[str] | None,
                  runtime: str = "onnxruntime") -> Iterator[dict[str, Runner]]:
    """Load every selected file (fast) before running any, so a bad file fails in seconds;
    every one loaded is released on leaving the `with` block, also when a later one fails.

    ONNX files go to OpenVINO with runtime "openvino", else to ONNX Runtime; engines to TensorRT.
    """
    if runtime == "openvino" and providers:
        raise EdgeKDError("--providers picks ONNX Runtime's execution providers; --runtime openvino runs "
                          "every ONNX file on OpenVINO's CPU device: leave --providers out")
    onnx_files = [f for f in formats if not is_engine(f)]
    onnx_providers = choose_providers(providers) if onnx_files and runtime != "openvino" else []

    def runner(fmt: str) -> Runner:
        path = bundle.file(fmt)
        if is_engine(fmt):
            return TensorRTEngine(path, bundle.entry(fmt))
        if runtime == "openvino":
            return OpenVinoCpu(path)
        return OnnxRuntimeSession(path, onnx_providers_for(fmt, onnx_providers))

    with ExitStack() as loaded:
        runtimes: dict[str, Runner] = {}
        for fmt in formats:
            rt = loaded.enter_context(runner(fmt))
            check_model_io(bundle, fmt, rt.input_name, rt.input_shape, rt.output_name, rt.output_shape)
            runtimes[fmt] = rt
        yield runtimes


def validate_formats(runtimes: dict[str, Runner], data: EvalData, reference: dict, batch: int,
                     budget: TimingBudget, class_names: list[str],
                     threshold: float | None = None,
                     reference_format: str = "fp32") -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Per-format results (the --json keys) and logits; `reference` is the manifest's PyTorch figures,
    `class_names` the bundle's (labels index them, whichever classes the data holds), `threshold` the
    confidence a device acts at (the decision figures need it), `reference_format` the file that is the
    trained network (BundleManifest.reference_format)."""
    results, logits = {}, {}
    for fmt, rt in runtimes.items():
        run = run_format(rt, data.inputs, batch, budget)
        results[fmt] = {**format_metrics(run.logits, data.labels), "latency_ms": run.latency_ms,
                        "throughput": run.throughput}
        logits[fmt] = run.logits
    # The file that is the trained network (FP32 ONNX; a train.quantize run's INT8 file) is the agreement
    # reference, and the drift reference on data other than the val split.
    drift_reference = reference if data.is_reference else results.get(reference_format)
    for fmt in results:
        results[fmt].update(comparisons(results[fmt], logits[fmt], drift_reference, logits.get(reference_format), data.labels,
                                        threshold))
        cls = results[fmt].get("class_acc_drop_class")
        results[fmt]["class_acc_drop_name"] = None if cls is None else class_names[cls]
    return results, logits


def run_validation(*, bundle: Path | None, data_spec: str | None, formats: list[str] | None, runtime: str,
                   providers: list[str] | None, batch: int, thresholds: dict[str, float | None],
                   json_path: Path | None, report_dir: Path | None, save_predictions: Path | None,
                   log: Callable[[str], Any] = print, budget: TimingBudget | None = None) -> Report:
    """Validate BUNDLE; log a table, one line per gate check and the verdict; write the
    files asked for. Returns the Report (report.passed: every check passed); bad input
    raises EdgeKDError. A failed gate is not raised: the caller decides (exit 1, or
    Report.raise_for_gate)."""
    b = load_bundle(bundle, log)
    limits = gate.resolve_thresholds(thresholds, b.gate)
    problem = gate.threshold_problem(limits)
    if problem:  # before any file runs
        raise EdgeKDError(problem)
    selected = select_formats(b, formats, runtime, onnxruntime_version() is not None)
    left_out = [f for f in float_weights_of_quantized_run(b) if f not in selected]
    if left_out:
        log(f"{', '.join(left_out)}: the float weights of an INT8-aware run, not the network it trained "
            f"({b.manifest.reference_format}): left out; name them with --formats to measure them")
    with open_runtimes(b, selected, providers, runtime) as runtimes:
        data = load_eval_data(data_spec, b)
        log(f"data: {data.spec}, {data.n} images, {len(data.classes)} classes")
        if b.temperature is not None:  # part of every file: what is measured is what ships
            log(f"temperature: every file divides its logits by {b.temperature:.4g} "
                f"({b.manifest.temperature.get('source', 'given')}); the figures are of the files as shipped")
        for fmt, rt in runtimes.items():
            log(f"{fmt}: {b.formats[fmt]} on {rt.name} ({', '.join(rt.providers)})")
            if (nodes := b.float_nodes(fmt)) is not None:
                log(f"{fmt}: {len(nodes)} node{'' if len(nodes) == 1 else 's'} in float"
                    + (f": {', '.join(nodes)}" if nodes else ", every quantizable node in INT8"))
        results, logits = validate_formats(runtimes, data, b.reference, batch, budget or TimingBudget(),
                                           b.class_names, limits.get(gate.THRESHOLD), b.manifest.reference_format)
        used = list(dict.fromkeys(p for rt in runtimes.values() for p in rt.providers))
    checks = gate.evaluate(results, limits)
    gate_lines = gate.report_lines(checks)
    log(report.console_table(results))
    for line in gate_lines:
        log(line)
    result = Report(b, results, limits, checks, gate.passed(checks), gate_lines[-1],
                    data={"spec": data.spec, "n": data.n, "classes": data.classes},
                    device=report.device_info(runtime, used, onnxruntime_version(), openvino_version()),
                    labels=data.labels, logits=logits)
    if json_path:
        write_json(json_path, result.as_dict())
        log(f"wrote {json_path}")
    if report_dir:
        log(f"wrote {report.write_report(report_dir, result.as_dict(), logits, data.labels, gate_lines)}")
    if save_predictions:
        report.save_predictions(save_predictions, data.labels, logits)
        log(f"wrote {save_predictions}")
    return result
