"""Judging one candidate (numpy and ONNX Runtime only): its logits against the FP32 file's on
the search images, with the gate's own checks, and its speed.

Against the FP32 ONNX file's logits and metrics on the same images, with edgekd.drift's
figures (top-1 agreement, accuracy drop, ECE drift) and the gate's checks
(edgekd.validation.gate): the same definitions `edgekd validate` applies, here on the search
images instead of val. Speed: images/s in ONNX Runtime on the CPU, the median of timed
batches of SPEED_BATCH (measured, not assumed from the number of float nodes).
model_int8.onnx is meant for TensorRT, but it is timed in ONNX Runtime on the CPU too: the
machine export runs on.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekd import calibration
from edgekd.runtime import OnnxRuntimeSession
from edgekd.text import pct
from edgekd.validation import gate
from edgekd.validation.metrics import comparisons

SPEED_BATCH = 64
SPEED_WARMUP = 2
# Timed batches: at least SPEED_RUNS and SPEED_MIN_S of them (a small model's batch takes a few
# ms, and on a busy machine five of those are noise), at most SPEED_MAX_RUNS.
SPEED_RUNS = 5
SPEED_MIN_S = 0.3
SPEED_MAX_RUNS = 50


@dataclass(frozen=True)
class Reference:
    """The FP32 ONNX file on the search images: what every candidate is compared with."""

    logits: np.ndarray
    labels: np.ndarray
    metrics: dict  # calibration_metrics
    images_per_s: float | None = None

    @classmethod
    def of(cls, logits: np.ndarray, labels: np.ndarray, images_per_s: float | None = None) -> "Reference":
        return cls(logits, labels, calibration.calibration_metrics(logits, labels), images_per_s)


@dataclass
class Judgement:
    figures: dict[str, float] | None  # accuracy, ece, acc_drop, ece_drift, agreement, kl; None: non-finite logits
    checks: list[gate.Check]

    @property
    def passed(self) -> bool:
        return self.figures is not None and gate.passed(self.checks)

    @property
    def shortfall(self) -> float:
        """How far from passing: the summed excess over each failed threshold (0 when it passes)."""
        if self.figures is None:
            return math.inf
        return sum(abs(c.value - c.threshold) for c in self.checks if c.status == "fail")

    def failed_text(self) -> str:
        return ", ".join(f"{c.metric} {pct(c.value)} {'>' if c.op == '<=' else '<'} {pct(c.threshold)}"
                         for c in self.checks if c.status == "fail") or "passes"


def mean_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(p_reference || p) over images, in nats: how far a candidate's whole output
    distribution moved, confidence included (a finer signal than top-1 for ranking nodes)."""
    ref = calibration.log_softmax(reference_logits.astype(np.float64))
    cand = calibration.log_softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(ref) * (ref - cand), axis=1)))


def judge(logits: np.ndarray, ref: Reference, thresholds: dict[str, float]) -> Judgement:
    """The candidate's figures against the FP32 file and the gate's checks on them."""
    if not np.all(np.isfinite(logits)):
        return Judgement(None, [])
    metrics = calibration.calibration_metrics(logits, ref.labels)
    gap = comparisons(metrics, logits, ref.metrics, ref.logits, ref.labels, thresholds.get(gate.THRESHOLD))
    # The decision figures a gate can check (worst class, decisions at a threshold) are judged like the
    # others; the per-class list and the names are for validate's report, not a candidate's record.
    decisions = {k: gap[k] for k in ("class_acc_drop", "threshold_agreement") if gap.get(k) is not None}
    figures = {"accuracy": metrics["accuracy"], "ece": metrics["ece"], "acc_drop": gap["acc_drop"],
               "ece_drift": gap["ece_drift"], "agreement": gap["agreement"], **decisions,
               "kl": mean_kl(ref.logits, logits)}
    return Judgement(figures, gate.evaluate({"candidate": figures}, thresholds))


def measure_speed(path: Path, images: np.ndarray) -> float:
    """Images/s of `path` in ONNX Runtime on the CPU (default threads, as `edgekd validate`):
    SPEED_BATCH images a call, the median call of at least SPEED_RUNS and SPEED_MIN_S."""
    batch = np.resize(images, (SPEED_BATCH, *images.shape[1:]))  # repeats images when fewer than a batch
    with OnnxRuntimeSession(path, ["CPUExecutionProvider"]) as session:
        for _ in range(SPEED_WARMUP):
            session.run(batch)
        times: list[float] = []
        while len(times) < SPEED_MAX_RUNS and (len(times) < SPEED_RUNS or sum(times) < SPEED_MIN_S):
            start = time.perf_counter()
            session.run(batch)
            times.append(time.perf_counter() - start)
    return SPEED_BATCH / float(np.median(times))
