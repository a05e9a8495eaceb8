"""Issue 25's MobileNetV3-small table: float training + plain INT8, + searched INT8, INT8-aware online
training, all scored on the same val images against one reference, the float run's FP32 file.

    .venv/bin/python benchmarks/int8_aware_table.py --row "plain INT8=export/mnv3-plain:int8_cpu" \\
        --row "searched INT8=export/mnv3-search:int8_cpu" --row "INT8-aware=export/mnv3-qat:int8_cpu" \\
        [--threshold 0.9] [--json FILE] [--markdown FILE]

The first row's bundle also gives the reference (its fp32 file). Each bundle is measured by one
`edgekd validate BUNDLE --batch 64 --threshold TAU --json ... --save-predictions ...` (ONNX Runtime CPU,
the run's val split, which nothing in these rows was tuned or chosen on); then every row's figures are
recomputed from the saved logits against the reference's: top-1, ECE, ECE drift (|ECE - reference
ECE|), the worst class's accuracy drop (named), top-1 agreement and the share of images on which the
row and the reference make the same accept/reject decision at confidence >= TAU. Speed: every row's
file and the reference FP32 file open in one process, --rounds rounds that time each once (the first
rotating), median batch-64 images/s and median batch-1 ms (int8_search_demo.time_files).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from edgekd import calibration
from edgekd.contracts import BundleManifest
from edgekd.deploy.bundle_writer import ONNX_FILES
from edgekd.drift import decision_gap, top1_agreement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from int8_search_demo import time_files  # noqa: E402  (the benchmarks share their timing)


def measure(bundle: str, threshold: float, work: Path, tag: str) -> tuple[dict, dict]:
    js, npz = work / f"{tag}.json", work / f"{tag}.npz"
    cmd = [sys.executable, "-m", "edgekd", "validate", bundle, "--batch", "64", "--threshold", str(threshold),
           "--json", str(js), "--save-predictions", str(npz)]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if res.returncode not in (0, 1):  # 1: a gate failed, the figures are still written
        sys.exit(f"{' '.join(cmd)}: {res.stderr.strip()}")
    with np.load(npz) as z:
        return json.loads(js.read_text()), {k: z[k] for k in z.files}


def reference_images(bundle: str) -> np.ndarray:
    """The val images of the bundle's run, preprocessed as the files take them (float32 NCHW)."""
    from edgekd.data.preprocess import normalize
    from edgekd.data.split import load_split_images

    manifest = json.loads((Path(bundle) / BundleManifest.FILE).read_text())
    images = load_split_images(manifest["data"], "val")
    pre = manifest["preprocessing"]
    return normalize(images.images, pre["mean"], pre["std"])


def class_names(bundle: str) -> list[str]:
    return json.loads((Path(bundle) / BundleManifest.FILE).read_text())["class_names"]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--row", action="append", required=True, help="LABEL=BUNDLE:FORMAT (the first: the reference's bundle)")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        measured: dict[str, tuple[dict, dict]] = {}
        for k, spec in enumerate(args.row):
            label, _, target = spec.partition("=")
            bundle, _, fmt = target.rpartition(":")
            if bundle not in measured:
                measured[bundle] = measure(bundle, args.threshold, Path(tmp), f"b{k}")
            rows.append((label, bundle, fmt))
        ref_json, ref_pred = measured[rows[0][1]]
        labels, ref_logits = ref_pred["labels"], ref_pred["fp32_logits"]
        files = {"FP32 reference": Path(rows[0][1]) / ONNX_FILES["fp32"]}
        files.update({label: Path(bundle) / ONNX_FILES[fmt] for label, bundle, fmt in rows})
        speeds = time_files(files, reference_images(rows[0][1]), args.rounds)
        ref_ece = calibration.ece(ref_logits, labels)
        out = [{"row": "FP32 reference", "bundle": rows[0][1], "format": "fp32",
                "accuracy": calibration.accuracy(ref_logits, labels), "ece": ref_ece,
                "images_per_s": speeds["FP32 reference"][0], "ms_b1": speeds["FP32 reference"][1],
                "n": int(len(labels))}]
        for label, bundle, fmt in rows:
            js, pred = measured[bundle]
            if not np.array_equal(pred["labels"], labels):
                sys.exit(f"{bundle} was validated on other images than {rows[0][1]}")
            logits = pred[f"{fmt}_logits"]
            gap = decision_gap(logits, ref_logits, labels, args.threshold)
            ece = calibration.ece(logits, labels)
            speed, fp32_speed = speeds[label][0], speeds["FP32 reference"][0]
            out.append({
                "row": label, "bundle": bundle, "format": fmt, "accuracy": calibration.accuracy(logits, labels),
                "ece": ece, "ece_drift": abs(ece - ref_ece), "agreement": top1_agreement(logits, ref_logits),
                "class_acc_drop": gap["class_acc_drop"],
                "class_acc_drop_name": class_names(bundle)[gap["class_acc_drop_class"]],
                "threshold_agreement": gap["threshold_agreement"], "coverage": gap["coverage"],
                "reference_coverage": gap["reference_coverage"], "images_per_s": speed, "ms_b1": speeds[label][1],
                "x_fp32": speed / fp32_speed, "n": int(len(labels)),
            })
    table = ["| row | top-1 | ECE | ECE drift | worst class drop | top-1 agreement | same decision at "
             f"conf >= {args.threshold} | coverage | b64 img/s (x FP32) | b1 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in out:
        if r["row"] == "FP32 reference":
            table.append(f"| FP32 (float run) | {100 * r['accuracy']:.2f}% | {100 * r['ece']:.2f}% | | | | | "
                         f"| {r['images_per_s']:,.0f} | {r['ms_b1']:.2f} |")
            continue
        table.append(
            f"| {r['row']} | {100 * r['accuracy']:.2f}% | {100 * r['ece']:.2f}% | {100 * r['ece_drift']:.2f} pt | "
            f"{100 * r['class_acc_drop']:+.1f} pt ({r['class_acc_drop_name']}) | {100 * r['agreement']:.2f}% | "
            f"{100 * r['threshold_agreement']:.2f}% | {100 * r['coverage']:.1f}% (ref {100 * r['reference_coverage']:.1f}%) "
            f"| {r['images_per_s']:,.0f} ({r['x_fp32']:.2f}x) | {r['ms_b1']:.2f} |")
    text = "\n".join(table)
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps({"threshold": args.threshold, "rows": out}, indent=1) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")


if __name__ == "__main__":
    main()
