"""Calibration metrics for classifiers, in numpy only.

Never imports torch: `edgekd validate` computes these on a device that has only
numpy and ONNX Runtime, and the numbers must be the same ones training reports.

Every public function takes **logits** [N, C] (raw, pre-softmax scores) and integer
labels [N]. Passing probabilities instead is a common bug: it does not crash (a row
of probabilities is a valid row of logits) but softmax squashes it towards uniform,
so every metric comes out wrong. Softmax is computed once, in float64, here.

All metrics are fractions in [0, 1] (Brier: [0, 2]; NLL: [0, inf)), returned as
python floats.

Equal-width binning matches torchmetrics' `multiclass_calibration_error` exactly:
torchmetrics casts confidences to float32, builds the edges with
`torch.linspace(0, 1, n_bins + 1)` in float32, and assigns
`bucketize(conf, edges, right=True) - 1`, i.e. bin i holds edges[i] <= conf < edges[i+1].
A consequence we keep on purpose: a confidence that is 1.0 in float32 lands in an
extra bin [1, 1] of its own, so an ECE computed on the training host with
torchmetrics and one computed here on a device agree.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edgekd.errors import EdgeKDError

__all__ = [
    "softmax", "accuracy", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier",
    "reliability_bins", "calibration_metrics", "fit_temperature", "temperature_headroom",
]


# ---------------------------------------------------------------- validation

def check_logits(logits: Any) -> np.ndarray:
    """Logits as a float64 [N, C] array, or one EdgeKDError saying what is wrong with them."""
    try:
        z = np.asarray(logits)
    except (ValueError, TypeError) as e:  # ragged nested lists
        raise EdgeKDError(f"logits must be a 2-D numeric array [N, C]: {e}") from None
    if z.ndim != 2:
        raise EdgeKDError(f"logits must be a 2-D array [N, C], got shape {z.shape}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise EdgeKDError(f"logits must be real numbers, got dtype {z.dtype}")
    if z.shape[0] < 1 or z.shape[1] < 1:
        raise EdgeKDError(f"logits must have at least one sample and one class, got shape {z.shape}")
    z = z.astype(np.float64)
    bad = int(z.size - np.count_nonzero(np.isfinite(z)))
    if bad:
        raise EdgeKDError(f"logits contain {bad} NaN or infinite values; all must be finite")
    return z


def check_pair(logits: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """check_logits, and labels as int64 [N] class indices that fit the logits."""
    z = check_logits(logits)
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise EdgeKDError(f"labels must be a 1-D integer array [N], got shape {y.shape} dtype {y.dtype}")
    n, c = z.shape
    if len(y) != n:
        raise EdgeKDError(f"logits have {n} samples but labels have {len(y)}; they must match")
    if y.min() < 0 or y.max() >= c:
        raise EdgeKDError(f"labels must be in [0, {c}) for {c} classes, got range [{y.min()}, {y.max()}]")
    return z, y.astype(np.int64)


def _check_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise EdgeKDError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


# ---------------------------------------------------------------- core math on probabilities

def log_softmax(z: np.ndarray) -> np.ndarray:
    zc = z - z.max(axis=1, keepdims=True)  # largest term becomes exp(0) = 1: no overflow
    return zc - np.log(np.exp(zc).sum(axis=1, keepdims=True))


def _top(p: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Top-label confidence and whether the top label is right."""
    return p.max(axis=1), p.argmax(axis=1) == y


