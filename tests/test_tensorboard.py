"""train.log: [tensorboard]: event files beside metrics.jsonl, read back with
TensorBoard's own EventAccumulator."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from edgekd.training import tensorboard_log
from edgekd.recipe import load_recipe

from _cli import cli

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes/quickstart.yaml"


@pytest.mark.slow
def test_event_files_hold_every_loss_term_metric_lr_and_reliability_diagram(tmp_path, capsys):
    run = tmp_path / "run"
    code, _, err = cli(capsys, "distill", str(QUICKSTART), "--set", "train.epochs=2", "--set", "train.eval_every=2",
                       "--set", "data.image_size=16",
                       "--set", "train.log=[tensorboard]", "--out", str(run), "--quiet")
    assert code == 0, err
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # still written
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0}).Reload()
    scalars = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}

    terms = ("student_ce", "student_kl_fwd", "student_kl_rev", "teacher_ce")  # bdkd, teacher_divergence: none
    for tag, key in [*((f"loss/{t}", t) for t in terms), ("loss/total", "loss"), ("lr", "lr"),
                     ("train/student_train_accuracy", "student_train_accuracy"),
                     ("train/fwd_weight", "fwd_weight"), ("train/entropy_gap", "entropy_gap")]:
        assert scalars[tag] == {1: pytest.approx(history[0][key], rel=1e-6),
                                2: pytest.approx(history[1][key], rel=1e-6)}, tag
    # Evaluated after epoch 2 only (eval_every 2): both nets, and one diagram each.
    for net in ("student", "teacher"):
        for metric in ("accuracy", "ece", "nll"):
            assert scalars[f"val/{net}_{metric}"] == {2: pytest.approx(history[1][f"{net}_{metric}"], rel=1e-6)}
        assert f"val/{net}_brier" in scalars
        (image,) = events.Images(f"val/reliability_{net}")
        assert image.step == 2 and image.width > 200 and image.height > 200
        assert image.encoded_image_string.startswith(b"\x89PNG")
    summary = json.loads((run / "summary.json").read_text())
    assert scalars["val/student_ece"][2] == pytest.approx(summary["student"]["ece"], rel=1e-6)


def test_missing_tensorboard_is_one_line_before_the_run_exists(tmp_path, capsys, monkeypatch):
    # None in sys.modules is how Python marks a module as not importable.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    run = tmp_path / "run"
    code, out, err = cli(capsys, "distill", str(QUICKSTART), "--set", "train.log=[tensorboard]", "--out", str(run))
    assert (code, out) == (2, "") and not run.exists()
    assert err == ("edgekd: error: train.log: [tensorboard] needs the tensorboard package, which is not installed: "
                   "pip install 'edgekd[tensorboard]' (or remove tensorboard from train.log)\n")


def test_unknown_logger_is_a_recipe_error(capsys):
    code, _, err = cli(capsys, "distill", str(QUICKSTART), "--set", "train.log=[wandb]")
    assert code == 2
    assert err == f"edgekd: error: {QUICKSTART}: train.log.0: 'wandb' is not allowed; input should be 'tensorboard'\n"


def test_only_rank_0_and_only_when_asked_opens_a_log(tmp_path):
    asked = load_recipe(QUICKSTART, ["train.log=[tensorboard]"])
    for recipe, is_main in ((asked, False), (load_recipe(QUICKSTART), True)):
        with tensorboard_log.open_log(recipe, tmp_path, is_main) as log:
            assert log is None
    assert list(tmp_path.iterdir()) == []
    with tensorboard_log.open_log(asked, tmp_path, True) as log:
        assert log is not None
    assert [p.name for p in tmp_path.iterdir()] == ["tensorboard"]
