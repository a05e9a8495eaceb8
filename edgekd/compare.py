"""`edgekd compare`: the same recipe under several methods and seeds, side by side.

A variant is a method name with optional distill overrides joined by ':', e.g.
`bdkd:weighting=soft:temperature=2`. A key without a dot is a `distill.` key; a
dotted key (`optim.lr=0.1`) is used as is. Each (variant, seed) trains into
OUT/runs/<variant>-s<seed>/; a finished run (summary.json present) is reused and
an interrupted one (last.pt only) resumed, so a comparison can be stopped and
restarted at any time.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgekd import calibration, files
from edgekd.errors import RecipeError
from edgekd.recipe import Recipe, describe_keys, load_recipe, read_yaml_mapping, recipe_diff, with_defaults

REPORTED = ("accuracy", "ece", "adaptive_ece", "nll", "brier")


@dataclass(frozen=True)
class Variant:
    label: str
    method: str
    overrides: tuple[str, ...]

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.=-]+", "_", self.label.replace(":", "-"))


def parse_variants(spec: list[str]) -> list[Variant]:
    out: list[Variant] = []
    for item in spec:
        method, *pairs = item.split(":")
        overrides = [f"distill.method={method}"]
        for pair in pairs:
            if "=" not in pair:
                raise RecipeError(f"--methods {item!r}: '{pair}' should be KEY=VALUE, e.g. bdkd:weighting=soft")
            key, value = pair.split("=", 1)
            overrides.append(f"{key if '.' in key else 'distill.' + key}={value}")
        out.append(Variant(item, method, tuple(overrides)))
    if len({v.label for v in out}) != len(out):
        raise RecipeError("--methods lists the same variant twice")
    return out


def plan(recipe_path: Path, variants: list[Variant], seeds: list[int], overrides: list[str]) -> list[tuple[Variant, int, Recipe]]:
    """Resolve every run's recipe up front, so a typo fails before hours of training."""
    runs = []
    for v in variants:
        for seed in seeds:
            r = load_recipe(recipe_path, [*overrides, *v.overrides, f"train.seed={seed}"])
            runs.append((v, seed, r))
    return runs


def run_all(recipe_path: Path, variants: list[Variant], seeds: list[int], overrides: list[str], out: Path,
            log: Callable[[str], None], on_epoch=None, command: str | None = None) -> dict[str, Any]:
    from edgekd.distill.run_dir import run_distill  # torch only when training

    runs = plan(recipe_path, variants, seeds, overrides)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    results = []
    for i, (v, seed, r) in enumerate(runs, 1):
        run_dir = out / "runs" / f"{v.slug}-s{seed}"
        _check_same_recipe(run_dir, r)
        if (run_dir / "summary.json").is_file():
            log(f"[{i}/{len(runs)}] {v.label} seed {seed}: finished earlier, reused")
        else:
            resume = (run_dir / "last.pt").is_file()
            log(f"[{i}/{len(runs)}] {v.label} seed {seed}: {'resuming' if resume else 'training'} in {run_dir}")
            run_distill(r, run_dir, resume=resume, on_epoch=on_epoch)
        summary = json.loads((run_dir / "summary.json").read_text())
        results.append({"method": v.label, "seed": seed, "run": str(run_dir),
                        "teacher": summary["teacher"], "student": summary["student"]})
    base = load_recipe(recipe_path, overrides)
    report = {"command": command, "recipe": base.to_dict(), "variants": [v.label for v in variants], "seeds": seeds, "runs": results}
    write_outputs(report, out)
    return report


def _check_same_recipe(run_dir: Path, r: Recipe) -> None:
    """A run is reused or resumed only if it was trained with exactly this recipe."""
    saved = run_dir / "recipe.yaml"
    if not saved.is_file():
        return
    diffs = recipe_diff(with_defaults(read_yaml_mapping(saved)), r.to_dict())
    if diffs:
        raise RecipeError(f"{run_dir} was trained with a different recipe (keys differ: {describe_keys(diffs)}); "
                          f"remove it or choose another --out")


def aggregate(runs: list[dict], variants: list[str]) -> dict[str, dict[str, dict[str, tuple[float, float | None]]]]:
    """variant -> role -> metric -> (mean, std over seeds)."""
    table: dict[str, dict[str, dict[str, tuple[float, float]]]] = {}
    for v in variants:
        rows = [r for r in runs if r["method"] == v]
        table[v] = {}
        for role in ("teacher", "student"):
            stats = {}
            for k in (*REPORTED, "train_accuracy"):
                vals = np.array([r[role][k] for r in rows if r[role].get(k) is not None], dtype=float)
                if vals.size:
                    # One seed has no spread: std is None (shown as the mean alone), not 0.
                    stats[k] = (float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else None)
            ts = np.array([r[role]["ts_headroom"]["ece"] for r in rows], dtype=float)
            stats["ece_after_ts"] = (float(ts.mean()), float(ts.std(ddof=1)) if ts.size > 1 else None)
            table[v][role] = stats
    return table


def _fmt(stat: tuple[float, float] | None, pct: bool) -> str:
    if stat is None:
        return "—"
    m, s = stat
    if s is None:
        return f"{100 * m:.2f}" if pct else f"{m:.4f}"
    return f"{100 * m:.2f} ± {100 * s:.2f}" if pct else f"{m:.4f} ± {s:.4f}"


def markdown(report: dict, table: dict) -> str:
    cols = [("accuracy", "acc %", True), ("ece", "ECE %", True), ("adaptive_ece", "adaptive ECE %", True),
            ("nll", "NLL", False), ("brier", "Brier", False), ("ece_after_ts", "ECE after TS %", True),
            ("train_accuracy", "train acc %", True)]
    lines = []
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    split = report.get("recipe", {}).get("train", {}).get("eval_split", "val")
    spread = "mean ± std over seeds" if len(report["seeds"]) > 1 else "one seed, so no spread"
    lines += [f"Seeds: {', '.join(map(str, report['seeds']))}; {spread}. "
              f"Metrics on the {split} split, raw softmax (no temperature scaling); "
              "'ECE after TS' is the diagnostic ECE at the NLL-optimal temperature.", ""]
    for role in ("student", "teacher"):
        lines += [f"### {role}", "", "| method | " + " | ".join(c[1] for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for v in report["variants"]:
            st = table[v][role]
            lines.append(f"| {v} | " + " | ".join(_fmt(st.get(k), pct) for k, _, pct in cols) + " |")
        lines.append("")
    lines += ["![reliability](reliability_students.png)", ""]
    return "\n".join(lines)


def write_outputs(report: dict, out: Path) -> None:
    from edgekd import plots

    table = aggregate(report["runs"], report["variants"])
    report = {**report, "summary": {v: {role: {k: {"mean": m, "std": s} for k, (m, s) in st.items()}
                                        for role, st in roles.items()} for v, roles in table.items()}}
    files.write_json(out / "comparison.json", report)
    files.atomic_write_text(out / "comparison.md", markdown(report, table))
    # Overlaid reliability curves: each variant's students pooled over seeds.
    curves = {}
    for v in report["variants"]:
        logits, labels = [], []
        for r in report["runs"]:
            if r["method"] == v:
                z = np.load(Path(r["run"]) / "eval_logits.npz")
                logits.append(z["student_logits"])
                labels.append(z["labels"])
        curves[v] = calibration.reliability_bins(np.concatenate(logits), np.concatenate(labels))
    plots.reliability_overlay(curves, out / "reliability_students.png", title="student reliability (pooled over seeds)")
