"""Probe: is the INT8-aware (train.quantize) ONNX file slow in ONNX Runtime because its conv biases are
float? Gives each Conv/Gemm bias an INT32 initializer behind DequantizeLinear (scale = input scale x
weight scale, as post-training QDQ files have it), then times the FP32, QAT, QAT+int32-bias and
post-training INT8 files side by side (9 rotating rounds of 5 batch-64 calls, median images/s).

    .venv/bin/python benchmarks/qat_bias_probe.py QAT_BUNDLE PTQ_BUNDLE

Measured 2026-12-06 (MobileNetV3-small of docs/performance.md, one thread, a training beside it): FP32 1,765, QAT 530,
QAT + int32 biases 489, post-training INT8 2,109 images/s, and the biased file's outputs within 0.1 of
the QAT file's: the float biases are not why the QAT file is slow.
"""
import sys
from pathlib import Path

import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper
QAT, PTQ = Path(sys.argv[1]), Path(sys.argv[2])
src = str(QAT / "model_int8_cpu.onnx")
m = onnx.load(src); g = m.graph
init = {i.name: i for i in g.initializer}
producer = {o: n for n in g.node for o in n.output}
def arr(name): return numpy_helper.to_array(init[name])
fixed = 0
for n in list(g.node):
    if n.op_type not in ("Conv", "Gemm") or len(n.input) < 3 or n.input[2] not in init:
        continue
    dx, dw = producer.get(n.input[0]), producer.get(n.input[1])
    if not (dx and dw and dx.op_type == dw.op_type == "DequantizeLinear"):
        continue
    if dx.input[1] not in init or dw.input[1] not in init:
        continue
    xs = arr(dx.input[1]).astype(np.float64); ws = arr(dw.input[1]).astype(np.float64)
    b = arr(n.input[2]).astype(np.float64)
    scale = (xs * ws).astype(np.float32) * np.ones_like(b, dtype=np.float32)
    q = np.round(b / scale).astype(np.int32)
    bn = n.input[2] + "_int32"; sn = n.input[2] + "_scale"; zn = n.input[2] + "_zp"; on = n.input[2] + "_dq"
    g.initializer.extend([numpy_helper.from_array(q, bn), numpy_helper.from_array(scale, sn),
                          numpy_helper.from_array(np.zeros_like(q), zn)])
    g.node.insert(list(g.node).index(n), helper.make_node("DequantizeLinear", [bn, sn, zn], [on], axis=0))
    n.input[2] = on; fixed += 1
print("biases quantized:", fixed)
import tempfile
out = str(Path(tempfile.mkdtemp()) / "qat_biasq.onnx"); onnx.save(m, out)
x = np.random.default_rng(0).standard_normal((64, 3, 32, 32)).astype(np.float32)
files = {"fp32": str(QAT / "model_fp32.onnx"), "qat": src, "qat+int32 bias": out,
         "ptq": str(PTQ / "model_int8_cpu.onnx")}
sess = {k: ort.InferenceSession(v, providers=["CPUExecutionProvider"]) for k, v in files.items()}
outs = {k: s.run(None, {s.get_inputs()[0].name: x})[0] for k, s in sess.items()}
print("qat vs qat+bias max|diff|", float(np.abs(outs["qat"] - outs["qat+int32 bias"]).max()),
      "agree", float(np.mean(outs["qat"].argmax(1) == outs["qat+int32 bias"].argmax(1))))
t = {k: [] for k in files}
for r in range(9):
    for k in list(files)[r % 4:] + list(files)[:r % 4]:
        s = sess[k]; name = s.get_inputs()[0].name
        t0 = time.perf_counter()
        for _ in range(5): s.run(None, {name: x})
        t[k].append(5 * 64 / (time.perf_counter() - t0))
for k in files: print(k, round(statistics.median(t[k])), "img/s")
