"""edgekd.compare.stats against independent oracles: scipy's t quantiles, a slow explicit
double loop over the bootstrap's draws, a direct simulation and an exact binomial value
for the noise floor. Torch-free and fast."""

import math

import numpy as np
import pytest

from edgekd import calibration
from edgekd.compare import predictions, stats

scipy_stats = pytest.importorskip("scipy.stats")

SLOW_METRICS = {"accuracy": calibration.accuracy, "ece": calibration.ece, "adaptive_ece": calibration.adaptive_ece,
                "classwise_ece": calibration.classwise_ece, "nll": calibration.nll, "brier": calibration.brier}


def _calibrated(rng, n, c, scale=2.0, shift=0.0):
    """Logits and labels drawn from the model's own softmax (calibrated at T=1)."""
    z = rng.normal(size=(n, c)) * scale + shift
    p = calibration.softmax(z)
    y = (p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


@pytest.mark.parametrize("df", [1, 2, 3, 4, 7, 10, 29, 30, 31, 45, 100, 1000])
def test_t_quantile_matches_scipy(df):
    assert stats.t_quantile_975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=5e-8)


def test_summarize_is_the_t_interval_with_ddof_1():
    values = [0.81, 0.84, 0.79, 0.86, 0.80]
    s = stats.summarize(values)
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    lo, hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
    assert s["ci"] == pytest.approx([lo, hi], abs=1e-9)
    assert s["n"] == 5


def test_summarize_one_seed_has_no_spread():
    assert stats.summarize([0.5]) == {"mean": 0.5, "std": None, "ci": None, "n": 1}
    assert stats.summarize([]) == {"mean": None, "std": None, "ci": None, "n": 0}
    two = stats.summarize([0.1, 0.3])  # two seeds: df = 1, t = 12.7, a wide but real interval
    assert two["ci"] == pytest.approx([0.2 - 12.706204736 * 0.1, 0.2 + 12.706204736 * 0.1])


def test_verdict_rule():
    assert stats.verdict([-0.03, -0.001]) == "lower"
    assert stats.verdict([0.001, 0.02]) == "higher"
    assert stats.verdict([-0.01, 0.02]) == stats.NO_DIFFERENCE
    assert stats.verdict([0.0, 0.02]) == stats.NO_DIFFERENCE  # touching 0 is not excluding it
    assert stats.verdict([-0.02, 0.0]) == stats.NO_DIFFERENCE
    assert stats.verdict(None) == stats.NO_DIFFERENCE


def test_metrics_from_counts_equal_calibration_on_the_resample():
    rng = np.random.default_rng(3)
    z, y = _calibrated(rng, 500, 7, scale=3.0)
    terms = stats.image_terms(z, y)
    full = stats.metrics_from_counts(terms, np.ones((1, 500)))
    ref = calibration.calibration_metrics(z, y)
    for k in stats.METRICS:
        assert full[k][0] == pytest.approx(ref[k], abs=1e-12), k
    idx = rng.integers(0, 500, size=(4, 500))
    got = stats.metrics_from_counts(terms, stats.resample_counts(idx, 500))
    for row in range(4):
        for k, fn in SLOW_METRICS.items():
            assert got[k][row] == pytest.approx(fn(z[idx[row]], y[idx[row]]), abs=1e-12), k


def _slow_bootstrap(reference, variant, replicates, seed):
    """The documented draw order, re-implemented one draw at a time, and every metric
    recomputed from logits with edgekd.calibration on every resample."""
    rng = np.random.default_rng(seed)
    n_seeds = len(reference)
    picks = rng.integers(0, n_seeds, size=(replicates, n_seeds))
    draws = {}
    for s in range(n_seeds):
        size = len(reference[s][1])
        for pos in np.flatnonzero(picks.ravel() == s):
            draws[divmod(int(pos), n_seeds)] = rng.integers(0, size, size=size)
    reps = {k: [] for k in stats.METRICS}
    for b in range(replicates):
        for k, fn in SLOW_METRICS.items():
            diffs = []
            for j in range(n_seeds):
                s = picks[b, j]
                idx = draws[(b, j)]
                (z_ref, y), (z_var, _) = reference[s], variant[s]
                diffs.append(fn(z_var[idx], y[idx]) - fn(z_ref[idx], y[idx]))
            reps[k].append(np.mean(diffs))
    return {k: list(np.percentile(v, [2.5, 97.5])) for k, v in reps.items()}


def test_paired_bootstrap_matches_an_explicit_double_loop():
    rng = np.random.default_rng(11)
    reference, variant = [], []
    for n in (30, 41, 35):  # seeds may hold different numbers of images
        z, y = _calibrated(rng, n, 4)
        reference.append((z, y))
        variant.append((z * 1.7 + rng.normal(size=z.shape) * 0.5, y))  # same images, other model
    got = stats.paired_bootstrap(reference, variant, replicates=60, rng_seed=5, chunk=7)
    slow = _slow_bootstrap(reference, variant, 60, 5)
    for k in stats.METRICS:
        assert got[k]["ci"] == pytest.approx(slow[k], abs=1e-10), k
        per_seed = [SLOW_METRICS[k](zv, y) - SLOW_METRICS[k](zr, y) for (zr, y), (zv, _) in zip(reference, variant)]
        assert got[k]["diff"] == pytest.approx(np.mean(per_seed), abs=1e-12)
        assert got[k]["verdict"] == stats.verdict(got[k]["ci"])
    # The chunking of the draws changes nothing.
    again = stats.paired_bootstrap(reference, variant, replicates=60, rng_seed=5, chunk=64)
    assert all(again[k]["ci"] == pytest.approx(got[k]["ci"], abs=1e-12) for k in stats.METRICS)


