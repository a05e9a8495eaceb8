"""edgekd.calibration against hand-computed values and independent oracles
(torchmetrics, scikit-learn, direct loops). torch is used here only as an oracle."""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, brier_score_loss, log_loss
from torchmetrics.functional.classification import (
    binary_calibration_error,
    multiclass_calibration_error,
)

from edgekd import calibration as cal
from edgekd.errors import EdgeKDError

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------- golden example
# Five samples, three classes; logits = log(p) so softmax(logits) == p.
GOLD_P = np.array([
    [0.70, 0.18, 0.12],  # y=0: conf .70 correct   (bin 10 = [.667, .733))
    [0.10, 0.72, 0.18],  # y=2: conf .72 wrong     (bin 10)
    [0.90, 0.05, 0.05],  # y=0: conf .90 correct   (bin 13 = [.867, .933))
    [0.10, 0.05, 0.85],  # y=1: conf .85 wrong     (bin 12 = [.800, .867))
    [0.50, 0.32, 0.18],  # y=0: conf .50 correct   (bin  7 = [.467, .533))
])
GOLD_Y = np.array([0, 2, 0, 1, 0])
GOLD_Z = np.log(GOLD_P)


def test_golden_values():
    z, y = GOLD_Z, GOLD_Y
    # accuracy: 3 of 5 right.
    assert cal.accuracy(z, y) == pytest.approx(0.6, abs=1e-12)
    # ECE (15 bins): bin10 {.70 ok, .72 wrong}: acc .5, conf .71, |gap| .21, weight 2/5 -> .084
    #   bin13 |1-.90| = .10, bin12 |0-.85| = .85, bin7 |1-.50| = .50, each weight 1/5 -> .29
    #   ECE = .084 + .29 = .374
    assert cal.ece(z, y) == pytest.approx(0.374, abs=1e-9)
    # MCE: largest bin gap = .85 (bin 12)
    assert cal.mce(z, y) == pytest.approx(0.85, abs=1e-9)
    # NLL = -(ln .70 + ln .18 + ln .90 + ln .05 + ln .50) / 5
    assert cal.nll(z, y) == pytest.approx(-(math.log(.7) + math.log(.18) + math.log(.9)
                                            + math.log(.05) + math.log(.5)) / 5, abs=1e-12)
    assert cal.nll(z, y) == pytest.approx(1.1731426, abs=1e-6)
    # Brier: .09+.0324+.0144=.1368; .01+.5184+.6724=1.2008; .01+.0025+.0025=.015;
    #        .01+.9025+.7225=1.635; .25+.1024+.0324=.3848  -> 3.3724 / 5 = .67448
    assert cal.brier(z, y) == pytest.approx(0.67448, abs=1e-12)
    # Adaptive ECE, 2 bins: sorted confs .50 .70 .72 | .85 .90 (array_split 3+2)
    #   {.50 ok, .70 ok, .72 wrong}: acc 2/3, conf .64 -> 3/5 * .02667 = .016
    #   {.85 wrong, .90 ok}: acc .5, conf .875 -> 2/5 * .375 = .15      total .166
    assert cal.adaptive_ece(z, y, n_bins=2) == pytest.approx(0.166, abs=1e-9)
    # 5 bins = one sample each: (.3 + .72 + .1 + .85 + .5) / 5 = .494
    assert cal.adaptive_ece(z, y, n_bins=5) == pytest.approx(0.494, abs=1e-9)
    # Classwise ECE (15 bins), per class sum_b |B|/N |freq - mean p|:
    #   k=0: p .7 .1 .9 .1 .5, y 1 0 1 0 1: bin1{.1,.1} 2/5*.1=.04, .7 -> .06, .9 -> .02, .5 -> .1 = .22
    #   k=1: p .18 .72 .05 .05 .32, y 0 0 0 1 0: .18 -> .036, .72 -> .144,
    #        bin0{.05,.05}: freq .5 -> 2/5*.45 = .18, .32 -> .064                                = .424
    #   k=2: p .12 .18 .05 .85 .18, y 0 1 0 0 0: .12 -> .024, bin2{.18,.18}: freq .5 -> 2/5*.32=.128,
    #        .05 -> .01, .85 -> .17                                                              = .332
    #   mean = (.22 + .424 + .332) / 3 = .325333...
    assert cal.classwise_ece(z, y) == pytest.approx(0.976 / 3, abs=1e-9)

    m = cal.calibration_metrics(z, y)
    assert list(m) == ["accuracy", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier", "n"]
    assert m["n"] == 5 and type(m["n"]) is int
    assert all(type(v) is float for k, v in m.items() if k != "n")
    for k in ("accuracy", "ece", "mce", "classwise_ece", "nll", "brier"):
        assert m[k] == pytest.approx(getattr(cal, k)(z, y), abs=1e-15)
    assert m["adaptive_ece"] == pytest.approx(cal.adaptive_ece(z, y), abs=1e-15)


def test_golden_matches_torchmetrics():
    z, y = torch.from_numpy(GOLD_Z), torch.from_numpy(GOLD_Y)
    assert cal.ece(GOLD_Z, GOLD_Y) == pytest.approx(
        multiclass_calibration_error(z, y, 3, n_bins=15, norm="l1").item(), abs=1e-6)
    assert cal.mce(GOLD_Z, GOLD_Y) == pytest.approx(
        multiclass_calibration_error(z, y, 3, n_bins=15, norm="max").item(), abs=1e-6)


# ---------------------------------------------------------------- random data vs oracles

def _overconfident(seed, n=2000, c=10, scale=2.5):
    """Labels drawn from softmax(true logits); returned logits are `scale` times sharper."""
    rng = np.random.default_rng(seed)
    true = rng.normal(size=(n, c)) * 2.0
    p = cal.softmax(true)
    u = rng.random(n)[:, None]
    y = np.minimum((p.cumsum(axis=1) < u).sum(axis=1), c - 1)  # inverse-CDF sampling
    return true * scale, y


SEEDS = [0, 1, 2, 3]


@pytest.mark.parametrize("seed", SEEDS)
def test_ece_mce_match_torchmetrics(seed):
    z, y = _overconfident(seed)
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    e, m = cal.ece(z, y), cal.mce(z, y)
    assert e > 0.1  # the data really is over-confident
    # torchmetrics bins and averages in float32: agreement to float32 precision.
    assert e == pytest.approx(multiclass_calibration_error(zt, yt, 10, n_bins=15, norm="l1").item(), abs=2e-6)
    assert m == pytest.approx(multiclass_calibration_error(zt, yt, 10, n_bins=15, norm="max").item(), abs=2e-6)
    for n_bins in (1, 7, 10, 20):
        assert cal.ece(z, y, n_bins) == pytest.approx(
            multiclass_calibration_error(zt, yt, 10, n_bins=n_bins, norm="l1").item(), abs=2e-6)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_confidence_one_gets_its_own_bin_like_torchmetrics(seed):
    # Very sharp logits: most confidences are exactly 1.0 in float32. torchmetrics puts
    # them in an extra [1, 1] bin; merging them into the last bin would change the MCE.
    z, y = _overconfident(seed, scale=60.0)
    assert (cal.softmax(z).max(axis=1).astype(np.float32) == 1.0).sum() > 1000
    zt, yt = torch.from_numpy(z), torch.from_numpy(y)
    assert cal.ece(z, y) == pytest.approx(multiclass_calibration_error(zt, yt, 10, norm="l1").item(), abs=2e-6)
    assert cal.mce(z, y) == pytest.approx(multiclass_calibration_error(zt, yt, 10, norm="max").item(), abs=2e-6)


def test_bin_edges_are_torch_linspace_bit_for_bit():
    for n in range(1, 101):
        assert np.array_equal(cal._edges32(n), torch.linspace(0, 1, n + 1, dtype=torch.float32).numpy()), n


def test_ties_on_bin_edges_match_torchmetrics():
    # Constant rows give confidence exactly 1/C, which sits on a bin edge for many n_bins.
    rng = np.random.default_rng(7)
    for c in (2, 3, 4, 5):
        z = np.full((40, c), 5.0)
        z[20:] = rng.normal(size=(20, c)) * 3  # some non-tied rows as well
        y = rng.integers(0, c, size=40)
        for n_bins in range(2, 21):
            ref = multiclass_calibration_error(torch.from_numpy(z), torch.from_numpy(y), c,
                                               n_bins=n_bins, norm="l1").item()
            assert cal.ece(z, y, n_bins) == pytest.approx(ref, abs=2e-6), (c, n_bins)


@pytest.mark.parametrize("seed", SEEDS)
def test_nll_brier_accuracy_match_sklearn(seed):
    z, y = _overconfident(seed)
    p = cal.softmax(z)
    labels = list(range(10))
    assert cal.nll(z, y) == pytest.approx(log_loss(y, p, labels=labels), rel=1e-9)
    direct = np.mean([sum((p[i, k] - (k == y[i])) ** 2 for k in range(10)) for i in range(len(y))])
    assert cal.brier(z, y) == pytest.approx(direct, rel=1e-12)
    # sklearn >= 1.7 has multiclass Brier; scale_by_half="auto" keeps [0, 2] for multiclass.
    assert cal.brier(z, y) == pytest.approx(brier_score_loss(y, p, labels=labels, scale_by_half=False), rel=1e-9)
    assert cal.accuracy(z, y) == accuracy_score(y, z.argmax(axis=1))


def test_nll_is_finite_for_extreme_logits():
    z = np.array([[1000.0, -1000.0], [-1000.0, 1000.0]])
    y = np.array([1, 1])  # first sample: p_y underflows to 0 in softmax
    assert cal.nll(z, y) == pytest.approx(1000.0, rel=1e-12)  # (2000 + 0) / 2
    assert np.isfinite(cal.calibration_metrics(z, y)["nll"])


@pytest.mark.parametrize("seed", SEEDS)
def test_classwise_ece_matches_loop_and_torchmetrics(seed):
    z, y = _overconfident(seed, n=600, c=5)
    p = cal.softmax(z)
    n_bins = 15
    edges = np.linspace(0, 1, n_bins + 1)
    per_class = []
    for k in range(5):
        total = 0.0
        for b in range(n_bins):
            lo, hi = edges[b], edges[b + 1]
            members = [i for i in range(len(y)) if lo <= p[i, k] < hi or (b == n_bins - 1 and p[i, k] == hi)]
            if members:
                freq = np.mean([y[i] == k for i in members])
                conf = np.mean([p[i, k] for i in members])
                total += len(members) / len(y) * abs(freq - conf)
        per_class.append(total)
    got = cal.classwise_ece(z, y, n_bins)
    assert got == pytest.approx(np.mean(per_class), abs=1e-6)
    tm = np.mean([binary_calibration_error(torch.from_numpy(p[:, k].copy()), torch.from_numpy((y == k).astype(np.int64)),
                                           n_bins=n_bins, norm="l1").item() for k in range(5)])
    assert got == pytest.approx(tm, abs=2e-6)


@pytest.mark.parametrize("n", [2000, 2003, 14, 7])
def test_adaptive_bins_have_equal_mass(n):
    rng = np.random.default_rng(n)
    conf = rng.random(n)
    groups = cal._adaptive_groups(conf, 15)
    sizes = [len(g) for g in groups]
    assert sum(sizes) == n and len(groups) == min(15, n)
    assert max(sizes) - min(sizes) <= 1
    assert sorted(np.concatenate(groups)) == list(range(n))
    for a, b in zip(groups, groups[1:]):  # bins are ordered by confidence
        assert conf[a].max() <= conf[b].min()


@pytest.mark.parametrize("seed", SEEDS)
def test_adaptive_ece_matches_rank_oracle(seed):
    z, y = _overconfident(seed, n=1500)  # 1500 = 15 * 100: rank // 100 is the bin
    p = cal.softmax(z)
    conf, hit = p.max(axis=1), (p.argmax(axis=1) == y).astype(float)
    rank = np.argsort(np.argsort(conf, kind="stable"), kind="stable")
    b = rank // 100
    want = sum(abs(hit[b == j].mean() - conf[b == j].mean()) * 100 / 1500 for j in range(15))
    assert cal.adaptive_ece(z, y) == pytest.approx(want, abs=1e-12)
    # Shuffling the samples changes nothing.
    perm = np.random.default_rng(seed).permutation(1500)
    assert cal.adaptive_ece(z[perm], y[perm]) == pytest.approx(want, abs=1e-12)


# ---------------------------------------------------------------- reliability bins

def test_reliability_bins_json_and_consistency():
    z, y = _overconfident(5, n=300)
    rb = cal.reliability_bins(z, y)
    json.loads(json.dumps(rb))
    assert set(rb) == {"edges", "count", "accuracy", "confidence", "ece"}
    assert len(rb["edges"]) == 16 and len(rb["count"]) == len(rb["accuracy"]) == len(rb["confidence"]) == 15
    assert rb["edges"][0] == 0.0 and rb["edges"][-1] == 1.0
    assert sum(rb["count"]) == 300 and all(type(k) is int for k in rb["count"])
    assert rb["ece"] == cal.ece(z, y)
    for k, a, f, lo, hi in zip(rb["count"], rb["accuracy"], rb["confidence"], rb["edges"], rb["edges"][1:]):
        if k == 0:
            assert a is None and f is None
        else:
            assert 0.0 <= a <= 1.0 and lo - 1e-6 <= f <= hi + 1e-6
    # No [1, 1] confidences here, so the folded bins reproduce the ECE exactly.
    ece = sum(k / 300 * abs(a - f) for k, a, f in zip(rb["count"], rb["accuracy"], rb["confidence"]) if k)
    assert ece == pytest.approx(rb["ece"], abs=1e-12)


def test_reliability_bins_fold_confidence_one_into_last_bin():
    z = np.array([[50.0, 0.0], [0.3, 0.0], [0.0, 0.1]])
    rb = cal.reliability_bins(z, np.array([0, 0, 0]), n_bins=4)
    assert rb["count"] == [0, 0, 2, 1]
    assert rb["accuracy"][3] == 1.0 and rb["confidence"][3] == pytest.approx(1.0)


# ---------------------------------------------------------------- temperature scaling

@pytest.mark.parametrize("seed", [0, 1])
def test_fit_temperature_recovers_overconfidence(seed):
    z, y = _overconfident(seed, n=4000, scale=3.0)
    t = cal.fit_temperature(z, y)
    assert t == pytest.approx(3.0, rel=0.10)
    h = cal.temperature_headroom(z, y)
    assert list(h) == ["temperature", "ece", "nll", "ece_before", "nll_before"]
    assert h["temperature"] == t
    assert h["ece"] < h["ece_before"] and h["nll"] < h["nll_before"]
    assert h["ece_before"] == cal.ece(z, y) and h["nll_before"] == cal.nll(z, y)
    # It is a minimum: nearby temperatures are no better.
    for f in (0.98, 1.02):
        assert cal.nll(z / (t * f), y) >= h["nll"]


def test_fit_temperature_underconfident_and_flat():
    z, y = _overconfident(3, n=3000, scale=0.5)
    assert cal.fit_temperature(z, y) == pytest.approx(0.5, rel=0.10)
    assert cal.fit_temperature(np.ones((10, 4)), np.arange(10) % 4) == 1.0  # NLL independent of T
    t = cal.fit_temperature(np.array([[5.0, 0.0], [0.0, 5.0]]), np.array([0, 1]))  # separable: T -> 0
    assert t == pytest.approx(0.05, rel=1e-6)


# ---------------------------------------------------------------- bad input

def test_probabilities_as_logits_do_not_crash_but_differ():
    z, y = _overconfident(0, n=500)
    p = cal.softmax(z)
    m = cal.calibration_metrics(p, y)  # the documented mistake: still runs
    assert all(np.isfinite(v) for v in m.values())
    assert m["ece"] != pytest.approx(cal.ece(z, y), abs=1e-3)  # ... but the numbers are wrong


@pytest.mark.parametrize("logits,labels,msg", [
    (np.zeros(5), np.zeros(5, int), "2-D"),
    (np.zeros((2, 3, 4)), np.zeros(2, int), "2-D"),
    (np.zeros((0, 3)), np.zeros(0, int), "at least one"),
    (np.zeros((4, 3)), np.zeros(5, int), "must match"),
    (np.zeros((4, 3)), np.zeros((4, 1), int), "1-D integer"),
    (np.zeros((4, 3)), np.zeros(4), "1-D integer"),
    (np.array([[0.0, np.nan], [0.0, 1.0]]), np.array([0, 1]), "NaN"),
    (np.array([[0.0, np.inf], [0.0, 1.0]]), np.array([0, 1]), "NaN"),
    (np.zeros((2, 3)), np.array([0, 3]), "labels must be in"),
    (np.zeros((2, 3)), np.array([-1, 0]), "labels must be in"),
    (np.array([["a", "b"]]), np.array([0]), "real numbers"),
    ([[0.0, 1.0], [2.0]], [0, 1], "2-D"),
])
def test_bad_input_raises(logits, labels, msg):
    for fn in (cal.accuracy, cal.ece, cal.mce, cal.adaptive_ece, cal.classwise_ece, cal.nll, cal.brier,
               cal.reliability_bins, cal.calibration_metrics, cal.fit_temperature, cal.temperature_headroom):
        with pytest.raises(EdgeKDError, match=msg):
            fn(logits, labels)


@pytest.mark.parametrize("n_bins", [0, -3, 2.5, True, "15"])
def test_bad_n_bins_raises(n_bins):
    with pytest.raises(EdgeKDError, match="n_bins"):
        cal.ece(GOLD_Z, GOLD_Y, n_bins)


def test_softmax_is_stable_and_float64():
    p = cal.softmax(np.array([[1e4, 0.0, -1e4]], dtype=np.float32))
    assert p.dtype == np.float64 and np.array_equal(p, [[1.0, 0.0, 0.0]])
    with pytest.raises(EdgeKDError):
        cal.softmax(np.array([[np.nan, 0.0]]))


# ---------------------------------------------------------------- torch-free import

@pytest.mark.slow  # a Python process without torch
def test_imports_without_torch(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        import numpy as np
        from edgekd import calibration, plots
        z = np.log(np.array([[.7, .2, .1], [.1, .8, .1], [.3, .3, .4]]))
        y = np.array([0, 2, 2])
        m = calibration.calibration_metrics(z, y)
        calibration.temperature_headroom(z, y)
        plots.reliability_diagram(calibration.reliability_bins(z, y), {str(tmp_path / "r.png")!r}, "t")
        assert "torch" not in {{k for k, v in sys.modules.items() if v is not None}}
        print("ok", m["n"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "MPLBACKEND")}
    env["PYTHONPATH"] = str(REPO)
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok 3"
    assert (tmp_path / "r.png").stat().st_size > 1000
