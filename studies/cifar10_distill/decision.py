"""The pre-registered decision of an experiment, applied mechanically to its committed comparisons.

results/cifar10-distill-plan.md fixed, before any reported run: the regime's four conditions,
the primary contrast (student test ECE, BD-KD* minus DML*), H2 (BD-KD* minus CE+TS), each
ablation minus BD-KD*, a code sanity check (a BD-KD variant that is DML by construction must
give DML's results), and the rule (a difference counts only when its 95% CI excludes 0). This
module reads two comparison.json files and writes what that rule says, so the decision in the
README can be re-derived from committed files:

    python -m studies.cifar10_distill.decision --report results/cifar10-distill \\
        --ablations results/cifar10-distill-ablations --bdkd LABEL --dml LABEL --ce-ts ce+ts \\
        --sanity LABEL --out results/cifar10-distill

The report comparison has --reference DML*, a further --reference CE+TS and its regime (added
by `python -m studies.regime`); the ablation comparison has --reference BD-KD*. Writes OUT.json (the decision and both comparisons in full:
commands, per-run metrics, statistics), OUT.md and OUT-reliability.png (the report's pooled
student reliability diagram). Everything is read and rendered before the first file is written;
existing outputs are kept unless --overwrite. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import files
from edgekd.compare import predictions
from edgekd.compare import report as report_md
from edgekd.compare.run import resolved_speed
from edgekd.compare.stats import NO_DIFFERENCE
from edgekd.compare.variants import parse_variants
from edgekd.errors import EdgeKDError
from edgekd.saved_recipe import with_resolved_auto
from studies import regime as regime_md

PLAN = "results/cifar10-distill-plan.md"
SELECTION = "results/cifar10-distill-tuning/selection.md"
TITLE = "CIFAR-10 with a real teacher: does online BD-KD calibrate a compact student better than DML?"
MINUTES = 15

# The regime's conditions as the plan states them, on the CE runs: (key, condition, required, holds).
CONDITIONS = (
    ("accuracy_gap", "CE teacher minus CE student accuracy (mean over seeds)", ">= 5 points",
     lambda g: g["accuracy_gap"]["mean"] >= 0.05),
    ("params_ratio", "student parameters / teacher parameters", "<= 1/8",
     lambda g: g["params_ratio"] is not None and g["params_ratio"] <= 1 / 8),
    ("student_ece", "CE student ECE (mean over seeds)", ">= 5%", lambda g: g["student_ece"]["mean"] >= 0.05),
    # The plan: "one run at most 15 minutes on the 2 cores (the runs' train_seconds)": every run, so the longest.
    ("train_seconds_max", "one run's training on the 2 CPU cores (the longest CE run)", f"<= {MINUTES} min",
     lambda g: g["train_seconds_max"] is not None and g["train_seconds_max"] <= MINUTES * 60),
)
# distill keys that make a bdkd run DML: with weighting forward (w = 1 on every sample) and a forward
# teacher term, bdkd's losses are dml's term for term when these agree; its other keys then do nothing.
DML_KEYS = ("temperature", "kl_weight", "teacher_kl_weight", "ce_weight")


def _contrast(doc: dict, reference: str, variant: str) -> dict:
    """{seeds, metric: {diff, ci, verdict}} of variant minus reference in one comparison."""
    tables = {doc["reference"]: doc["vs_reference"], **doc.get("vs_more_references", {})}
    if reference not in tables:
        raise EdgeKDError(f"{doc['_source']} has no paired table against {reference!r} (its references: "
                          f"{', '.join(tables)}); rerun compare with --reference {reference!r}")
    entry = tables[reference].get(variant)
    if not entry or "metrics" not in entry:
        raise EdgeKDError(f"{doc['_source']} pairs no run of {variant!r} with {reference!r}")
    return {"seeds": entry["seeds"], **entry["metrics"]}


def _regime(doc: dict) -> dict:
    g = doc.get("regime")
    if not g:
        raise EdgeKDError(f"{doc['_source']} has no regime section; add it with "
                          f"`python -m studies.regime {Path(doc['_source']).parent}` (it needs plain `ce` rows)")
    out = {"seeds": g["seeds"], "split": doc["eval_split"], "conditions": []}
    for key, label, required, test in CONDITIONS:
        value = g.get(key)
        out["conditions"].append({"key": key, "condition": label, "required": required,
                                  "measured": value["mean"] if isinstance(value, dict) else value,
                                  "ci": value.get("ci") if isinstance(value, dict) else None,
                                  "holds": bool(value is not None and test(g))})
    out["train_seconds"] = {r["seed"]: r.get("train_seconds") for r in doc["runs"] if r["method"] == "ce"}
    out["train_seconds_median"] = g.get("train_seconds_median")
    return out


def _sanity(doc: dict, folder: Path, sanity: str, dml: str) -> dict:
    """Is the DML-by-construction variant DML, and are its students DML's, logit for logit?"""
    seeds = sorted({r["seed"] for r in doc["runs"] if r["method"] == sanity}
                   & {r["seed"] for r in doc["runs"] if r["method"] == dml})
    if not seeds:
        raise EdgeKDError(f"{doc['_source']} has no seed with both {sanity!r} and {dml!r}")
    slug = {label: parse_variants([label])[0].slug for label in (sanity, dml)}
    preds = {(label, s): predictions.load(folder, slug[label], s) for label in (sanity, dml) for s in seeds}
    # A saved `auto` (e.g. train.amp) counts as what it resolved to for that run, as compare's reuse does:
    # DML*'s runs predate the recipe pinning amp: "off", which is what their auto resolved to.
    a, b = (with_resolved_auto(m["recipe"], {"train": {}}, resolved_speed(m.get("summary")))
            for m in (preds[(label, seeds[0])].meta for label in (sanity, dml)))
    da, db = a.get("distill", {}), b.get("distill", {})
    wrong = [f"distill.{k}" for k in DML_KEYS if da.get(k) != db.get(k)]
    wrong += [f"distill.{k} is {da.get(k)!r}, not {v!r}" for k, v in
              (("method", "bdkd"), ("weighting", "forward"), ("teacher_divergence", "forward")) if da.get(k) != v]
    wrong += [k for k in sorted(set(a) | set(b)) if k != "distill" and a.get(k) != b.get(k)]
    if db.get("method") != "dml" or wrong:
        raise EdgeKDError(f"--sanity {sanity!r} is not DML by construction against --dml {dml!r} "
                          f"({', '.join(wrong) or 'the --dml variant is not dml'})")
    diff = {s: float(np.max(np.abs(preds[(sanity, s)].logits - preds[(dml, s)].logits))) for s in seeds}
    return {"variant": sanity, "equals": dml, "seeds": seeds, "max_abs_logit_difference": diff,
            "identical": all(v == 0 for v in diff.values())}


