"""Every exported file against PyTorch on the val split: parity, metrics, drift.

FP32 must reproduce PyTorch (it is the same arithmetic up to kernel order): if
it does not, the export is broken and no bundle is written (ParityError, exit 1).
FP16 and INT8 are expected to differ a little; their figures are recorded for
the bundle's validate gate to judge, never failed on here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd.calibration import calibration_metrics
from edgekd.drift import reference_gap, top1_agreement
from edgekd.errors import ParityError
from edgekd.runtime import OnnxRuntimeSession

# FP32 ONNX vs PyTorch, per image: |onnx - torch| <= ATOL + RTOL * max |torch logit| of that image.
# Rounding error scales with the magnitude of the terms summed, not with the (possibly
# cancelled, near-zero) result, so the relative part uses the image's largest logit: a model
# with huge logits is not failed for float32 rounding, a wrong kernel still is.
FP32_ATOL = 1e-3
FP32_RTOL = 1e-4
EVAL_BATCH = 256
# What files.<name>.metrics records (the reference keeps calibration_metrics' full set).
FILE_METRICS = ("accuracy", "ece", "nll", "brier")


def batched(run, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Logits of `run(batch) -> logits` over all images, in order."""
    return np.concatenate([run(images[i : i + batch]) for i in range(0, len(images), batch)])


def onnxruntime_logits(path: Path, images: np.ndarray, batch: int = EVAL_BATCH) -> np.ndarray:
    """Logits of an ONNX file in ONNX Runtime on the CPU: the same session validate uses on devices."""
    with OnnxRuntimeSession(path, ["CPUExecutionProvider"]) as session:
        return batched(session.run, images, batch).astype(np.float32)


def compare(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray, ref_metrics: dict) -> dict:
    """A file's manifest figures: parity with PyTorch, its own metrics, and drift from PyTorch's
    (edgekd.drift's figures, under the manifest's names; validate's --json calls them agreement and acc_drop)."""
    metrics = calibration_metrics(logits, labels)
    gap = reference_gap(logits, metrics, reference_logits=reference, reference_metrics=ref_metrics)
    return {
        "parity": {
            "max_abs_logit_diff": float(np.max(np.abs(logits - reference))),
            "top1_agreement": gap.top1_agreement,
            "n": int(len(labels)),
        },
        "metrics": {k: metrics[k] for k in FILE_METRICS},
        "drift": {"accuracy_drop": gap.accuracy_drop, "ece_drift": gap.ece_drift},
    }


def require_fp32_parity(name: str, reference: np.ndarray, logits: np.ndarray) -> None:
    """FP32 ONNX must reproduce PyTorch; otherwise the exporter is broken for this model."""
    limit = FP32_ATOL + FP32_RTOL * np.abs(reference).max(axis=1, keepdims=True)
    # Logits this close also agree on the top-1 class of every image whose top two PyTorch
    # logits are more than 2 x limit apart; only a near-tie may flip, which is rounding, not
    # a broken export. So no separate agreement threshold (one flipped tie in 359 digits
    # images would already be 99.7%).
    if not np.all(np.abs(logits - reference) <= limit):
        worst = float(np.max(np.abs(logits - reference)))
        agreement = top1_agreement(logits, reference)
        raise ParityError(
            f"{name} disagrees with PyTorch on the val split: max |logit diff| {worst:.2e} (limit {FP32_ATOL:.0e} "
            f"+ {FP32_RTOL:.0e} x the image's largest |logit|), top-1 agreement {agreement:.4f}; "
            "no bundle was written"
        )
