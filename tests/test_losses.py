"""Golden-value tests for the distillation losses.

The hand computations use two classes, where softmax([ln 3, 0]) = [3/4, 1/4] and
softmax([0, 0]) = [1/2, 1/2]:

  KL([.75,.25] || [.5,.5]) = .75 ln 1.5 + .25 ln .5          = 0.130812
  KL([.5,.5] || [.75,.25]) = .5 ln(2/3) + .5 ln 2             = 0.143841
  H([.5,.5]) = ln 2 = 0.693147;  H([.75,.25]) = .75 ln(4/3) + .25 ln 4 = 0.562335

Sample A: student uniform, teacher [.75,.25] -> gap = H_s - H_t = +0.130812 (student less certain)
Sample B: student [.75,.25], teacher uniform -> gap = -0.130812 (student more certain)

That pair is mirror-symmetric (B is A with the nets swapped), so over the batch the two
KL directions sum to the same value: the golden tests on it check magnitudes, the T^2
factor and the switch, but not which way a KL points. The tests on ASYM_ZS / ASYM_ZT at
the end compare every method's named terms with numpy formulas on logits where each
direction gives a different value.
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.training import losses as L
from edgekd.training.methods import available_methods, get_method
from edgekd.errors import RecipeError
from edgekd.training.method_settings import METHOD_SETTINGS, KDSettings, method_names

LN3 = math.log(3.0)
KL_TS_A = 0.130812  # KL(p_t || p_s) on A  (= KL(p_s || p_t) on B)
KL_ST_A = 0.143841  # KL(p_s || p_t) on A  (= KL(p_t || p_s) on B)
H_UNI, H_34 = 0.693147, 0.562335


def logits_pair(scale: float = 1.0):
    zs = torch.tensor([[0.0, 0.0], [LN3, 0.0]]) * scale
    zt = torch.tensor([[LN3, 0.0], [0.0, 0.0]]) * scale
    return zs, zt


def test_kl_each_direction():
    zs, zt = logits_pair()
    ls, lt = L.log_probs(zs, 1.0), L.log_probs(zt, 1.0)
    assert L.kl(lt, ls).tolist() == pytest.approx([KL_TS_A, KL_ST_A], abs=1e-6)
    assert L.kl(ls, lt).tolist() == pytest.approx([KL_ST_A, KL_TS_A], abs=1e-6)
    assert L.kl(ls, ls).tolist() == pytest.approx([0.0, 0.0], abs=1e-7)


def test_entropy_and_gap():
    zs, zt = logits_pair()
    hs, ht = L.entropy(L.log_probs(zs, 1.0)), L.entropy(L.log_probs(zt, 1.0))
    assert hs.tolist() == pytest.approx([H_UNI, H_34], abs=1e-6)
    assert (hs - ht).tolist() == pytest.approx([KL_TS_A, -KL_TS_A], abs=1e-6)


def test_reverse_kl_finite_when_probability_underflows():
    # softmax([0, -200]) underflows to [1, 0] in float32; log space keeps KL finite.
    a = L.log_probs(torch.tensor([[0.0, -200.0]]), 1.0)
    b = L.log_probs(torch.tensor([[0.0, 0.0]]), 1.0)
    # KL(u || a) = .5(-ln 2 - 0) + .5(-ln 2 + 200) = 100 - ln 2
    assert L.kl(b, a).item() == pytest.approx(100 - math.log(2), abs=1e-3)


@pytest.mark.parametrize(
    "rule,flipped,expected",
    [
        ("hard", False, [0.0, 1.0]),  # A: student less certain -> reverse; B: more certain -> forward
        ("hard", True, [1.0, 0.0]),
        ("forward", False, [1.0, 1.0]),
        ("reverse", False, [0.0, 0.0]),
        # sigmoid(-gap / 0.1) = 1 / (1 + e^{1.30812}) = 1 / 4.69922 = 0.212801
        ("soft", False, [0.212801, 0.787199]),
    ],
)
def test_forward_weight(rule, flipped, expected):
    gap = torch.tensor([KL_TS_A, -KL_TS_A])
    assert L.forward_weight(gap, rule, tau=0.1, flipped=flipped).tolist() == pytest.approx(expected, abs=1e-5)


def _settings(method: str, **shared):
    """The method's settings from values shared by every case (ASYM_CFG, a temperature): each
    method takes the keys it has (ce no temperature, kd and dml no reverse_weight)."""
    cls = METHOD_SETTINGS[method]
    return cls(**{k: v for k, v in shared.items() if k in cls.model_fields})


def _run(method: str, zs, zt, y=None, **cfg):
    """Run a method on fixed logits: identity 'networks' returning the given logits."""
    cfg = _settings(method, **cfg)
    student, teacher = Fixed(zs), Fixed(zt)
    m = get_method(method)(teacher, student, cfg)
    y = torch.zeros(zs.shape[0], dtype=torch.long) if y is None else y
    return m.forward_train(torch.zeros(zs.shape[0], 1), y), student, teacher


class Fixed(nn.Module):
    """A 'network' whose output is a learnable copy of fixed logits, so gradients can be inspected."""

    def __init__(self, logits):
        super().__init__()
        self.z = nn.Parameter(logits.clone())

    def forward(self, x):
        return self.z * 1.0


def test_bdkd_hard_golden_with_t_squared():
    # T = 2 with logits scaled by 2 gives the same softened probabilities as T = 1;
    # the divergence terms carry T^2 = 4. a = 1, b = 2.
    zs, zt = logits_pair(scale=2.0)
    out, _, _ = _run("bdkd", zs, zt, temperature=2.0, kl_weight=1.0, reverse_weight=2.0, teacher_kl_weight=0.5)
    # hard: w = [0, 1] -> forward on B only: mean([0, KL_ST_A]); reverse on A only: mean([KL_ST_A, 0])
    assert out.losses["student_kl_fwd"].item() == pytest.approx(4 * 1.0 * KL_ST_A / 2, abs=1e-5)
    assert out.losses["student_kl_rev"].item() == pytest.approx(4 * 2.0 * KL_ST_A / 2, abs=1e-5)
    # teacher regulariser (reverse from the teacher's side): KL(p_t || p_s) = [KL_TS_A, KL_ST_A]
    assert out.losses["teacher_reg"].item() == pytest.approx(4 * 0.5 * (KL_TS_A + KL_ST_A) / 2, abs=1e-5)
    assert out.stats["fwd_weight"].item() == pytest.approx(0.5)
    y = torch.zeros(2, dtype=torch.long)
    assert out.losses["student_ce"].item() == pytest.approx(F.cross_entropy(zs, y).item(), abs=1e-6)
    assert out.losses["teacher_ce"].item() == pytest.approx(F.cross_entropy(zt, y).item(), abs=1e-6)


def test_bdkd_flipped_and_soft_golden():
    zs, zt = logits_pair()
    out, _, _ = _run("bdkd", zs, zt, temperature=1.0, switch="flipped")
    # w = [1, 0]: forward on A (KL_TS_A), reverse on B (KL(p_s||p_t) on B = KL_TS_A)
    assert out.losses["student_kl_fwd"].item() == pytest.approx(KL_TS_A / 2, abs=1e-5)
    assert out.losses["student_kl_rev"].item() == pytest.approx(KL_TS_A / 2, abs=1e-5)
    out, _, _ = _run("bdkd", zs, zt, temperature=1.0, weighting="soft", soft_tau=0.1)
    w = [0.212801, 0.787199]
    fwd = (w[0] * KL_TS_A + w[1] * KL_ST_A) / 2
    rev = ((1 - w[0]) * KL_ST_A + (1 - w[1]) * KL_TS_A) / 2
    assert out.losses["student_kl_fwd"].item() == pytest.approx(fwd, abs=1e-5)
    assert out.losses["student_kl_rev"].item() == pytest.approx(rev, abs=1e-5)


def test_bdkd_teacher_divergence_options():
    zs, zt = logits_pair()
    fwd, _, _ = _run("bdkd", zs, zt, temperature=1.0, teacher_divergence="forward")
    # forward from the teacher's side: KL(p_s || p_t) = [KL_ST_A, KL_TS_A]
    assert fwd.losses["teacher_reg"].item() == pytest.approx((KL_ST_A + KL_TS_A) / 2, abs=1e-5)
    none, _, _ = _run("bdkd", zs, zt, temperature=1.0, teacher_divergence="none")
    assert "teacher_reg" not in none.losses


def test_dml_and_kd_golden():
    zs, zt = logits_pair(scale=4.0)
    out, _, _ = _run("dml", zs, zt, temperature=4.0, kl_weight=1.0, teacher_kl_weight=1.0)
    assert out.losses["student_kl_fwd"].item() == pytest.approx(16 * (KL_TS_A + KL_ST_A) / 2, abs=1e-4)
    assert out.losses["teacher_kl"].item() == pytest.approx(16 * (KL_ST_A + KL_TS_A) / 2, abs=1e-4)
    out, _, _ = _run("kd", zs, zt, temperature=4.0, kl_weight=0.9, ce_weight=0.1)
    assert set(out.losses) == {"student_ce", "student_kl_fwd"}
    assert out.losses["student_kl_fwd"].item() == pytest.approx(0.9 * 16 * (KL_TS_A + KL_ST_A) / 2, abs=1e-4)


@pytest.mark.parametrize(
    "method,extra",
    [
        ("ce", {}),
        ("kd", {}),
        ("dml", {}),
        ("bdkd", {}),
        ("bdkd", {"weighting": "soft", "soft_tau": 0.5}),
        ("bdkd", {"teacher_divergence": "forward"}),
    ],
    ids=["ce", "kd", "dml", "bdkd", "bdkd-soft", "bdkd-teacher-forward"],
)
def test_gradients_reach_only_their_own_net(method, extra):
    torch.manual_seed(0)
    zs, zt = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    out, student, teacher = _run(method, zs, zt, y=y, temperature=3.0, **extra)
    for name, term in out.losses.items():
        student.zero_grad(set_to_none=True)
        teacher.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        own, other = (student, teacher) if name.startswith("student_") else (teacher, student)
        assert own.z.grad is not None and own.z.grad.abs().sum() > 0, name
        assert other.z.grad is None or other.z.grad.abs().sum() == 0, f"{name} leaks into the other net"


def test_kd_teacher_stays_frozen_in_train_mode():
    t, s = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 2)
    m = get_method("kd")(t, s, KDSettings())
    m.train()
    assert not t.training and s.training
    assert get_method("kd").trains_teacher is False


def test_registry():
    assert available_methods() == ["bdkd", "ce", "dml", "kd"] == method_names()
    for name in available_methods():  # each method's code runs on its own settings, and says what they are
        assert get_method(name).settings is METHOD_SETTINGS[name]
        assert get_method(name).trains_teacher is METHOD_SETTINGS[name].trains_teacher
    with pytest.raises(TypeError, match="HintonKD takes KDSettings, not DMLSettings"):
        get_method("kd")(nn.Linear(2, 2), nn.Linear(2, 2), METHOD_SETTINGS["dml"]())
    with pytest.raises(RecipeError, match="available: bdkd, ce, dml, kd"):
        get_method("dkd")


def test_bdkd_gap_temperature_measures_the_switch_at_its_own_temperature():
    # Sample A with logits x2: at T = 2 the softened pair is ([.5,.5], [.75,.25]) -> gap 0.130812;
    # at G = 1 it is ([.5,.5], [.9,.1]) -> gap ln 2 - (.9 ln(10/9) + .1 ln 10) = 0.368064.
    zs, zt = logits_pair(scale=2.0)
    same, _, _ = _run("bdkd", zs[:1], zt[:1], temperature=2.0)
    own, _, _ = _run("bdkd", zs[:1], zt[:1], temperature=2.0, gap_temperature=1.0)
    assert same.stats["entropy_gap"].item() == pytest.approx(0.130812, abs=1e-5)
    assert own.stats["entropy_gap"].item() == pytest.approx(0.368064, abs=1e-5)
    # Same sign, so the same switch and the same T^2-scaled divergences.
    for k in ("student_kl_fwd", "student_kl_rev"):
        assert own.losses[k].item() == pytest.approx(same.losses[k].item(), abs=1e-6)


# ---------------------------------------------------------------------------------------
# Direction-sensitive fixtures. 6 samples x 4 classes; at T = 3 the student is sharper than
# the teacher on the even samples and softer on the odd ones, so the hard switch sends
# samples both ways (|gap| >= 0.17 nats, far from the sign change). No sample is another
# with the nets swapped, and on every sample KL(p_t||p_s) and KL(p_s||p_t) differ.
ASYM_ZS = torch.tensor(
    [
        [12.0, 1.5, -3.0, 0.0],
        [0.6, 1.2, 0.0, -0.9],
        [-2.0, 10.5, 0.3, 1.0],
        [1.0, -0.3, 0.8, 0.1],
        [0.0, -1.5, 0.5, 4.5],
        [0.2, 2.4, -0.4, 1.4],
    ]
)
ASYM_ZT = torch.tensor(
    [
        [1.2, 0.4, -0.6, 0.9],
        [2.0, 8.4, -3.0, 0.0],
        [0.5, 0.3, 1.1, -0.8],
        [6.0, -2.0, 9.3, 0.4],
        [0.9, 0.0, -0.7, 2.6],
        [-1.0, 3.5, 0.5, -1.5],
    ]
)
ASYM_Y = torch.tensor([0, 1, 1, 2, 3, 0])
# Distinct weights and T != 1, so a dropped T^2 or two weights exchanged also fail.
ASYM_CFG = dict(temperature=3.0, ce_weight=0.35, kl_weight=0.7, reverse_weight=1.9, teacher_kl_weight=0.45)


# Independent reference, in numpy float64, written from docs/method.md (not from edgekd.training.losses).
def _np_log_softmax(z, T):
    a = z.numpy().astype(np.float64) / T
    a = a - a.max(axis=1, keepdims=True)
    return a - np.log(np.exp(a).sum(axis=1, keepdims=True))


def _np_kl(log_p, log_q):
    """Per sample KL(p || q) = sum_k p_k (log p_k - log q_k)."""
    return (np.exp(log_p) * (log_p - log_q)).sum(axis=1)


def _np_entropy(log_p):
    return -(np.exp(log_p) * log_p).sum(axis=1)


def _np_ce(z, y):
    return -_np_log_softmax(z, 1.0)[np.arange(len(y)), y.numpy()].mean()


def _np_gap(cfg):
    G = cfg.gap_temperature or cfg.temperature
    return _np_entropy(_np_log_softmax(ASYM_ZS, G)) - _np_entropy(_np_log_softmax(ASYM_ZT, G))


def _np_forward_weight(cfg):
    """w_i from the docs' table: hard 1[g < 0], soft sigmoid(-g / tau), forward 1, reverse 0; flipped: 1 - w."""
    gap = _np_gap(cfg)
    w = {
        "hard": (gap < 0).astype(np.float64),
        "soft": 1.0 / (1.0 + np.exp(gap / cfg.soft_tau)),
        "forward": np.ones_like(gap),
        "reverse": np.zeros_like(gap),
    }[cfg.weighting]
    return 1.0 - w if cfg.switch == "flipped" else w


