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
    at batch 1 and 64, on real val images, in two serving modes:
      latency:    one stream, the engine's default threads (ONNX Runtime: one per
                  core, what `edgekd validate` uses; PyTorch: torch's default),
                  i.e. one caller waiting on each call;
      throughput: one stream per core, each a single-threaded session (PyTorch:
                  one thread, one model shared by the streams), calling
                  concurrently: how a server keeps every core busy, and what
                  OpenVINO's THROUGHPUT hint or Triton's instance count do.
    Every repeat times each engine once per mode, rotating who goes first, so
    drifting load on a shared machine hits all engines alike. Before each engine
    it pauses 0.1 s (the previous engine's idle threads, PyTorch's OpenMP team
    or ONNX Runtime's pool, spin-wait for a while and would steal the cores),
    then re-warms with --rewarm untimed calls per stream (waking a sleeping
    worker thread costs a fixed ~0.1-1 ms, which would otherwise be charged to
    the timed calls and flatter the slower engine); the figure is the median
    images/s over --repeats.

--variants adds INT8 files with other settings (calibration method, first and
last layer in FP32), int8_cpu written as QOperator (QLinearConv etc.) instead
of QDQ, and int8_cpu with one weight scale per tensor instead of per channel:
alternatives export did not pick.

The summary says, per batch size, whether int8_cpu reaches TARGET_SPEEDUP x FP32
throughput, each engine in its faster mode (best against best), and gives the
ratio in each mode.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnxruntime as ort
import torch

from edgekd.calibration import calibration_metrics
from onnxruntime.quantization import QuantFormat

from edgekd.deploy.int8 import CPU_INT8, TENSORRT_INT8, Int8Settings, pick_calibration, quantize_int8
from edgekd.drift import reference_gap
from edgekd.deploy.onnx_export import INPUT_NAME, export_fp32
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.source import Student, load_run_student, split_images
from edgekd.validation.report import cpu_name

BATCHES = (1, 64)
MODES = ("latency", "throughput")
PAUSE_S = 0.1
TARGET_SPEEDUP = 1.8  # the INT8 CPU target: int8_cpu images/s >= 1.8 x the FP32 file's


@dataclass
class Variant:
    label: str
    settings: Int8Settings
    cpu: bool = False  # int8_cpu (CPU_INT8) rather than int8 (TENSORRT_INT8)
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
            Variant("int8_cpu per-tensor weights (not exported)", replace(default, per_channel=False), cpu=True),
        ]
    return found


def accuracy_row(label: str, logits: np.ndarray, labels: np.ndarray, fp32: dict, fp32_logits: np.ndarray) -> dict:
    m = calibration_metrics(logits, labels)
    gap = reference_gap(logits, m, reference_logits=fp32_logits, reference_metrics=fp32)
    return {"file": label, "accuracy": m["accuracy"], "ece": m["ece"], "nll": m["nll"],
            "top1_drop_vs_fp32": gap.accuracy_drop, "ece_drift_vs_fp32": gap.ece_drift,
            "agreement_with_fp32": gap.top1_agreement}


def cores() -> int:
    """CPUs this process may run on (what a throughput server would give one stream each)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def onnx_streams(path: Path, mode: str) -> list[Callable[[np.ndarray], object]]:
    """latency: one session with ONNX Runtime's default threads; throughput: one single-threaded session per core."""
    def session(threads: int) -> Callable[[np.ndarray], object]:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # 0: ONNX Runtime's default, one thread per physical core
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return lambda x: sess.run(None, {INPUT_NAME: x})

    return [session(0)] if mode == "latency" else [session(1) for _ in range(cores())]


def torch_streams(student: Student, mode: str) -> list[Callable[[np.ndarray], object]]:
    """PyTorch eager; the thread count is set per mode by `torch_threads` (torch's is per process)."""
    model = student.model.eval()

    def run(x: np.ndarray):
        with torch.no_grad():
            return model(torch.from_numpy(x))

    return [run] if mode == "latency" else [run] * cores()


def torch_threads(mode: str, default: int) -> None:
    torch.set_num_threads(default if mode == "latency" else 1)


def timed_streams(streams: list[Callable], x: np.ndarray, calls: int, rewarm: int) -> float:
    """Images/s of all streams calling concurrently, `calls` each, after `rewarm` untimed calls each.

    ONNX Runtime and PyTorch release the GIL while they compute, so Python threads
    are enough to keep one core per stream busy.
    """
    if len(streams) == 1:  # in the calling thread, as `edgekd validate` runs it
        for _ in range(rewarm):
            streams[0](x)
        start = time.perf_counter()
        for _ in range(calls):
            streams[0](x)
        return calls * len(x) / (time.perf_counter() - start)
    ready = threading.Barrier(len(streams) + 1)

    def work(run: Callable) -> None:
        for _ in range(rewarm):
            run(x)
        ready.wait()
        for _ in range(calls):
            run(x)

    threads = [threading.Thread(target=work, args=(run,)) for run in streams]
    for t in threads:
        t.start()
    ready.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    return len(streams) * calls * len(x) / (time.perf_counter() - start)


