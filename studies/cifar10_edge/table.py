"""What a user acts on, from the report comparison and H4's folders: every recipe's deployed files in one
table (the decision's "Every recipe as deployed", which README's "Which recipe for my deployment?"
quotes), what the teacher term does to the student's confidence, and the bins of the searched INT8
files' reliability diagrams. Each recipe's figures are `edgekd compare`'s own summary (mean and 95% t
interval over seeds; drift, worst-class drop and speed against the run's FP32 file); the confidence
table, H4's two files and the diagrams are computed here from the checked prediction files. Torch-free."""

from __future__ import annotations

import numpy as np

from edgekd import calibration
from edgekd.compare import stats
from edgekd.compare import report as report_md
from studies.cifar10_edge import rows as rows_io
from studies.cifar10_edge.rows import FLAVOURS, SPLIT, Labels, Rows

ROWS = ("CE", "CE+TS", "KD*", "KD*+TS", "BDKD*")
WHAT = {"CE": "the student alone, cross-entropy", "CE+TS": "CE, temperature fitted on tune and folded into the files",
        "KD*": "Hinton KD from the frozen pretrained teacher", "KD*+TS": "KD*, temperature folded into the files",
        "BDKD*": "online BD-KD, the pretrained teacher trained on beside the student"}
VS_FP32 = ("accuracy_drop", "ece_drift", "abs_ece_drift", "worst_class_drop", "agreement")


def build(doc: dict, lab: Labels, h4: dict | None) -> dict:
    """{row name: {label, what, fp32|int8_cpu|int8_search: {ece, accuracy, nll}, vs_fp32: {int8_cpu|int8_search:
    {accuracy_drop, ece_drift, ...}}, search_speed_vs_fp32}}, plus H4's two INT8 files when given."""
    out: dict[str, dict] = {}
    for name in ROWS:
        entry: dict = {"label": lab.rows()[name], "what": WHAT[name], "vs_fp32": {}}
        for f in FLAVOURS:
            summary = doc["summary"][lab.label(f"{name}@{f}")]
            entry[f] = {k: summary["student"][k] for k in ("ece", "accuracy", "nll")}
            deployed = summary.get("deployed") or {}
            if f != "fp32":
                entry["vs_fp32"][f] = {k: deployed["vs_fp32"][k] for k in VS_FP32}
            if f == "int8_search":
                entry["search_speed_vs_fp32"] = deployed.get("speed_vs_fp32")
                entry["ece_noise_floor_int8_search"] = summary.get("ece_noise_floor")
        out[name] = entry
    if h4:
        for name, key, drift in (("QAT-BDKD*", "qat_file", "QAT"), ("control", "control_file", "control")):
            out[name] = {"what": h4[key]["what"], "label": h4[key]["label"], "seeds": h4["seeds"],
                         "int8_cpu": h4[key]["metrics"], "abs_ece_drift_from_bdkd_fp32": h4["abs_drift"][drift]}
    return out


def confidence(doc: dict, rows: Rows, lab: Labels) -> dict:
    """What each teacher term does to the student's confidence: per row, the FP32 file's mean top-1 confidence,
    accuracy and their difference (over-confidence when positive), and the teacher as it ends the run (KD*'s
    frozen one, BDKD*'s trained on), on the test split, mean over seeds with 95% t interval."""
    out = {}
    for name in ("CE", "KD*", "BDKD*"):
        pairs = rows.xy(lab.label(f"{name}@fp32"))
        conf = [float(calibration.softmax(z).max(axis=1).mean()) for z, _ in pairs]
        acc = [calibration.accuracy(z, y) for z, y in pairs]
        entry = {"seeds": rows.seeds, "confidence": stats.summarize(conf), "accuracy": stats.summarize(acc),
                 "confidence_minus_accuracy": stats.summarize([c - a for c, a in zip(conf, acc)])}
        if name != "CE":  # CE's run has no teacher of its own (a cnn_tiny trained apart and unused)
            runs = rows_io.runs_of(doc, lab.rows()[name])
            entry["teacher"] = {k: stats.summarize([runs[s]["teacher"][k] for s in rows.seeds]) for k in ("accuracy", "ece")}
        out[name] = entry
    return out


def reliability(rows: Rows, lab: Labels, h4_int8: list | None = None) -> dict[str, dict]:
    """The bins of each recipe's searched INT8 file pooled over seeds (and of the INT8-aware fine-tune's INT8
    file, from its learned ranges, when H4's (logits, labels) per seed are given): the figure's panels."""
    def pooled(pairs: list) -> dict:
        return calibration.reliability_bins(np.concatenate([z for z, _ in pairs]), np.concatenate([y for _, y in pairs]))

    panels = {f"{name} searched INT8": pooled(rows.xy(lab.label(f"{name}@int8_search"))) for name in ROWS}
    if h4_int8:
        panels["QAT-BDKD* INT8 (learned ranges)"] = pooled(h4_int8)
    return panels


