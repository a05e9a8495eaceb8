"""`edgekd compare`: the same recipe under several methods and seeds, side by side, with
the statistics to tell a difference from noise.

- variants.py: parsing `--methods`, every run's recipe, split checks (torch-free)
- run.py: checks, then training/evaluation of what is missing, then the report
- evaluate.py: training and final-net evaluation (the one module importing edgekd.training.trainer)
- predictions.py: the per-run prediction files that outlive the run folders (torch-free)
- stats.py: t intervals, the paired hierarchical bootstrap, the ECE noise floor (numpy only)
- report.py: comparison.json, comparison.md, the reliability diagram (torch-free)

What one experiment makes of a comparison (its selection and decision rules) lives in studies/.
"""

from edgekd.compare.run import Comparison, prepare_comparison, run_all, run_comparison
from edgekd.compare.variants import Variant, parse_seeds, parse_variants, plan

__all__ = ["Comparison", "Variant", "parse_seeds", "parse_variants", "plan", "prepare_comparison", "run_all",
           "run_comparison"]
