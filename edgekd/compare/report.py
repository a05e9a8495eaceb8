"""comparison.json, comparison.md and the pooled reliability diagram, all from the prediction
files (so a comparison whose run folders are gone reports the same numbers). Torch-free."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd import calibration, files
from edgekd.compare import predictions, stats
from edgekd.compare.stats import METRICS
from edgekd.drift import decision_gap, top1_agreement
from edgekd.errors import EdgeKDError, first_line

BOOTSTRAP_SEED = 0
NOISE_REPLICATES = 200
NOISE_SEED = 0
_PCT = {"accuracy", "ece", "adaptive_ece", "classwise_ece"}
METRIC_NAMES = {"accuracy": "acc", "ece": "ECE", "adaptive_ece": "adaptive ECE", "classwise_ece": "classwise ECE",
          "nll": "NLL", "brier": "Brier"}


def read_comparison(path: Path) -> Any:
    """A comparison.json's content: the one reader of the file for the tools that post-process it
    (the scripts in studies/); each checks the fields it uses. One EdgeKDError when unreadable."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise EdgeKDError(f"{path} is not a readable comparison.json ({first_line(e)})") from None


def _student_logits(variant, pred: predictions.Prediction) -> tuple[np.ndarray, float | None]:
    """The row's student logits on the evaluation split; a +ts row divides them by the
    temperature fitted on the run's TUNE split (never on the split it is evaluated on). A deployed
    row's logits are its file's, the temperature (if any) already inside."""
    if variant.deployed is not None:
        return pred.logits, (pred.meta.get("deployed") or {}).get("temperature")
    if variant.trained:
        return pred.logits, None
    t = calibration.fit_temperature(pred.tune_logits, pred.tune_labels)
    return pred.logits / t, t


def build(cmp, preds: dict, command: str | None) -> tuple[dict[str, Any], dict]:
    """-> (the comparison.json content, {label: {seed: (student logits, labels)}})."""
    rows: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {}
    runs = []
    for v in cmp.variants:
        rows[v.label] = {}
        for seed in cmp.seeds:
            p = preds[(v.slug, seed)]
            logits, temperature = _student_logits(v, p)
            rows[v.label][seed] = (logits, p.labels)
            summary = p.meta["summary"]
            run_dir = cmp.out / "runs" / f"{v.slug}-s{seed}"
            entry = {
                "method": v.label, "seed": seed, "run": str(run_dir) if run_dir.is_dir() else None,
                "predictions": str(predictions.paths(cmp.out, v.slug, seed)[0]), "eval_images": int(len(p.labels)),
                "student": {**calibration.calibration_metrics(logits, p.labels),
                            "train_accuracy": summary["student"].get("train_accuracy")},
                "teacher": {**p.meta["teacher"], "train_accuracy": summary["teacher"].get("train_accuracy")},
                "params": {"teacher": summary["teacher"].get("params"), "student": summary["student"].get("params")},
                "train_seconds": summary.get("train_seconds"),
            }
            if temperature is not None:
                entry["temperature"] = temperature
            if v.deployed is not None:
                entry["deployed"] = p.meta.get("deployed")
            runs.append(entry)
    result = {
        "command": command, "recipe": cmp.base.to_dict(), "recipe_digest": cmp.base.digest(),
        "eval_split": cmp.eval_split, "variants": [v.label for v in cmp.variants], "reference": cmp.reference,
        "seeds": cmp.seeds, "eval_images": sorted({r["eval_images"] for r in runs}),
        "method": {
            "interval_over_seeds": "mean with a 95% t interval (std ddof=1)",
            "paired_difference": "variant minus reference, paired by seed and image; 95% percentile CI of a "
                                 "hierarchical bootstrap (seeds with replacement, then images within each seed)",
            "bootstrap_replicates": cmp.replicates, "bootstrap_rng_seed": BOOTSTRAP_SEED,
            "noise_floor": "mean 15-bin ECE of Bernoulli(confidence) correctness, mean over seeds",
            "noise_floor_replicates": NOISE_REPLICATES, "noise_floor_rng_seed": NOISE_SEED,
            "posthoc_ts": "+ts rows: temperature fitted by NLL on each run's tune split",
        },
        "runs": runs,
        "summary": _summaries(cmp, runs, rows),
        "vs_reference": _versus(cmp, preds, rows, cmp.replicates, cmp.reference),
    }
    if cmp.more_references:
        result["more_references"] = list(cmp.more_references)
        result["vs_more_references"] = {ref: _versus(cmp, preds, rows, cmp.replicates, ref)
                                        for ref in cmp.more_references}
    return result, rows


