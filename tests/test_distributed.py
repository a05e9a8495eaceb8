"""Data-parallel training under torch's launcher: 2 gloo processes on the CPU train like
1 process on the same global batch, checkpoint, get killed, and resume exactly; the
recipe keeps its meaning."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _runs import canonical
from _training import training_fixture

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")
SHORT = ("--quiet", "--set", "train.epochs=3", "--set", "data.image_size=16")
PLAIN_CNN = str(REPO / "tests/_plain_cnn.py")  # `python -m edgekd` plus a net without BatchNorm


def run(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


@training_fixture()
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
    assert res.stdout.count("epoch 1/3") == 1 and sum(line.startswith("run ") for line in res.stdout.splitlines()) == 1
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


@pytest.mark.slow  # a `python -m edgekd` process
def test_global_batch_must_split_evenly(tmp_path):
    res = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(tmp_path / "x"), "--nproc-per-node", "3")
    assert res.returncode == 2 and "not divisible by 3" in res.stderr and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_sync_bn_on_the_cpu_is_one_line_not_a_traceback(tmp_path):
    res = run("-m", "edgekd", "distill", QUICKSTART, "--out", str(tmp_path / "x"), "--nproc-per-node", "2",
              "--set", "train.sync_bn=true", "--set", "train.device=cpu")
    assert res.returncode == 2, res.stderr[-2000:]
    assert "train.sync_bn" in res.stderr and "Traceback" not in res.stderr and not (tmp_path / "x").exists()


# 1 process and 2 processes must compute the same training, up to the order of floating-point sums:
# - no BatchNorm: the nets normalise with GroupNorm, per image. With BatchNorm each rank normalises
#   its half of the global batch by that half's mean and variance, a different function from the
#   1-process batch (not a rounding difference). train.sync_bn, which uses the global batch's
#   statistics, cannot run here: torch's DDP refuses it on the CPU ("SyncBatchNorm layers only
#   work with GPU modules"), and one GPU cannot host two ranks.
# - no augmentation (crop_padding 0, no flip), and 256 training images = 4 full global batches of
#   64, so each rank's 32 images are its half of the 1-process batch and the mean of the two ranks'
#   mean gradients is the 1-process mean gradient.
# - the soft BD-KD switch: the hard one is a step function of the entropy gap, and at initialisation
#   both nets are near-uniform, so a gap within rounding of 0 could flip a sample's loss term.
# - fp32: under bf16 autocast (the CPU default where bf16 instructions exist) the two sums round
#   differently by far more than fp32's last bits.
EQUIVALENT = ("--quiet", "--set", "train.epochs=2", "--set", "data.image_size=16", "--set", "train.device=cpu",
              "--set", "train.amp=off",
              "--set", "data.subset=256",
              "--set", "data.augment.crop_padding=0", "--set", "data.augment.hflip=false",
              "--set", "distill.weighting=soft", "--set", "teacher.arch=plain_cnn_test",
              "--set", "teacher.options.width=16", "--set", "student.arch=plain_cnn_test",
              "--set", "optim.warmup_epochs=0")  # all 8 steps at the full rate: the weights move far


@pytest.mark.slow
def test_two_processes_train_like_one_on_the_same_global_batch(tmp_path):
    one, two, init_dir = tmp_path / "one", tmp_path / "two", tmp_path / "init"
    init_dir.mkdir()
    env = {"PYTHONPATH": str(REPO)}
    res = run(PLAIN_CNN, "distill", QUICKSTART, "--out", str(one), *EQUIVALENT,
              env={**env, "PLAIN_CNN_SAVE_INIT": str(init_dir)})
    assert res.returncode == 0, res.stderr[-3000:]
    res = run("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
              PLAIN_CNN, "distill", QUICKSTART, "--out", str(two), *EQUIVALENT, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = (torch.load(run_dir / "last.pt", weights_only=True) for run_dir in (one, two))
    assert isinstance(b["rng"], list) and len(b["rng"]) == 2  # really 2 processes
    for net, width in (("teacher", 16), ("student", 8)):
        init = torch.load(init_dir / f"init_w{width}.pt", weights_only=True)
        assert a[net].keys() == b[net].keys() == init.keys()
        for k in a[net]:
            torch.testing.assert_close(b[net][k], a[net][k], rtol=0, atol=1e-5, msg=f"{net} {k}")
        # Training moved every net far beyond that tolerance, so the agreement says something.
        moved = max(float((a[net][k] - init[k]).abs().max()) for k in init)
        assert moved > 1e-2, (net, moved)
    # Rank 0 logs the global batch's figures: the same loss terms and learning rate as 1 process.
    for x, y in zip(*([json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two))):
        for key in ("loss", "student_ce", "student_kl_fwd", "student_kl_rev", "teacher_ce", "lr"):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), key


def test_launched_processes_get_this_command_line_minus_nproc_per_node():
    """What `edgekd --debug distill ... --nproc-per-node 2` hands each training process
    (the launcher itself runs in the slow tests above)."""
    from edgekd.cli.training import rank_argv

    argv = ["--debug", "distill", QUICKSTART, "--set", "train.epochs=3", "--nproc-per-node", "2", "--quiet",
            "--resume"]
    assert rank_argv(argv, Path("runs/qs-1")) == [
        "--debug", "distill", "--out", "runs/qs-1", QUICKSTART, "--set", "train.epochs=3", "--quiet", "--resume"]
    # An --out of the user's own is kept as given; the option's "=N" spelling goes too.
    argv = ["distill", QUICKSTART, "--nproc-per-node=2", "--out", "mine", "--allow-recipe-change", "--resume"]
    assert rank_argv(argv, Path("mine")) == ["distill", QUICKSTART, "--out", "mine", "--allow-recipe-change",
                                             "--resume"]
