"""Naive INT8 vs `edgekd export --int8-search` vs NNCF's accuracy-controlled quantization, on one run.

    # issue 13 part 2: a real edge architecture (MobileNetV3-small) on the CIFAR-10 JPEGs.
    # ~20 min of training on 2 CPU cores, then ~3.5 min here; the recipe carries the gate
    # (drop <= 0.5 pt, ECE drift <= 0.5 pt). Figures: docs/performance.md.
    .venv/bin/edgekd distill recipes/cifar10-mobilenetv3-int8.yaml --out runs/mnv3-int8 --quiet
    .venv/bin/python benchmarks/int8_search_demo.py runs/mnv3-int8 --json results/int8-search-mnv3.json

    # the mechanism on any finished run, in a minute or two (--tiny: few calibration images,
    # a 30 s search budget, few timing runs; its figures show the mechanism, nothing more)
    .venv/bin/python benchmarks/int8_search_demo.py RUN --tiny

Four files of the run's student, INT8 ones in the int8_cpu flavour (uint8 activations with a
zero point, per-channel int8 weights: what ONNX Runtime's CPU kernels are fast with):

  fp32      the bundle's model_fp32.onnx;
  naive     what plain `edgekd export` writes: minmax calibration, every node in INT8;
  searched  what `edgekd export --int8-search` writes with the run's recipe gate, judged on the
            tune split (absent when the search finds no passing file: then the search's best
            candidate's figures are printed from the manifest);
  nncf      nncf.quantize_with_accuracy_control on the ONNX backend (mixed preset: asymmetric
            activations, as int8_cpu), the same calibration images, accuracy judged on the same
            images as the search, max_drop = the gate's max_acc_drop. NNCF controls top-1
            accuracy only: calibration (ECE) is not part of its objective.

All four are then measured in this one run on the val split, which none of them was chosen on:
accuracy, ECE, ECE drift and top-1 agreement against the FP32 file (edgekd validate's metrics),
the gate's verdict, and ONNX Runtime CPU throughput at batch 64 and median batch-1 latency: one
session per file with ONNX Runtime's default threads, all open at once, timed in 15 rotating
rounds as benchmarks/bench_runtimes.py times (time_files). Not validate's own timing: its passes
alternate the full and the last, shorter batch, and on MobileNetV3 that alone put the INT8 files
at 0.6x FP32 where a steady batch gives 0.9x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from bench_runtimes import time_once

from edgekd.deploy import export_bundle
from edgekd.deploy.bundle import calibration_images, search_data
from edgekd.deploy.int8 import CPU_INT8, WEIGHTED_OPS, Int8Settings, quantize_int8
from edgekd.deploy.int8_search import search_thresholds
from edgekd.deploy.source import load_run_student, split_images
from edgekd.errors import Int8SearchError
from edgekd.saved_recipe import saved_sections
from edgekd.runtime import OnnxRuntimeSession
from edgekd.text import pct
from edgekd.validation import gate
from edgekd.validation.metrics import TimingBudget, comparisons, format_metrics, run_format
from edgekd.validation.report import cpu_name

TINY = {"calib_samples": 64, "budget": 30.0, "timing": TimingBudget(latency_runs=50, latency_seconds=0.3,
                                                                   throughput_seconds=0.3, throughput_max_passes=3)}


def nncf_quantize(fp32: Path, dst: Path, calib: np.ndarray, images: np.ndarray, labels: np.ndarray,
                  max_drop: float) -> dict:
    """nncf.quantize_with_accuracy_control (ONNX backend): its file, and what it took."""
    import nncf

    def validate(model: onnx.ModelProto, items) -> tuple[float, list[float]]:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        hits = [float(session.run(None, {name: x[None]})[0].argmax() == y) for x, y in items]
        return float(np.mean(hits)), hits  # per-item values: NNCF ranks the nodes with them

    start = time.perf_counter()
    quantized = nncf.quantize_with_accuracy_control(
        onnx.load(str(fp32)),
        calibration_dataset=nncf.Dataset(list(calib), lambda x: {"input": x[None]}),
        validation_dataset=nncf.Dataset(list(zip(images, labels))),
        validation_fn=validate, max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
        preset=nncf.QuantizationPreset.MIXED, subset_size=len(calib))
    onnx.save(quantized, str(dst))
    return {"seconds": time.perf_counter() - start, "nncf": nncf.__version__, "max_drop": max_drop,
            "preset": "mixed", "judged_on": len(labels)}


def float_weighted(path: Path) -> list[str]:
    """Nodes with weights (Conv, Gemm, ...) whose weights are not dequantized INT8: the ones running in float,
    counted the same way in every file (NNCF's, edgekd's)."""
    model = onnx.load(str(path))
    produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
    return [n.name for n in model.graph.node
            if n.op_type in WEIGHTED_OPS and produced_by.get(n.input[1]) != "DequantizeLinear"]


def time_files(files: dict[str, Path], x: np.ndarray, rounds: int) -> dict[str, tuple[float, float]]:
    """{file: (images/s at batch 64, median ms at batch 1)}: all sessions open at once, `rounds`
    rounds that time each file once, the first of the round rotating (bench_runtimes.time_once:
    a pause, untimed calls, then 5 batch-64 calls and 100 single images); medians over rounds.
    One steady batch shape per call, unlike edgekd validate's passes, which alternate the full
    and the last, shorter batch (ONNX Runtime plans its memory per shape)."""
    args = argparse.Namespace(rewarm=3, calls_b64=5, calls_b1=100)
    x64, x1 = np.ascontiguousarray(x[:64]), np.ascontiguousarray(x[:1])
    names = list(files)
    figures: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
    with ExitStack() as opened:
        sessions = {n: opened.enter_context(OnnxRuntimeSession(files[n], ["CPUExecutionProvider"])) for n in names}
        for s in sessions.values():
            for _ in range(5):
                s.run(x64), s.run(x1)
        for i in range(rounds):
            for n in names[i % len(names):] + names[: i % len(names)]:
                figures[n].append(time_once(sessions[n].run, x64, x1, args))
    return {n: (statistics.median(f[0] for f in figures[n]), statistics.median(f[1] for f in figures[n]))
            for n in names}


def measure(files: dict[str, Path], x: np.ndarray, labels: np.ndarray, thresholds: dict, timing: TimingBudget,
            rounds: int) -> dict:
    """Every file on the val images, as edgekd validate measures its metrics (FP32 first: the
    reference); speed from time_files, all files in one run."""
    results, logits = {}, {}
    for name, path in files.items():
        with OnnxRuntimeSession(path, ["CPUExecutionProvider"]) as session:
            run = run_format(session, x, 64, timing)  # validate's logits (its timing is not reported here)
        logits[name] = run.logits
        results[name] = {**format_metrics(run.logits, labels), "float_weighted_nodes": float_weighted(path)}
    for name, (throughput, latency) in time_files(files, x, rounds).items():
        results[name].update(throughput_b64=throughput, latency_b1_p50_ms=latency)
    for name in results:
        results[name].update(comparisons(results[name], logits[name], results["fp32"], logits["fp32"]))
        checks = gate.evaluate({name: results[name]}, thresholds)
        results[name]["gate"] = "PASS" if gate.passed(checks) else "FAIL: " + ", ".join(
            f"{c.metric} {pct(c.value)}" for c in checks if c.status == "fail")
        results[name]["x_fp32_throughput"] = results[name]["throughput_b64"] / results["fp32"]["throughput_b64"]
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--budget", type=float, default=None, help="--search-budget (default: the recipe's)")
    ap.add_argument("--calib-samples", type=int, default=512)
    ap.add_argument("--tiny", action="store_true", help="mechanism only: 64 calibration images, 30 s, short timing")
    ap.add_argument("--no-nncf", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    calib_samples = TINY["calib_samples"] if args.tiny else args.calib_samples
    budget = args.budget or (TINY["budget"] if args.tiny else None)
    timing = TINY["timing"] if args.tiny else TimingBudget()

    student = load_run_student(args.run)
    sections = saved_sections(student.recipe, str(args.run / "student.pt"))
    thresholds = search_thresholds(sections.gate.thresholds())  # what the search judges with
    with tempfile.TemporaryDirectory(prefix="int8-search-demo-") as tmp:
        tmp = Path(tmp)
        bundle = tmp / "bundle"
        started = time.perf_counter()
        try:
            export_bundle(run_dir=args.run, out=bundle, formats=["fp32", "int8_cpu"], calib_samples=calib_samples,
                          int8_search=True, search_budget=budget)
            search_error = None
        except Int8SearchError as e:  # the bundle is still written, without the INT8 file
            search_error = str(e)
        export_seconds = time.perf_counter() - started
        manifest = json.loads((bundle / "manifest.json").read_text())
        files = {"fp32": bundle / "model_fp32.onnx"}

        s = replace(Int8Settings(), samples=calib_samples)
        picked, calib = calibration_images(student, s)
        files["naive"] = tmp / "naive.onnx"
        quantize_int8(files["fp32"], files["naive"], calib, s, CPU_INT8)
        if (bundle / "model_int8_cpu.onnx").is_file():
            files["searched"] = bundle / "model_int8_cpu.onnx"
        nncf_info = None
        if not args.no_nncf:
            data = search_data(student, picked, s.seed)  # the images the search judged on
            files["nncf"] = tmp / "nncf.onnx"
            nncf_info = nncf_quantize(files["fp32"], files["nncf"], calib, data.images, data.labels,
                                      thresholds.get("max_acc_drop", 0.01))

        val = split_images(student, "val")
        results = measure(files, student.preprocess(val), val.labels, thresholds, timing, 2 if args.tiny else 15)

    search = manifest["int8_search"]
    record = search["files"]["model_int8_cpu.onnx"]
    print(f"run {args.run}, val split {len(val.labels)} images; CPU {cpu_name()} ({os.cpu_count()} cores); "
          f"onnxruntime {ort.__version__}{' (TINY MODE: figures show the mechanism only)' if args.tiny else ''}")
    print(f"gate: {thresholds}; search: {len(record['candidates'])} candidates in {search['seconds']:.0f} s "
          f"(budget {search['budget_s']:g} s, stopped: {record['stopped']}), judged on {search['data']['note']}")
    if search_error:
        print(f"search found no passing file: {search_error}")
    print("\n| file | weighted nodes in float | acc | ECE | ECE drift | agreement | img/s b64 (x FP32) | p50 ms b1 | gate (val) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {len(r['float_weighted_nodes'])} | {pct(r['accuracy'])} | {pct(r['ece'])} | {pct(r['ece_drift'])} | "
              f"{pct(r['agreement'])} | {r['throughput_b64']:.0f} ({r['x_fp32_throughput']:.2f}x) | "
              f"{r['latency_b1_p50_ms']:.3f} | {r['gate']} |")
    if args.json:
        doc = {"run": str(args.run), "tiny": args.tiny, "cpu": cpu_name(), "onnxruntime": ort.__version__,
               "gate": thresholds, "export_seconds": export_seconds, "search": search, "search_error": search_error,
               "nncf": nncf_info, "val": {"n": int(len(val.labels)), "results": results}}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(doc, indent=2, default=float))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
