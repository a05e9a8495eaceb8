"""`edgekd export --int8-search`: per INT8 flavour, the fastest INT8 file that passes the recipe's gate.

Plain export writes one calibration per INT8 flavour and leaves the verdict to
`edgekd validate`. The search tries candidates instead, each an INT8 file quantized
from the bundle's FP32 ONNX file with the same calibration images (quantize_prepared),
and keeps the fastest one that passes the recipe's `validate:` gate, accuracy AND
calibration. Everything tried goes into manifest.json's int8_search.

    settings  what the search is asked (SearchSettings, from the flags over the recipe) and the
              images it judges on (SearchData: the tune split, else held-apart training images)
    judge     one candidate's figures against the FP32 file, the gate's checks, its speed
    loop      the candidates, in order, within the budget (run_search)
    report    the records of what was tried, with their log lines, table and manifest record
"""

from edgekd.deploy.int8_search.judge import SPEED_MIN_S, Judgement, Reference, judge, mean_kl, measure_speed
from edgekd.deploy.int8_search.loop import (FALLBACK_OPS, MAX_FLOAT_FRACTION, Int8Search, SearchInputs, fallback_pool,
                                            run_search, sensitivity_entry)
from edgekd.deploy.int8_search.report import (FP32_FAILS, SLOWER_THAN_FP32, SPEED_TIE, Candidate, FlavourSearch,
                                              SearchOutcome)
from edgekd.deploy.int8_search.settings import (MIN_SEARCH_IMAGES, SEARCH_SPLITS, TRAIN_SLICE, SearchData, SearchPlan,
                                                SearchSettings, check_budget, held_apart, requested_settings,
                                                search_split, search_thresholds)

__all__ = [
    "SPEED_MIN_S", "Judgement", "Reference", "judge", "mean_kl", "measure_speed",
    "FALLBACK_OPS", "MAX_FLOAT_FRACTION", "Int8Search", "SearchInputs", "fallback_pool", "run_search",
    "sensitivity_entry", "FP32_FAILS", "SLOWER_THAN_FP32", "SPEED_TIE", "Candidate", "FlavourSearch", "SearchOutcome",
    "MIN_SEARCH_IMAGES", "SEARCH_SPLITS", "TRAIN_SLICE", "SearchData", "SearchPlan", "SearchSettings", "check_budget",
    "held_apart", "requested_settings", "search_split", "search_thresholds",
]
