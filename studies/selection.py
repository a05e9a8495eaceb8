"""Pick one grid point per method from a tuning comparison, by a rule fixed before looking.

The rule (results/cifar10-distill-plan.md, and results/cifar10-edge-plan.md after it): per
method, among the grid points whose mean student accuracy is within `within` (a fraction:
0.01 = 1 point) of the method's best, the lowest mean student ECE; ties go to the lower NLL.
It reads only a comparison.json, so the choice is reproducible from committed files:

    python -m studies.selection results/cifar10-distill-tuning/comparison.json --within 0.01

Torch-free.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from edgekd.compare.report import read_comparison
from edgekd.compare.variants import POSTHOC_SUFFIX
from edgekd.errors import EdgeKDError


def base_method(label: str) -> str:
    """'bdkd:temperature=4' -> 'bdkd'."""
    return label.split(":", 1)[0]


METRICS = ("accuracy", "ece", "nll")  # the student's seed means the rule reads


def _grid_points(comparison: Any, source: str) -> dict[str, dict[str, float]]:
    """{label: {metric: mean}} of the trained variants; a file of any other shape (valid JSON
    all the same: a list, a summary without the student's means) is one EdgeKDError."""

    def bad(detail: str) -> EdgeKDError:
        return EdgeKDError(f"{source} is not a readable comparison.json ({detail})")

    summary = comparison.get("summary") if isinstance(comparison, dict) else None
    if not isinstance(summary, dict):
        what = type(comparison).__name__ if not isinstance(comparison, dict) else "an object without 'summary'"
        raise bad(f"expected an object with a 'summary' object, got {what}")
    points: dict[str, dict[str, float]] = {}
    for label, row in summary.items():
        if label.endswith(POSTHOC_SUFFIX):
            continue
        student = row.get("student") if isinstance(row, dict) else None
        means = {}
        for metric in METRICS:
            stat = student.get(metric) if isinstance(student, dict) else None
            mean = stat.get("mean") if isinstance(stat, dict) else None
            if isinstance(mean, bool) or not isinstance(mean, (int, float)) or not math.isfinite(mean):
                raise bad(f"summary[{label!r}].student.{metric}.mean is not a finite number")
            means[metric] = float(mean)
        points[label] = means
    if not points:
        raise bad("its summary has no trained variant")
    return points


def select(comparison: Any, within: float, source: str = "comparison.json") -> dict[str, str]:
    """{method: selected variant label} over the trained variants of a comparison.json."""
    if not 0 <= within < 1:
        raise EdgeKDError(f"--within is a fraction of accuracy in [0, 1), got {within}")
    by_method: dict[str, list[tuple[str, dict[str, float]]]] = {}
    for label, means in _grid_points(comparison, source).items():
        by_method.setdefault(base_method(label), []).append((label, means))
    chosen = {}
    for method, points in by_method.items():
        best = max(m["accuracy"] for _, m in points)
        # A small tolerance so a grid point exactly `within` below the best is not lost to float rounding.
        near = [(lab, m) for lab, m in points if m["accuracy"] >= best - within - 1e-12]
        chosen[method] = min(near, key=lambda p: (p[1]["ece"], p[1]["nll"]))[0]
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("comparison", type=Path, help="a comparison.json written by `edgekd compare`")
    ap.add_argument("--within", type=float, default=0.01,
                    help="accuracy window below each method's best, as a fraction (default 0.01 = 1 point)")
    args = ap.parse_args(argv)
    try:
        chosen = select(read_comparison(args.comparison), args.within, source=str(args.comparison))
    except EdgeKDError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    for method, label in chosen.items():
        print(f"{method}: {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
