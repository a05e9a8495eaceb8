"""The edge study's pre-registered decision (results/cifar10-edge-plan.md), applied mechanically to
its report comparison: which recipe gives the best-calibrated student shipped as INT8 on a CPU, at
what accuracy, and how sure are we.

    python -m studies.cifar10_edge.decision results/cifar10-edge [--h4 DIR ...] [--json FILE] [--markdown FILE]
        [--figure PNG]

OUT is the folder the plan's report command wrote (`edgekd compare ... --out results/cifar10-edge
--deployed fp32,int8_cpu,int8_search --methods CE,CE+ts,KD*,KD*+ts,BDKD*`). Its paired tables are
against the PyTorch references only, so every contrast the plan names between deployed files is
computed here from the per-run prediction files, with compare's own statistics and its replicate
count and RNG seed: H1 and H2 (`@int8_search` against `@int8_search`) by stats.paired_bootstrap,
H3 and H4 (absolute ECE drift of `@int8_cpu` from `@fp32`) by stats.drift_contrast; both resample
seeds, then images within each seed, the same images for every file of a contrast.

H4 (optional) reads each `--h4 DIR`: one seed's `edgekd compare` of the INT8-aware fine-tune of
BDKD*'s run and its float control (the plan's amendment). Label matching: among DIR's `@int8_cpu`
rows (no `+ts`), the INT8-aware row is the one whose label sets `train.quantize=int8_cpu`, the
control the one without a `train.quantize` key; exactly one of each, both of BDKD*'s method, or
DIR is refused. They pair with OUT's BDKD* runs by seed and by test-image digest.

Writes the `decision` object into OUT/comparison.json and its section into OUT/comparison.md (both
rewritten from comparison.json, as studies.regime does), or, with --json / --markdown, only to the
files given; --figure also draws the reliability diagrams of every recipe's searched INT8 file (and
the INT8-aware fine-tune's file) pooled over seeds, whose bins the decision keeps. Everything is
computed before anything is written; bad input is one line on stderr, exit 2. Torch-free.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np

from edgekd import calibration, files, plots
from edgekd.compare import report as report_md
from edgekd.compare import stats
from edgekd.compare.stats import NO_DIFFERENCE
from edgekd.compare.variants import split_top_level
from edgekd.errors import EdgeKDError
from studies import regime as regime_md
from studies.cifar10_edge import render, table
from studies.cifar10_edge import rows as rows_io
from studies.cifar10_edge.rows import BDKD, CE, KD, SPLIT, Labels, Rows

PLAN = "results/cifar10-edge-plan.md"
MARGIN = 0.005  # H2's non-inferiority margin: 0.5 ECE point
GAP, CE_ECE, MINUTES = 0.05, 0.03, 25  # the regime's conditions
QAT_KEY, QAT_VALUE = "train.quantize", "int8_cpu"
LEARNED = "train.quantize"  # the quantization method an export records for a file from ranges learned in training
RULE = "a difference counts only when its 95% CI excludes 0; otherwise: no detectable difference"


# ---------------------------------------------------------------- the plan's figures and rules

def regime(doc: dict, lab: Labels, seeds: list[int]) -> dict:
    """The three regime conditions on the test split, means over seeds."""
    kd, ce32, ce = rows_io.runs_of(doc, lab.kd), rows_io.runs_of(doc, f"{lab.ce}@fp32"), rows_io.runs_of(doc, lab.ce)
    teacher = [kd[s]["teacher"]["accuracy"] for s in seeds]
    student = [ce32[s]["student"]["accuracy"] for s in seeds]
    gap = stats.summarize([t - st for t, st in zip(teacher, student)])
    ece = stats.summarize([ce32[s]["student"]["ece"] for s in seeds])
    per_row, recorded = {}, []
    for name in ("CE", "KD*", "BDKD*"):
        runs = rows_io.runs_of(doc, lab.rows()[name])
        secs = [runs[s].get("train_seconds") for s in seeds]
        known = [t for t in secs if t is not None]
        recorded += known
        per_row[name] = {"seeds": seeds, "train_seconds": secs, "median": float(np.median(known)) if known else None,
                         "max": max(known) if known else None}
    longest = max(recorded) if recorded else None
    every = len(recorded) == 3 * len(seeds)
    return {"seeds": seeds, "split": SPLIT, "conditions": [
        {"key": "teacher_gap", "condition": "pretrained teacher minus CE student, test accuracy (mean over seeds)",
         "required": f">= {100 * GAP:.0f} points", "measured": gap, "holds": gap["mean"] >= GAP,
         "teacher_accuracy": stats.summarize(teacher), "student_accuracy": stats.summarize(student),
         "student_accuracy_pytorch": stats.summarize([ce[s]["student"]["accuracy"] for s in seeds]),
         "source": f"teacher: the frozen teacher's test figures recorded with the KD* runs ({lab.kd}); student: "
                   "CE's FP32 file (CE@fp32)"},
        {"key": "ce_ece", "condition": "CE student's test ECE (mean over seeds)", "required": f">= {100 * CE_ECE:.0f}%",
         "measured": ece, "holds": ece["mean"] >= CE_ECE,
         "pytorch": stats.summarize([ce[s]["student"]["ece"] for s in seeds]),
         "source": "CE's FP32 file (CE@fp32)"},
        {"key": "train_seconds", "condition": "every student run's training (train_seconds of each CE, KD* and "
                                              "BDKD* run)", "required": f"<= {MINUTES} min",
         "measured": longest, "holds": every and longest is not None and longest <= MINUTES * 60,
         "all_recorded": every, "per_row": per_row},
    ]}


def _says(verdict: str, lower: str, higher: str) -> str:
    return lower if verdict == "lower" else higher if verdict == "higher" else NO_DIFFERENCE


def h1(rows: Rows, lab: Labels) -> dict:
    c = rows.pair(lab.label("KD*@int8_search"), lab.label("BDKD*@int8_search"))
    c["contrast"] = "ECE(BDKD*@int8_search) - ECE(KD*@int8_search)"
    c["verdict"] = _says(c["ece"]["verdict"], "holds: BDKD*'s searched INT8 file has the lower test ECE",
                         "rejected (KD* better): KD*'s searched INT8 file has the lower test ECE")
    return c


def h2_halves(c: dict, name: str) -> dict:
    """H2 against one row from the contrast BDKD*@int8_search minus <row>@int8_search ({ece, accuracy}):
    the calibration half holds if the ECE CI's upper end is below +MARGIN (non-inferiority), the accuracy
    half if the accuracy CI lies above 0; H2 holds against the row when both do."""
    upper = c["ece"]["ci"][1] if c["ece"]["ci"] else None
    cal, acc = upper is not None and upper < MARGIN, c["accuracy"]["verdict"] == "higher"
    c["calibration_half"] = {"holds": cal, "upper_ci": upper, "margin": MARGIN, "says": (
        "no interval" if upper is None else
        f"upper CI end {render.points(upper)} {'<' if cal else '>='} {render.points(MARGIN)} point")}
    c["accuracy_half"] = {"holds": acc, "says": _says(c["accuracy"]["verdict"], "BDKD* less accurate",
                                                       "BDKD* more accurate")}
    c["holds"] = cal and acc
    c["verdict"] = (f"{'holds' if c['holds'] else 'does not hold'} against {name}: calibration half "
                    f"{'holds' if cal else 'fails'} ({c['calibration_half']['says']}); accuracy half "
                    f"{'holds' if acc else 'fails'} ({c['accuracy_half']['says']})")
    return c


def h2(rows: Rows, lab: Labels) -> dict:
    """Against KD*+TS and CE+TS (both @int8_search)."""
    out = {}
    for name in ("KD*+TS", "CE+TS"):
        c = rows.pair(lab.label(f"{name}@int8_search"), lab.label("BDKD*@int8_search"))
        c["contrast"] = f"BDKD*@int8_search - {name}@int8_search"
        out[name] = h2_halves(c, name)
    return out


def _drift_sets(rows: Rows, name: str, lab: Labels, seeds: list[int]) -> list[tuple]:
    fp32, int8 = rows.xy(lab.label(f"{name}@fp32"), seeds), rows.xy(lab.label(f"{name}@int8_cpu"), seeds)
    return [(b[0], a[0], b[1]) for b, a in zip(fp32, int8)]


def h3(rows: Rows, lab: Labels) -> dict:
    """|ECE(@int8_cpu) - ECE(@fp32)|: (a) CE+TS minus CE, (b) BDKD* minus CE; holds if the CI is above 0."""
    s = rows.seeds
    drifts = {name: [rows_io.abs_drift(*pair) for pair in zip(rows.xy(lab.label(f"{name}@fp32")),
                                                          rows.xy(lab.label(f"{name}@int8_cpu")))]
              for name in ("CE", "CE+TS", "BDKD*")}
    out = {"abs_drift": {name: {"seeds": s, "per_seed": d, **stats.summarize(d)} for name, d in drifts.items()}}
    for key, name in (("a", "CE+TS"), ("b", "BDKD*")):
        c = rows.drift(_drift_sets(rows, name, lab, s), _drift_sets(rows, "CE", lab, s), s)
        c["contrast"] = f"|drift({name}@int8_cpu)| - |drift(CE@int8_cpu)|"
        c["verdict"] = _says(c["verdict"], f"contradicted: {name} drifts less than CE under plain int8_cpu",
                             f"holds: {name} drifts more than CE under plain int8_cpu")
        out[key] = c
    return out


def _h4_labels(doc: dict, folder: Path, lab: Labels) -> tuple[str, str]:
    """(the INT8-aware row's label, the float control's label), by the rule in the module's docstring."""
    bases = sorted({v.partition("@")[0] for v in doc["variants"]
                    if v.endswith("@int8_cpu") and not v.partition("@")[0].endswith("+ts")})
    keys = {b: [tuple(x.strip() for x in p.partition("=")[::2]) for p in split_top_level(b, ":")[1:]] for b in bases}
    qat = [b for b in bases if (QAT_KEY, QAT_VALUE) in keys[b]]
    control = [b for b in bases if all(k != QAT_KEY for k, _ in keys[b])]
    if len(qat) != 1 or len(control) != 1:
        raise EdgeKDError(f"--h4 {folder}: H4 needs exactly one @int8_cpu row whose label sets "
                          f"{QAT_KEY}={QAT_VALUE} (the INT8-aware fine-tune) and exactly one without {QAT_KEY} (its "
                          f"float control); found {len(qat)} and {len(control)} among: {', '.join(bases) or 'none'}")
    method = split_top_level(lab.bdkd, ":")[0]
    other = [b for b in (qat[0], control[0]) if split_top_level(b, ":")[0] != method]
    if other:
        raise EdgeKDError(f"--h4 {folder}: {other[0]!r} is not a fine-tune of BDKD* (method {method!r})")
    return qat[0], control[0]