def _summaries(cmp, runs: list[dict], rows: dict) -> dict:
    out = {}
    keys = (*METRICS, "train_accuracy")
    for v in cmp.variants:
        mine = [r for r in runs if r["method"] == v.label]
        floor = [stats.ece_noise_floor(z, NOISE_REPLICATES, NOISE_SEED) for z, _ in rows[v.label].values()]
        s: dict[str, Any] = {
            "seeds": len(mine),
            "student": {k: stats.summarize([r["student"][k] for r in mine]) for k in keys},
            "ece_noise_floor": float(np.mean(floor)),
        }
        if v.trained:
            s["teacher"] = {k: stats.summarize([r["teacher"][k] for r in mine]) for k in keys}
        elif v.base is not None:
            s["temperature"] = stats.summarize([r["temperature"] for r in mine])
        if v.deployed is not None:
            s["deployed"] = _deployed_summary(v, rows, mine)
        out[v.label] = s
    return out


def _deployed_summary(v, rows: dict, mine: list[dict]) -> dict[str, Any]:
    """A deployed row against its own run's FP32 file (the `@fp32` row of the same label, when
    compared): per seed the accuracy drop, ECE drift (signed and absolute), worst per-class
    accuracy drop and top-1 agreement, and for int8_search the chosen file's speed over FP32."""
    fp32 = f"{v.label.rsplit('@', 1)[0]}@fp32"
    out: dict[str, Any] = {"flavour": v.deployed}
    per_seed = [r for r in rows.get(fp32, {}) if r in rows[v.label]]
    if v.deployed != "fp32" and per_seed:
        figures = {"accuracy_drop": [], "ece_drift": [], "abs_ece_drift": [], "worst_class_drop": [],
                   "agreement": []}
        for seed in per_seed:
            (z, y), (z32, y32) = rows[v.label][seed], rows[fp32][seed]
            m, m32 = calibration.calibration_metrics(z, y), calibration.calibration_metrics(z32, y32)
            figures["accuracy_drop"].append(m32["accuracy"] - m["accuracy"])
            figures["ece_drift"].append(m["ece"] - m32["ece"])
            figures["abs_ece_drift"].append(abs(m["ece"] - m32["ece"]))
            figures["worst_class_drop"].append(decision_gap(z, z32, y)["class_acc_drop"])
            figures["agreement"].append(top1_agreement(z, z32))
        out["vs_fp32"] = {"of": fp32, "seeds": per_seed, **{k: stats.summarize(vals) for k, vals in figures.items()},
                          "per_seed": {k: vals for k, vals in figures.items()}}
    speeds = [r["deployed"]["search"]["speed_vs_fp32"] for r in mine if (r.get("deployed") or {}).get("search")]
    if speeds:
        out["speed_vs_fp32"] = stats.summarize(speeds)
    return out


