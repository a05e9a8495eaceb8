"""benchmarks/gpu_check.py, the one-call check for a lent GPU, must not rot between loans:
its --tiny mode runs every part on the CPU (same code paths, tiny nets, gloo) and must
write a complete, sane JSON. make_gpu_data.py packs an image folder into its .npz."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def run(*args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


@pytest.mark.slow
def test_tiny_check_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    res = run("benchmarks/gpu_check.py", "--tiny", "--out", str(out))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["complete"] is True and r["errors"] == [] and r["passed"] is True
    eager = r["throughput"]["eager"]
    for key in ("device_median", "synthetic_median", "device_over_synthetic"):
        assert math.isfinite(eager[key]) and eager[key] > 0, key
    assert len(eager["device_img_s"]) == len(eager["synthetic_img_s"]) == r["throughput"]["rounds"]
    assert "skipped" in r["throughput"]["compiled"]
    assert math.isfinite(r["loss_overhead"]["bdkd_over_ce"]) and r["loss_overhead"]["bdkd_over_ce"] > 0
    assert r["memory"]["mib"] > 50  # torch alone takes more than that
    tr = r["torchrun"]
    assert tr["backend"] == "gloo" and tr["returncode"] == 0 and tr["finished"] and 0 <= tr["student_accuracy"] <= 1
    t = r["training"]
    assert t["steps"] > 0 and t["chance"] == 0.1 and t["student_accuracy"] >= 2 * t["chance"]
    judged = {x["name"]: x["met"] for x in r["targets"]}
    assert len(judged) == 5 and judged["torchrun finished"] is True and judged["student accuracy / chance"] is True
    # Speed is not judged on the CPU, but still measured and shown.
    assert [x["met"] for x in r["targets"][:3]] == [None, None, None] and all(x["value"] for x in r["targets"])
    assert "| torchrun finished | 1.000 | >= 1.0 | yes |" in res.stdout


def test_missing_data_is_one_clear_line(tmp_path):
    res = run("benchmarks/gpu_check.py", "--data", str(tmp_path / "none.npz"), "--out", str(tmp_path / "x.json"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines() == [f"error: --data {tmp_path / 'none.npz'} not found; write it with "
                                               "benchmarks/make_gpu_data.py (into .gpu/)"]
    assert not (tmp_path / "x.json").exists()


def test_make_gpu_data_packs_a_balanced_folder(tmp_path):
    for label, name in enumerate(["b_cat", "a_dog"]):
        (tmp_path / "root" / name).mkdir(parents=True)
        for i in range(3):  # 40x40: packed as 32x32
            Image.new("RGB", (40, 40), (label * 200, i * 50, 7)).save(tmp_path / "root" / name / f"{i}.png")
    out = tmp_path / "d.npz"
    res = run("benchmarks/make_gpu_data.py", "--root", str(tmp_path / "root"), "--count", "4", "--out", str(out))
    assert res.returncode == 0, res.stderr
    with np.load(out) as z:
        assert z["images"].shape == (4, 32, 32, 3) and z["images"].dtype == np.uint8
        assert z["labels"].tolist() == [0, 0, 1, 1] and z["class_names"].tolist() == ["a_dog", "b_cat"]
        assert z["images"][0, 0, 0].tolist() == [200, 0, 7] and z["images"][1, 0, 0].tolist() == [200, 50, 7]
    res = run("benchmarks/make_gpu_data.py", "--root", str(tmp_path / "root"), "--count", "8",
              "--out", str(tmp_path / "e.npz"))
    assert res.returncode == 2 and res.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'root' / 'a_dog'} has 3 images, fewer than the 4 needed per class"]
    assert not (tmp_path / "e.npz").exists()
