"""What the INT8 search is asked, and on what: its settings (from the flags over the run's
recipe, checked before the bundle is written) and the images it judges candidates on.

Judged on: the run's tune split, or without one a slice of the training split held apart
from the calibration images (SEARCH_SPLITS). Never val: the bundle's figures are measured
there, and a file chosen on val would overstate them; never test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekd.deploy.int8 import Int8Settings
from edgekd.errors import DataError, ExportError
from edgekd.export_defaults import MAX_SEARCH_BUDGET_S

# Where candidates may be judged, in order of preference. Never "val" or "test".
SEARCH_SPLITS = ("tune", "train")
# Without a tune split: at most this many training images held apart from calibration.
TRAIN_SLICE = 2000
# Fewer images cannot resolve a gate of a point or two (one image of 100 is a point).
MIN_SEARCH_IMAGES = 100
# The gate checks that bound accuracy and calibration: the search needs one of each.
ACCURACY_CHECKS = ("max_acc_drop", "min_agreement")
CALIBRATION_CHECKS = ("max_ece_drift", "max_ece")


def search_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    """The gate thresholds the search judges with: the set ones of the recipe's validate: section
    (ValidateConfig.thresholds, checked by its schema); one accuracy and one calibration check
    are required."""
    if not any(k in thresholds for k in ACCURACY_CHECKS) or not any(k in thresholds for k in CALIBRATION_CHECKS):
        have = ", ".join(f"{k}={v}" for k, v in thresholds.items()) or "none"
        raise ExportError(
            "--int8-search needs the recipe's gate to bound accuracy (validate.max_acc_drop or "
            "validate.min_agreement) and calibration (validate.max_ece_drift or validate.max_ece); "
            f"the run's recipe sets {have}")
    return thresholds


def check_budget(budget: Any) -> float:
    """The same limits as the recipe's export.search_budget and the --search-budget flag."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= MAX_SEARCH_BUDGET_S:
        raise ExportError(f"--search-budget must be a number of seconds > 0 and <= {MAX_SEARCH_BUDGET_S:g} "
                          f"(a day), got {budget!r}")
    return float(budget)


def search_split(sizes: dict[str, int]) -> str:
    """The split candidates are judged on: tune when the run has one, else train (a slice held
    apart from the calibration images). Never val or test, whatever the sizes."""
    return "tune" if int(sizes.get("tune") or 0) > 0 else "train"


def held_apart(n_train: int, calibration_index: np.ndarray, seed: int, cap: int = TRAIN_SLICE) -> np.ndarray:
    """Training-split indices not used for calibration, at most `cap` of them (a seeded sample)."""
    rest = np.setdiff1d(np.arange(n_train), calibration_index)
    if len(rest) > cap:
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=cap, replace=False))
    return rest


@dataclass
class SearchData:
    """The images candidates are judged on, preprocessed as for eval."""

    split: str  # one of SEARCH_SPLITS
    images: np.ndarray
    labels: np.ndarray
    note: str  # how they were chosen, for the manifest and the log

    def __post_init__(self) -> None:
        if self.split not in SEARCH_SPLITS:  # the rule, enforced where the images enter the search
            raise ExportError(f"the INT8 search judges on the {' or '.join(SEARCH_SPLITS)} split, never on "
                              f"{self.split!r}")
        if len(self.labels) < MIN_SEARCH_IMAGES:
            # A tune split is fixed when training; the held-apart training images are what calibration leaves.
            fix = ("train with a larger tune split (data.tune_fraction or data.tune_size)" if self.split == "tune"
                   else "lower --calib-samples, or train with a tune split (data.tune_fraction or data.tune_size)")
            raise DataError(f"no data to search on: {self.note} gives {len(self.labels)} images, the INT8 search "
                            f"needs at least {MIN_SEARCH_IMAGES}; {fix}")

    def record(self) -> dict:
        return {"split": self.split, "n": int(len(self.labels)), "note": self.note}


@dataclass(frozen=True)
class SearchSettings:
    """What the search is asked: built once, by requested_settings, from the CLI's or the API's
    flags over the run's recipe (export: and validate: sections)."""

    budget_s: float  # for the whole search, every flavour together (check_budget)
    thresholds: dict[str, float]  # the recipe's gate (search_thresholds)
    # The export's own calibration: the first candidate (the file plain export writes), and the
    # images every candidate is calibrated with.
    base: Int8Settings


def requested_settings(sections: Any, int8_files: list[str], flag: bool | None, budget: float | None,
                       base: Int8Settings) -> SearchSettings | None:
    """The search's settings when it is on (`flag`, else the run's recipe: `sections`, as
    saved_recipe.saved_sections reads it), else None. `int8_files`: the INT8 formats being written;
    `budget`: --search-budget (None: the recipe's)."""
    if flag and not int8_files:
        raise ExportError("--int8-search searches the int8 and int8_cpu files; add one of them to --formats")
    if flag is False and budget is not None:
        raise ExportError("--search-budget is the time of the INT8 search, which --no-int8-search turns off")
    on = sections.export.int8_search if flag is None else flag
    if budget is not None and not on:
        raise ExportError("--search-budget is the time of the INT8 search, which is off: add --int8-search "
                          "(or export.int8_search: true in the recipe)")
    if not on or not int8_files:
        return None
    return SearchSettings(check_budget(sections.export.search_budget if budget is None else budget),
                          search_thresholds(sections.gate.thresholds()), base)


@dataclass(frozen=True)
class SearchPlan:
    """The search's settings and the images it judges on, fixed before the bundle is written."""

    settings: SearchSettings
    data: SearchData
    # The bundle's temperature (deploy/temperature.py): every file, FP32 included, is judged as it
    # will ship, its logits divided by it. None: no temperature.
    temperature: float | None = None