def h4(folders: list[Path], rows: Rows, lab: Labels) -> tuple[dict | None, list]:
    """|ECE(QAT@int8_cpu) - ECE(BDKD*@fp32)| minus |ECE(BDKD*@int8_cpu) - ECE(BDKD*@fp32)|, paired by seed
    and image; holds if the CI lies below 0. The control's drift from BDKD*@fp32 beside it. Also returns the
    INT8-aware file's (logits, labels) per seed, for the reliability diagram."""
    if not folders:
        return None, []
    files_of: dict[int, dict] = {}
    for folder in folders:
        doc = rows_io.read(folder, "--h4")
        qat, control = _h4_labels(doc, folder, lab)
        for s in sorted(doc["seeds"]):
            if s not in rows.seeds:
                raise EdgeKDError(f"--h4 {folder}: seed {s} has no BDKD* run in OUT (its seeds: "
                                  f"{', '.join(map(str, rows.seeds))}); H4 pairs by seed")
            if s in files_of:
                raise EdgeKDError(f"--h4 {folder}: seed {s} is also in --h4 {files_of[s]['folder']}; give each seed once")
            got = rows_io.load(folder, [f"{qat}@int8_cpu", f"{control}@int8_cpu"], [s])
            ref = rows.preds[(lab.label("BDKD*@fp32"), s)]
            p, c = got[(f"{qat}@int8_cpu", s)], got[(f"{control}@int8_cpu", s)]
            if p.meta.get("eval_images_digest") != ref.meta.get("eval_images_digest") or not np.array_equal(p.labels, ref.labels):
                raise EdgeKDError(f"--h4 {folder}: seed {s}'s test images are not OUT's (image digests "
                                  f"{p.meta.get('eval_images_digest')} and {ref.meta.get('eval_images_digest')}); H4 "
                                  "pairs them image by image")
            how = [((x.meta.get("deployed") or {}).get("quantization") or {}).get("method") for x in (p, c)]
            if how[0] != LEARNED or how[1] == LEARNED:
                raise EdgeKDError(f"--h4 {folder}: seed {s}'s INT8 files are not an INT8-aware file from the ranges "
                                  f"learned in training and a post-training one (quantization methods {how[0]!r} of "
                                  f"{qat!r}, {how[1]!r} of {control!r})")
            files_of[s] = {"folder": str(folder), "qat": qat, "control": control, "qat_int8": p, "control_int8": c}
    seeds = sorted(files_of)
    fp32 = rows.xy(lab.label("BDKD*@fp32"), seeds)
    ptq = _drift_sets(rows, "BDKD*", lab, seeds)
    qat = [(b[0], files_of[s]["qat_int8"].logits, b[1]) for s, b in zip(seeds, fp32)]
    ctl = [(b[0], files_of[s]["control_int8"].logits, b[1]) for s, b in zip(seeds, fp32)]
    c = rows.drift(qat, ptq, seeds)
    c["contrast"] = "|ECE(QAT@int8_cpu) - ECE(BDKD*@fp32)| - |ECE(BDKD*@int8_cpu) - ECE(BDKD*@fp32)|"
    c["verdict"] = _says(c["verdict"], "holds: the INT8-aware fine-tune drifts less than BDKD*'s plain int8_cpu file",
                         "rejected: the INT8-aware fine-tune drifts more than BDKD*'s plain int8_cpu file")
    drifts = {name: [abs(calibration.ece(z, y) - calibration.ece(b, y)) for b, z, y in sets]
              for name, sets in (("QAT", qat), ("BDKD*", ptq), ("control", ctl))}
    c["abs_drift"] = {name: {"seeds": seeds, "per_seed": d, **stats.summarize(d)} for name, d in drifts.items()}
    c["control_minus_ptq"] = rows.drift(ctl, ptq, seeds)  # beside, not a hypothesis
    c["qat_minus_control"] = rows.drift(qat, ctl, seeds)
    c["folders"] = [{"seed": s, **{k: files_of[s][k] for k in ("folder", "qat", "control")}} for s in seeds]
    for key, row, what, sets in (
            ("qat_file", "qat", "BDKD* fine-tuned INT8-aware, its INT8 file from the learned ranges", qat),
            ("control_file", "control", "BDKD* fine-tuned in float, plain int8_cpu", ctl)):
        c[key] = {"what": what, "label": f"{files_of[seeds[0]][row]}@int8_cpu",
                  "metrics": {k: stats.summarize([getattr(calibration, k)(z, y) for _, z, y in sets])
                              for k in ("ece", "accuracy", "nll")}}
    return c, [(z, y) for _, z, y in qat]


