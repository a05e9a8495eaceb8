"""The pre-registered decision of an experiment, applied mechanically to its committed comparisons.

results/cifar10-distill-plan.md fixed, before any reported run: the regime's four conditions,
the primary contrast (student test ECE, BD-KD* minus DML*), H2 (BD-KD* minus CE+TS), each
ablation minus BD-KD*, a code sanity check (a BD-KD variant that is DML by construction must
give DML's results), and the rule (a difference counts only when its 95% CI excludes 0). This
module reads two comparison.json files and writes what that rule says, so the decision in the
README can be re-derived from committed files:

    python -m edgekd.compare.decision --report results/cifar10-distill \\
        --ablations results/cifar10-distill-ablations --bdkd LABEL --dml LABEL --ce-ts ce+ts \\
        --sanity LABEL --out results/cifar10-distill

The report comparison has --reference DML* and a further --reference CE+TS; the ablation
comparison has --reference BD-KD*. Writes OUT.json (the decision and both comparisons in full:
commands, per-run metrics, statistics), OUT.md and OUT-reliability.png (the report's pooled
student reliability diagram). Existing outputs are kept unless --overwrite. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

from edgekd import files
from edgekd.compare import report as report_md
from edgekd.compare.stats import NO_DIFFERENCE
from edgekd.errors import EdgeKDError, first_line

PLAN = "results/cifar10-distill-plan.md"
SELECTION = "results/cifar10-distill-tuning/selection.md"
TITLE = "CIFAR-10 with a real teacher: does online BD-KD calibrate a compact student better than DML?"

# The regime's conditions as the issue and the plan state them: (key, label, required, test).
CONDITIONS = (
    ("accuracy_gap", "CE teacher minus CE student accuracy (mean over seeds)", ">= 5 points",
     lambda g: g["accuracy_gap"]["mean"] >= 0.05),
    ("params_ratio", "student parameters / teacher parameters", "<= 1/8",
     lambda g: g["params_ratio"] is not None and g["params_ratio"] <= 1 / 8),
    ("student_ece", "CE student test ECE (mean over seeds)", ">= 5%", lambda g: g["student_ece"]["mean"] >= 0.05),
    ("train_seconds_median", "one run's training on the 2 CPU cores (median)", "<= 15 min",
     lambda g: g.get("train_seconds_median") is not None and g["train_seconds_median"] <= 15 * 60),
)


def _load(folder: Path) -> dict:
    path = folder / "comparison.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise EdgeKDError(f"{path} is not a readable comparison.json ({first_line(e)})") from None
    if not isinstance(doc, dict) or not all(k in doc for k in ("reference", "vs_reference", "runs", "summary")):
        raise EdgeKDError(f"{path} is not a comparison.json written by `edgekd compare` (no reference, runs or summary)")
    return doc


def _contrast(doc: dict, source: str, reference: str, variant: str) -> dict:
    """{metric: {diff, ci, verdict}} of variant minus reference in one comparison."""
    tables = {doc["reference"]: doc["vs_reference"], **doc.get("vs_more_references", {})}
    if reference not in tables:
        raise EdgeKDError(f"{source} has no paired table against {reference!r} (its references: "
                          f"{', '.join(tables)}); rerun compare with --reference {reference!r}")
    entry = tables[reference].get(variant)
    if not entry or "metrics" not in entry:
        raise EdgeKDError(f"{source} pairs no run of {variant!r} with {reference!r}")
    return {"seeds": entry["seeds"], **entry["metrics"]}


def _regime(doc: dict, source: str) -> dict:
    g = doc.get("regime")
    if not g:
        raise EdgeKDError(f"{source} has no regime section (it needs plain `ce` rows)")
    out = {"seeds": g["seeds"], "conditions": []}
    for key, label, required, test in CONDITIONS:
        value = g.get(key)
        out["conditions"].append({"key": key, "condition": label, "required": required,
                                  "measured": value["mean"] if isinstance(value, dict) else value,
                                  "ci": value.get("ci") if isinstance(value, dict) else None,
                                  "holds": bool(value is not None and test(g))})
    out["train_seconds_max"] = g.get("train_seconds_max")
    return out


def _sanity(doc: dict, sanity: str, dml: str) -> dict:
    """Does the DML-by-construction variant give DML's students, seed by seed?"""
    runs = {(r["method"], r["seed"]): r["student"] for r in doc["runs"]}
    seeds = sorted(s for (m, s) in runs if m == sanity and (dml, s) in runs)
    if not seeds:
        raise EdgeKDError(f"the ablation comparison has no seed with both {sanity!r} and {dml!r}")
    gaps = {k: max(abs(runs[(sanity, s)][k] - runs[(dml, s)][k]) for s in seeds)
            for k in ("accuracy", "ece", "nll") if all(k in runs[(m, s)] for m in (sanity, dml) for s in seeds)}
    return {"variant": sanity, "equals": dml, "seeds": seeds, "max_abs_difference": gaps,
            "identical": all(v == 0 for v in gaps.values())}


