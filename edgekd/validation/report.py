"""What validate returns (Report) and writes: the console table, --json, --report DIR and
--save-predictions. All writes atomic."""

from __future__ import annotations

import io
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import calibration
from edgekd.calibration import METRIC_KEYS
from edgekd.errors import EdgeKDError, GateError
from edgekd.files import atomic_write_bytes, atomic_write_text
from edgekd.text import pct
from edgekd.validation.bundle import Bundle
from edgekd.validation.gate import Check

# Per-format keys of --json, in order.
FORMAT_KEYS = (*METRIC_KEYS, "agreement", "ece_drift", "acc_drop", "class_acc_drop", "class_acc_drop_class",
               "class_acc_drop_name", "per_class_accuracy", "threshold_agreement", "coverage", "reference_coverage",
               "latency_ms", "throughput", "ts_headroom")


def cpu_name() -> str:
    """The CPU model (platform.processor() is empty on most Linux systems)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(runtime: str, providers: list[str], onnxruntime_version: str | None,
                openvino_version: str | None) -> dict:
    return {"platform": platform.platform(), "cpu": f"{cpu_name()} ({os.cpu_count()} logical cores)",
            "runtime": runtime, "providers": providers, "onnxruntime": onnxruntime_version,
            "openvino": openvino_version}


def bundle_info(bundle) -> dict:
    m = bundle.manifest
    floats = {f: bundle.float_nodes(f) for f in bundle.formats}
    return {"path": str(bundle.path), "created": m.created, "model": m.model, "source": m.source,
            "files": {f: bundle.formats[f] for f in bundle.formats}, "reference": m.reference,
            "float_nodes": {f: nodes for f, nodes in floats.items() if nodes is not None}, "tools": m.tools}


def results_document(results: dict[str, dict], thresholds: dict, checks: list[Check], passed: bool, data: dict,
                     device: dict, bundle: dict) -> dict:
    return {
        "formats": {fmt: {k: r.get(k) for k in FORMAT_KEYS} for fmt, r in results.items()},
        "gate": {"thresholds": thresholds, "checks": [c.as_dict() for c in checks], "passed": passed},
        "data": data,
        "device": device,
        "bundle": bundle,
    }


@dataclass(frozen=True)
class Report:
    """What `edgekd.validate` returns: every figure the command prints or writes.

    formats: per format ("fp32", "int8", "engine_fp16", ...), the --json keys: accuracy,
      ece, mce, adaptive_ece, classwise_ece, nll, brier (raw softmax, fractions), agreement
      (top-1 with the FP32 ONNX file; None without it), acc_drop and ece_drift (against
      the manifest's PyTorch reference on the run's val split, else against FP32 ONNX;
      None if unknown), latency_ms (p50/p90/p99 per batch), throughput (images/s),
      ts_headroom (temperature diagnostic).
    thresholds: the gate's limits (arguments first, else the manifest's; None: not checked).
    checks: one gate.Check per (format, threshold set): value, threshold, status pass/fail/skip.
    passed: no check failed. verdict: the command's last line ("VERDICT: PASS (4 checks)").
    data: spec, n (images), classes. device: platform, cpu, runtime, providers, onnxruntime,
      openvino (versions; None if not installed).
    labels, logits: the images' labels and each format's logits (float32 [n, classes]).
    """

    bundle: Bundle
    formats: dict[str, dict[str, Any]] = field(repr=False)
    thresholds: dict[str, float | None] = field(repr=False)
    checks: list[Check] = field(repr=False)
    passed: bool
    verdict: str
    data: dict[str, Any] = field(repr=False)
    device: dict[str, Any] = field(repr=False)
    labels: np.ndarray = field(repr=False)
    logits: dict[str, np.ndarray] = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        """The document `--json FILE` writes (formats, gate, data, device, bundle)."""
        return results_document(self.formats, self.thresholds, self.checks, self.passed, self.data, self.device,
                                bundle_info(self.bundle))

    def raise_for_gate(self) -> None:
        """Raise GateError (the verdict line, exit code 1) if a check failed; else do nothing."""
        if not self.passed:
            raise GateError(self.verdict)


# ---------------------------------------------------------------- console and Markdown tables


TABLE_COLUMNS = ("format", "acc", "ECE", "NLL", "Brier", "agreement", "class drop", "p50 ms", "img/s")
# With a confidence threshold, after agreement: the share of the same accept/reject decisions and the
# share of images the file accepts.
THRESHOLD_COLUMNS = ("decisions", "coverage")


def _with_threshold(results: dict[str, dict]) -> bool:
    return any(r.get("threshold_agreement") is not None for r in results.values())


def table_columns(results: dict[str, dict]) -> tuple[str, ...]:
    if not _with_threshold(results):
        return TABLE_COLUMNS
    return (*TABLE_COLUMNS[:7], *THRESHOLD_COLUMNS, *TABLE_COLUMNS[7:])


def table_rows(results: dict[str, dict]) -> list[list[str]]:
    rows = []
    for fmt, r in results.items():
        row = [fmt, pct(r["accuracy"]), pct(r["ece"]), f"{r['nll']:.4f}", f"{r['brier']:.4f}", pct(r["agreement"]),
               pct(r.get("class_acc_drop"))]
        if _with_threshold(results):
            row += [pct(r.get("threshold_agreement")), pct(r.get("coverage"))]
        rows.append(row + [f"{r['latency_ms']['p50']:.3f}", f"{r['throughput']:.0f}"])
    return rows


def console_table(results: dict[str, dict]) -> str:
    columns = table_columns(results)
    rows = [list(columns)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    # Format names left-aligned, numbers right-aligned.
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
                     for row in rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ---------------------------------------------------------------- --report DIR


def write_report(report_dir: Path, document: dict, logits: dict[str, np.ndarray], labels: np.ndarray,
                 gate_lines: list[str]) -> Path:
    """report.md (tables, gate, where the numbers come from) and reliability.png (one column per format)."""
    # Here, not at the top: plots imports matplotlib (a third of a second), which a run without --report never needs.
    from edgekd import plots

    try:
        report_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EdgeKDError(f"cannot create --report folder {report_dir}: {e.strerror or e}") from None
    results, data, device, bundle = document["formats"], document["data"], document["device"], document["bundle"]
    library = "openvino" if device["runtime"] == "openvino" else "onnxruntime"  # whose version to show
    panels = {fmt: calibration.reliability_bins(z, labels) for fmt, z in logits.items()}
    plots.reliability_grid(panels, report_dir / "reliability.png",
                           f"{Path(bundle['path']).name} on {data['spec']} ({data['n']} images)")
    detail = markdown_table(
        ["format", "MCE", "adaptive ECE", "classwise ECE", "ECE drift", "acc drop", "p90 ms", "p99 ms",
         "T*", "ECE after T*"],
        [[fmt, pct(r["mce"]), pct(r["adaptive_ece"]), pct(r["classwise_ece"]), pct(r["ece_drift"]),
          pct(r["acc_drop"]), f"{r['latency_ms']['p90']:.3f}", f"{r['latency_ms']['p99']:.3f}",
          f"{r['ts_headroom']['temperature']:.3f}", pct(r["ts_headroom"]["ece"])] for fmt, r in results.items()],
    )
    text = "\n".join([
        f"# edgekd validate: {Path(bundle['path']).name}",
        "",
        f"- data: {data['spec']}, {data['n']} images, {len(data['classes'])} classes",
        f"- device: {device['platform']}; {device['cpu']}",
        f"- runtime: {device['runtime']} ({library} {device[library]}); providers: {', '.join(device['providers'])}",
        "",
        "Metrics use the raw softmax. Agreement is top-1 agreement with the bundle's FP32 ONNX model in this run; "
        "ECE drift and accuracy drop compare with the manifest's PyTorch reference on its val split "
        "(with other data: with this run's FP32 ONNX results). T* is the NLL-optimal temperature, a diagnostic only.",
        "",
        markdown_table(list(table_columns(results)), table_rows(results)),
        "",
        detail,
        "",
        "![reliability diagrams](reliability.png)",
        "",
        "## Gate",
        "",
        "```",
        *gate_lines,
        "```",
        "",
    ])
    atomic_write_text(report_dir / "report.md", text)
    return report_dir / "report.md"


# ---------------------------------------------------------------- --save-predictions FILE.npz


def save_predictions(path: Path, labels: np.ndarray, logits: dict[str, np.ndarray]) -> None:
    """labels and <format>_logits arrays, enough to recompute every metric."""
    buf = io.BytesIO()
    np.savez(buf, labels=labels, **{f"{fmt}_logits": z for fmt, z in logits.items()})
    atomic_write_bytes(path, buf.getvalue())
