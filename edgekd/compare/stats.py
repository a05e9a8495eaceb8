"""The statistics of `edgekd compare`, numpy only (no torch, no scipy).

- `summarize`: mean, std (ddof=1) and a 95% t confidence interval over seeds.
- `paired_bootstrap`: variant minus reference, paired by seed and by evaluation
  image, with a percentile CI from a hierarchical bootstrap (seeds, then images
  inside each chosen seed, the same image draws for both variants).
- `drift_contrast`: how much more one row drifts than another under a conversion (|ECE INT8 -
  ECE FP32| of one minus the other's), with the same hierarchical bootstrap.
- `ece_noise_floor`: the ECE a perfectly calibrated model with the same
  confidences and number of images would show on average.
- `verdict`: `lower` / `higher` when the CI excludes 0, else no detectable difference.

Speed: a bootstrap replicate never recomputes a softmax. Every metric is a sum of
per-image terms (per bin for the ECEs), so each image's terms are computed once
(`image_terms`) and a resample is a vector of counts per image: the sums of a
block of resamples are one matrix product, counts [rows, N] @ terms [N, K].
Equal-mass bins (adaptive ECE) move with the resample; their sums come from
cumulative counts in confidence order. Binning is calibration.ece's, bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgekd import calibration
from edgekd.errors import EdgeKDError

METRICS = ("accuracy", "ece", "adaptive_ece", "classwise_ece", "nll", "brier")
N_BINS = 15
NO_DIFFERENCE = "no detectable difference"

# scipy.stats.t.ppf(0.975, df) for df = 1..30 (9 decimals). Beyond 30 the Cornish-Fisher
# expansion below is within 3e-8 of it. A table instead of scipy: compare's statistics
# then need numpy alone, and tests/test_compare_stats.py checks both against scipy.
_T975 = (12.706204736, 4.30265273, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252,
         2.306004135, 2.262157163, 2.228138852, 2.20098516, 2.17881283, 2.160368656, 2.144786688,
         2.131449546, 2.119905299, 2.109815578, 2.10092204, 2.093024054, 2.085963447, 2.079613845,
         2.073873068, 2.06865761, 2.063898562, 2.059538553, 2.055529439, 2.051830516, 2.048407142,
         2.045229642, 2.042272456)
_Z975 = 1.959963984540054


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with df degrees of freedom (two-sided 95%)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z, d = _Z975, float(df)
    return (z + (z**3 + z) / (4 * d) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * d**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * d**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * d**4))


def summarize(values) -> dict:
    """{"mean", "std" (ddof=1), "ci" ([lo, hi], 95% t interval of the mean), "n"}.

    One value has no spread: std and ci are None (not 0)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "std": None, "ci": None, "n": 0}
    mean = float(v.mean())
    if v.size == 1:
        return {"mean": mean, "std": None, "ci": None, "n": 1}
    std = float(v.std(ddof=1))
    half = t_quantile_975(v.size - 1) * std / math.sqrt(v.size)
    return {"mean": mean, "std": std, "ci": [mean - half, mean + half], "n": int(v.size)}


def verdict(ci) -> str:
    """`lower` if the CI lies entirely below 0, `higher` if entirely above, else no detectable difference."""
    if ci is None:
        return NO_DIFFERENCE
    lo, hi = ci
    if hi < 0:
        return "lower"
    if lo > 0:
        return "higher"
    return NO_DIFFERENCE


# ---------------------------------------------------------------- per-image terms

@dataclass(frozen=True)
class ImageTerms:
    """Every metric of one set of logits as sums of per-image terms."""

    # [N, 3 + M + C]: hit, -log p_y, Brier term, hit - conf in the image's bin column (M),
    # then onehot_k - p_k for every class k (C): the classwise sums over all bins.
    linear: np.ndarray
    # Classwise cells (class k, bin b >= 1) as a sparse list, sorted by cell: most p_k of
    # most images fall in bin 0, whose cell is the class sum minus the other bins.
    cw_image: np.ndarray   # image of each entry
    cw_value: np.ndarray   # onehot_k - p_k of each entry
    cw_starts: np.ndarray  # first entry of each non-empty cell
    cw_class: np.ndarray   # [cells, C] one-hot class of each non-empty cell
    order: np.ndarray      # images by confidence, stable (ties as calibration.adaptive_ece splits them)
    d_sorted: np.ndarray   # [N + 1] hit - conf in that order, then a 0 (see _adaptive)
    n_classes: int
    n_bins: int


