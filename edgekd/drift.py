"""How far a model's predictions are from a reference model's on the same images. numpy only.

One definition for both sides: `edgekd export` records it per file against PyTorch
(manifest.json: parity.top1_agreement, drift.accuracy_drop, drift.ece_drift) and
`edgekd validate` gates on it (--json: agreement, acc_drop, ece_drift). The on-disk
names differ for history's sake; each writer keeps its own names, the numbers come
from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReferenceGap:
    """None where the reference this figure needs was not given."""

    top1_agreement: float | None  # fraction of images whose top-1 class is the reference's
    accuracy_drop: float | None  # reference accuracy - accuracy: > 0 is worse than the reference
    ece_drift: float | None  # |ECE - reference ECE|: calibration moving either way counts


def top1_agreement(logits: np.ndarray, reference_logits: np.ndarray) -> float:
    """Fraction of images whose top-1 class equals the reference's."""
    return float(np.mean(logits.argmax(axis=1) == reference_logits.argmax(axis=1)))


def reference_gap(logits: np.ndarray, metrics: dict, reference_logits: np.ndarray | None = None,
                  reference_metrics: dict | None = None) -> ReferenceGap:
    """Agreement with `reference_logits` and drift from `reference_metrics` (calibration_metrics dicts).

    The two references may differ: validate measures agreement against the FP32 ONNX
    file's predictions and drift against PyTorch's figures from the manifest, which
    holds PyTorch's metrics but not its logits.
    """
    agreement = None if reference_logits is None else top1_agreement(logits, reference_logits)
    if reference_metrics is None:
        return ReferenceGap(agreement, None, None)
    return ReferenceGap(agreement, reference_metrics["accuracy"] - metrics["accuracy"],
                        abs(metrics["ece"] - reference_metrics["ece"]))