def _verdict_text(verdict: str, lower: str, higher: str) -> str:
    return lower if verdict == "lower" else higher if verdict == "higher" else NO_DIFFERENCE


def _recommendation(v1: str, v2: str, vt: str) -> str:
    """The plan's rule: the method that is better beyond the CI; CE+TS when it beats both; both
    statements when both apply."""
    said = []
    if vt == "lower" and v2 == "higher":
        said.append("post-hoc temperature scaling on a held-out split (CE+TS) calibrates better than both online "
                    "methods: use it whenever the temperature is kept through export")
    if v1 == "higher":
        said.append("among the online methods, DML (the recommended and default method): it calibrates the student "
                    "better than BD-KD beyond the CI")
    elif v1 == "lower":
        said.append("among the online methods, BD-KD: it calibrates the student better than DML beyond the CI")
    else:
        said.append("no ECE-based preference between BD-KD and DML; choose by the secondary metrics and simplicity")
    return "; ".join(said)


def decide(report: dict, ablations: dict | None, bdkd: str, dml: str, ce_ts: str, sanity: str | None,
           ablations_folder: Path | None = None, plan: str = PLAN) -> dict[str, Any]:
    """The decision from two loaded comparisons (each with `_source`, its path, for messages)."""
    if report["reference"] != dml:
        raise EdgeKDError(f"{report['_source']}'s reference is {report['reference']!r}, not --dml {dml!r}")
    h1, h2, tvd = _contrast(report, dml, bdkd), _contrast(report, ce_ts, bdkd), _contrast(report, dml, ce_ts)
    v1, v2, vt = h1["ece"]["verdict"], h2["ece"]["verdict"], tvd["ece"]["verdict"]
    out: dict[str, Any] = {
        "plan": plan, "rule": "a difference counts only when its 95% CI excludes 0",
        "labels": {"bdkd": bdkd, "dml": dml, "ce_ts": ce_ts, "sanity": sanity},
        "regime": _regime(report),
        "h1_bdkd_minus_dml": h1, "h2_bdkd_minus_ce_ts": h2, "ce_ts_minus_dml": tvd,
        "h1": _verdict_text(v1, "holds: BD-KD's student has the lower test ECE",
                            "rejected: DML's student has the lower test ECE"),
        "h2": _verdict_text(v2, "holds: BD-KD's raw student has a lower test ECE than CE+TS",
                            "rejected: CE+TS has a lower test ECE than BD-KD's raw student"),
        "ce_ts_vs_dml": _verdict_text(vt, "CE+TS has a lower test ECE than DML's student",
                                      "DML's student has a lower test ECE than CE+TS"),
        "recommendation": _recommendation(v1, v2, vt),
    }
    if ablations is not None:
        if ablations["reference"] != bdkd:
            raise EdgeKDError(f"{ablations['_source']}'s reference is {ablations['reference']!r}, not --bdkd {bdkd!r}")
        if not sanity:
            raise EdgeKDError("--ablations needs --sanity LABEL (the ablation variant that is DML by construction)")
        out["ablations_minus_bdkd"] = {label: _contrast(ablations, bdkd, label)
                                       for label in ablations["vs_reference"] if label not in (dml, sanity)}
        out["sanity"] = _sanity(ablations, ablations_folder or Path(ablations["_source"]).parent, sanity, dml)
    return out


