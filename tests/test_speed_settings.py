"""train.channels_last / train.compile / train.amp through real `edgekd distill` runs: auto keeps
runs deterministic, the run says what ran, and a compiled run's files are those of any other
run (resume from last.pt, evaluation, export of student.pt). Unit tests of the rule itself are
in test_setup.py."""

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _cli import cli
from _training import IMAGE_SIZE
from edgekd import calibration
from edgekd.deploy.source import load_run_student, split_images
from edgekd.training.speed import bf16_kept_out, compile_unavailable, cpu_has_bf16
from edgekd.models import build_model

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")


@pytest.fixture
def one_thread():
    """CPU runs are bit-reproducible for a fixed thread count: pin it (and put it back)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _distill(capsys, out: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["distill", QUICKSTART, "--out", str(out), "--quiet", *extra]
    for kv in ("train.device=cpu", f"data.image_size={IMAGE_SIZE}", *sets):
        args += ["--set", kv]
    code, stdout, stderr = cli(capsys, *args)
    assert code == 0, stderr[-2000:]
    return stdout.splitlines()


@pytest.mark.slow  # two 1-epoch quickstart runs
def test_auto_settings_give_identical_runs_for_one_seed(tmp_path, capsys, one_thread):
    firsts, weights = [], []
    for name in ("a", "b"):
        lines = _distill(capsys, tmp_path / name, "train.epochs=1", "train.seed=3")
        firsts.append(lines[0])
        weights.append(torch.load(tmp_path / name / "student.pt", weights_only=True)["state_dict"])
    # 1,437 training images / 64 = 23 steps: far below the CPU's compile break-even.
    assert firsts[0] == firsts[1]
    assert firsts[0].startswith("speed settings: channels_last on (auto: faster on cpu), compile off (auto: run of "
                                "23 steps < 12,909 break-even), amp ")
    speed = json.loads((tmp_path / "a" / "summary.json").read_text())["speed_settings"]
    # auto: bf16 where the CPU has the instructions and nothing keeps them out of use (ONEDNN_MAX_CPU_ISA...)
    amp = "bf16" if cpu_has_bf16() and bf16_kept_out() is None else "off"
    assert (speed["channels_last"], speed["compile"], speed["amp"]) == (True, False, amp)
    assert speed["compile_reason"] == "auto: run of 23 steps < 12,909 break-even"
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    # Trained in bf16 or not, the run reports the FP32 student's figures: those export writes.
    student = load_run_student(tmp_path / "a")
    val = split_images(student, "val")
    logits = student.logits(student.preprocess(val)).astype(np.float64)
    reported = json.loads((tmp_path / "a" / "summary.json").read_text())["student"]
    # The run's own evaluation logits are the FP32 student's (channels_last there, contiguous here:
    # rounding apart, ~1e-6; bf16 logits would be ~1e-2 off), and its figures are theirs.
    saved = np.load(tmp_path / "a" / "eval_logits.npz")
    assert np.array_equal(saved["labels"], val.labels)
    assert np.abs(saved["student_logits"] - logits).max() < 1e-4
    assert reported["accuracy"] == pytest.approx(float(np.mean(saved["student_logits"].argmax(1) == val.labels)))
    assert reported["ece"] == pytest.approx(calibration.ece(saved["student_logits"], val.labels), abs=1e-9)


@pytest.mark.slow  # a compiled 1-epoch run, its resume to 2 epochs and an fp32 export
def test_a_compiled_run_resumes_evaluates_and_exports(tmp_path, capsys, monkeypatch, one_thread):
    """train.compile: true through the real torch.compile (dynamo + AOTAutograd) with its
    aot_eager backend: inductor's C++ code generation alone takes ~2 minutes for these two
    tiny nets on a busy 2-core CPU (measured cold: 112 s for the epoch), too long for the suite,
    and it is not what these checks are about: checkpoints of raw modules, not compiled ones."""
    why_not = compile_unavailable(torch.device("cpu"))  # the forced setting checks for inductor's C++ compiler
    if why_not:
        pytest.skip(why_not)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    run = tmp_path / "run"
    lines = _distill(capsys, run, "train.epochs=1", "train.compile=true")
    assert lines[0].startswith("speed settings: channels_last on (auto: faster on cpu), compile on (set in the recipe)")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["speed_settings"]["compile"] is True and 0 <= summary["student"]["accuracy"] <= 1

    # Checkpoints hold the raw nets' tensors: no "_orig_mod." (the compile wrapper's prefix).
    ck = torch.load(run / "student.pt", weights_only=True)
    fresh = build_model(ck["arch"], ck["num_classes"], ck["in_channels"], ck["image_size"], ck["options"]).state_dict()
    assert ck["state_dict"].keys() == fresh.keys()
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["student"].keys() == fresh.keys()
    assert not any("_orig_mod" in k for k in last["teacher"])

    # Resume from last.pt, compiled again, for a second epoch.
    lines = _distill(capsys, run, "train.epochs=2", "train.compile=true", extra=("--resume", "--allow-recipe-change"))
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2] and "student_accuracy" in metrics[1]
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2

    # Export: student.pt loads strictly into a fresh net, and the ONNX file agrees with it.
    code, _, err = cli(capsys, "export", str(run), "--out", str(tmp_path / "bundle"), "--formats", "fp32")
    assert code == 0, err[-2000:]
    assert (tmp_path / "bundle" / "model_fp32.onnx").is_file()


@pytest.mark.slow  # two 1-epoch quickstart runs
def test_a_resume_keeps_the_precision_the_run_started_with(tmp_path, capsys, monkeypatch, one_thread):
    """last.pt records what auto resolved to. If auto now resolves otherwise (here: a newer edgekd
    whose CPU default is bf16), --resume is refused in one line naming the key and the pin to set;
    with that pin it continues as it started. (No step runs in bf16: the CPU probe is replaced.)"""
    from edgekd.training import speed as setup_mod

    run = tmp_path / "run"
    monkeypatch.setattr(setup_mod, "AUTO_CPU_BF16", False)
    _distill(capsys, run, "train.epochs=1", "train.seed=3")
    assert torch.load(run / "last.pt", weights_only=False)["speed_settings"]["amp"] == "off"

    monkeypatch.setattr(setup_mod, "AUTO_CPU_BF16", True)
    monkeypatch.setattr(setup_mod, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(setup_mod, "bf16_kept_out", lambda: None)  # whatever caps the suite runs under
    resume = ["distill", QUICKSTART, "--out", str(run), "--quiet", "--resume", "--allow-recipe-change",
              "--set", "train.device=cpu", "--set", "train.seed=3", "--set", "train.epochs=2"]
    before = (run / "last.pt").read_bytes()
    code, _, err = cli(capsys, *resume)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "last.pt trained with train.amp off" in err and "--set train.amp=off" in err
    assert (run / "last.pt").read_bytes() == before  # nothing written
    code, out, err = cli(capsys, *resume, "--set", "train.amp=off")
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["speed_settings"]["amp"] == "off"
    assert "train.amp" not in err  # the pin equals what auto gave: not a recipe change
