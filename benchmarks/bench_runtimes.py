"""ONNX Runtime vs OpenVINO on the CPU: the same ONNX files, FP32 and INT8, timed in one run.

    .venv/bin/python benchmarks/bench_runtimes.py --json results/bench-runtimes.json
    .venv/bin/python benchmarks/bench_runtimes.py --tiny    # seconds; tests run it so it cannot rot

The model is edgekd's mobilenet_v2 for 32x32 input (CIFAR stem: stride-1 stem conv and
first stride-2 depthwise conv) with 10 classes and RANDOM weights (torch seed 0):
speed does not depend on what the weights learned. It does depend on the size of the
activations, so the BatchNorm statistics are measured on the benchmark's own input
images first: with torchvision's initial statistics (mean 0, variance 1) an untrained
MobileNetV2's activations shrink from stage to stage, which is not what a trained
network computes (docs/performance.md saw an untrained MobileNetV2 run FP32 several
times slower than a trained one). The inputs are standard-normal images, the
scale of normalized photos.

Two files, written by edgekd's own export path (edgekd.deploy, as `edgekd export`
writes them): model_fp32.onnx and the CPU INT8 file, model_int8_cpu.onnx (QDQ, uint8
activations with a zero point, per-channel int8 weights; MinMax calibration on other
noise images). Each runs in the runners `edgekd validate` uses: ONNX Runtime's CPU
provider with its default threads, and OpenVINO's CPU device with the LATENCY hint
(one stream) and inference precision pinned to f32 (without the pin, OpenVINO runs
FP32 models in bf16 on CPUs with AMX or AVX512_BF16).

Per round, every (file, runtime) pair is timed once, the first one rotating so drifting
machine load hits all alike; before each, a 0.1 s pause (the previous runtime's
spinning threads go idle) and --rewarm untimed calls at each batch size (OpenVINO
re-prepares a dynamic-batch model on the first call after the batch size changes,
a slow call that would otherwise be timed). Batch 64: images/s over
--calls-b64 calls; batch 1: the median of --calls-b1 single-image calls in ms. The
figures are medians over --rounds rounds. OpenVINO's logits are also compared with
ONNX Runtime's on the same file (top-1 agreement and largest logit difference).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bench_export import _at_least
from edgekd.deploy.int8 import CPU_INT8, Int8Settings, quantize_int8
from edgekd.deploy.onnx_export import export_fp32
from edgekd.files import write_json
from edgekd.models import build_model, count_parameters
from edgekd.runtime import OnnxRuntimeSession, OpenVinoCpu, Runner, onnxruntime_version, openvino_version
from edgekd.validation.report import cpu_name

CHANNELS, IMAGE_SIZE, CLASSES = 3, 32, 10
BATCH = 64
FILES = ("fp32", "int8_cpu")
RUNTIMES = ("onnxruntime", "openvino")
PAUSE_S = 0.1
SEED = 0


def noise_images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)


def random_model(arch: str, bn_images: np.ndarray) -> nn.Module:
    """`arch` with random weights and BatchNorm statistics measured on `bn_images` (see the docstring)."""
    torch.manual_seed(SEED)
    model = build_model(arch, CLASSES, CHANNELS, IMAGE_SIZE)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over every batch seen
    model.train()
    with torch.no_grad():
        for i in range(0, len(bn_images), BATCH):
            model(torch.from_numpy(bn_images[i : i + BATCH]))
    return model.eval()


def export_files(model: nn.Module, calib: np.ndarray, work: Path) -> dict[str, Path]:
    """model_fp32.onnx and model_int8_cpu.onnx, as edgekd export writes them."""
    files = {"fp32": work / "model_fp32.onnx", "int8_cpu": work / "model_int8_cpu.onnx"}
    export_fp32(model, files["fp32"], CHANNELS, IMAGE_SIZE)
    quantize_int8(files["fp32"], files["int8_cpu"], calib, Int8Settings(samples=len(calib)), CPU_INT8)
    return files


def runner(runtime: str, path: Path) -> Runner:
    if runtime == "openvino":
        return OpenVinoCpu(path)
    return OnnxRuntimeSession(path, ["CPUExecutionProvider"])


def time_once(run, x64: np.ndarray, x1: np.ndarray, args) -> tuple[float, float]:
    """(images/s at batch 64, median ms at batch 1) after a pause and --rewarm untimed calls."""
    time.sleep(PAUSE_S)
    for _ in range(args.rewarm):
        run(x64)
    start = time.perf_counter()
    for _ in range(args.calls_b64):
        run(x64)
    throughput = args.calls_b64 * len(x64) / (time.perf_counter() - start)
    for _ in range(args.rewarm):
        run(x1)
    latencies = []
    for _ in range(args.calls_b1):
        start = time.perf_counter()
        run(x1)
        latencies.append(time.perf_counter() - start)
    return throughput, 1e3 * statistics.median(latencies)


def bench(files: dict[str, Path], images: np.ndarray, args) -> list[dict]:
    pairs = [(f, rt) for f in FILES for rt in RUNTIMES]
    x64, x1 = np.ascontiguousarray(images[:BATCH]), np.ascontiguousarray(images[:1])
    rows = {pair: {"file": pair[0], "runtime": pair[1], "rounds": {"batch64_images_per_s": [],
                                                                   "batch1_latency_ms": []}} for pair in pairs}
    with ExitStack() as loaded:
        runners = {(f, rt): loaded.enter_context(runner(rt, files[f])) for f, rt in pairs}
        for (f, rt), r in runners.items():
            logits = np.concatenate([r.run(images[i : i + BATCH]) for i in range(0, len(images), BATCH)])
            reference = logits if rt == "onnxruntime" else rows[(f, "onnxruntime")]["logits"]
            rows[(f, rt)].update(logits=logits, providers=r.providers,
                                 agreement_with_onnxruntime=float(np.mean(logits.argmax(1) == reference.argmax(1))),
                                 max_abs_logit_diff=float(np.abs(logits - reference).max()))
            for _ in range(args.warmup):
                r.run(x64)
                r.run(x1)
        for i in range(args.rounds):
            for pair in pairs[i % len(pairs):] + pairs[: i % len(pairs)]:
                throughput, latency = time_once(runners[pair].run, x64, x1, args)
                rows[pair]["rounds"]["batch64_images_per_s"].append(throughput)
                rows[pair]["rounds"]["batch1_latency_ms"].append(latency)
            print(f"  round {i + 1}/{args.rounds} timed", flush=True)
    results = []
    for row in rows.values():
        del row["logits"]
        row["batch64_images_per_s"] = statistics.median(row["rounds"]["batch64_images_per_s"])
        row["batch1_latency_ms"] = statistics.median(row["rounds"]["batch1_latency_ms"])
        results.append(row)
    return results


def markdown(results: list[dict]) -> str:
    """One row per (file, runtime); the speed columns are x ONNX Runtime on the same file, > 1 = faster."""
    ort = {r["file"]: r for r in results if r["runtime"] == "onnxruntime"}
    lines = ["| file | runtime | batch 64 img/s | speed | batch 1 ms | speed | top-1 agreement with ONNX Runtime "
             "| max abs logit diff |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        base = ort[r["file"]]
        lines.append(f"| {r['file']} | {r['runtime']} | {r['batch64_images_per_s']:.0f} "
                     f"| {r['batch64_images_per_s'] / base['batch64_images_per_s']:.2f}x "
                     f"| {r['batch1_latency_ms']:.3f} | {base['batch1_latency_ms'] / r['batch1_latency_ms']:.2f}x "
                     f"| {100 * r['agreement_with_onnxruntime']:.2f}% | {r['max_abs_logit_diff']:.1e} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=_at_least(1), default=15, help="timed rounds (medians reported)")
    p.add_argument("--calls-b64", type=_at_least(1), default=5, help="timed batch-64 calls per round")
    p.add_argument("--calls-b1", type=_at_least(1), default=100, help="timed batch-1 calls per round")
    p.add_argument("--warmup", type=_at_least(0), default=5, help="untimed calls per runner before the first round")
    p.add_argument("--rewarm", type=_at_least(0), default=3, help="untimed calls after each pause")
    p.add_argument("--json", type=Path, default=None, help="write all figures here")
    p.add_argument("--tiny", action="store_true",
                   help="cnn_tiny instead of mobilenet_v2, 2 rounds of a few calls: checks the script, times nothing")
    args = p.parse_args()
    arch, n_images, n_calib = "mobilenet_v2", 512, 256
    if args.tiny:
        arch, n_images, n_calib = "cnn_tiny", 128, 16
        args.rounds, args.calls_b64, args.calls_b1, args.warmup, args.rewarm = 2, 1, 3, 1, 1

    machine = {"cpu": cpu_name(), "logical_cores": os.cpu_count(), "onnxruntime": onnxruntime_version(),
               "openvino": openvino_version(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_average": list(os.getloadavg())}
    print(json.dumps(machine))
    images, calib = noise_images(n_images, SEED), noise_images(n_calib, SEED + 1)
    model = random_model(arch, images)
    with tempfile.TemporaryDirectory(prefix="bench-runtimes-") as tmp:
        files = export_files(model, calib, Path(tmp))
        sizes = {f: path.stat().st_size for f, path in files.items()}
        print(f"{arch}: {count_parameters(model):,} parameters; exported {', '.join(p.name for p in files.values())}")
        results = bench(files, images, args)
    machine["load_average_end"] = list(os.getloadavg())
    table = markdown(results)
    print(f"\n{arch}, {IMAGE_SIZE}x{IMAGE_SIZE}x{CHANNELS}, {CLASSES} classes, random weights; medians of "
          f"{args.rounds} rounds; speed: x ONNX Runtime on the same file (> 1: faster)\n\n{table}")
    if args.json:
        write_json(args.json, {
            "machine": machine,
            "model": {"arch": arch, "params": count_parameters(model), "input": [CHANNELS, IMAGE_SIZE, IMAGE_SIZE],
                      "classes": CLASSES, "weights": f"random (torch seed {SEED}), BatchNorm statistics measured on "
                                                     f"the {n_images} standard-normal benchmark images",
                      "int8_calibration": f"minmax on {n_calib} other standard-normal images", "file_bytes": sizes},
            "settings": {"batch": BATCH, "rounds": args.rounds, "calls_b64": args.calls_b64, "calls_b1": args.calls_b1,
                         "warmup": args.warmup, "rewarm": args.rewarm, "pause_s": PAUSE_S, "tiny": args.tiny},
            "results": results,
            "markdown": table,
        })
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
