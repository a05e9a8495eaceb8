"""Why an INT8 file is (not) faster than FP32 in ONNX Runtime: the ops ONNX Runtime actually runs
(its optimized graph) and a quick speed check, for FP32 and three QDQ INT8 files of one model.

    .venv/bin/edgekd export runs/mnv3-int8 --formats fp32 --out /tmp/mnv3-fp32
    .venv/bin/python benchmarks/int8_ops_probe.py /tmp/mnv3-fp32/model_fp32.onnx --run runs/mnv3-int8

INT8 files (uint8 activations with a zero point, per-channel int8 weights, MinMax on 256 val
images of --run, or standard-normal images without it): `all` (every op ONNX Runtime quantizes,
as edgekd export), `conv_gemm` (op_types_to_quantize Conv, Gemm only) and `conv_gemm_add`.
Prints, per file, the most frequent ops of the optimized graph; then images/s at batch 64 and
median batch-1 ms over 9 rotating rounds (10 batch-64 calls, 50 single images each). A probe,
not the benchmark: docs/performance.md's tables come from int8_search_demo.py and bench_export.py.
"""

from __future__ import annotations

import argparse
import collections
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from edgekd.deploy.int8 import prepare


def images(run: Path | None, n: int) -> np.ndarray:
    if run is None:
        return np.random.default_rng(0).standard_normal((n, 3, 32, 32)).astype(np.float32)
    from edgekd.deploy.source import load_run_student, split_images
    student = load_run_student(run)
    return student.preprocess(split_images(student, "val"))[:n].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("fp32", type=Path)
    ap.add_argument("--run", type=Path, default=None, help="run folder: calibrate and time on its val images")
    args = ap.parse_args()
    x = images(args.run, 320)
    calib, x64, x1 = x[:256], np.ascontiguousarray(x[256:320]), np.ascontiguousarray(x[256:257])
    with tempfile.TemporaryDirectory(prefix="int8-ops-probe-") as tmp:
        tmp = Path(tmp)
        prepared = tmp / "prepared.onnx"
        prepare(args.fp32, prepared)
        name = onnx.load(str(prepared)).graph.input[0].name

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.it = iter([{name: calib[i:i + 64]} for i in range(0, len(calib), 64)])

            def get_next(self):
                return next(self.it, None)

        files = {"fp32": args.fp32}
        for tag, ops in (("all", None), ("conv_gemm", ["Conv", "Gemm"]), ("conv_gemm_add", ["Conv", "Gemm", "Add"])):
            files[tag] = tmp / f"{tag}.onnx"
            quantize_static(str(prepared), str(files[tag]), Reader(), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax, **({} if ops is None else {"op_types_to_quantize": ops}))
        sessions = {}
        for tag, path in files.items():
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(tmp / f"{tag}.optimized.onnx")
            options.log_severity_level = 3
            sessions[tag] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            ops = collections.Counter(n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node)
            print(f"{tag}: {dict(ops.most_common(12))}")
        b64, b1 = collections.defaultdict(list), collections.defaultdict(list)
        tags = list(sessions)
        for r in range(9):
            for tag in tags[r % len(tags):] + tags[:r % len(tags)]:
                s = sessions[tag]
                time.sleep(0.1)
                for _ in range(3):
                    s.run(None, {name: x64})
                start = time.perf_counter()
                for _ in range(10):
                    s.run(None, {name: x64})
                b64[tag].append(640 / (time.perf_counter() - start))
                for _ in range(3):
                    s.run(None, {name: x1})
                times = []
                for _ in range(50):
                    start = time.perf_counter()
                    s.run(None, {name: x1})
                    times.append(time.perf_counter() - start)
                b1[tag].append(1e3 * float(np.median(times)))
        for tag in tags:
            print(f"{tag:14s} batch 64 {np.median(b64[tag]):7.0f} img/s ({np.median(b64[tag]) / np.median(b64['fp32']):.2f}x)"
                  f"  batch 1 {np.median(b1[tag]):.3f} ms")


if __name__ == "__main__":
    main()
