"""bdkd: Balanced-Divergence online KD (Amara et al., arXiv 2212.12965); equations in docs/method.md.

Student, per sample i, with gap(i) = H(p_s^G(i)) - H(p_t^G(i)) (G = gap_temperature,
default T) and w(i) from the weighting rule (losses.forward_weight):
  L_s = CE(y, z_s) + T^2 * mean_i[ a * w(i) * KL(p_t||p_s) + b * (1 - w(i)) * KL(p_s||p_t) ]
Teacher, with the student detached (the student-centred regulariser):
  L_t = CE(y, z_t) + c * T^2 * mean_i KL(p_t||p_s)     (teacher_divergence: reverse)
                   + or KL(p_s||p_t)                    (teacher_divergence: forward)
The teacher's prediction is detached in L_s, the student's in L_t; the weights
w(i) are computed from detached entropies, so no gradient flows through the switch.
"""

from edgekd.training import losses as L
from edgekd.training.method_settings import BDKDSettings
from edgekd.training.methods.base import Distiller, StepOutput, register_method


@register_method(BDKDSettings)
class BalancedDivergenceKD(Distiller):
    def forward_train(self, x, y) -> StepOutput:
        cfg = self.cfg
        T = cfg.temperature
        zs = self.student(x)
        zt = self.teacher(x)
        log_ps, log_pt = L.log_probs(zs, T), L.log_probs(zt, T)
        log_ps_d, log_pt_d = log_ps.detach(), log_pt.detach()

        G = cfg.gap_temperature or T
        if G == T:
            gap = L.entropy(log_ps_d) - L.entropy(log_pt_d)
        else:
            gap = L.entropy(L.log_probs(zs.detach(), G)) - L.entropy(L.log_probs(zt.detach(), G))
        w = L.forward_weight(gap, cfg.weighting, cfg.soft_tau, flipped=cfg.switch == "flipped")
        fwd = L.kl(log_pt_d, log_ps)  # KL(p_t || p_s), grads to the student only
        rev = L.kl(log_ps, log_pt_d)  # KL(p_s || p_t), grads to the student only

        losses = {
            "student_ce": cfg.ce_weight * self.ce(zs, y),
            "student_kl_fwd": cfg.kl_weight * T * T * (w * fwd).mean(),
            "student_kl_rev": cfg.reverse_weight * T * T * ((1 - w) * rev).mean(),
            "teacher_ce": self.ce(zt, y),
        }
        if cfg.teacher_divergence != "none" and cfg.teacher_kl_weight > 0:
            if cfg.teacher_divergence == "reverse":
                reg = L.kl(log_pt, log_ps_d)
            else:
                reg = L.kl(log_ps_d, log_pt)
            losses["teacher_reg"] = cfg.teacher_kl_weight * T * T * reg.mean()
        stats = {"fwd_weight": w.mean(), "entropy_gap": gap.mean()}
        return StepOutput(zs, zt, losses, stats)