def _edges32(n_bins: int) -> np.ndarray:
    """`torch.linspace(0, 1, n_bins + 1, dtype=float32)`, bit for bit.

    torch evaluates start + i*step for the first half and end - (n-i)*step for the
    second, each with one rounding (fused multiply-add); np.linspace rounds twice and
    differs in the last bit for some edges. float64 holds the products exactly, so
    one cast to float32 reproduces torch's single rounding.
    """
    step = float(np.float32(1.0) / np.float32(n_bins))
    i = np.arange(n_bins + 1, dtype=np.float64)
    return np.where(i < (n_bins + 1) // 2, i * step, 1.0 - (n_bins - i) * step).astype(np.float32)


def bin_index(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each value in [0, 1], as torchmetrics assigns it.

    Returns ints in [0, n_bins]; index n_bins is the extra [1, 1] bin (see module doc).
    """
    return np.searchsorted(_edges32(n_bins), values.astype(np.float32), side="right") - 1


def _binned(conf: np.ndarray, hits: np.ndarray, n_bins: int) -> tuple[np.ndarray, ...]:
    idx = bin_index(conf, n_bins)
    m = n_bins + 1
    count = np.bincount(idx, minlength=m)
    sum_conf = np.bincount(idx, weights=conf, minlength=m)
    sum_hit = np.bincount(idx, weights=hits.astype(np.float64), minlength=m)
    return count, sum_conf, sum_hit


def ece_of_confidences(conf: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    _, sum_conf, sum_hit = _binned(conf, hits, n_bins)
    # |bin|/N * |acc - conf| == |sum_hit - sum_conf| / N, and empty bins add 0.
    return float(np.abs(sum_hit - sum_conf).sum() / len(conf))


def _mce(conf: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    count, sum_conf, sum_hit = _binned(conf, hits, n_bins)
    nz = count > 0
    return float(np.max(np.abs(sum_hit[nz] - sum_conf[nz]) / count[nz]))


def _adaptive_groups(conf: np.ndarray, n_bins: int) -> list[np.ndarray]:
    """Indices of equal-mass bins: sorted by confidence, split into near-equal sizes."""
    order = np.argsort(conf, kind="stable")  # stable: ties split the same way every run
    return [g for g in np.array_split(order, n_bins) if len(g)]


def _adaptive_ece(conf: np.ndarray, hits: np.ndarray, n_bins: int) -> float:
    h = hits.astype(np.float64)
    total = sum(abs(h[g].sum() - conf[g].sum()) for g in _adaptive_groups(conf, n_bins))
    return float(total / len(conf))


def _classwise_ece(p: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    n, c = p.shape
    m = n_bins + 1
    # One bincount over (class, bin) pairs instead of a python loop over classes.
    idx = (bin_index(p, n_bins) + m * np.arange(c)).ravel()
    onehot = (y[:, None] == np.arange(c)).ravel().astype(np.float64)
    sum_p = np.bincount(idx, weights=p.ravel(), minlength=m * c)
    sum_y = np.bincount(idx, weights=onehot, minlength=m * c)
    return float(np.abs(sum_y - sum_p).sum() / (n * c))


def _nll(logp: np.ndarray, y: np.ndarray) -> float:
    return float(-logp[np.arange(len(y)), y].mean())


def _brier(p: np.ndarray, y: np.ndarray) -> float:
    d = p.copy()
    d[np.arange(len(y)), y] -= 1.0
    return float((d * d).sum(axis=1).mean())


# ---------------------------------------------------------------- public API (logits in)

def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax of logits [N, C], float64, stable for any finite logits."""
    return np.exp(log_softmax(check_logits(logits)))


def accuracy(logits: Any, labels: Any) -> float:
    """Top-1 accuracy. `logits` are pre-softmax scores [N, C]; labels ints [N]."""
    z, y = check_pair(logits, labels)
    return float(_top(softmax(z), y)[1].mean())


def ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label expected calibration error, L1, `n_bins` equal-width bins over [0, 1].

    sum over bins of |bin|/N * |accuracy(bin) - mean confidence(bin)|; equals
    torchmetrics `multiclass_calibration_error(norm="l1")`. Takes LOGITS, not
    probabilities: probabilities passed here are softmaxed again and give a wrong ECE.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    return ece_of_confidences(*_top(softmax(z), y), n_bins)


def mce(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Maximum calibration error: max over non-empty equal-width bins of |acc - conf|.

    Equals torchmetrics `multiclass_calibration_error(norm="max")`. Takes LOGITS.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    return _mce(*_top(softmax(z), y), n_bins)


def adaptive_ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Top-label ECE with equal-mass bins (sorted by confidence, `np.array_split`), L1.

    With N < n_bins the empty groups are dropped. Takes LOGITS.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    return _adaptive_ece(*_top(softmax(z), y), n_bins)


def classwise_ece(logits: Any, labels: Any, n_bins: int = 15) -> float:
    """Classwise ECE (Kull et al. 2019): mean over classes k of the equal-width-bin ECE
    of p[:, k] against 1[y == k].

        cw-ECE = 1/C * sum_k sum_b |B_kb|/N * |mean(1[y==k] in B_kb) - mean(p_k in B_kb)|

    Unlike top-label ECE it also scores the non-argmax probabilities. Same binning as
    `ece`. Takes LOGITS.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    return _classwise_ece(softmax(z), y, n_bins)


def nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood -log p_y, from log-softmax (finite for finite logits).

    Takes LOGITS.
    """
    z, y = check_pair(logits, labels)
    return _nll(log_softmax(z), y)


def brier(logits: Any, labels: Any) -> float:
    """Multiclass Brier score: mean over samples of sum_k (p_k - onehot_k)^2, in [0, 2].

    Takes LOGITS.
    """
    z, y = check_pair(logits, labels)
    return _brier(softmax(z), y)


def reliability_bins(logits: Any, labels: Any, n_bins: int = 15) -> dict[str, Any]:
    """Per-bin data for a reliability diagram, JSON-serialisable. Takes LOGITS.

    Returns {"edges": n_bins+1 floats, "count": ints, "accuracy": floats,
    "confidence": floats, "ece": float}. Empty bins have count 0 and accuracy and
    confidence None (JSON null), so a plot never shows a fake bar at 0.

    For display the extra [1, 1] bin (confidences that are 1.0 in float32) is folded
    into the last bin. "ece" is the exact `ece()` value, which keeps that bin separate;
    recomputing ECE from the folded bins can differ when such confidences exist.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    conf, hits = _top(softmax(z), y)
    idx = np.minimum(bin_index(conf, n_bins), n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(idx, weights=hits.astype(np.float64), minlength=n_bins)

    def per_bin(s: np.ndarray) -> list[float | None]:
        return [float(v / k) if k else None for v, k in zip(s, count)]

    return {
        "edges": [float(e) for e in np.linspace(0.0, 1.0, n_bins + 1)],
        "count": [int(k) for k in count],
        "accuracy": per_bin(sum_hit),
        "confidence": per_bin(sum_conf),
        "ece": ece_of_confidences(conf, hits, n_bins),
    }


# The metrics of one set of logits, in the order every table and file (summary.json,
# student.pt, manifest.json, validate's results) lists them.
METRIC_KEYS = ("accuracy", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier")


def calibration_metrics(logits: Any, labels: Any, n_bins: int = 15) -> dict[str, float | int]:
    """All metrics at once from one softmax. Takes LOGITS.

    Keys: METRIC_KEYS (floats), n (int).
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    logp = log_softmax(z)
    p = np.exp(logp)
    conf, hits = _top(p, y)
    return {
        "accuracy": float(hits.mean()),
        "ece": ece_of_confidences(conf, hits, n_bins),
        "mce": _mce(conf, hits, n_bins),
        "adaptive_ece": _adaptive_ece(conf, hits, n_bins),
        "classwise_ece": _classwise_ece(p, y, n_bins),
        "nll": _nll(logp, y),
        "brier": _brier(p, y),
        "n": int(len(y)),
    }


# ---------------------------------------------------------------- temperature scaling

_LOG_T_RANGE = (math.log(0.05), math.log(20.0))
_GRID = 25
_GOLDEN_ITERS = 48
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def fit_temperature(logits: Any, labels: Any) -> float:
    """Temperature T > 0 minimising the NLL of softmax(logits / T), T in [0.05, 20].

    NLL is convex in 1/T, hence unimodal in log T: a coarse grid on log T brackets the
    minimum, golden-section search refines it to ~1e-10 in log T. Pure numpy (no scipy
    on devices). Returns 1.0 when the NLL does not depend on T (every row constant).
    Takes LOGITS.
    """
    z, y = check_pair(logits, labels)
    zc = z - z.max(axis=1, keepdims=True)  # <= 0 with a 0 per row: exp never overflows
    zy = zc[np.arange(len(y)), y]

    def f(log_t: float) -> float:
        inv_t = math.exp(-log_t)
        return float(np.mean(np.log(np.exp(zc * inv_t).sum(axis=1)) - zy * inv_t))

    grid = np.linspace(*_LOG_T_RANGE, _GRID)
    vals = np.array([f(t) for t in grid])
    if vals.max() - vals.min() <= 1e-12 * max(1.0, abs(vals.min())):
        return 1.0
    i = int(np.argmin(vals))
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(_GOLDEN_ITERS):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
    best = min((fc, c), (fd, d), (float(vals[i]), float(grid[i])))  # never worse than the grid
    return float(math.exp(best[1]))


def temperature_headroom(logits: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """How much post-hoc temperature scaling would still help. Diagnostic only: the
    reported metrics are never temperature-scaled. Takes LOGITS.

    Returns {"temperature", "ece", "nll" (after scaling), "ece_before", "nll_before"}.
    """
    n_bins = _check_bins(n_bins)
    z, y = check_pair(logits, labels)
    t = fit_temperature(z, y)
    out: dict[str, float] = {"temperature": t}
    for suffix, zz in (("", z / t), ("_before", z)):
        logp = log_softmax(zz)
        out["ece" + suffix] = ece_of_confidences(*_top(np.exp(logp), y), n_bins)
        out["nll" + suffix] = _nll(logp, y)
    return out