def recommendation(kd_ts: dict) -> str:
    """The plan's last rule, from BDKD*@int8_search minus KD*+TS@int8_search: KD*+TS as good as BDKD* (no
    detectable ECE difference, or BDKD*'s advantage within the margin) -> a frozen teacher plus a folded
    temperature is enough; BDKD* better beyond the CI and the margin -> use it, by how much."""
    e, a = kd_ts["ece"], kd_ts["accuracy"]
    acc = (f"accuracy BDKD* minus KD*+TS {render.points(a['diff'])} points {render.ci(a)}: "
           f"{_says(a['verdict'], 'BDKD* less accurate', 'BDKD* more accurate')}")
    ece = f"{render.points(e['diff'])} points {render.ci(e)}"
    enough = "For INT8 on a CPU, a frozen teacher plus a folded temperature is enough: ship KD*+TS's searched INT8 file"
    if e["verdict"] == "higher":
        return f"{enough}; it is better calibrated than BDKD*'s (ECE BDKD* minus KD*+TS {ece}; {acc})."
    if e["verdict"] != "lower":
        return f"{enough}; BDKD*'s is not better calibrated (ECE BDKD* minus KD*+TS {ece}: {NO_DIFFERENCE}; {acc})."
    if e["ci"][0] > -MARGIN:
        return (f"{enough}; BDKD*'s is better calibrated by only {100 * -e['diff']:.2f} points, its whole CI "
                f"within the {100 * MARGIN:.1f}-point margin (ECE BDKD* minus KD*+TS {ece}; {acc}).")
    return (f"For INT8 on a CPU, train with online BD-KD from the pretrained teacher (BDKD*) and ship its searched "
            f"INT8 file: its test ECE is {100 * -e['diff']:.2f} points lower than KD*+TS's (BDKD* minus KD*+TS "
            f"{ece}; {acc}).")