# ---------------------------------------------------------------- markdown

def _ci(k: str, d: dict) -> str:
    if d["ci"] is None:
        return "—"
    return f"[{report_md.format_value(k, d['ci'][0], True)}, {report_md.format_value(k, d['ci'][1], True)}]"


def _contrast_rows(name: str, c: dict) -> list[str]:
    rows = []
    for i, k in enumerate(("ece", "accuracy", "nll")):
        d = c[k]
        lead = f"| {name} | {len(c['seeds'])}" if i == 0 else "| |"
        rows.append(f"{lead} | {report_md.METRIC_NAMES[k]} | {report_md.format_value(k, d['diff'], True)} | {_ci(k, d)} | "
                    f"{d['verdict']} |")
    return rows


def _line(what: str, c: dict, said: str) -> str:
    return f"- {what}: {report_md.format_value('ece', c['ece']['diff'], True)} {_ci('ece', c['ece'])}: {said}."


def _measured(c: dict) -> str:
    x = c["measured"]
    if x is None:
        return "not recorded"
    if c["key"] == "params_ratio":
        return f"1/{1 / x:.1f}"
    if c["key"] == "train_seconds_max":
        return f"{x / 60:.1f} min"
    ci = f" [{100 * c['ci'][0]:.2f}, {100 * c['ci'][1]:.2f}]" if c["ci"] else ""
    return f"{100 * x:.2f}{' points' if c['key'] == 'accuracy_gap' else '%'}{ci}"


