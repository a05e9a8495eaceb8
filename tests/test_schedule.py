"""Golden values of the learning-rate schedule (edgekd.training.schedule.lr_factor).

Every expected factor is worked out by hand from the closed form of the schedule
(linear warmup over round(warmup_epochs * steps_per_epoch) steps, then cosine
0.5 * (1 + cos(pi * progress)), gamma ** milestones passed, or 1), never by calling
the function under test. Steps are 0-based global steps.
"""

import math

import pytest

from edgekd.training.schedule import lr_factor
from edgekd.recipe import OptimConfig

SQRT2 = math.sqrt(2.0)


def factors(cfg: OptimConfig, steps_per_epoch: int, epochs: int, steps: list[int]) -> list[float]:
    return [lr_factor(s, steps_per_epoch, epochs, cfg) for s in steps]


def test_cosine_with_one_epoch_of_warmup():
    # 10 steps an epoch, 5 epochs: 50 steps; warmup = steps 0..9, cosine over the other 40.
    cfg = OptimConfig(schedule="cosine", warmup_epochs=1)
    golden = {
        0: 1 / 10,                      # warmup: (step + 1) / 10
        4: 5 / 10,
        9: 10 / 10,                     # last warmup step reaches the full rate
        10: 1.0,                        # cosine progress 0/40
        20: (2 + SQRT2) / 4,            # progress 1/4: (1 + cos(pi/4)) / 2 = (1 + sqrt(2)/2) / 2
        30: 0.5,                        # progress 1/2: (1 + cos(pi/2)) / 2
        40: (2 - SQRT2) / 4,            # progress 3/4: (1 - sqrt(2)/2) / 2
        49: (1 + math.cos(math.pi * 39 / 40)) / 2,  # the last step of the run: almost 0
        50: 0.0,                        # progress 1
        75: 0.0,                        # past the end the factor stays at 0 (progress is capped at 1)
    }
    got = factors(cfg, 10, 5, list(golden))
    assert got == pytest.approx(list(golden.values()), abs=1e-12)


def test_cosine_without_warmup_starts_at_the_full_rate():
    # 8 steps an epoch, 2 epochs: cosine over all 16 steps.
    cfg = OptimConfig(schedule="cosine", warmup_epochs=0)
    golden = {0: 1.0, 4: (2 + SQRT2) / 4, 8: 0.5, 12: (2 - SQRT2) / 4, 15: (1 - math.cos(math.pi / 16)) / 2}
    assert factors(cfg, 8, 2, list(golden)) == pytest.approx(list(golden.values()), abs=1e-12)


def test_fractional_warmup_rounds_to_whole_steps():
    # 0.3 epoch of 10 steps = 3 warmup steps; the cosine then runs over the remaining 37 of 40.
    cfg = OptimConfig(schedule="cosine", warmup_epochs=0.3)
    golden = {0: 1 / 3, 1: 2 / 3, 2: 1.0, 3: 1.0, 40: 0.0}
    assert factors(cfg, 10, 4, list(golden)) == pytest.approx(list(golden.values()), abs=1e-12)


def test_multistep_with_milestones_in_epochs():
    # Milestones at epochs 2 and 4 with 10 steps an epoch: the rate drops at steps 20 and 40.
    cfg = OptimConfig(schedule="multistep", milestones=[2, 4], gamma=0.1)
    golden = {0: 1.0, 19: 1.0, 20: 0.1, 39: 0.1, 40: 0.01, 59: 0.01}
    assert factors(cfg, 10, 6, list(golden)) == pytest.approx(list(golden.values()), rel=1e-12)


def test_multistep_with_fractional_milestones():
    # All milestones < 1: fractions of the 8-epoch run, i.e. epochs 4 and 6 (steps 40 and 60).
    cfg = OptimConfig(schedule="multistep", milestones=[0.5, 0.75], gamma=0.5)
    golden = {0: 1.0, 39: 1.0, 40: 0.5, 59: 0.5, 60: 0.25, 79: 0.25}
    assert factors(cfg, 10, 8, list(golden)) == pytest.approx(list(golden.values()), rel=1e-12)


def test_multistep_with_one_milestone_of_1_or_more_reads_all_as_epochs():
    # [0.5, 3] is not all < 1, so 0.5 means half an epoch (step 5 of 10), not half the run.
    cfg = OptimConfig(schedule="multistep", milestones=[0.5, 3], gamma=0.1)
    golden = {4: 1.0, 5: 0.1, 29: 0.1, 30: 0.01, 99: 0.01}
    assert factors(cfg, 10, 10, list(golden)) == pytest.approx(list(golden.values()), rel=1e-12)


def test_multistep_after_warmup():
    # 1 warmup epoch of 4 steps, then gamma 0.2 from epoch 2 (step 8).
    cfg = OptimConfig(schedule="multistep", milestones=[2], gamma=0.2, warmup_epochs=1)
    golden = {0: 0.25, 3: 1.0, 4: 1.0, 7: 1.0, 8: 0.2, 11: 0.2}
    assert factors(cfg, 4, 3, list(golden)) == pytest.approx(list(golden.values()), rel=1e-12)


def test_constant_with_and_without_warmup():
    assert factors(OptimConfig(schedule="constant"), 10, 3, [0, 1, 15, 29, 1000]) == [1.0] * 5
    # 2 warmup epochs of 5 steps: (step + 1) / 10 for steps 0..9, then 1.
    warm = OptimConfig(schedule="constant", warmup_epochs=2)
    golden = {0: 0.1, 4: 0.5, 8: 0.9, 9: 1.0, 10: 1.0, 29: 1.0}
    assert factors(warm, 5, 6, list(golden)) == pytest.approx(list(golden.values()), abs=1e-12)
