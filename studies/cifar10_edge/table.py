"""What a user acts on: every row's deployed files in one table (the README's "Which recipe for my
deployment?") and the reliability diagrams of the searched INT8 files, from the report comparison
and H4's folders. Figures come from compare's summary (mean and 95% t interval over seeds) and from
the prediction files; nothing is re-measured. Torch-free."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd import calibration, plots
from edgekd.compare import predictions, stats
from edgekd.compare import report as report_md
from studies.cifar10_edge import rows as rows_io
from studies.cifar10_edge.rows import SPLIT, Labels

ROWS = ("CE", "CE+TS", "KD*", "KD*+TS", "BDKD*")
FLAVOURS = ("fp32", "int8_cpu", "int8_search")
WHAT = {"CE": "the student alone, cross-entropy", "CE+TS": "CE, temperature fitted on tune and folded into the files",
        "KD*": "Hinton KD from the frozen pretrained teacher", "KD*+TS": "KD*, temperature folded into the files",
        "BDKD*": "online BD-KD, the pretrained teacher trained on beside the student"}


def _speed(folder: Path, label: str, seeds: list[int]) -> dict:
    """The searched file's speed vs its FP32 file as the INT8 search measured it (ONNX Runtime, batch of the
    search, same process), per seed."""
    name = rows_io.slug(label)
    ratios = [((predictions.load(folder, name, s).meta.get("deployed") or {}).get("search") or {}).get("speed_vs_fp32")
              for s in seeds]
    return {"seeds": seeds, "per_seed": ratios, "median": float(np.median([r for r in ratios if r is not None]))
            if any(r is not None for r in ratios) else None}


def build(doc: dict, folder: Path, lab: Labels, seeds: list[int], h4: dict | None) -> dict:
    """{row name: {what, fp32|int8_cpu|int8_search: {ece, accuracy, nll}, drift, speed}} plus H4's two files."""
    out: dict[str, dict] = {}
    for name in ROWS:
        entry: dict = {"label": lab.rows()[name], "what": WHAT[name]}
        for f in FLAVOURS:
            st = doc["summary"][lab.label(f"{name}@{f}")]["student"]
            entry[f] = {k: st[k] for k in ("ece", "accuracy", "nll")}
        ece = {f: rows_io.runs_of(doc, lab.label(f"{name}@{f}")) for f in ("fp32", "int8_cpu")}
        signed = [ece["int8_cpu"][s]["student"]["ece"] - ece["fp32"][s]["student"]["ece"] for s in seeds]
        entry["drift_int8_cpu"] = {"signed": stats.summarize(signed), "absolute": stats.summarize(np.abs(signed)),
                                   "per_seed": signed, "seeds": seeds}
        entry["search_speed_vs_fp32"] = _speed(folder, lab.label(f"{name}@int8_search"), seeds)
        entry["ece_noise_floor_int8_search"] = doc["summary"][lab.label(f"{name}@int8_search")].get("ece_noise_floor")
        out[name] = entry
    if h4:
        for name, key in (("QAT-BDKD*", "qat_file"), ("control", "control_file")):
            out[name] = {"what": h4[key]["what"], "label": h4[key]["label"], "int8_cpu": h4[key]["metrics"],
                         "drift_from_bdkd_fp32": h4["abs_drift"]["QAT" if name == "QAT-BDKD*" else "control"]}
    return out


def confidence(doc: dict, folder: Path, lab: Labels, seeds: list[int]) -> dict:
    """What each teacher term does to the student's confidence: per row, the FP32 file's mean top-1 confidence,
    accuracy and their gap (over-confidence), and the teacher as it ends the run (KD*'s frozen one, BDKD*'s
    trained on), on the test split, mean over seeds with 95% t interval."""
    out = {}
    for name in ("CE", "KD*", "BDKD*"):
        label = lab.label(f"{name}@fp32")
        conf, acc = [], []
        for s in seeds:
            p = predictions.load(folder, rows_io.slug(label), s)
            conf.append(float(calibration.softmax(p.logits).max(axis=1).mean()))
            acc.append(calibration.accuracy(p.logits, p.labels))
        entry = {"confidence": stats.summarize(conf), "accuracy": stats.summarize(acc),
                 "over_confidence": stats.summarize([c - a for c, a in zip(conf, acc)])}
        if name != "CE":  # CE's run has no teacher of its own (a cnn_tiny trained apart and unused)
            runs = rows_io.runs_of(doc, lab.rows()[name])
            entry["teacher"] = {k: stats.summarize([runs[s]["teacher"][k] for s in seeds]) for k in ("accuracy", "ece")}
        out[name] = entry
    return out


