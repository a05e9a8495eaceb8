"""The regime of a comparison, from its plain `ce` rows (both nets trained alone with cross-entropy):
is the teacher really better than the student, how much bigger is it, how over-confident is the CE
student, how long does a run take. A study's plan states its regime's conditions on these figures
(studies/cifar10_distill/decision.py checks them).

`edgekd compare` knows nothing of it; this adds a `regime` object to a comparison folder's
comparison.json and its table to comparison.md (after the per-variant tables), both rewritten
from the comparison.json alone:

    python -m studies.regime results/cifar10-distill

Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from edgekd import files
from edgekd.compare import report, stats
from edgekd.errors import EdgeKDError

CE = "ce"  # the label of the rows the regime is read from


def summarize(runs: list[dict]) -> dict | None:
    """The regime from a comparison.json's `runs`; None without `ce` rows."""
    ce = [r for r in runs if r["method"] == CE]
    if not ce:
        return None
    gap = [r["teacher"]["accuracy"] - r["student"]["accuracy"] for r in ce]
    out = {
        "seeds": [r["seed"] for r in ce],
        "teacher_accuracy": stats.summarize([r["teacher"]["accuracy"] for r in ce]),
        "student_accuracy": stats.summarize([r["student"]["accuracy"] for r in ce]),
        "accuracy_gap": stats.summarize(gap),
        "student_ece": stats.summarize([r["student"]["ece"] for r in ce]),
        "params": ce[0]["params"],
    }
    t, st = out["params"].get("teacher"), out["params"].get("student")
    out["params_ratio"] = st / t if t and st else None
    secs = [r["train_seconds"] for r in ce if r.get("train_seconds") is not None]
    out["train_seconds_max"] = max(secs) if secs else None
    # The median too: a run that shared the CPU with another job is slow for a reason that is not the recipe's.
    out["train_seconds_median"] = float(np.median(secs)) if secs else None
    return out


def markdown(comparison: dict) -> list[str]:
    """The regime's table, for report.markdown(sections=...); nothing when the comparison has none."""
    g = comparison.get("regime")
    if not g:
        return []
    p = g["params"]
    size = (f"teacher {p['teacher']:,} parameters, student {p['student']:,} (1/{1 / g['params_ratio']:.1f} of the "
            f"teacher's)" if g.get("params_ratio") else "parameter counts not recorded")
    secs = g.get("train_seconds_max")
    cell = report.format_stat
    return [
        "", "### the regime (ce runs: both nets trained alone with cross-entropy)", "",
        f"{len(g['seeds'])} seed{'s' * (len(g['seeds']) != 1)}; mean with 95% t interval, on the "
        f"{comparison['eval_split']} split.", "",
        "| | value |", "|---|---|",
        f"| teacher accuracy % | {cell('accuracy', g['teacher_accuracy'])} |",
        f"| student accuracy % | {cell('accuracy', g['student_accuracy'])} |",
        f"| teacher minus student, points | {cell('accuracy', g['accuracy_gap'])} |",
        f"| student ECE % | {cell('ece', g['student_ece'])} |",
        f"| size | {size} |",
        f"| one run's training | longest {secs / 60:.1f} min"
        + (f", median {g['train_seconds_median'] / 60:.1f} min |" if g.get("train_seconds_median") else " |")
        if secs is not None else "| one run's training | not recorded |",
    ]


def add_regime(folder: Path) -> dict:
    """Write the regime into FOLDER's comparison.json and comparison.md; returns it. Run again after
    each `edgekd compare` into the folder, which rewrites both files without it."""
    path = folder / "comparison.json"
    doc = report.read_comparison(path)
    try:
        regime = summarize(doc["runs"])
    except (KeyError, TypeError, AttributeError) as e:
        raise EdgeKDError(f"{path} is not a comparison.json written by `edgekd compare` "
                          f"({type(e).__name__}: {e})") from None
    if regime is None:
        raise EdgeKDError(f"{path} has no `{CE}` rows to read the regime from")
    doc["regime"] = regime
    md = report.markdown(doc, sections=markdown(doc))  # rendered before anything is written
    files.write_json(path, doc)
    files.atomic_write_text(folder / "comparison.md", md)
    return regime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a comparison folder written by `edgekd compare`, with `ce` rows")
    args = ap.parse_args(argv)
    try:
        g = add_regime(args.folder)
    except EdgeKDError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    gap = g["accuracy_gap"]["mean"]
    print(f"regime of {len(g['seeds'])} ce runs: teacher minus student {100 * gap:.2f} points; "
          f"wrote {args.folder / 'comparison.json'}, {args.folder / 'comparison.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
