"""The edge study's decision as text: its markdown section, its JSON and the lines the command prints.
Percentage points throughout; nothing is bolded (the plan: nothing inside a CI is). Torch-free."""

from __future__ import annotations

import json

from edgekd.compare import report as report_md
from edgekd.compare.stats import NO_DIFFERENCE
from studies.cifar10_edge import table


def points(x: float | None) -> str:
    """A fraction as signed percentage points: 0.0123 -> +1.23."""
    return "—" if x is None else f"{100 * x:+.2f}"


def ci(d: dict) -> str:
    """The 95% CI of a contrast ({diff, ci, ...}) in points."""
    return "(no interval)" if d.get("ci") is None else f"[{points(d['ci'][0])}, {points(d['ci'][1])}]"


def json_text(obj) -> str:
    """As edgekd.files.write_json writes (strict JSON: a NaN is refused)."""
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n"


def _stat(k: str, st: dict) -> str:
    return report_md.format_stat(k, st)


def _minutes(x: float | None) -> str:
    return "not recorded" if x is None else f"{x / 60:.1f} min"


def _measured(c: dict) -> str:
    if c["key"] == "train_seconds":
        return f"longest {_minutes(c['measured'])}" + ("" if c["all_recorded"] else " (some runs not recorded)")
    unit = " points" if c["key"] == "teacher_gap" else "%"
    return _stat("ece", c["measured"]) + unit


def _line(what: str, c: dict, said: str | None = None) -> str:
    return f"- {what}: {points(c['diff'] if 'diff' in c else c['ece']['diff'])} " \
           f"{ci(c if 'diff' in c else c['ece'])}: {said or c['verdict']}."


def _contrast_rows(name: str, c: dict) -> list[str]:
    out = []
    for i, k in enumerate(("ece", "accuracy", "nll")):
        d = c[k]
        cell = (lambda x: points(x)) if k != "nll" else (lambda x: "—" if x is None else f"{x:+.4f}")
        interval = "(no interval)" if d["ci"] is None else f"[{cell(d['ci'][0])}, {cell(d['ci'][1])}]"
        lead = f"| {name} | {len(c['seeds'])}" if i == 0 else "| |"
        out.append(f"{lead} | {report_md.METRIC_NAMES[k]} | {cell(d['diff'])} | {interval} | {d['verdict']} |")
    return out


def _per_seed(seeds: list[int], values: list[float], signed: bool = True) -> str:
    return ", ".join(f"seed {s}: {points(v) if signed else f'{100 * v:.2f}'}" for s, v in zip(seeds, values))


def markdown(d: dict, level: int = 2) -> str:
    h, hh = "#" * level, "#" * (level + 1)
    lab, st, g = d["labels"], d["statistics"], d["regime"]
    n = d.get("eval_images") or []
    lines = [
        f"{h} Decision: the pre-registered rules of {d['plan']}, applied mechanically", "",
        f"Written from the committed comparison by `{d['command']}`." if d.get("command") else "",
        "", "Rows: " + "; ".join(f"{name} = `{label}`" for name, label in lab.items()) + ". Seeds "
        f"{', '.join(map(str, d['seeds']))}, {d['split']} split" + (f" ({n[0]:,} images per run)." if len(n) == 1 else ".")
        + " ECE and accuracy differences are in percentage points, row minus row, paired by seed and by test "
        f"image; their 95% CIs come from the hierarchical bootstrap of `edgekd compare` ({st['replicates']} "
        f"replicates, RNG seed {st['rng_seed']}: seeds with replacement, then images within each seed), run on the "
        f"deployed rows' prediction files. The rule: {d['rule']}.", "",
        f"- Decision: {d['recommendation']}",
        _line("H1, ECE(BDKD*@int8_search) − ECE(KD*@int8_search)", d["h1"]),
    ]
    for name, c in d["h2"].items():
        lines.append(_line(f"H2, BDKD*@int8_search − {name}@int8_search, ECE", c, c["verdict"]))
    for key, name in (("a", "CE+TS"), ("b", "BDKD*")):
        lines.append(_line(f"H3 ({key}), absolute ECE drift under plain int8_cpu, {name} minus CE", d["h3"][key]))
    if d.get("h4"):
        lines.append(_line("H4, absolute ECE drift from BDKD*@fp32, INT8-aware fine-tune minus BDKD*@int8_cpu",
                           d["h4"]))
    else:
        lines.append("- H4: not evaluated here (no --h4 folders).")
    if d.get("table"):
        lines += ["", *table.markdown(d["table"], hh)]
    if d.get("confidence"):
        lines += ["", *table.confidence_markdown(d["confidence"], hh)]
    lines += ["", f"{hh} Regime conditions ({g['split']} split, mean over seeds with 95% t interval)", "",
              "| condition | required | measured | holds |", "|---|---|---|---|"]
    lines += [f"| {c['condition']} | {c['required']} | {_measured(c)} | {'holds' if c['holds'] else 'fails'} |"
              for c in g["conditions"]]
    gap, ece, secs = g["conditions"]
    lines += ["", f"Teacher gap: teacher {_stat('accuracy', gap['teacher_accuracy'])}%, CE student "
              f"{_stat('accuracy', gap['student_accuracy'])}% (the PyTorch net: "
              f"{_stat('accuracy', gap['student_accuracy_pytorch'])}%); {gap['source']}. CE ECE: {ece['source']} "
              f"(the PyTorch net: {_stat('ece', ece['pytorch'])}%). Training per row: "
              + "; ".join(f"{name} median {_minutes(r['median'])}, longest {_minutes(r['max'])}"
                          for name, r in secs["per_row"].items()) + "."]
    lines += ["", f"{hh} Paired contrasts of the searched INT8 files (H1, H2)", "",
              "| contrast | seeds | metric | difference | 95% CI | verdict |", "|---|---|---|---|---|---|"]
    lines += _contrast_rows("BDKD* − KD* (H1)", d["h1"])
    for name, c in d["h2"].items():
        lines += _contrast_rows(f"BDKD* − {name} (H2)", c)
    margin = points(next(iter(d["h2"].values()))["calibration_half"]["margin"])
    lines += ["", (f"H2's non-inferiority margin: {margin} ECE point on the upper CI end; its accuracy half needs "
                   "the accuracy CI above 0.")]
    h3 = d["h3"]
    lines += ["", f"{hh} Absolute ECE drift under plain int8_cpu, |ECE(@int8_cpu) − ECE(@fp32)| (H3)", "",
              "| row | per seed | mean [95% t interval] |", "|---|---|---|"]
    lines += [f"| {name} | {_per_seed(r['seeds'], r['per_seed'], False)} | {_stat('ece', r)} |"
              for name, r in h3["abs_drift"].items()]
    lines += ["", "| contrast | per seed | difference | 95% CI | verdict |", "|---|---|---|---|---|"]
    lines += [f"| ({k}) {name} minus CE | {_per_seed(h3[k]['seeds'], h3[k]['per_seed'])} | {points(h3[k]['diff'])} | "
              f"{ci(h3[k])} | {h3[k]['verdict']} |" for k, name in (("a", "CE+TS"), ("b", "BDKD*"))]
    if d.get("h4"):
        lines += _h4_markdown(d["h4"], hh)
    return "\n".join(lines) + "\n"