def confidence_markdown(c: dict, hh: str = "###") -> list[str]:
    lines = [f"{hh} What the teacher term does to the student's confidence (FP32 files, test split)", "",
             "| row | teacher at the end of the run: top-1 % | its ECE % | student mean confidence % | student top-1 % | "
             "confidence minus top-1, points |", "|---|---|---|---|---|---|"]
    for name, e in c.items():
        t = e.get("teacher")
        lines.append(f"| {name} | {'—' if t is None else report_md.format_stat('accuracy', t['accuracy'])} | "
                     f"{'—' if t is None else report_md.format_stat('ece', t['ece'])} | "
                     f"{report_md.format_stat('accuracy', e['confidence'])} | {report_md.format_stat('accuracy', e['accuracy'])} | "
                     f"{report_md.format_stat('ece', e['over_confidence'])} |")
    return lines + ["", "KD*'s teacher is the pretrained one, frozen; BDKD*'s starts from it and is trained on toward the "
                        "student by the online method's teacher term."]


def _cell(k: str, entry: dict, flavour: str) -> str:
    st = (entry.get(flavour) or {}).get(k)
    return "—" if st is None else report_md.format_stat(k, st)


def _points(st: dict, signed: bool = True) -> str:
    """A summarize() result in percentage points, signed: +0.41 [+0.12, +0.70]."""
    if st["mean"] is None:
        return "—"
    f = (lambda x: f"{100 * x:+.2f}") if signed else (lambda x: f"{100 * x:.2f}")
    return f(st["mean"]) + ("" if st["ci"] is None else f" [{f(st['ci'][0])}, {f(st['ci'][1])}]")


def markdown(table: dict, hh: str = "###") -> list[str]:
    """The user's table: one line per recipe, the searched INT8 file first (the primary metric)."""
    lines = [f"{hh} Every recipe as deployed ({SPLIT} split, mean over seeds with 95% t interval)", "",
             "| recipe | searched INT8: ECE % | searched INT8: top-1 % | plain INT8: ECE % | plain INT8: top-1 % "
             "| FP32: ECE % | FP32: top-1 % | plain INT8 ECE drift, points | searched INT8 speed vs FP32 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name in ROWS:
        e = table[name]
        sp = e["search_speed_vs_fp32"]["median"]
        lines.append(f"| {name}: {e['what']} | {_cell('ece', e, 'int8_search')} | {_cell('accuracy', e, 'int8_search')} | "
                     f"{_cell('ece', e, 'int8_cpu')} | {_cell('accuracy', e, 'int8_cpu')} | {_cell('ece', e, 'fp32')} | "
                     f"{_cell('accuracy', e, 'fp32')} | {_points(e['drift_int8_cpu']['signed'])} | "
                     f"{'—' if sp is None else f'{sp:.2f}x'} |")
    for name in ("QAT-BDKD*", "control"):
        if name in table:
            e = table[name]
            lines.append(f"| {name}: {e['what']} | — | — | {_cell('ece', e, 'int8_cpu')} | {_cell('accuracy', e, 'int8_cpu')} "
                         f"| — | — | {_points(e['drift_from_bdkd_fp32'], signed=False)} (absolute, from BDKD*'s FP32 file) | — |")
    lines += ["", "Plain INT8 is ONNX Runtime's QDQ file (min-max ranges from 512 training images); searched INT8 is "
              "the file `--int8-search` picked on the tune split against its FP32 file; ECE drift is the INT8 file's "
              "ECE minus its FP32 file's, per seed, then averaged. The speed is the median over seeds of the ratio the "
              "search measured (ONNX Runtime, both files in one process)."]
    floors = [table[n]["ece_noise_floor_int8_search"] for n in ROWS if table[n].get("ece_noise_floor_int8_search") is not None]
    if floors:
        lines[-1] += (f" The ECE a perfectly calibrated file with the same confidences would show on this many test images "
                      f"(compare's noise floor of the searched files, mean over seeds): {100 * min(floors):.2f}% to "
                      f"{100 * max(floors):.2f}% across the recipes.")
    return lines


def figure(folder: Path, lab: Labels, seeds: list[int], path: Path, h4: dict | None = None) -> None:
    """One column per recipe: the searched INT8 file's reliability and confidence histogram on the test split,
    pooled over seeds; with H4, the INT8-aware fine-tune's INT8 file (from its learned ranges) last."""

    def pooled(got: list) -> dict:
        return calibration.reliability_bins(np.concatenate([p.logits for p in got]), np.concatenate([p.labels for p in got]))

    panels = {f"{name} searched INT8": pooled([predictions.load(folder, rows_io.slug(lab.label(f"{name}@int8_search")), s)
                                                for s in seeds]) for name in ROWS}
    if h4:
        panels["QAT-BDKD* INT8 (learned ranges)"] = pooled(
            [predictions.load(Path(f["folder"]), rows_io.slug(f"{f['qat']}@int8_cpu"), f["seed"]) for f in h4["folders"]])
    plots.reliability_grid(panels, path, title=f"deployed INT8 files, {SPLIT} split, seeds "
                                               f"{', '.join(map(str, seeds))} pooled")