def decide(folder: Path, lab: Labels | None = None, h4_folders: list[Path] | tuple = (),
           command: str | None = None) -> tuple[dict, dict]:
    """(the comparison.json content, the decision); nothing is written."""
    lab = lab or Labels()
    doc = rows_io.read(folder, "OUT")
    wanted = [*(lab.rows()[n] for n in ("CE", "KD*", "BDKD*")), *map(lab.label, lab.deployed())]
    missing = [x for x in wanted if x not in doc["variants"]]
    if missing:
        raise EdgeKDError(f"{folder / 'comparison.json'} has no row {missing[0]!r}"
                          + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                          + ": the decision needs CE, KD* and BDKD*, their +ts rows and the deployed files of the "
                          "plan's report command (--deployed fp32,int8_cpu,int8_search)")
    seeds = sorted(doc["seeds"])
    if len(seeds) < 2:
        raise EdgeKDError(f"{folder / 'comparison.json'} has {len(seeds)} seed: the plan's CIs need at least 2")
    for x in wanted:
        if sorted(rows_io.runs_of(doc, x)) != seeds:
            raise EdgeKDError(f"{folder / 'comparison.json'}: row {x!r} has runs of seeds "
                              f"{', '.join(map(str, sorted(rows_io.runs_of(doc, x)))) or 'none'}, the comparison's seeds are "
                              f"{', '.join(map(str, seeds))}; the contrasts pair by seed")
    m = doc.get("method") or {}
    rows = Rows(rows_io.load(folder, [lab.label(n) for n in lab.deployed()], seeds),
                seeds, int(m.get("bootstrap_replicates", 1000)), int(m.get("bootstrap_rng_seed", report_md.BOOTSTRAP_SEED)))
    h2_ = h2(rows, lab)
    h4_, qat_int8 = h4(list(h4_folders), rows, lab)
    decision: dict[str, Any] = {
        "plan": PLAN, "command": command, "rule": RULE, "labels": lab.rows(), "seeds": seeds, "split": SPLIT,
        "eval_images": doc.get("eval_images"),
        "statistics": {
            "replicates": rows.boot["replicates"], "rng_seed": rows.boot["rng_seed"],
            "paired": "edgekd.compare.stats.paired_bootstrap on the deployed rows' prediction files (seeds with "
                      "replacement, then images within each seed, the same images for both rows)",
            "drift": "edgekd.compare.stats.drift_contrast (the same hierarchical bootstrap, the ECE of each "
                     "resample recomputed for every file)",
            "rows": "mean over seeds with a 95% t interval (comparison.json's summary)"},
        "rows": {n: {k: doc["summary"][lab.label(n)]["student"][k] for k in ("ece", "accuracy")} for n in lab.deployed()},
        "regime": regime(doc, lab, seeds), "h1": h1(rows, lab), "h2": h2_, "h3": h3(rows, lab),
        "h4": h4_, "recommendation": recommendation(h2_["KD*+TS"]),
        "table": table.build(doc, lab, h4_), "confidence": table.confidence(doc, rows, lab),
        "reliability": table.reliability(rows, lab, qat_int8),
    }
    return doc, decision


