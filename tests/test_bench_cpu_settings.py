"""benchmarks/bench_cpu_settings.py (the CPU training settings and the figures behind train.*: auto)
must not rot between the quiet-machine runs that time it: --tiny runs every part (the rotation of
four Trainers, the compile bookkeeping, short real runs per setting, the tables, the JSON) on
digits. Its figures mean nothing; the structure and what each setting ran are checked."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from edgekd.training import speed as setup

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {  # name -> what summary.json's speed_settings must say ran
    "fp32 NCHW": (False, False, "off"),
    "channels_last": (True, False, "off"),
    "channels_last + compile": (True, True, "off"),
    "bf16 + channels_last": (True, False, "bf16"),
}


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "benchmarks/bench_cpu_settings.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.mark.slow  # four tiny Trainers timed, then 8 one-epoch digits runs, in a Python process
def test_tiny_run_writes_every_figure(tmp_path):
    why_not = setup.compile_unavailable(torch.device("cpu"))  # its compile setting is forced
    if why_not:
        pytest.skip(why_not)
    out = tmp_path / "cpu.json"
    res = run("--tiny", "--out", str(out))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["mode"] == "tiny" and r["compile_backend"] == "aot_eager" and r["threads"] == 1
    bf16 = setup.cpu_has_bf16()
    assert r["cpu_has_bf16"] is bf16

    pair = r["speed"]["quickstart"]
    assert (pair["teacher"], pair["student"], pair["rounds"]) == ("cnn_small", "cnn_tiny", 1)
    assert list(pair["settings"]) == list(SETTINGS)
    for name, row in pair["settings"].items():
        if name == "bf16 + channels_last" and not bf16:
            assert row == {"available": False, "reason": "this CPU has no bf16 instructions"}
            continue
        assert len(row["img_s"]) == 1 and row["median_img_s"] > 0 and row["first_epoch_seconds"] > 0
        assert math.isclose(row["steady_epoch_seconds"], 128 / row["median_img_s"])  # 2 steps of 64
    assert pair["settings"]["fp32 NCHW"]["ratio_to_fp32_nchw"] == 1.0
    c = pair["compile"]
    assert math.isfinite(c["seconds"]) and c["speed_up_over_channels_last"] > 0
    assert c["break_even_steps"] == setup.compile_break_even_steps(
        c["seconds"], pair["settings"]["channels_last"]["median_img_s"],
        pair["settings"]["channels_last + compile"]["median_img_s"], 64)

    results = r["results"]
    assert (results["epochs"], results["images"], results["seeds"]) == (1, 256, [0, 1])
    for name, ran in SETTINGS.items():
        row = results["settings"][name]
        if not row["available"]:
            assert name == "bf16 + channels_last" and not bf16
            continue
        assert [x["seed"] for x in row["runs"]] == [0, 1]
        for x in row["runs"]:
            s = x["speed_settings"]
            assert (s["channels_last"], s["compile"], s["amp"]) == ran, name
            assert 0 <= x["student_accuracy"] <= 1 and 0 <= x["student_ece"] <= 1
            assert (x["eval_split"], x["eval_images"]) == ("val", 359)
        assert math.isclose(row["accuracy_mean"], sum(x["student_accuracy"] for x in row["runs"]) / 2)

    suggested = {s["constant"]: s for s in r["suggested"]}
    assert suggested['AUTO_COMPILE_MIN_STEPS["cpu"]']["now"] == setup.AUTO_COMPILE_MIN_STEPS["cpu"]
    assert suggested["AUTO_CPU_BF16"]["now"] is setup.AUTO_CPU_BF16
    assert r["markdown"] in res.stdout and "| cnn_small -> cnn_tiny | fp32 NCHW |" in res.stdout
    assert "| fp32 NCHW | " in res.stdout and '| AUTO_CHANNELS_LAST["cpu"] | True |' in res.stdout

    bad = run("--seeds", "0,x", "--out", str(tmp_path / "bad.json"))
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "error: --seeds '0,x': expected comma-separated integers, e.g. 0,1,2"]
    assert not (tmp_path / "bad.json").exists()