def _said(verdict: str, lower: str, higher: str) -> str:
    return lower if verdict == "lower" else higher if verdict == "higher" else NO_DIFFERENCE


def decide(report: dict, ablations: dict | None, bdkd: str, dml: str, ce_ts: str, sanity: str | None,
           report_source: str = "report", ablations_source: str = "ablations", plan: str = PLAN) -> dict[str, Any]:
    if report["reference"] != dml:
        raise EdgeKDError(f"{report_source}'s reference is {report['reference']!r}, not --dml {dml!r}")
    h1 = _contrast(report, report_source, dml, bdkd)
    h2 = _contrast(report, report_source, ce_ts, bdkd)
    ts_vs_dml = _contrast(report, report_source, dml, ce_ts)
    out: dict[str, Any] = {
        "plan": plan, "rule": "a difference counts only when its 95% CI excludes 0",
        "labels": {"bdkd": bdkd, "dml": dml, "ce_ts": ce_ts, "sanity": sanity},
        "regime": _regime(report, report_source),
        "h1_bdkd_minus_dml": h1, "h2_bdkd_minus_ce_ts": h2, "ce_ts_minus_dml": ts_vs_dml,
    }
    v1, v2, vt = h1["ece"]["verdict"], h2["ece"]["verdict"], ts_vs_dml["ece"]["verdict"]
    out["h1"] = _said(v1, "holds: BD-KD's student has the lower test ECE",
                      "rejected: DML's student has the lower test ECE")
    out["h2"] = _said(v2, "BD-KD's raw student has a lower test ECE than CE+TS",
                      "CE+TS has a lower test ECE than BD-KD's raw student")
    if vt == "lower" and v2 == "higher":
        out["recommendation"] = ("post-hoc temperature scaling on a held-out split (CE+TS) calibrates better than "
                                 "both online methods: use it whenever the temperature is kept through export")
    elif v1 == "higher":
        out["recommendation"] = "DML: it calibrates the student better than BD-KD beyond the CI"
    elif v1 == "lower":
        out["recommendation"] = "BD-KD: it calibrates the student better than DML beyond the CI"
    else:
        out["recommendation"] = ("no ECE-based preference between BD-KD and DML; choose by the secondary metrics "
                                 "and simplicity")
    if ablations is not None:
        if ablations["reference"] != bdkd:
            raise EdgeKDError(f"{ablations_source}'s reference is {ablations['reference']!r}, not --bdkd {bdkd!r}")
        skip = {dml, sanity}
        out["ablations_minus_bdkd"] = {label: _contrast(ablations, ablations_source, bdkd, label)
                                       for label in ablations["vs_reference"] if label not in skip}
        if sanity:
            out["sanity"] = _sanity(ablations, sanity, dml)
    return out


# ---------------------------------------------------------------- markdown

def _pt(x: float | None, signed: bool = True) -> str:
    return "—" if x is None else f"{100 * x:{'+' if signed else ''}.2f}"


def _ci(d: dict) -> str:
    return "—" if d["ci"] is None else f"[{_pt(d['ci'][0])}, {_pt(d['ci'][1])}]"


def _measured(c: dict) -> str:
    x = c["measured"]
    if x is None:
        return "not recorded"
    if c["key"] == "params_ratio":
        return f"1/{1 / x:.1f}"
    if c["key"] == "train_seconds_median":
        return f"{x / 60:.1f} min"
    ci = f" [{100 * c['ci'][0]:.2f}, {100 * c['ci'][1]:.2f}]" if c["ci"] else ""
    unit = " points" if c["key"] == "accuracy_gap" else "%"
    return f"{100 * x:.2f}{unit}{ci}"


