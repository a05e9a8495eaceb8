"""End-to-end `edgekd distill`: the quickstart, a real CIFAR-10 subset, determinism and resume."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

import torch

from edgekd.training.checkpoint import load_student
from edgekd.models import build_model, load_weights

import _cli
from _training import training_fixture

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")
CIFAR = Path(os.environ.get("EDGEKD_CIFAR10_DIR", REPO.parent / "shared/data/cifar10/train"))
SUMMARY_KEYS = {"accuracy", "ece", "mce", "adaptive_ece", "nll", "brier"}


def edgekd(*args, cwd=REPO, timeout=600):
    return _cli.edgekd(*args, cwd=cwd)


@training_fixture()
def quickstart_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    res = edgekd("distill", QUICKSTART, "--out", str(out), "--quiet")
    assert res.returncode == 0, res.stderr
    return out, res


@pytest.mark.slow
def test_quickstart_end_to_end(quickstart_run):
    out, res = quickstart_run
    for name in ("recipe.yaml", "split.json", "metrics.jsonl", "summary.json", "student.pt", "last.pt",
                 "reliability_student.png", "reliability_teacher.png", "eval_logits.npz"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    for role in ("teacher", "student"):
        assert SUMMARY_KEYS <= set(summary[role]), role
    assert summary["student"]["accuracy"] >= 0.95, summary["student"]
    epochs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, 26))
    for key in ("student_ce", "student_kl_fwd", "student_kl_rev", "teacher_ce", "lr",
                "teacher_accuracy", "student_accuracy", "student_ece", "student_nll", "seconds", "images_per_s"):
        assert key in epochs[-1], key
    # The last two lines show the summary's numbers (fractions as percentages with 2 decimals).
    t, s = summary["teacher"], summary["student"]
    assert res.stdout.strip().splitlines()[-2:] == [
        f"teacher cnn_small: acc {100 * t['accuracy']:.2f}% ECE {100 * t['ece']:.2f}% NLL {t['nll']:.4f} "
        f"Brier {t['brier']:.4f}",
        f"run {out} | student cnn_tiny (bdkd): acc {100 * s['accuracy']:.2f}% ECE {100 * s['ece']:.2f}% "
        f"NLL {s['nll']:.4f} Brier {s['brier']:.4f} on 359 val images",
    ]
    assert not list(out.glob(".*.tmp")), "temp files left behind"


@pytest.mark.slow
def test_student_checkpoint_has_everything_export_needs(quickstart_run):
    out, _ = quickstart_run
    ck = load_student(out / "student.pt")  # weights_only=True inside
    assert ck.arch == "cnn_tiny" and ck.num_classes == 10 and ck.in_channels == 1
    assert ck.preprocessing["resize"] == [32, 32] and len(ck.class_names) == 10
    model = build_model(ck.arch, ck.num_classes, ck.in_channels, ck.image_size, ck.options)
    load_weights(model, ck.state_dict, source="student.pt")
    # The saved evaluation logits are the student's on the val split: recompute a few.
    logits = np.load(out / "eval_logits.npz")["student_logits"]
    summary = json.loads((out / "summary.json").read_text())
    acc = float((logits.argmax(1) == np.load(out / "eval_logits.npz")["labels"]).mean())
    assert acc == pytest.approx(summary["student"]["accuracy"])


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR.is_dir(), reason=f"CIFAR-10 JPEGs not found at {CIFAR}")
def test_one_epoch_on_cifar10_subset(tmp_path):
    # A 2,000-image ImageFolder: 200 real JPEGs per class, linked from the shared set.
    root = tmp_path / "cifar2k"
    for cls in sorted(p.name for p in CIFAR.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for f in sorted((CIFAR / cls).glob("*.jpg"))[:200]:
            (root / cls / f.name).symlink_to(f)
    out = tmp_path / "run"
    res = edgekd("distill", str(REPO / "recipes/cifar10-cpu.yaml"), "--out", str(out), "--quiet",
                 "--set", f"data.root={root}", "--set", "data.val_size=400", "--set", "data.subset=null",
                 "--set", "data.tune_size=0", "--set", "train.epochs=1", "--set", "data.cache_dir=null")
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_images"] == 400
    assert summary["split"]["sizes"]["train"] == 1600
    ck = load_student(out / "student.pt")
    assert ck.class_names[0] == "airplane" and ck.in_channels == 3
    # 1 epoch on 1,600 images: better than chance, but the point is the pipeline on real JPEGs.
    assert 0.1 < summary["teacher"]["accuracy"] <= 1.0


@pytest.mark.slow
def test_resume_refuses_a_different_recipe(quickstart_run):
    out, _ = quickstart_run
    res = edgekd("distill", QUICKSTART, "--out", str(out), "--resume", "--set", "distill.temperature=2")
    assert res.returncode == 2
    assert "distill.temperature" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow  # `python -m edgekd` processes
def test_resume_without_checkpoint_and_nonempty_out(tmp_path):
    res = edgekd("distill", QUICKSTART, "--out", str(tmp_path / "none"), "--resume")
    assert res.returncode == 2 and "last.pt" in res.stderr and "Traceback" not in res.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    res = edgekd("distill", QUICKSTART, "--out", str(tmp_path / "full"))
    assert res.returncode == 2 and "not empty" in res.stderr
    assert (tmp_path / "full" / "keep.txt").read_text() == "x"


@pytest.mark.slow  # a `python -m edgekd` process
def test_teacher_checkpoint_of_wrong_shape(tmp_path):
    wrong = build_model("cnn_small", 100, 1, 32)  # 100 classes; digits has 10
    torch.save(wrong.state_dict(), tmp_path / "t.pt")
    res = edgekd("distill", QUICKSTART, "--out", str(tmp_path / "run"),
                 "--set", f"teacher.checkpoint={tmp_path / 't.pt'}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "t.pt" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