def image_terms(logits, labels, n_bins: int = N_BINS) -> ImageTerms:
    z, y = calibration.check_pair(logits, labels)
    logp = calibration.log_softmax(z)
    p = np.exp(logp)
    n, c = p.shape
    m = n_bins + 1  # + the [1, 1] bin of calibration's binning
    rows = np.arange(n)
    conf = p.max(axis=1)
    hit = (p.argmax(axis=1) == y).astype(np.float64)
    resid = -p
    resid[rows, y] += 1.0  # onehot - p
    linear = np.zeros((n, 3 + m + c))
    linear[:, 0] = hit
    linear[:, 1] = -logp[rows, y]
    linear[:, 2] = (resid * resid).sum(axis=1)
    linear[rows, 3 + calibration.bin_index(conf, n_bins)] = hit - conf
    linear[:, 3 + m:] = resid
    bins = calibration.bin_index(p, n_bins)
    img, cls = np.nonzero(bins > 0)
    cell = cls * m + bins[img, cls]
    by_cell = np.argsort(cell, kind="stable")
    img, cls, cell = img[by_cell], cls[by_cell], cell[by_cell]
    starts = np.flatnonzero(np.r_[True, cell[1:] != cell[:-1]]) if len(cell) else np.zeros(0, dtype=np.int64)
    cw_class = np.zeros((len(starts), c))
    cw_class[np.arange(len(starts)), cls[starts]] = 1.0
    order = np.argsort(conf, kind="stable")
    d_sorted = np.append((hit - conf)[order], 0.0)
    return ImageTerms(linear, img, resid[img, cls], starts, cw_class, order, d_sorted, c, n_bins)


def _group_bounds(total: int, n_bins: int) -> np.ndarray:
    """Start/end positions of np.array_split's groups of `total` sorted items (as adaptive_ece splits)."""
    q, r = divmod(total, n_bins)
    sizes = [q + 1] * r + [q] * (n_bins - r)
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.float64)


def _adaptive(terms: ImageTerms, counts: np.ndarray, total: int) -> np.ndarray:
    """Equal-mass-bin ECE of each row of counts. S(p), the sum of hit - conf over the first p
    items of a row's resample in confidence order, is found from cumulative counts: images
    0..j-1 lie wholly before p and image j contributes the rest of its copies."""
    rows, n = counts.shape
    ws = counts[:, terms.order]
    cd = np.cumsum(ws * terms.d_sorted[:-1], axis=1)
    cc = np.cumsum(ws, out=ws, axis=1)
    bounds = _group_bounds(total, terms.n_bins)
    # One searchsorted for all rows: offsetting row r by r * (total + 1) keeps the rows in order.
    offset = np.arange(rows)[:, None] * float(total + 1)
    q = (bounds[None, :] + offset).ravel()
    j = np.searchsorted((cc + offset).ravel(), q, side="right").reshape(rows, -1)
    j -= np.arange(rows)[:, None] * n
    r = np.arange(rows)[:, None]
    before = j > 0  # counts and sums of images 0..j-1 (none when j == 0)
    cc_before = np.where(before, cc[r, j - 1], 0.0)
    cd_before = np.where(before, cd[r, j - 1], 0.0)
    s = cd_before + (bounds[None, :] - cc_before) * terms.d_sorted[j]
    return np.abs(np.diff(s, axis=1)).sum(axis=1) / total


def _classwise(terms: ImageTerms, counts: np.ndarray, class_sums: np.ndarray, total: float) -> np.ndarray:
    if len(terms.cw_starts):
        cells = np.add.reduceat(counts[:, terms.cw_image] * terms.cw_value, terms.cw_starts, axis=1)
        bin0 = class_sums - cells @ terms.cw_class
        mass = np.abs(cells).sum(axis=1) + np.abs(bin0).sum(axis=1)
    else:
        mass = np.abs(class_sums).sum(axis=1)
    return mass / (total * terms.n_classes)


