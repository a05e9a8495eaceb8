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

from edgekd.calibration import softmax


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


def class_accuracies(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Per class, the share of its images predicted as it (recall); None for a class with no image."""
    pred = logits.argmax(axis=1)
    return [float(np.mean(pred[labels == c] == c)) if np.any(labels == c) else None for c in range(num_classes)]


def decision_gap(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray,
                 threshold: float | None = None) -> dict:
    """What a device acting on the predictions would see change, against the reference on the same images.

    class_acc_drop: the worst class's accuracy drop (reference recall minus this file's; > 0 is worse),
    class_acc_drop_class its index, per_class_accuracy every class's recall. With a threshold tau: the
    share of images on which both make the same decision (both reject: top confidence below tau; or both
    accept, with the same top-1 class), and the share each accepts (coverage)."""
    num_classes = logits.shape[1]
    mine, ref = class_accuracies(logits, labels, num_classes), class_accuracies(reference_logits, labels, num_classes)
    drops = [(r - m, c) for c, (m, r) in enumerate(zip(mine, ref)) if m is not None]
    worst, cls = max(drops) if drops else (0.0, None)
    out = {"class_acc_drop": float(worst), "class_acc_drop_class": cls, "per_class_accuracy": mine}
    if threshold is not None:
        # The confidence ECE bins by: the top softmax probability.
        accept, ref_accept = softmax(logits).max(axis=1) >= threshold, softmax(reference_logits).max(axis=1) >= threshold
        same_class = logits.argmax(axis=1) == reference_logits.argmax(axis=1)  # per image, not top1_agreement's mean
        same = np.where(accept & ref_accept, same_class, accept == ref_accept)
        out.update(threshold_agreement=float(np.mean(same)), coverage=float(np.mean(accept)),
                   reference_coverage=float(np.mean(ref_accept)))
    return out
