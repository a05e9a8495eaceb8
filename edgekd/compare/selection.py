"""Pick one grid point per method from a tuning comparison, by a rule fixed before looking.

The rule (results/cifar10-distill-plan.md): per method, among the grid points whose mean
student accuracy is within `within` (a fraction: 0.01 = 1 point) of the method's best,
the lowest mean student ECE; ties go to the lower NLL. It reads only a comparison.json,
so the choice is reproducible from committed files:

    python -m edgekd.compare.selection results/cifar10-distill-tuning/comparison.json --within 0.01

Torch-free.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgekd.compare.variants import POSTHOC_SUFFIX
from edgekd.errors import EdgeKDError, first_line


def base_method(label: str) -> str:
    """'bdkd:temperature=4' -> 'bdkd'."""
    return label.split(":", 1)[0]


def select(comparison: dict, within: float) -> dict[str, str]:
    """{method: selected variant label} over the trained variants of a comparison.json."""
    if not 0 <= within < 1:
        raise EdgeKDError(f"--within is a fraction of accuracy in [0, 1), got {within}")
    by_method: dict[str, list[tuple[str, dict]]] = {}
    for label, s in comparison["summary"].items():
        if label.endswith(POSTHOC_SUFFIX):
            continue
        student = s["student"]
        by_method.setdefault(base_method(label), []).append((label, student))
    chosen = {}
    for method, points in by_method.items():
        best = max(st["accuracy"]["mean"] for _, st in points)
        # A small tolerance so a grid point exactly `within` below the best is not lost to float rounding.
        near = [(lab, st) for lab, st in points if st["accuracy"]["mean"] >= best - within - 1e-12]
        chosen[method] = min(near, key=lambda p: (p[1]["ece"]["mean"], p[1]["nll"]["mean"]))[0]
    return chosen


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("comparison", type=Path, help="a comparison.json written by `edgekd compare`")
    ap.add_argument("--within", type=float, default=0.01,
                    help="accuracy window below each method's best, as a fraction (default 0.01 = 1 point)")
    args = ap.parse_args(argv)
    try:
        comparison = json.loads(args.comparison.read_text())
        chosen = select(comparison, args.within)
    except (OSError, ValueError, KeyError) as e:
        print(f"edgekd: {args.comparison} is not a readable comparison.json ({first_line(e)})", file=sys.stderr)
        return 2
    except EdgeKDError as e:
        print(f"edgekd: {e}", file=sys.stderr)
        return 2
    for method, label in chosen.items():
        print(f"{method}: {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
