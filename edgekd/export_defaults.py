"""`edgekd export`'s defaults and limits, one definition each for the CLI's flags, the Python
API's arguments, the recipe's export: section and the deploy code that applies them.

Import-free, so the CLI can show them in --help without importing numpy, the recipe schema or
the deploy package (which imports torch and onnx).
"""

# INT8 calibration: how many training-split images, and which method first (the INT8 search
# tries every one of CALIB_METHODS, starting with the export's own).
CALIB_SAMPLES = 512
CALIB_METHOD = "minmax"
CALIB_METHODS = ("minmax", "entropy", "percentile")
# The largest batch of the TensorRT engines' optimization profile.
MAX_BATCH = 64

# The INT8 search's time budget (recipe export.search_budget, --search-budget).
DEFAULT_SEARCH_BUDGET_S = 600.0
# A day: a longer search is a typo (minutes for hours), and the budget is wall-clock time
# the export holds a machine for.
MAX_SEARCH_BUDGET_S = 86400.0