# ---------------------------------------------------------------- markdown

def _stat(k: str, st: dict | None) -> str:
    return "—" if st is None else report_md.format_stat(k, st)


def _points(st: dict | None, signed: bool = True) -> str:
    """A summarize() result in percentage points: +0.41 [+0.12, +0.70] (signed) or 0.41 [0.12, 0.70]."""
    if st is None or st["mean"] is None:
        return "—"
    f = (lambda x: f"{100 * x:+.2f}") if signed else (lambda x: f"{100 * x:.2f}")
    return f(st["mean"]) + ("" if st["ci"] is None else f" [{f(st['ci'][0])}, {f(st['ci'][1])}]")


def _ratio(st: dict | None) -> str:
    if st is None or st["mean"] is None:
        return "—"
    return f"{st['mean']:.2f}x" + ("" if st["ci"] is None else f" [{st['ci'][0]:.2f}, {st['ci'][1]:.2f}]")


def markdown(table: dict, hh: str = "###") -> list[str]:
    """The user's table: one line per recipe, the searched INT8 file first (the primary metric)."""
    lines = [f"{hh} Every recipe as deployed ({SPLIT} split, mean over seeds with 95% t interval)", "",
             "| recipe | searched INT8: ECE % | top-1 % | worst class drop vs FP32, points | plain INT8: ECE % | top-1 % "
             "| ECE drift vs FP32, points | FP32: ECE % | top-1 % | searched INT8 speed vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        e = table[name]
        s, p = e["vs_fp32"]["int8_search"], e["vs_fp32"]["int8_cpu"]
        lines.append(f"| {name}: {e['what']} | {_stat('ece', e['int8_search']['ece'])} | "
                     f"{_stat('accuracy', e['int8_search']['accuracy'])} | {_points(s['worst_class_drop'])} | "
                     f"{_stat('ece', e['int8_cpu']['ece'])} | {_stat('accuracy', e['int8_cpu']['accuracy'])} | "
                     f"{_points(p['ece_drift'])} | {_stat('ece', e['fp32']['ece'])} | {_stat('accuracy', e['fp32']['accuracy'])} | "
                     f"{_ratio(e['search_speed_vs_fp32'])} |")
    for name in ("QAT-BDKD*", "control"):
        if name in table:
            e = table[name]
            lines.append(f"| {name}: {e['what']} (seeds {', '.join(map(str, e['seeds']))}) | — | — | — | "
                         f"{_stat('ece', e['int8_cpu']['ece'])} | {_stat('accuracy', e['int8_cpu']['accuracy'])} | "
                         f"{_points(e['abs_ece_drift_from_bdkd_fp32'], signed=False)} (absolute, vs BDKD*'s FP32 file) "
                         "| — | — | — |")
    lines += ["", "Plain INT8 is ONNX Runtime's QDQ file (min-max ranges from 512 training images); searched INT8 is "
              "the file `--int8-search` picked on the tune split against its FP32 file. Drift and worst class drop "
              "are each INT8 file against its own run's FP32 file, per seed, then averaged (`edgekd compare`'s "
              "summary); the speed is the ratio the search measured (ONNX Runtime, both files in one process)."]
    floors = [table[n]["ece_noise_floor_int8_search"] for n in ROWS if table[n].get("ece_noise_floor_int8_search") is not None]
    if floors:
        lines[-1] += (f" The ECE a perfectly calibrated file with the same confidences would show on this many test "
                      f"images (compare's noise floor of the searched files, mean over seeds): {100 * min(floors):.2f}% "
                      f"to {100 * max(floors):.2f}% across the recipes.")
    return lines


def confidence_markdown(c: dict, hh: str = "###") -> list[str]:
    lines = [f"{hh} What the teacher term does to the student's confidence (FP32 files, {SPLIT} split)", "",
             "| row | teacher at the end of the run: top-1 % | its ECE % | student mean confidence % | student top-1 % | "
             "confidence minus top-1, points |", "|---|---|---|---|---|---|"]
    for name, e in c.items():
        t = e.get("teacher") or {}
        lines.append(f"| {name} | {_stat('accuracy', t.get('accuracy'))} | {_stat('ece', t.get('ece'))} | "
                     f"{_stat('accuracy', e['confidence'])} | {_stat('accuracy', e['accuracy'])} | "
                     f"{_points(e['confidence_minus_accuracy'])} |")
    return lines + ["", "KD*'s teacher is the pretrained one, frozen; BDKD*'s starts from it and is trained on toward the "
                        "student by the online method's teacher term. CE's run has no teacher."]