def test_paired_bootstrap_finds_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    reference, same, overconfident = [], [], []
    for _ in range(3):
        z, y = _calibrated(rng, 2000, 10)
        reference.append((z, y))
        same.append((z.copy(), y))
        overconfident.append((z * 3.0, y))
    worse = stats.paired_bootstrap(reference, overconfident, replicates=200)
    assert worse["ece"]["verdict"] == "higher" and worse["nll"]["verdict"] == "higher"
    assert worse["accuracy"]["diff"] == 0 and worse["accuracy"]["verdict"] == stats.NO_DIFFERENCE
    null = stats.paired_bootstrap(reference, same, replicates=200)
    assert all(null[k]["ci"] == [0.0, 0.0] and null[k]["verdict"] == stats.NO_DIFFERENCE for k in stats.METRICS)


def test_paired_bootstrap_one_seed_gives_no_interval_and_refuses_other_images():
    rng = np.random.default_rng(0)
    z, y = _calibrated(rng, 100, 3)
    one = stats.paired_bootstrap([(z, y)], [(z * 2, y)])
    assert one["ece"]["ci"] is None and one["ece"]["verdict"] == stats.NO_DIFFERENCE
    assert one["ece"]["diff"] == pytest.approx(calibration.ece(z * 2, y) - calibration.ece(z, y))
    with pytest.raises(Exception, match="same images"):
        stats.paired_bootstrap([(z, y)], [(z, np.roll(y, 1))])


def test_noise_floor_equals_a_direct_simulation():
    rng = np.random.default_rng(4)
    z, _ = _calibrated(rng, 700, 10)
    conf = calibration.softmax(z).max(axis=1)
    sim = np.random.default_rng(9)
    direct = [calibration.ece_of_confidences(conf, sim.random(700) < conf, 15) for _ in range(120)]
    assert stats.ece_noise_floor(z, replicates=120, rng_seed=9, chunk=50) == pytest.approx(np.mean(direct), abs=1e-12)


def test_noise_floor_matches_the_exact_binomial_value():
    # Every image at confidence 0.7 (one bin): ECE = |hits/n - 0.7|, hits ~ Binomial(n, 0.7).
    n, c = 200, 0.7
    logits = np.tile([math.log(c), math.log((1 - c) / 2), math.log((1 - c) / 2)], (n, 1))
    exact = sum(math.comb(n, k) * c**k * (1 - c) ** (n - k) * abs(k / n - c) for k in range(n + 1))
    floor = stats.ece_noise_floor(logits, replicates=4000, rng_seed=1)
    assert floor == pytest.approx(exact, rel=0.03)  # 4000 replicates: standard error ~1%


def test_float16_predictions_move_metrics_far_less_than_the_noise_floor():
    rng = np.random.default_rng(6)
    z, y = _calibrated(rng, 5000, 10, scale=4.0)
    exact = calibration.calibration_metrics(z.astype(np.float32), y)
    stored = calibration.calibration_metrics(predictions.compact_logits(z).astype(np.float64), y)
    assert abs(stored["ece"] - exact["ece"]) < 5e-4 < stats.ece_noise_floor(z, 50) / 10
    assert stored["nll"] == pytest.approx(exact["nll"], rel=1e-3)
    assert abs(stored["accuracy"] - exact["accuracy"]) <= 2 / 5000


def test_drift_contrast_matches_an_explicit_double_loop():
    """|ECE(after) - ECE(before)| of one row minus the other's, by the same draws as paired_bootstrap,
    every ECE recomputed with edgekd.calibration on every resample."""
    rng = np.random.default_rng(3)
    first, second = [], []
    for n in (40, 33, 37):
        z, y = _calibrated(rng, n, 4)
        first.append((z, z + rng.normal(size=z.shape) * 0.8, y))   # drifts a lot
        w = z * 1.5
        second.append((w, w + rng.normal(size=z.shape) * 0.1, y))  # drifts a little
    got = stats.drift_contrast(first, second, replicates=50, rng_seed=4, chunk=5)
    r = np.random.default_rng(4)
    picks = r.integers(0, 3, size=(50, 3))
    draws = {}
    for s in range(3):
        for pos in np.flatnonzero(picks.ravel() == s):
            draws[divmod(int(pos), 3)] = r.integers(0, len(first[s][2]), size=len(first[s][2]))

    def contrast(s, idx):
        (b1, a1, y), (b2, a2, _) = first[s], second[s]
        e = [calibration.ece(z[idx], y[idx]) for z in (b1, a1, b2, a2)]
        return abs(e[1] - e[0]) - abs(e[3] - e[2])

    reps = [np.mean([contrast(picks[b, j], draws[(b, j)]) for j in range(3)]) for b in range(50)]
    assert got["ci"] == pytest.approx(list(np.percentile(reps, [2.5, 97.5])), abs=1e-10)
    everything = np.arange
    assert got["per_seed"] == pytest.approx([contrast(s, everything(len(first[s][2]))) for s in range(3)], abs=1e-12)
    assert got["diff"] == pytest.approx(np.mean(got["per_seed"])) and got["verdict"] == stats.verdict(got["ci"])
    # The same rows both ways: no difference, and the sign flips with the order.
    assert stats.drift_contrast(first, first, replicates=20)["ci"] == [0.0, 0.0]
    assert stats.drift_contrast(second, first, replicates=50, rng_seed=4)["diff"] == pytest.approx(-got["diff"])
    with pytest.raises(Exception, match="same images"):
        stats.drift_contrast(first[:1], [(first[0][0], first[0][1], np.roll(first[0][2], 1))])