def _contrast_rows(name: str, c: dict) -> list[str]:
    rows = [f"| {name} | {len(c['seeds'])} | ECE | {_pt(c['ece']['diff'])} | {_ci(c['ece'])} | "
            f"{c['ece']['verdict']} |"]
    for k in ("accuracy", "nll"):
        d = c[k]
        fmt = _pt if k == "accuracy" else (lambda x: "—" if x is None else f"{x:+.4f}")
        ci = "—" if d["ci"] is None else f"[{fmt(d['ci'][0])}, {fmt(d['ci'][1])}]"
        rows.append(f"| | | {'acc' if k == 'accuracy' else 'NLL'} | {fmt(d['diff'])} | {ci} | {d['verdict']} |")
    return rows


def markdown(decision: dict, report: dict, ablations: dict | None, command: str, links: dict[str, str],
             title: str = TITLE) -> str:
    """links: relative paths from the .md to `plan`, `selection`, `image` (the copied diagram),
    `report_image` and `ablation_image` (each comparison's own)."""
    lab = decision["labels"]
    g = decision["regime"]
    head = "| contrast | seeds | metric | difference | 95% CI | verdict |\n|---|---|---|---|---|---|"
    lines = [
        f"# {title}", "",
        f"Pre-registered in [{Path(decision['plan']).name}]({links['plan']}) (hypotheses, seeds, tuning "
        "grid and selection rule, primary metric, decision rule), committed before any reported run. This file is "
        "written from the committed comparisons by:", "", f"    {command}", "",
        f"BD-KD* = `{lab['bdkd']}`, DML* = `{lab['dml']}` (selected on the tune split with seed 0, "
        f"[{links['selection']}]({links['selection']})). Differences are in "
        f"percentage points; the rule: {decision['rule']}.", "",
        "## Decision (the plan's rule, applied mechanically)", "",
        f"- Primary (H1), student test ECE, BD-KD* minus DML*: {_pt(decision['h1_bdkd_minus_dml']['ece']['diff'])} "
        f"{_ci(decision['h1_bdkd_minus_dml']['ece'])}: {decision['h1']}.",
        f"- H2, BD-KD* minus CE+TS: {_pt(decision['h2_bdkd_minus_ce_ts']['ece']['diff'])} "
        f"{_ci(decision['h2_bdkd_minus_ce_ts']['ece'])}: {decision['h2']}.",
        f"- CE+TS minus DML*: {_pt(decision['ce_ts_minus_dml']['ece']['diff'])} "
        f"{_ci(decision['ce_ts_minus_dml']['ece'])}: {decision['ce_ts_minus_dml']['ece']['verdict']}.",
        f"- Recommendation by the plan's rule: {decision['recommendation']}.",
    ]
    lines += ["", "## The regime's four conditions (CE runs, test split)", "",
              f"{len(g['seeds'])} seeds; mean with 95% t interval.", "",
              "| condition | required | measured | holds |", "|---|---|---|---|"]
    for c in g["conditions"]:
        lines.append(f"| {c['condition']} | {c['required']} | {_measured(c)} | {'yes' if c['holds'] else 'NO'} |")
    if g.get("train_seconds_max") is not None:
        lines += ["", f"The longest CE run took {g['train_seconds_max'] / 60:.1f} min of training; each run's "
                  "`train_seconds` is in the per-run records below (a run that shared the 2 cores with another job "
                  "is slower for that reason)."]
    lines += ["", "## Contrasts", "", head]
    lines += _contrast_rows("BD-KD* − DML* (H1)", decision["h1_bdkd_minus_dml"])
    lines += _contrast_rows("BD-KD* − CE+TS (H2)", decision["h2_bdkd_minus_ce_ts"])
    lines += _contrast_rows("CE+TS − DML*", decision["ce_ts_minus_dml"])
    if "ablations_minus_bdkd" in decision:
        lines += ["", "## Ablations minus BD-KD* (H3)", "", head.replace("contrast", "ablation")]
        for label, c in decision["ablations_minus_bdkd"].items():
            lines += _contrast_rows(f"`{label}`", c)
    if "sanity" in decision:
        s = decision["sanity"]
        gaps = ", ".join(f"{k} {v:.2e}" for k, v in s["max_abs_difference"].items())
        said = ("identical, seed for seed: the code check passes" if s["identical"] else
                f"NOT identical (largest absolute differences: {gaps}): the code check fails, see the ablation table")
        lines += ["", "## Code sanity check", "",
                  f"`{s['variant']}` is DML by construction (forward KL for the student on every sample, forward KL "
                  f"for the teacher). Against `{s['equals']}` on seeds {', '.join(map(str, s['seeds']))}: {said}."]
    lines += ["", f"![student reliability, pooled over seeds]({links['image']})", "",
              f"## The report comparison (seeds {_seeds(report)}, {report['eval_split']} split)", ""]
    lines += _demote(report_md.markdown(report, image=links["report_image"]))
    if ablations is not None:
        lines += ["", f"## The ablation comparison (seeds {_seeds(ablations)}, {ablations['eval_split']} split)", ""]
        lines += _demote(report_md.markdown(ablations, image=links["ablation_image"]))
    return "\n".join(lines) + "\n"