def _expected_terms(cfg, swap_directions=False):
    """The named loss terms of docs/method.md on ASYM_*; swap_directions reverses every KL (for the self-check)."""
    T, a = cfg.temperature, cfg.kl_weight
    ls, lt = _np_log_softmax(ASYM_ZS, T), _np_log_softmax(ASYM_ZT, T)
    kl = (lambda p, q: _np_kl(q, p)) if swap_directions else _np_kl
    t_to_s, s_to_t = kl(lt, ls), kl(ls, lt)  # KL(p_t || p_s) (forward), KL(p_s || p_t) (reverse)
    terms = {"student_ce": cfg.ce_weight * _np_ce(ASYM_ZS, ASYM_Y)}
    if cfg.method == "kd":
        terms["student_kl_fwd"] = a * T * T * t_to_s.mean()
        return terms
    terms["teacher_ce"] = _np_ce(ASYM_ZT, ASYM_Y)
    c = cfg.teacher_kl_weight
    if cfg.method == "dml":
        terms["student_kl_fwd"] = a * T * T * t_to_s.mean()
        terms["teacher_kl"] = c * T * T * s_to_t.mean()
        return terms
    w, b = _np_forward_weight(cfg), cfg.reverse_weight
    terms["student_kl_fwd"] = a * T * T * (w * t_to_s).mean()
    terms["student_kl_rev"] = b * T * T * ((1 - w) * s_to_t).mean()
    if cfg.teacher_divergence == "reverse":  # reverse from the teacher's side: KL(p_t || p_s)
        terms["teacher_reg"] = c * T * T * t_to_s.mean()
    elif cfg.teacher_divergence == "forward":
        terms["teacher_reg"] = c * T * T * s_to_t.mean()
    return terms