def metrics_from_counts(terms: ImageTerms, counts: np.ndarray) -> dict[str, np.ndarray]:
    """METRICS of each row of counts [rows, N] (how often each image is in a resample; all rows
    the same total). A row of ones gives calibration.calibration_metrics' values."""
    total = float(counts[0].sum())
    m = terms.n_bins + 1
    lin = counts @ terms.linear
    return {
        "accuracy": lin[:, 0] / total,
        "ece": np.abs(lin[:, 3 : 3 + m]).sum(axis=1) / total,
        "adaptive_ece": _adaptive(terms, counts, int(round(total))),
        "classwise_ece": _classwise(terms, counts, lin[:, 3 + m :], total),
        "nll": lin[:, 1] / total,
        "brier": lin[:, 2] / total,
    }


def resample_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """Image indices [rows, k] -> counts [rows, n] (float64)."""
    rows = idx.shape[0]
    flat = (idx + n * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, minlength=rows * n).reshape(rows, n).astype(np.float64)


# ---------------------------------------------------------------- paired hierarchical bootstrap

def bootstrap_draws(rng: np.random.Generator, picks: np.ndarray, sizes: list[int], chunk: int = 16):
    """The image resamples of the hierarchical bootstrap, in the order they are drawn.

    picks [B, S]: the seed position chosen for slot j of replicate b. For each seed
    position s in turn, for each (b, j) that picked it (row-major), N_s image indices
    drawn with replacement. Yields (s, replicate of each row [rows], indices [rows, N_s]).
    """
    n_rep, n_seeds = picks.shape
    for s in range(n_seeds):
        reps = np.flatnonzero(picks.ravel() == s) // n_seeds
        for start in range(0, len(reps), chunk):
            rows = reps[start : start + chunk]
            yield s, rows, rng.integers(0, sizes[s], size=(len(rows), sizes[s]))


def paired_bootstrap(reference: list, variant: list, replicates: int = 1000, rng_seed: int = 0,
                     n_bins: int = N_BINS, chunk: int = 16) -> dict:
    """Variant minus reference, per metric: {"diff", "ci", "verdict"}.

    reference, variant: one (logits, labels) per paired seed, in the same seed order, on
    the same images (labels must be equal). "diff" is the mean over seeds of the per-seed
    difference on all images. Each replicate picks S seeds with replacement and, for each
    pick, N images with replacement (the same images for both variants), and averages the
    S differences; "ci" is the 2.5 and 97.5 percentiles over replicates. With one paired
    seed the seed-to-seed spread cannot be estimated: ci is None.
    """
    if not reference or len(reference) != len(variant):
        raise EdgeKDError("paired_bootstrap needs the same number (>= 1) of seeds for both variants")
    if isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1:
        raise EdgeKDError(f"bootstrap replicates must be an integer >= 1, got {replicates!r}")
    for (_, y_ref), (_, y_var) in zip(reference, variant):
        if not np.array_equal(np.asarray(y_ref), np.asarray(y_var)):
            raise EdgeKDError("paired runs must be evaluated on the same images (their labels differ)")
    n_seeds = len(reference)
    per_seed = []
    for (z_ref, y), (z_var, _) in zip(reference, variant):
        ref_m = calibration.calibration_metrics(z_ref, y, n_bins)
        var_m = calibration.calibration_metrics(z_var, y, n_bins)
        per_seed.append({k: var_m[k] - ref_m[k] for k in METRICS})
    diff = {k: float(np.mean([d[k] for d in per_seed])) for k in METRICS}
    if n_seeds < 2:
        return {k: {"diff": diff[k], "ci": None, "verdict": NO_DIFFERENCE} for k in METRICS}
    sizes = [len(y) for _, y in reference]
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    sums = {k: np.zeros(replicates) for k in METRICS}
    current, t_ref, t_var = None, None, None
    for s, rows, idx in bootstrap_draws(rng, picks, sizes, chunk):
        if s != current:  # the draws come seed by seed: two seeds' terms in memory at a time
            t_ref, t_var, current = image_terms(*reference[s], n_bins), image_terms(*variant[s], n_bins), s
        counts = resample_counts(idx, sizes[s])
        m_ref, m_var = metrics_from_counts(t_ref, counts), metrics_from_counts(t_var, counts)
        for k in METRICS:
            # a replicate that picked seed s twice has two rows here: bincount adds both
            sums[k] += np.bincount(rows, weights=m_var[k] - m_ref[k], minlength=replicates)
    out = {}
    for k in METRICS:
        lo, hi = np.percentile(sums[k] / n_seeds, [2.5, 97.5])
        ci = [float(lo), float(hi)]
        out[k] = {"diff": diff[k], "ci": ci, "verdict": verdict(ci)}
    return out