def markdown(decision: dict, report: dict, ablations: dict | None, command: str, links: dict[str, str],
             title: str = TITLE, note: str | None = None) -> str:
    """links: relative paths from the .md to `plan`, `selection`, `image` (the copied diagram),
    `report_image` and `ablation_image` (each comparison's own)."""
    lab, g = decision["labels"], decision["regime"]
    head = "| contrast | seeds | metric | difference | 95% CI | verdict |\n|---|---|---|---|---|---|"
    lines = [
        f"# {title}", "",
        f"Pre-registered in [{Path(decision['plan']).name}]({links['plan']}) (hypotheses, seeds, tuning grid and "
        "selection rule, primary metric, decision rule), committed before any reported run. This file is written "
        "from the committed comparisons by:", "", f"    {command}", "",
        f"BD-KD* = `{lab['bdkd']}`, DML* = `{lab['dml']}` (selected on the tune split with seed 0: "
        f"[{Path(links['selection']).name}]({links['selection']})). ECE differences are in percentage points; "
        f"the rule: {decision['rule']}.", "",
        "## Decision (the plan's rule, applied mechanically)", "",
        _line("Primary (H1), student test ECE, BD-KD* minus DML*", decision["h1_bdkd_minus_dml"], decision["h1"]),
        _line("H2, BD-KD* minus CE+TS", decision["h2_bdkd_minus_ce_ts"], decision["h2"]),
        _line("CE+TS minus DML*", decision["ce_ts_minus_dml"], decision["ce_ts_vs_dml"]),
        f"- Recommendation by the plan's rule: {decision['recommendation']}.",
        "", f"## The regime's four conditions (CE runs, {g['split']} split)", "",
        f"{len(g['seeds'])} seeds; mean with 95% t interval.", "",
        "| condition | required | measured | holds |", "|---|---|---|---|",
    ]
    lines += [f"| {c['condition']} | {c['required']} | {_measured(c)} | {'yes' if c['holds'] else 'NO'} |"
              for c in g["conditions"]]
    secs = ", ".join(f"seed {s}: {t / 60:.1f}" for s, t in g["train_seconds"].items() if t is not None)
    lines += ["", f"Each CE run's training, minutes: {secs}."]
    lines += ["", "## Contrasts", "", head]
    lines += _contrast_rows("BD-KD* − DML* (H1)", decision["h1_bdkd_minus_dml"])
    lines += _contrast_rows("BD-KD* − CE+TS (H2)", decision["h2_bdkd_minus_ce_ts"])
    lines += _contrast_rows("CE+TS − DML*", decision["ce_ts_minus_dml"])
    if "ablations_minus_bdkd" in decision:
        lines += ["", "## Ablations minus BD-KD* (H3)", "", head.replace("contrast", "ablation", 1)]
        for label, c in decision["ablations_minus_bdkd"].items():
            lines += _contrast_rows(f"`{label}`", c)
    if "sanity" in decision:
        s = decision["sanity"]
        worst = max(s["max_abs_logit_difference"].values())
        said = ("identical student log-probabilities on every test image of every seed: the code check passes"
                if s["identical"] else f"NOT identical (largest log-probability difference {worst:.3g}): the code "
                "check fails")
        lines += ["", "## Code sanity check", "",
                  f"`{s['variant']}` is DML by construction (forward KL for the student on every sample, forward KL "
                  f"for the teacher, DML*'s temperature and weights). Against `{s['equals']}` on seeds "
                  f"{', '.join(map(str, s['seeds']))}: {said}."]
    if note:
        lines += ["", "## Notes (written by hand, not derived by this module)", "", note.strip()]
    lines += ["", f"![student reliability, pooled over seeds]({links['image']})", "",
              f"## The report comparison (seeds {_seeds(report)}, {report['eval_split']} split)", ""]
    lines += _demote(report_md.markdown(report, image=links["report_image"], sections=regime_md.markdown(report)))
    if ablations is not None:
        lines += ["", f"## The ablation comparison (seeds {_seeds(ablations)}, {ablations['eval_split']} split)", ""]
        lines += _demote(report_md.markdown(ablations, image=links["ablation_image"], sections=regime_md.markdown(ablations)))
    return "\n".join(lines) + "\n"