def throughput(engines: dict[str, list[Callable]], x: np.ndarray, repeats: int, warmup: int, calls: int,
               rewarm: int) -> dict[str, float]:
    """Median images/s per engine; engines take turns within every repeat, the first one rotating."""
    for streams in engines.values():
        timed_streams(streams, x, 0, warmup)
    names = list(engines)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            time.sleep(PAUSE_S)  # let the previous engine's threads stop spin-waiting (OpenMP, ORT's pool)
            samples[name].append(timed_streams(engines[name], x, calls, rewarm))
    return {n: statistics.median(v) for n, v in samples.items()}


def bench_run(run: Path, args, work: Path) -> dict:
    student = load_run_student(run)
    ck = student.checkpoint
    val = split_images(student, "val")
    x_val = student.preprocess(val)
    train = split_images(student, "train")
    fp32_path = work / f"{run.name}-fp32.onnx"
    export_fp32(student.model, fp32_path, ck.in_channels, ck.image_size)
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
        flavour = replace(CPU_INT8, quant_format=v.quant_format) if v.cpu else TENSORRT_INT8
        quantize_int8(fp32_path, path, calib, s, flavour, calibration_cache=cache)
        files[v.label] = path
        rows.append(accuracy_row(v.label, onnxruntime_logits(path, x_val), val.labels, fp32, fp32_logits))
        print(f"  {run.name}: {v.label} quantized", flush=True)

    speed: dict[str, dict[str, dict[str, float]]] = {}
    torch_default = torch.get_num_threads()
    for mode in MODES:
        torch_threads(mode, torch_default)
        engines = {"pytorch eager": torch_streams(student, mode), **{k: onnx_streams(p, mode) for k, p in files.items()}}
        for batch in BATCHES:
            calls = args.calls_b1 if batch == 1 else args.calls_b64
            x = np.ascontiguousarray(np.resize(x_val, (batch, *x_val.shape[1:])))  # real val images, repeated if few
            speed.setdefault(str(batch), {})[mode] = throughput(engines, x, args.repeats, args.warmup, calls, args.rewarm)
            print(f"  {run.name}: batch {batch}, {mode} mode timed", flush=True)
        del engines
    torch.set_num_threads(torch_default)
    return {"run": str(run), "arch": ck["arch"], "val_images": int(len(val.labels)),
            "accuracy": rows, "images_per_s": speed}


def machine() -> dict:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "streams_in_throughput_mode": cores(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": ort.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": list(os.getloadavg())}


def print_report(result: dict) -> None:
    print(f"\n## {result['arch']} ({result['run']}), {result['val_images']} val images")
    print("| file | top-1 | ECE | top-1 drop vs FP32 (pt) | ECE drift vs FP32 (pt) | agreement with FP32 |")
    print("|---|---|---|---|---|---|")
    for r in result["accuracy"]:
        print(f"| {r['file']} | {100 * r['accuracy']:.2f}% | {100 * r['ece']:.2f}% | {100 * r['top1_drop_vs_fp32']:+.2f} "
              f"| {100 * r['ece_drift_vs_fp32']:.2f} | {100 * r['agreement_with_fp32']:.2f}% |")
    speeds = result["images_per_s"]  # batch -> mode -> engine -> images/s
    columns = [(str(b), m) for b in BATCHES for m in MODES]
    print("\n| engine | " + " | ".join(f"batch {b} {m} img/s | x FP32" for b, m in columns) + " |")
    print("|---|" + "---|---|" * len(columns))
    for engine in speeds[columns[0][0]][columns[0][1]]:
        cells = [f"{speeds[b][m][engine]:.0f} | {speeds[b][m][engine] / speeds[b][m]['fp32']:.2f}" for b, m in columns]
        print(f"| {engine} | " + " | ".join(cells) + " |")
    print(f"\nint8_cpu vs FP32 throughput (the target, for MobileNetV2: >= {TARGET_SPEEDUP}x):")
    for b in map(str, BATCHES):
        best_mode = {e: max(MODES, key=lambda m: speeds[b][m][e]) for e in ("fp32", "int8_cpu")}
        best = {e: speeds[b][m][e] for e, m in best_mode.items()}
        ratio = best["int8_cpu"] / best["fp32"]
        per_mode = ", ".join(f"{m} {speeds[b][m]['int8_cpu'] / speeds[b][m]['fp32']:.2f}x" for m in MODES)
        print(f"  batch {b}: best against best {ratio:.2f}x ({'met' if ratio >= TARGET_SPEEDUP else 'NOT met'}; "
              f"fp32 best in {best_mode['fp32']} mode, int8_cpu in {best_mode['int8_cpu']} mode); per mode: {per_mode}")


def _at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= low (a bad value is argparse's one-line usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    return parse


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished edgekd distill run directories")
    p.add_argument("--repeats", type=_at_least(1), default=15, help="timed rounds per batch size (median reported)")
    p.add_argument("--warmup", type=_at_least(0), default=3, help="untimed calls per engine before timing")
    p.add_argument("--calls-b1", type=_at_least(1), default=100, help="calls per stream per timed round at batch 1")
    p.add_argument("--calls-b64", type=_at_least(1), default=2, help="calls per stream per timed round at batch 64")
    p.add_argument("--rewarm", type=_at_least(0), default=3, help="untimed calls per stream after each pause")
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
