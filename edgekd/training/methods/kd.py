"""kd: Hinton et al. (2015) distillation from a frozen, already trained teacher.

L_s = ce_weight * CE(y, z_s) + kl_weight * T^2 * mean_i KL(p_t^T || p_s^T)
"""

import torch

from edgekd.training import losses as L
from edgekd.training.method_settings import KDSettings
from edgekd.training.methods.base import Distiller, StepOutput, register_method


@register_method(KDSettings)  # trains_teacher False: the teacher stays frozen, in eval mode
class HintonKD(Distiller):
    def forward_train(self, x, y) -> StepOutput:
        T = self.cfg.temperature
        zs = self.student(x)
        with torch.no_grad():
            zt = self.teacher(x)
        kd = L.kl(L.log_probs(zt, T), L.log_probs(zs, T)).mean()
        losses = {
            "student_ce": self.cfg.ce_weight * self.ce(zs, y),
            "student_kl_fwd": self.cfg.kl_weight * T * T * kd,
        }
        return StepOutput(zs, zt, losses)