def drift_contrast(first: list, second: list, metric: str = "ece", replicates: int = 1000,
                   rng_seed: int = 0, n_bins: int = N_BINS, chunk: int = 16) -> dict:
    """How much more `first` drifts than `second` under a conversion, paired by seed and image.

    first, second: per paired seed, (before_logits, after_logits, labels): a row's FP32 file and
    its INT8 file, on the same images for both rows. The statistic is
    |m(first after) - m(first before)| - |m(second after) - m(second before)| for the metric m
    (> 0: `first` drifts more), averaged over seeds; the CI comes from the same hierarchical
    bootstrap as paired_bootstrap (seeds, then images, the same image draws for all four sets),
    so the ECE of each resample is recomputed, not the per-image terms averaged.
    Returns {"diff", "ci", "verdict", "per_seed"}; ci is None with one seed."""
    if metric not in METRICS:
        raise EdgeKDError(f"unknown metric {metric!r}; allowed: {', '.join(METRICS)}")
    if not first or len(first) != len(second):
        raise EdgeKDError("drift_contrast needs the same number (>= 1) of seeds for both rows")
    sets = []
    for (b1, a1, y1), (b2, a2, y2) in zip(first, second):
        if not np.array_equal(np.asarray(y1), np.asarray(y2)):
            raise EdgeKDError("paired rows must be evaluated on the same images (their labels differ)")
        sets.append(((b1, y1), (a1, y1), (b2, y2), (a2, y2)))

    def contrast(m: list) -> np.ndarray | float:  # m: the metric of the four sets, in sets' order
        return np.abs(m[1] - m[0]) - np.abs(m[3] - m[2])

    per_seed = [float(contrast([calibration.calibration_metrics(z, y, n_bins)[metric] for z, y in four]))
                for four in sets]
    diff = float(np.mean(per_seed))
    if len(sets) < 2:
        return {"diff": diff, "ci": None, "verdict": NO_DIFFERENCE, "per_seed": per_seed}
    sizes = [len(four[0][1]) for four in sets]
    rng = np.random.default_rng(rng_seed)
    picks = rng.integers(0, len(sets), size=(replicates, len(sets)))
    sums = np.zeros(replicates)
    current, terms = None, None
    for s, rows, idx in bootstrap_draws(rng, picks, sizes, chunk):
        if s != current:
            terms, current = [image_terms(z, y, n_bins) for z, y in sets[s]], s
        counts = resample_counts(idx, sizes[s])
        sums += np.bincount(rows, weights=contrast([metrics_from_counts(t, counts)[metric] for t in terms]),
                            minlength=replicates)
    lo, hi = np.percentile(sums / len(sets), [2.5, 97.5])
    ci = [float(lo), float(hi)]
    return {"diff": diff, "ci": ci, "verdict": verdict(ci), "per_seed": per_seed}


# ---------------------------------------------------------------- noise floor

def ece_noise_floor(logits, replicates: int = 200, rng_seed: int = 0, n_bins: int = N_BINS, chunk: int = 50) -> float:
    """Expected ECE of a perfectly calibrated model with these top-1 confidences on this many images.

    Each replicate draws every image's correctness as Bernoulli(its confidence), so
    accuracy equals confidence in expectation in every bin, and computes the ECE; the
    mean over replicates is what finite-sample noise alone adds to ECE.
    """
    p = calibration.softmax(logits)
    conf = p.max(axis=1)
    n, m = len(conf), n_bins + 1
    bins = calibration.bin_index(conf, n_bins)
    rng = np.random.default_rng(rng_seed)
    total = 0.0
    for start in range(0, replicates, chunk):
        rows = min(chunk, replicates - start)
        d = (rng.random((rows, n)) < conf).astype(np.float64) - conf
        flat = (bins + m * np.arange(rows)[:, None]).ravel()
        sums = np.bincount(flat, weights=d.ravel(), minlength=rows * m)
        total += float(np.abs(sums).sum()) / n
    return total / replicates
