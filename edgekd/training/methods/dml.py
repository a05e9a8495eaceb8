"""dml: Deep Mutual Learning (Zhang et al. 2018), teacher and student trained together.

Each net gets cross-entropy plus the forward KL towards the other's (detached)
softened prediction:
  L_s = CE(y, z_s) + kl_weight         * T^2 * mean_i KL(p_t^T || p_s^T)
  L_t = CE(y, z_t) + teacher_kl_weight * T^2 * mean_i KL(p_s^T || p_t^T)
"""

from edgekd.training import losses as L
from edgekd.training.method_settings import DMLSettings
from edgekd.training.methods.base import Distiller, StepOutput, register_method


@register_method(DMLSettings)
class MutualLearning(Distiller):
    def forward_train(self, x, y) -> StepOutput:
        T = self.cfg.temperature
        zs = self.student(x)
        zt = self.teacher(x)
        log_ps, log_pt = L.log_probs(zs, T), L.log_probs(zt, T)
        losses = {
            "student_ce": self.cfg.ce_weight * self.ce(zs, y),
            "student_kl_fwd": self.cfg.kl_weight * T * T * L.kl(log_pt.detach(), log_ps).mean(),
            "teacher_ce": self.ce(zt, y),
            "teacher_kl": self.cfg.teacher_kl_weight * T * T * L.kl(log_ps.detach(), log_pt).mean(),
        }
        return StepOutput(zs, zt, losses)
