"""ONNX Runtime CPU throughput of FP32 vs INT8 vs PyTorch eager, and what INT8 costs in accuracy and ECE.

    .venv/bin/python benchmarks/bench_export.py RUN [RUN ...] [--repeats 15] [--variants] [--json FILE]

Per run (a finished `edgekd distill` run directory), the FP32 ONNX file and both
INT8 files, `int8` (model_int8.onnx: symmetric, for TensorRT and ONNX Runtime)
and `int8_cpu` (model_int8_cpu.onnx: uint8 activations, for ONNX Runtime on
CPUs), are built exactly as `edgekd export` builds them (edgekd.deploy, into a
temp folder, one shared calibration), then:

  - accuracy: every file runs on the run's val split in ONNX Runtime (CPU);
    each INT8 file's top-1 drop and |ECE drift| are measured against the FP32 file;
  - speed: PyTorch eager (eval, no_grad), ONNX Runtime FP32 and each INT8 file,
    at batch 1 and 64, on real val images. Every repeat times each engine once
    (batch 64: one call; batch 1: a loop of --calls-b1 calls), rotating who goes
    first, so drifting load on a shared machine hits all engines alike, with a
    0.1 s pause before each engine (idle threads of the previous one, PyTorch's
    OpenMP team or ONNX Runtime's pool, spin-wait for a while and would steal
    the 2 cores); the figure is the median images/s over --repeats after
    --warmup untimed calls.

--variants adds INT8 files with other settings (calibration method, first and
last layer in FP32) and int8_cpu written as QOperator (QLinearConv etc.)
instead of QDQ, the alternative format export did not pick.

The summary line per run says whether int8_cpu reaches TARGET_SPEEDUP x FP32.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from edgekd.calibration import calibration_metrics
from onnxruntime.quantization import QuantFormat

from edgekd.deploy.int8 import Int8Settings, pick_calibration, quantize_int8, quantize_int8_cpu
from edgekd.deploy.onnx_export import INPUT_NAME, export_fp32
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.source import Student, load_run_student, split_images

BATCHES = (1, 64)
PAUSE_S = 0.1
TARGET_SPEEDUP = 1.8  # the INT8 CPU target: int8_cpu images/s >= 1.8 x the FP32 file's


@dataclass
class Variant:
    label: str
    settings: Int8Settings
    cpu: bool = False  # int8_cpu (quantize_int8_cpu) rather than int8 (quantize_int8)
    quant_format: QuantFormat = QuantFormat.QDQ  # int8_cpu only


def variants(with_extras: bool) -> list[Variant]:
    default = Int8Settings()  # what edgekd export writes
    found = [Variant("int8", default), Variant("int8_cpu", default, cpu=True)]
    if with_extras:
        found += [
            Variant("int8 first/last fp32" if not default.keep_first_last_fp32 else "int8 all layers",
                    replace(default, keep_first_last_fp32=not default.keep_first_last_fp32)),
            Variant("int8 entropy", replace(default, method="entropy")),
            Variant("int8 percentile", replace(default, method="percentile")),
            Variant("int8_cpu as QOperator (not exported)", default, cpu=True, quant_format=QuantFormat.QOperator),
        ]
    return found


def accuracy_row(label: str, logits: np.ndarray, labels: np.ndarray, fp32: dict, fp32_logits: np.ndarray) -> dict:
    m = calibration_metrics(logits, labels)
    return {"file": label, "accuracy": m["accuracy"], "ece": m["ece"], "nll": m["nll"],
            "top1_drop_vs_fp32": fp32["accuracy"] - m["accuracy"], "ece_drift_vs_fp32": abs(m["ece"] - fp32["ece"]),
            "agreement_with_fp32": float(np.mean(logits.argmax(1) == fp32_logits.argmax(1)))}


def onnx_runner(path: Path) -> Callable[[np.ndarray], object]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x})


def torch_runner(student: Student) -> Callable[[np.ndarray], object]:
    model = student.model.eval()

    def run(x: np.ndarray):
        with torch.no_grad():
            return model(torch.from_numpy(x))

    return run


def throughput(engines: dict[str, Callable], x: np.ndarray, repeats: int, warmup: int, calls: int) -> dict[str, float]:
    """Median images/s per engine; engines take turns within every repeat, the first one rotating."""
    for run in engines.values():
        for _ in range(warmup):
            run(x)
    names = list(engines)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(PAUSE_S)  # let the previous engine's threads stop spin-waiting (OpenMP, ORT's pool)
            start = time.perf_counter()
            for _ in range(calls):
                engines[name](x)
            samples[name].append(calls * len(x) / (time.perf_counter() - start))
    return {n: statistics.median(v) for n, v in samples.items()}


def bench_run(run: Path, args, work: Path) -> dict:
    student = load_run_student(run)
    ck = student.ckpt
    val = split_images(student, "val")
    x_val = student.preprocess(val)
    train = split_images(student, "train")
    fp32_path = work / f"{run.name}-fp32.onnx"
    export_fp32(student.model, fp32_path, int(ck["in_channels"]), int(ck["image_size"]))
    fp32_logits = onnxruntime_logits(fp32_path, x_val)
    fp32 = calibration_metrics(fp32_logits, val.labels)
    torch_logits = student.logits(x_val)

    rows = [accuracy_row("pytorch", torch_logits, val.labels, fp32, fp32_logits),
            accuracy_row("fp32", fp32_logits, val.labels, fp32, fp32_logits)]
    files = {"fp32": fp32_path}
    for v in variants(args.variants):
        path = work / f"{run.name}-{len(files)}.onnx"
        s = v.settings
        calib = student.preprocess(train.take(pick_calibration(len(train.labels), s)))
        # One calibration per settings, shared by int8 and int8_cpu as in edgekd export.
        cache = work / f"{run.name}-calibration-{s.method}-{s.samples}-{s.seed}.json"
        if v.cpu:
            quantize_int8_cpu(fp32_path, path, calib, s, calibration_cache=cache, quant_format=v.quant_format)
        else:
            quantize_int8(fp32_path, path, calib, s, calibration_cache=cache)
        files[v.label] = path
        rows.append(accuracy_row(v.label, onnxruntime_logits(path, x_val), val.labels, fp32, fp32_logits))
        print(f"  {run.name}: {v.label} quantized", flush=True)

    speed = {}
    for batch in BATCHES:
        engines = {"pytorch eager": torch_runner(student), **{k: onnx_runner(p) for k, p in files.items()}}
        calls = args.calls_b1 if batch == 1 else 1
        x = np.ascontiguousarray(np.resize(x_val, (batch, *x_val.shape[1:])))  # real val images, repeated if few
        speed[batch] = throughput(engines, x, args.repeats, args.warmup, calls)
    return {"run": str(run), "arch": ck["arch"], "val_images": int(len(val.labels)),
            "accuracy": rows, "images_per_s": {str(b): v for b, v in speed.items()}}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": list(os.getloadavg())}


def print_report(result: dict) -> None:
    print(f"\n## {result['arch']} ({result['run']}), {result['val_images']} val images")
    print("| file | top-1 | ECE | top-1 drop vs FP32 (pt) | ECE drift vs FP32 (pt) | agreement with FP32 |")
    print("|---|---|---|---|---|---|")
    for r in result["accuracy"]:
        print(f"| {r['file']} | {100 * r['accuracy']:.2f}% | {100 * r['ece']:.2f}% | {100 * r['top1_drop_vs_fp32']:+.2f} "
              f"| {100 * r['ece_drift_vs_fp32']:.2f} | {100 * r['agreement_with_fp32']:.2f}% |")
    print("\n| engine | " + " | ".join(f"batch {b} img/s | x FP32" for b in BATCHES) + " |")
    print("|---|" + "---|---|" * len(BATCHES))
    speeds = result["images_per_s"]
    for engine in speeds[str(BATCHES[0])]:
        cells = [f"{speeds[str(b)][engine]:.0f} | {speeds[str(b)][engine] / speeds[str(b)]['fp32']:.2f}" for b in BATCHES]
        print(f"| {engine} | " + " | ".join(cells) + " |")
    verdicts = []
    for b in BATCHES:
        ratio = speeds[str(b)]["int8_cpu"] / speeds[str(b)]["fp32"]
        verdicts.append(f"batch {b} {ratio:.2f}x ({'met' if ratio >= TARGET_SPEEDUP else 'NOT met'})")
    print(f"\nint8_cpu vs FP32 (target >= {TARGET_SPEEDUP}x): " + ", ".join(verdicts))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished edgekd distill run directories")
    p.add_argument("--repeats", type=int, default=15, help="timed rounds per batch size (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per engine before timing")
    p.add_argument("--calls-b1", type=int, default=20, help="calls per timed round at batch 1")
    p.add_argument("--variants", action="store_true", help="also try other INT8 settings (see the docstring)")
    p.add_argument("--json", type=Path, default=None, help="write all figures here")
    args = p.parse_args()

    results = {"machine": machine(), "runs": []}
    print(json.dumps(results["machine"]))
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        for run in args.runs:
            result = bench_run(run, args, Path(tmp))
            results["runs"].append(result)
            print_report(result)
    results["machine"]["load_average_end"] = list(os.getloadavg())
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
