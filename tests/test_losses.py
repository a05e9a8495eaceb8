"""Golden-value tests for the distillation losses.

The hand computations use two classes, where softmax([ln 3, 0]) = [3/4, 1/4] and
softmax([0, 0]) = [1/2, 1/2]:

  KL([.75,.25] || [.5,.5]) = .75 ln 1.5 + .25 ln .5          = 0.130812
  KL([.5,.5] || [.75,.25]) = .5 ln(2/3) + .5 ln 2             = 0.143841
  H([.5,.5]) = ln 2 = 0.693147;  H([.75,.25]) = .75 ln(4/3) + .25 ln 4 = 0.562335

Sample A: student uniform, teacher [.75,.25] -> gap = H_s - H_t = +0.130812 (student less certain)
Sample B: student [.75,.25], teacher uniform -> gap = -0.130812 (student more certain)
"""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgekd.distill import losses as L
from edgekd.distill.methods import available_methods, get_method
from edgekd.errors import RecipeError
from edgekd.recipe import DistillConfig

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


def _run(method: str, zs, zt, y=None, **cfg):
    """Run a method on fixed logits: identity 'networks' returning the given logits."""
    cfg = DistillConfig(method=method, **cfg)
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


@pytest.mark.parametrize("method", ["ce", "kd", "dml", "bdkd"])
def test_gradients_reach_only_their_own_net(method):
    torch.manual_seed(0)
    zs, zt = torch.randn(8, 5), torch.randn(8, 5)
    y = torch.randint(0, 5, (8,))
    out, student, teacher = _run(method, zs, zt, y=y, temperature=3.0)
    for name, term in out.losses.items():
        student.zero_grad(set_to_none=True)
        teacher.zero_grad(set_to_none=True)
        term.backward(retain_graph=True)
        own, other = (student, teacher) if name.startswith("student_") else (teacher, student)
        assert own.z.grad is not None and own.z.grad.abs().sum() > 0, name
        assert other.z.grad is None or other.z.grad.abs().sum() == 0, f"{name} leaks into the other net"


def test_kd_teacher_stays_frozen_in_train_mode():
    t, s = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), nn.Linear(2, 2)
    m = get_method("kd")(t, s, DistillConfig(method="kd"))
    m.train()
    assert not t.training and s.training
    assert get_method("kd").trains_teacher is False


def test_registry():
    assert available_methods() == ["bdkd", "ce", "dml", "kd"]
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