# ---------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, metavar="OUT", help="the report comparison's folder (edgekd compare --out)")
    ap.add_argument("--h4", type=Path, action="append", default=[], metavar="DIR",
                    help="one seed's comparison of BDKD*'s INT8-aware fine-tune and its float control (repeat per seed)")
    ap.add_argument("--json", type=Path, default=None, metavar="FILE",
                    help="write {command, decision} here instead of into OUT/comparison.json")
    ap.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                    help="write the decision's markdown here instead of into OUT/comparison.md")
    ap.add_argument("--figure", type=Path, default=None, metavar="PNG",
                    help="also draw the reliability diagrams of every recipe's searched INT8 file (and the INT8-aware "
                         "fine-tune's file with --h4), pooled over seeds, into this PNG")
    ap.add_argument("--ce", default=CE, help=f"CE's label (default {CE})")
    ap.add_argument("--kd", default=KD, help=f"KD*'s label (default {KD}, the tuning's selection)")
    ap.add_argument("--bdkd", default=BDKD, help=f"BDKD*'s label (default {BDKD}, the tuning's selection)")
    args = ap.parse_args(argv)
    command = "python -m studies.cifar10_edge.decision " + shlex.join(argv if argv is not None else sys.argv[1:])
    try:
        for flag, path in (("--json", args.json), ("--markdown", args.markdown), ("--figure", args.figure)):
            if path is not None and not path.parent.is_dir():
                raise EdgeKDError(f"{flag} {path}: the folder {path.parent} does not exist")
        try:
            doc, decision = decide(args.out, Labels(args.ce, args.kd, args.bdkd), args.h4, command)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as e:
            raise EdgeKDError(f"{args.out} or an --h4 folder holds a comparison.json of an unexpected shape "
                              f"({type(e).__name__}: {e})") from None
        outputs: dict[Path, str | bytes] = {}
        if args.figure is not None:
            if args.figure.is_dir():
                raise EdgeKDError(f"--figure {args.figure} is a folder; give the PNG file to write")
            outputs[args.figure] = plots.reliability_grid_png(
                decision["reliability"], title=f"deployed INT8 files, {SPLIT} split, seeds "
                                               f"{', '.join(map(str, decision['seeds']))} pooled")
        if args.json or args.markdown:
            if args.json:
                outputs[args.json] = render.json_text({"command": command, "decision": decision})
            if args.markdown:
                outputs[args.markdown] = render.markdown(decision, level=1)
        else:
            doc["decision"] = decision
            outputs[args.out / "comparison.json"] = render.json_text(doc)
            outputs[args.out / "comparison.md"] = report_md.markdown(
                doc, sections=[*regime_md.markdown(doc), "", *render.markdown(decision, level=3).splitlines()])
    except EdgeKDError as e:
        print(f"edgekd: error: {e}", file=sys.stderr)
        return 2
    for path, content in outputs.items():
        (files.atomic_write_bytes if isinstance(content, bytes) else files.atomic_write_text)(path, content)
    print(render.summary(decision))
    print(f"wrote {', '.join(map(str, outputs))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
