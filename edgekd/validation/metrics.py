"""Run one format over the preprocessed data: logits, metrics, latency and throughput.

Timing: inputs are preprocessed once up front and cut into batches (views, no
copies), so the timed loops contain nothing but the runtime's own call. Latency is
per single image (batch 1); throughput is images/s at --batch over whole passes of
the data, measured as wall time of the loop, which is how a bare `session.run`
loop would be timed too (see benchmarks/bench_validate.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from edgekd import calibration
from edgekd.calibration import METRIC_KEYS
from edgekd.drift import decision_gap, reference_gap
from edgekd.runtime import Runner

# comparisons()'s figures of the decisions a device makes (None where not measured).
DECISION_KEYS = ("class_acc_drop", "class_acc_drop_class", "per_class_accuracy", "threshold_agreement", "coverage",
                 "reference_coverage")


@dataclass
class TimingBudget:
    """How long timing may take per format. Bounded so a slow device still finishes."""

    warmup_runs: int = 5
    latency_runs: int = 200  # at most
    latency_min_runs: int = 50
    latency_seconds: float = 1.0  # stop after this once latency_min_runs are done
    throughput_seconds: float = 1.0  # repeat whole passes until this much loop time
    throughput_max_passes: int = 20


@dataclass
class FormatRun:
    logits: np.ndarray  # float32 [N, classes], from the first pass
    latency_ms: dict[str, float]  # p50, p90, p99 at batch 1
    throughput: float  # images/s at the batch size used
    batch: int


def make_batches(inputs: np.ndarray, batch: int) -> list[np.ndarray]:
    """Contiguous views of `inputs`, batch rows each (the last may be shorter)."""
    return [inputs[i : i + batch] for i in range(0, len(inputs), batch)]


def predict(runtime: Runner, batches: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """Logits for every batch and the loop's wall time in seconds."""
    run = runtime.run
    start = time.perf_counter()
    outputs = [run(b) for b in batches]
    seconds = time.perf_counter() - start
    return np.concatenate(outputs), seconds


def measure_throughput(runtime: Runner, batches: list[np.ndarray], budget: TimingBudget,
                       first_pass_seconds: float = 0.0, passes_done: int = 0) -> float:
    """Images/s over whole passes, repeated until budget.throughput_seconds of loop time."""
    n = sum(len(b) for b in batches)
    seconds, passes = first_pass_seconds, passes_done
    while passes < budget.throughput_max_passes and (passes == 0 or seconds < budget.throughput_seconds):
        seconds += predict(runtime, batches)[1]
        passes += 1
    return n * passes / seconds


def measure_latency(runtime: Runner, sample: np.ndarray, budget: TimingBudget) -> dict[str, float]:
    """p50/p90/p99 milliseconds of one batch-1 call, after warm-up."""
    run = runtime.run
    for _ in range(budget.warmup_runs):
        run(sample)
    times: list[float] = []
    spent = 0.0
    while len(times) < budget.latency_runs and (len(times) < budget.latency_min_runs or spent < budget.latency_seconds):
        start = time.perf_counter()
        run(sample)
        times.append(time.perf_counter() - start)
        spent += times[-1]
    p50, p90, p99 = np.percentile(np.array(times) * 1e3, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99)}


def run_format(runtime: Runner, inputs: np.ndarray, batch: int, budget: TimingBudget) -> FormatRun:
    """Warm up (every batch shape once), one timed pass for the logits, then latency."""
    if runtime.max_batch is not None:
        batch = min(batch, runtime.max_batch)  # a TensorRT profile caps the batch
    batches = make_batches(inputs, batch)
    for b in {len(b): b for b in batches}.values():  # first call per shape allocates: keep it out of timing
        runtime.run(b)
    logits, seconds = predict(runtime, batches)
    throughput = measure_throughput(runtime, batches, budget, seconds, passes_done=1)
    latency = measure_latency(runtime, inputs[:1], budget)
    return FormatRun(logits.astype(np.float32, copy=False), latency, throughput, batch)


def format_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
    """Raw-softmax metrics (never temperature-scaled) plus temperature headroom as a diagnostic."""
    m = calibration.calibration_metrics(logits, labels)
    out = {k: m[k] for k in METRIC_KEYS}
    out["ts_headroom"] = calibration.temperature_headroom(logits, labels)
    return out


def comparisons(metrics: dict, logits: np.ndarray, reference: dict | None, fp32_logits: np.ndarray | None,
                labels: np.ndarray | None = None, threshold: float | None = None) -> dict:
    """agreement (vs FP32 ONNX predictions), acc_drop and ece_drift (vs `reference` metrics); with the
    labels, against the FP32 predictions too: the worst class's accuracy drop and, with a threshold,
    the share of the same accept/reject decisions and both coverages (drift.decision_gap). None if unknown.

    The --json names of edgekd.drift's figures (manifest.json calls the same numbers
    top1_agreement and accuracy_drop; both names stay, for the readers of each file).
    """
    gap = reference_gap(logits, metrics, reference_logits=fp32_logits, reference_metrics=reference)
    out = {"agreement": gap.top1_agreement, "ece_drift": gap.ece_drift, "acc_drop": gap.accuracy_drop,
           **dict.fromkeys(DECISION_KEYS)}
    if fp32_logits is not None and labels is not None:
        out.update(decision_gap(logits, fp32_logits, labels, threshold))
    return out