def _h4_markdown(c: dict, hh: str) -> list[str]:
    rows = [f"| {name} | {_per_seed(r['seeds'], r['per_seed'], False)} | {_stat('ece', r)} |"
            for name, r in c["abs_drift"].items()]
    pairs = {(f["qat"], f["control"]) for f in c["folders"]}
    where = ", ".join(f"{f['folder']} (seed {f['seed']})" for f in c["folders"])
    labels = (f"QAT `{next(iter(pairs))[0]}`, control `{next(iter(pairs))[1]}`, from {where}" if len(pairs) == 1 else
              "; ".join(f"seed {f['seed']}: QAT `{f['qat']}`, control `{f['control']}`, from {f['folder']}"
                        for f in c["folders"]))
    beside = [("control minus BDKD*@int8_cpu (the 2 extra float epochs)", c["control_minus_ptq"]),
              ("INT8-aware minus control (the INT8-aware training alone)", c["qat_minus_control"])]
    return ["", f"{hh} The INT8-aware fine-tune (H4)", "",
            ("Absolute ECE drift of each INT8 file from BDKD*'s own FP32 file, |ECE(file) − ECE(BDKD*@fp32)|: QAT "
             "is the INT8-aware fine-tune's file from its learned ranges, BDKD* its plain int8_cpu file, control the "
             f"float fine-tune's plain int8_cpu file. Rows: {labels}."), "",
            "| file | per seed | mean [95% t interval] |", "|---|---|---|", *rows, "",
            "| contrast | per seed | difference | 95% CI | verdict |", "|---|---|---|---|---|",
            (f"| H4: QAT minus BDKD*@int8_cpu | {_per_seed(c['seeds'], c['per_seed'])} | {points(c['diff'])} | "
             f"{ci(c)} | {c['verdict']} |"),
            *[f"| beside, not a hypothesis: {what} | {_per_seed(x['seeds'], x['per_seed'])} | {points(x['diff'])} | "
              f"{ci(x)} | {x['verdict'] if x['verdict'] == NO_DIFFERENCE else x['verdict'] + ' (CI excludes 0)'} |"
              for what, x in beside]]


def summary(d: dict) -> str:
    """What the command prints: each condition and hypothesis in a line, then the decision."""
    g = d["regime"]["conditions"]
    lines = ["regime: " + "; ".join(f"{c['key']} {'holds' if c['holds'] else 'FAILS'}" for c in g),
             f"H1: {d['h1']['verdict']}"]
    lines += [f"H2: {c['verdict']}" for c in d["h2"].values()]
    lines += [f"H3 ({k}): {d['h3'][k]['verdict']}" for k in ("a", "b")]
    lines.append(f"H4: {d['h4']['verdict']}" if d.get("h4") else "H4: not evaluated (no --h4)")
    return "\n".join(lines + [f"decision: {d['recommendation']}"])
