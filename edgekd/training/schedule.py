"""Learning-rate schedules as pure functions of the global step.

Being stateless, a schedule resumes exactly from the step number alone.
"""

from __future__ import annotations

import math

from edgekd.recipe import OptimConfig


def lr_factor(step: int, steps_per_epoch: int, epochs: int, cfg: OptimConfig) -> float:
    total = steps_per_epoch * epochs
    warm = int(round(cfg.warmup_epochs * steps_per_epoch))
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    # multistep: milestones in epochs, or in fractions of the run when all are < 1
    milestones = cfg.milestones
    if milestones and all(m < 1 for m in milestones):
        milestones = [m * epochs for m in milestones]
    epoch = step / steps_per_epoch
    return cfg.gamma ** sum(1 for m in milestones if epoch >= m)
