"""ce: teacher and student trained independently with cross-entropy. The baseline."""

from edgekd.training.method_settings import CESettings
from edgekd.training.methods.base import Distiller, StepOutput, register_method


@register_method(CESettings)
class CrossEntropy(Distiller):
    def forward_train(self, x, y) -> StepOutput:
        zs = self.student(x)
        zt = self.teacher(x)
        losses = {
            "student_ce": self.cfg.ce_weight * self.ce(zs, y),
            "teacher_ce": self.ce(zt, y),
        }
        return StepOutput(zs, zt, losses)