def _versus(cmp, preds: dict, rows: dict, replicates: int, reference: str) -> dict:
    """Each variant minus `reference`, on the seeds both have and whose evaluation images are the same."""
    ref = next(v for v in cmp.variants if v.label == reference)
    out = {}
    for v in cmp.variants:
        if v.label == ref.label:
            continue
        seeds = [s for s in cmp.seeds if s in rows[v.label] and s in rows[ref.label]]
        same = [s for s in seeds if preds[(v.slug, s)].meta.get("eval_images_digest")
                == preds[(ref.slug, s)].meta.get("eval_images_digest")
                and np.array_equal(rows[v.label][s][1], rows[ref.label][s][1])]
        entry: dict[str, Any] = {"seeds": same}
        notes = []
        if len(same) < len(seeds):
            notes.append(f"seeds {', '.join(map(str, sorted(set(seeds) - set(same))))} left out: evaluated on "
                         f"other images than {ref.label}")
        if same:
            entry["metrics"] = stats.paired_bootstrap([rows[ref.label][s] for s in same],
                                                      [rows[v.label][s] for s in same], replicates, BOOTSTRAP_SEED)
        if len(same) == 1:
            notes.append("one paired seed: seed-to-seed variation cannot be estimated, so no interval")
        if notes:
            entry["note"] = "; ".join(notes)
        out[v.label] = entry
    return out


# ---------------------------------------------------------------- markdown

def format_value(k: str, x: float | None, signed: bool = False) -> str:
    """Metric k's value as the tables print it: accuracy and ECEs in percent, the rest as is."""
    if x is None:
        return "—"
    sign = "+" if signed else ""
    return f"{100 * x:{sign}.2f}" if k in _PCT else f"{x:{sign}.4f}"


def format_stat(k: str, st: dict) -> str:
    """A stats.summarize() result as a cell: the mean and its 95% interval in brackets."""
    if st["mean"] is None:
        return "—"
    if st["ci"] is None:
        return format_value(k, st["mean"])
    return f"{format_value(k, st['mean'])} [{format_value(k, st['ci'][0])}, {format_value(k, st['ci'][1])}]"


def _softmax_sentence(report: dict) -> str:
    """What the student rows are scored on; the +ts clause only when there are +ts rows (compare
    refuses +ts on the tune split itself, so its fitting split always differs from the reported one)."""
    if not any(label.endswith("+ts") for label in report["variants"]):
        return "Student metrics use the raw softmax."
    return ("Student metrics use the raw softmax, except rows ending in +ts: their logits are divided by a "
            f"temperature fitted (NLL) on each run's tune split, never on the {report['eval_split']} split.")


