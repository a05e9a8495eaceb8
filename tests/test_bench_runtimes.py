"""benchmarks/bench_runtimes.py (ONNX Runtime vs OpenVINO) must not rot between the runs that time it:
its --tiny mode runs every part (edgekd's export path, both runtimes, the rounds, the table and
the JSON) on a tiny model, and must write complete, sane figures. It times nothing worth reading."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # exports and quantizes a model in a Python process
def test_tiny_run_writes_every_figure(tmp_path):
    out = tmp_path / "bench.json"
    res = subprocess.run([sys.executable, "benchmarks/bench_runtimes.py", "--tiny", "--json", str(out)], cwd=REPO,
                         capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["model"]["arch"] == "cnn_tiny" and doc["settings"]["tiny"] is True
    assert doc["machine"]["onnxruntime"] and doc["machine"]["openvino"]
    rows = {(r["file"], r["runtime"]): r for r in doc["results"]}
    assert set(rows) == {(f, rt) for f in ("fp32", "int8_cpu") for rt in ("onnxruntime", "openvino")}
    for (f, rt), r in rows.items():
        assert len(r["rounds"]["batch64_images_per_s"]) == len(r["rounds"]["batch1_latency_ms"]) == 2
        assert math.isfinite(r["batch64_images_per_s"]) and r["batch64_images_per_s"] > 0
        assert math.isfinite(r["batch1_latency_ms"]) and r["batch1_latency_ms"] > 0
        assert r["providers"][0].startswith("OpenVINO " if rt == "openvino" else "CPUExecutionProvider")
    # The two runtimes compute the same FP32 function; the INT8 file is quantized differently from FP32.
    assert rows[("fp32", "openvino")]["agreement_with_onnxruntime"] >= 0.99
    assert rows[("fp32", "openvino")]["max_abs_logit_diff"] < 1e-3
    assert "f32 inference precision" in rows[("fp32", "openvino")]["providers"][0]
    assert rows[("fp32", "onnxruntime")]["max_abs_logit_diff"] == 0.0  # ONNX Runtime is the reference
    table = res.stdout[res.stdout.index("| file | runtime |"):]
    assert doc["markdown"] in table and table.count("\n| fp32 |") == 2 and table.count("\n| int8_cpu |") == 2
    assert "| fp32 | onnxruntime |" in table and "| 1.00x |" in table
