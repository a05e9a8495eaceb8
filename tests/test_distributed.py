"""Data-parallel training under torch's launcher: 2 gloo processes on the CPU train,
checkpoint, get killed, and resume exactly; the recipe keeps its meaning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _runs import canonical

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")
SHORT = ("--quiet", "--set", "train.epochs=3")


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@pytest.fixture(scope="module")
def torchrun_ref(tmp_path_factory):
    """The plain torchrun command line a user would type."""
    out = tmp_path_factory.mktemp("ddp") / "ref"
    res = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              "-m", "edgekd", "distill", QUICKSTART, "--out", str(out), *SHORT)
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


@pytest.mark.slow
def test_torchrun_trains_with_two_gloo_processes(torchrun_ref):
    out, res = torchrun_ref
    # Only rank 0 reports and writes: one line per epoch, one summary.
    assert res.stdout.count("epoch 1/3") == 1 and res.stdout.count("run ") == 1
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in lines] == [1, 2, 3]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 3 and summary["student"]["accuracy"] > 0.3
    # Checkpoints hold plain module keys (no DDP "module." prefix) and one RNG state per rank.
    st = torch.load(out / "last.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in st["student"])
    assert isinstance(st["rng"], list) and len(st["rng"]) == 2
    sd = torch.load(out / "student.pt", weights_only=True)["state_dict"]
    assert not any(k.startswith("module.") for k in sd)


@pytest.mark.slow
def test_killed_ddp_run_resumes_exactly(torchrun_ref, tmp_path):
    ref, _ = torchrun_ref
    victim = tmp_path / "victim"
    # Same job through `edgekd distill --nproc-per-node 2`; rank 0 dies mid-write of epoch 2's checkpoint.
    killed = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(victim), "--nproc-per-node", "2", *SHORT,
                 env={"EDGEKD_KILL_AT": "checkpoint:2"})
    assert killed.returncode != 0
    assert "Traceback" not in killed.stderr, killed.stderr[-2000:]
    assert torch.load(victim / "last.pt", weights_only=True)["epoch"] == 1
    resumed = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(victim), "--nproc-per-node", "2", *SHORT,
                  "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert canonical(victim) == canonical(ref)


@pytest.mark.slow
def test_resume_with_another_process_count_is_refused(torchrun_ref, tmp_path):
    import shutil

    ref, _ = torchrun_ref
    copy = tmp_path / "copy"
    shutil.copytree(ref, copy)
    res = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(copy), *SHORT, "--resume")
    assert res.returncode == 2 and "--nproc-per-node 2" in res.stderr and "Traceback" not in res.stderr


def test_global_batch_must_split_evenly(tmp_path):
    res = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(tmp_path / "x"), "--nproc-per-node", "3")
    assert res.returncode == 2 and "not divisible by 3" in res.stderr and not (tmp_path / "x").exists()


def test_launched_processes_get_this_command_line_minus_nproc_per_node():
    """What `edgekd --debug distill ... --nproc-per-node 2` hands each training process
    (the launcher itself runs in the slow tests above)."""
    from edgekd.cli import rank_argv

    argv = ["--debug", "distill", QUICKSTART, "--set", "train.epochs=3", "--nproc-per-node", "2", "--quiet",
            "--resume"]
    assert rank_argv(argv, Path("runs/qs-1")) == [
        "--debug", "distill", "--out", "runs/qs-1", QUICKSTART, "--set", "train.epochs=3", "--quiet", "--resume"]
    # An --out of the user's own is kept as given; the option's "=N" spelling goes too.
    argv = ["distill", QUICKSTART, "--nproc-per-node=2", "--out", "mine", "--allow-recipe-change", "--resume"]
    assert rank_argv(argv, Path("mine")) == ["distill", QUICKSTART, "--out", "mine", "--allow-recipe-change",
                                             "--resume"]