def _seeds(doc: dict) -> str:
    return ", ".join(map(str, doc["seeds"]))


def _demote(md: str) -> list[str]:
    """A comparison's markdown one heading level down, to sit inside this file."""
    return [("#" + line) if line.startswith("#") else line for line in md.splitlines()]


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--report", type=Path, required=True, help="folder of the report comparison (reference DML*)")
    ap.add_argument("--ablations", type=Path, default=None, help="folder of the ablation comparison (reference BD-KD*)")
    ap.add_argument("--bdkd", required=True, help="the selected BD-KD variant's label")
    ap.add_argument("--dml", required=True, help="the selected DML variant's label")
    ap.add_argument("--ce-ts", default="ce+ts", help="the post-hoc row's label (default ce+ts)")
    ap.add_argument("--sanity", default=None, help="the ablation variant that is DML by construction")
    ap.add_argument("--out", type=Path, required=True, help="output prefix: writes OUT.json, OUT.md, OUT-reliability.png")
    ap.add_argument("--plan", default=PLAN, help=f"the pre-registered plan, linked (default {PLAN})")
    ap.add_argument("--selection", default=SELECTION, help=f"the tuning selection, linked (default {SELECTION})")
    ap.add_argument("--title", default=TITLE, help="the .md's title")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = ap.parse_args(argv)
    out_json, out_md = args.out.with_name(args.out.name + ".json"), args.out.with_name(args.out.name + ".md")
    out_png = args.out.with_name(args.out.name + "-reliability.png")
    try:
        existing = [str(p) for p in (out_json, out_md, out_png) if p.exists()]
        if existing and not args.overwrite:
            raise EdgeKDError(f"{existing[0]} exists; pass --overwrite to replace it (nothing was written)")
        report = _load(args.report)
        ablations = _load(args.ablations) if args.ablations else None
        decision = decide(report, ablations, args.bdkd, args.dml, args.ce_ts, args.sanity,
                          str(args.report / "comparison.json"),
                          str(args.ablations / "comparison.json") if args.ablations else "ablations", args.plan)
        source_png = args.report / "reliability_students.png"
        if not source_png.is_file():
            raise EdgeKDError(f"{source_png} is missing (compare writes it beside comparison.json)")
    except EdgeKDError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    command = "python -m edgekd.compare.decision " + shlex.join(argv if argv is not None else sys.argv[1:])
    here = out_md.parent

    def rel(p: Path) -> str:
        return os.path.relpath(p, here)

    files.write_json(out_json, {"command": command, "decision": decision, "report": report, "ablations": ablations})
    files.atomic_write_bytes(out_png, source_png.read_bytes())
    links = {"plan": rel(Path(args.plan)), "selection": rel(Path(args.selection)), "image": rel(out_png),
             "report_image": rel(source_png),
             "ablation_image": rel(args.ablations / "reliability_students.png") if args.ablations else ""}
    files.atomic_write_text(out_md, markdown(decision, report, ablations, command, links, args.title))
    print(f"H1: {decision['h1']}\nH2: {decision['h2']}\nrecommendation: {decision['recommendation']}")
    print(f"wrote {out_json}, {out_md}, {out_png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
