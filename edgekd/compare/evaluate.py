"""Training a run and evaluating its final nets on any split, for `edgekd compare`. Needs torch.

The one module of edgekd.compare that imports the training code (build_inputs, predict,
run_distill): when those functions move, these imports are the only lines to change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgekd.contracts import EvalLogits, RunLayout
from edgekd.training import checkpoint
from edgekd.training.run_dir import run_distill
from edgekd.training.build import build_inputs
from edgekd.training.methods import get_method
from edgekd.training.setup import resolve_device
from edgekd.training.speed import resolve_speed_settings
from edgekd.training.trainer import predict
from edgekd.errors import CheckpointError, first_line
from edgekd.recipe import Recipe


def train(recipe: Recipe, run_dir: Path, resume: bool, on_epoch: Callable[[dict], None] | None = None) -> dict[str, Any]:
    return run_distill(recipe, run_dir, resume=resume, on_epoch=on_epoch)


def evaluate_final(recipe: Recipe, run_dir: Path, splits: list[str]) -> dict[str, EvalLogits]:
    """Teacher and student of a finished run (its last.pt) on each split, built the way training
    builds them (same data, split, preprocessing and device; evaluated in fp32, as the trainer does).

    Returns {split: its labels and both nets' logits (float32)}.
    """
    last = RunLayout(run_dir).last
    if not last.is_file():
        raise CheckpointError(f"{last} is missing, so the final nets of {run_dir} cannot be evaluated on "
                              f"{' and '.join(splits)}; train the run again (remove {run_dir})")
    state = checkpoint.load_training_state(last)
    if int(state.get("epoch", -1)) != recipe.train.epochs:
        raise CheckpointError(f"{last} holds epoch {state.get('epoch')} of {recipe.train.epochs}: the run is not finished")
    # Nothing process-wide changes (no seeding, determinism flags or compile): fresh weights are
    # drawn on a forked RNG and replaced by the run's at once.
    with torch.random.fork_rng(devices=[]):
        built = build_inputs(recipe, None, get_method(recipe.distill.method).trains_teacher)
    device = resolve_device(recipe.train.device)
    channels_last = resolve_speed_settings(recipe, device, total_steps=0).channels_last  # as the trainer evaluated
    teacher, student = built.teacher, built.student
    try:
        teacher.load_state_dict(state["teacher"])
        student.load_state_dict(state["student"])
    except (KeyError, RuntimeError) as e:
        raise CheckpointError(f"{last} does not match this recipe's models: {first_line(e, 160)}") from e
    if channels_last:
        teacher, student = (n.to(memory_format=torch.channels_last) for n in (teacher, student))
    teacher.to(device)
    student.to(device)
    out = {}
    for split in splits:
        loader = built.data.eval_loader(split, recipe.data.eval_batch_size, device, recipe.data.workers)
        t_logits, labels = predict(teacher, loader, channels_last)
        s_logits, s_labels = predict(student, loader, channels_last)
        assert np.array_equal(labels, s_labels)  # one unshuffled loader: same order twice
        out[split] = EvalLogits(labels=labels, student=s_logits, teacher=t_logits)
    return out