DIRECTION_CASES = {
    "kd": ("kd", {}),
    "dml": ("dml", {}),
    "bdkd-forward-only": ("bdkd", {"weighting": "forward"}),
    "bdkd-reverse-only": ("bdkd", {"weighting": "reverse"}),
    "bdkd-hard": ("bdkd", {"weighting": "hard"}),
    "bdkd-hard-flipped": ("bdkd", {"weighting": "hard", "switch": "flipped"}),
    "bdkd-soft": ("bdkd", {"weighting": "soft", "soft_tau": 0.5}),
    "bdkd-soft-flipped": ("bdkd", {"weighting": "soft", "soft_tau": 0.5, "switch": "flipped"}),
    "bdkd-hard-gap-at-1": ("bdkd", {"weighting": "hard", "gap_temperature": 1.0}),
    "bdkd-teacher-forward": ("bdkd", {"teacher_divergence": "forward"}),
    "bdkd-teacher-none": ("bdkd", {"teacher_divergence": "none"}),
}


@pytest.mark.parametrize("case", list(DIRECTION_CASES))
def test_named_terms_match_the_documented_equations_in_both_kl_directions(case):
    method, extra = DIRECTION_CASES[case]
    kw = {**ASYM_CFG, **extra}
    cfg = _settings(method, **kw)
    out, _, _ = _run(method, ASYM_ZS, ASYM_ZT, y=ASYM_Y, **kw)
    expected, swapped = _expected_terms(cfg), _expected_terms(cfg, swap_directions=True)
    assert set(out.losses) == set(expected)
    for name, value in expected.items():
        assert out.losses[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name
        if value != 0 and "ce" not in name:
            # Self-check of the fixture: the other direction is 100x the tolerance away.
            assert abs(swapped[name] - value) > 1e-3 * abs(value), f"{name}: fixture cannot tell the directions apart"
    if method == "bdkd":
        assert out.stats["entropy_gap"].item() == pytest.approx(_np_gap(cfg).mean(), rel=1e-5, abs=1e-6)
        assert out.stats["fwd_weight"].item() == pytest.approx(_np_forward_weight(cfg).mean(), rel=1e-5, abs=1e-6)


def _torch_log_softmax(z, T):
    a = z / T
    return a - torch.logsumexp(a, dim=1, keepdim=True)


def _student_kl_grad(cfg, weight_of):
    """d(student_kl_fwd + student_kl_rev)/dz_s from the docs' equation in float64, w_i = weight_of(z_s)."""
    T, a, b = cfg.temperature, cfg.kl_weight, cfg.reverse_weight
    zs = ASYM_ZS.double().requires_grad_()
    ls, lt = _torch_log_softmax(zs, T), _torch_log_softmax(ASYM_ZT.double(), T)
    t_to_s = (lt.exp() * (lt - ls)).sum(dim=1)
    s_to_t = (ls.exp() * (ls - lt)).sum(dim=1)
    w = weight_of(zs)
    loss = T * T * (a * w * t_to_s + b * (1 - w) * s_to_t).mean()
    return torch.autograd.grad(loss, zs)[0]


def _live_soft_weight(cfg, zs):
    """The soft weight as it would be if the switch kept the student's graph (what must NOT happen)."""
    G = cfg.gap_temperature or cfg.temperature
    ls, lt = _torch_log_softmax(zs, G), _torch_log_softmax(ASYM_ZT.double(), G)
    gap = -(ls.exp() * ls).sum(dim=1) + (lt.exp() * lt).sum(dim=1)
    w = torch.sigmoid(-gap / cfg.soft_tau)
    return 1 - w if cfg.switch == "flipped" else w


@pytest.mark.parametrize(
    "extra",
    [
        {"weighting": "soft", "soft_tau": 0.5},
        {"weighting": "soft", "soft_tau": 0.5, "switch": "flipped"},
        {"weighting": "soft", "soft_tau": 0.5, "gap_temperature": 1.0},  # the switch's own log-softmax path
        {"weighting": "hard"},
    ],
    ids=["soft", "soft-flipped", "soft-gap-at-1", "hard"],
)
def test_bdkd_no_gradient_through_the_switch(extra):
    kw = {**ASYM_CFG, **extra}
    cfg = _settings("bdkd", **kw)
    out, student, teacher = _run("bdkd", ASYM_ZS, ASYM_ZT, y=ASYM_Y, **kw)
    student_kl = out.losses["student_kl_fwd"] + out.losses["student_kl_rev"]
    grad_s, grad_t = torch.autograd.grad(student_kl, [student.z, teacher.z], allow_unused=True)
    # The switch reads the teacher's entropy; no gradient may reach the teacher through it.
    assert grad_t is None or not grad_t.any()
    w_const = torch.from_numpy(_np_forward_weight(cfg))
    const_grad = _student_kl_grad(cfg, lambda zs: w_const)
    torch.testing.assert_close(grad_s.double(), const_grad, rtol=1e-4, atol=1e-6)
    if cfg.weighting == "soft":
        # Self-check: had the weight kept its graph, the gradient would be far outside the tolerance.
        live_grad = _student_kl_grad(cfg, lambda zs: _live_soft_weight(cfg, zs))
        assert (live_grad - const_grad).abs().max() > 1e-2