def markdown(report: dict, image: str = "reliability_students.png", sections: Sequence[str] = ()) -> str:
    """comparison.md. `sections`: markdown lines a caller adds about its own rows, placed after the
    per-variant tables and before the paired differences, which read best last."""
    lines = []
    if report.get("command"):
        lines += [f"Command: `{report['command']}`", ""]
    split, seeds = report["eval_split"], report["seeds"]
    n = report["eval_images"]
    images = f"{n[0]:,}" if len(n) == 1 else f"{n[0]:,} to {n[-1]:,}"
    m = report["method"]
    lines += [
        f"Evaluated on the {split} split: {images} images per run, {len(seeds)} seed{'s' * (len(seeds) != 1)} "
        f"({', '.join(map(str, seeds))}) per variant. {_softmax_sentence(report)}", "",
        "Each cell is the mean over seeds with its 95% confidence interval in brackets (t interval over seeds; "
        "one seed gives no interval). ECE floor: the mean 15-bin ECE a perfectly calibrated model with the same "
        f"confidences would show on this many images ({m['noise_floor_replicates']} simulations); an ECE near "
        "it cannot be told apart from perfect calibration.", "",
    ]
    cols = [(k, METRIC_NAMES[k] + (" %" if k in _PCT else "")) for k in METRICS]
    head = ["variant", *[c for _, c in cols]]
    head.insert(3, "ECE floor %")
    lines += ["### student", "", "| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for label in report["variants"]:
        s = report["summary"][label]
        cells = [format_stat(k, s["student"][k]) for k in METRICS]
        cells.insert(2, format_value("ece", s["ece_noise_floor"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += ["", "### teacher", "", "| " + " | ".join(["variant", *[c for _, c in cols]]) + " |",
              "|---" * (len(cols) + 1) + "|"]
    for label in report["variants"]:
        s = report["summary"][label]
        if "teacher" in s:
            lines.append(f"| {label} | " + " | ".join(format_stat(k, s["teacher"][k]) for k in METRICS) + " |")
    if any("teacher" not in report["summary"][v] for v in report["variants"]):
        lines += ["", "A +ts or deployed (`@`) row shares the teacher of the run it is made from."]
    lines += _deployed_markdown(report)
    lines += list(sections)
    lines += _versus_markdown(report["reference"], report["vs_reference"], report["method"])
    for ref, vs in report.get("vs_more_references", {}).items():
        lines += _versus_markdown(ref, vs, report["method"])
    lines += ["", f"![student reliability, pooled over seeds]({image})", ""]
    return "\n".join(lines)


def _deployed_markdown(report: dict) -> list[str]:
    """Each deployed file against its run's FP32 file, mean over seeds with the 95% t interval."""
    rows = [(label, report["summary"][label]["deployed"]) for label in report["variants"]
            if "vs_fp32" in (report["summary"][label].get("deployed") or {})]
    if not rows:
        return []
    lines = ["", "### deployed files against their run's FP32 file", "",
             "Per seed, the file minus the same run's `@fp32` file on the same images (accuracy drop and worst "
             "per-class accuracy drop: FP32 minus the file; ECE drift: the file minus FP32), then the mean over "
             "seeds with its 95% t interval; points.", "",
             "| deployed file | accuracy drop | ECE drift | abs ECE drift | worst-class drop | top-1 agreement % | "
             "speed vs FP32 |", "|---|---|---|---|---|---|---|"]
    for label, d in rows:
        f = d["vs_fp32"]
        speed = d.get("speed_vs_fp32")
        lines.append(f"| {label} | {format_stat('accuracy', f['accuracy_drop'])} | {format_stat('ece', f['ece_drift'])} | "
                     f"{format_stat('ece', f['abs_ece_drift'])} | {format_stat('accuracy', f['worst_class_drop'])} | "
                     f"{format_stat('accuracy', f['agreement'])} | "
                     + (f"{speed['mean']:.2f}x |" if speed and speed.get("mean") is not None else "— |"))
    return lines


def _versus_markdown(ref: str, vs: dict, m: dict) -> list[str]:
    if not vs:
        return []
    lines = [
        "", f"### vs {ref} (students)", "",
        f"Each difference is the variant minus {ref}, paired by seed and by evaluation image and averaged over "
        f"the seeds both have; its 95% CI comes from a paired hierarchical bootstrap ({m['bootstrap_replicates']} "
        "replicates: seeds resampled with replacement, then images within each seed, the same images for both). "
        "Accuracy and ECEs are in percentage points. A difference whose CI contains 0 is not a finding: "
        "no detectable difference.", "",
        "| variant | seeds | metric | difference | 95% CI | verdict |", "|---|---|---|---|---|---|",
    ]
    for label, entry in vs.items():
        if "metrics" not in entry:
            lines.append(f"| {label} | 0 | — | — | — | not paired: {entry.get('note', '')} |")
            continue
        for k in METRICS:
            d = entry["metrics"][k]
            ci = "—" if d["ci"] is None else f"[{format_value(k, d['ci'][0], True)}, {format_value(k, d['ci'][1], True)}]"
            lines.append(f"| {label} | {len(entry['seeds'])} | {METRIC_NAMES[k]} | {format_value(k, d['diff'], True)} | {ci} | "
                         f"{d['verdict']} |")
    notes = [f"{label}: {e['note']}" for label, e in vs.items() if e.get("note") and "metrics" in e]
    return lines + ([""] + notes if notes else [])


def write_outputs(report: dict, rows: dict, out: Path) -> None:
    from edgekd import plots

    files.write_json(out / "comparison.json", report)
    files.atomic_write_text(out / "comparison.md", markdown(report))
    curves = {}
    for label, per_seed in rows.items():
        logits = np.concatenate([z for z, _ in per_seed.values()])
        labels = np.concatenate([y for _, y in per_seed.values()])
        curves[label] = calibration.reliability_bins(logits, labels)
    plots.reliability_overlay(curves, out / "reliability_students.png",
                              title=f"student reliability on {report['eval_split']} (pooled over seeds)")