def _seeds(doc: dict) -> str:
    return ", ".join(map(str, doc["seeds"]))


def _demote(md: str) -> list[str]:
    """A comparison's markdown one heading level down, to sit inside this file."""
    return [("#" + line) if line.startswith("#") else line for line in md.splitlines()]


# ---------------------------------------------------------------- command line

def _load(folder: Path) -> dict:
    path = folder / "comparison.json"
    doc = report_md.read_comparison(path)
    if not isinstance(doc, dict) or not all(k in doc for k in ("reference", "vs_reference", "runs", "summary")):
        raise EdgeKDError(f"{path} is not a comparison.json written by `edgekd compare` (no reference, runs or summary)")
    return {**doc, "_source": str(path)}


def _render(args: argparse.Namespace, command: str) -> tuple[dict[Path, bytes], dict]:
    """(every output file's bytes, the decision); nothing is written here."""
    out = args.out
    out_json, out_md = out.with_name(out.name + ".json"), out.with_name(out.name + ".md")
    out_png = out.with_name(out.name + "-reliability.png")
    existing = [str(p) for p in (out_json, out_md, out_png) if p.exists()]
    if existing and not args.overwrite:
        raise EdgeKDError(f"{existing[0]} exists; pass --overwrite to replace it (nothing was written)")
    if not out.parent.is_dir():
        raise EdgeKDError(f"--out {out}: the folder {out.parent} does not exist")
    report = _load(args.report)
    ablations = _load(args.ablations) if args.ablations else None
    try:
        note = args.note.read_text() if args.note else None
    except (OSError, UnicodeDecodeError) as e:
        raise EdgeKDError(f"--note {args.note} cannot be read ({type(e).__name__})") from None
    source_png = args.report / "reliability_students.png"
    if not source_png.is_file():
        raise EdgeKDError(f"{source_png} is missing (compare writes it beside comparison.json)")
    try:
        decision = decide(report, ablations, args.bdkd, args.dml, args.ce_ts, args.sanity, args.ablations, args.plan)

        def rel(p: Path | str) -> str:
            return os.path.relpath(p, out_md.parent)

        links = {"plan": rel(args.plan), "selection": rel(args.selection), "image": rel(out_png),
                 "report_image": rel(source_png),
                 "ablation_image": rel(args.ablations / "reliability_students.png") if args.ablations else ""}
        md = markdown(decision, report, ablations, command, links, args.title, note)
    except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
        # A comparison.json of another shape (hand-edited, another version): one line, not a traceback.
        raise EdgeKDError(f"{args.report} or {args.ablations} holds a comparison.json of an unexpected shape "
                          f"({type(e).__name__}: {e})") from None
    strip = lambda doc: doc and {k: v for k, v in doc.items() if k != "_source"}  # noqa: E731
    doc = {"command": command, "decision": decision, "report": strip(report), "ablations": strip(ablations)}
    text = json.dumps(doc, indent=2, allow_nan=False) + "\n"
    return {out_json: text.encode(), out_md: md.encode(), out_png: source_png.read_bytes()}, decision


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
    ap.add_argument("--note", type=Path, default=None,
                    help="a markdown file included under 'Notes' (context the comparisons cannot hold, e.g. a deviation)")
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    args = ap.parse_args(argv)
    command = "python -m studies.cifar10_distill.decision " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        outputs, decision = _render(args, command)
        for path, data in outputs.items():
            files.atomic_write_bytes(path, data)
    except EdgeKDError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    print(f"H1: {decision['h1']}\nH2: {decision['h2']}\nrecommendation: {decision['recommendation']}")
    print(f"wrote {', '.join(map(str, outputs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
