"""Run directories: naming a new one, finding one on disk (the newest complete run
for export, an unfinished one for --resume), and training into one: created only
once everything is checked, removed again if the run fails before its first
checkpoint, continued from last.pt with --resume.

A run directory holds recipe.yaml, split.json, metrics.jsonl and last.pt while it
trains; student.pt, summary.json, eval_logits.npz and reliability_*.png when done.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Mapping

from torch import nn

from edgekd import files
from edgekd.contracts import RunLayout
from edgekd.contracts.run_layout import runs_by_age
from edgekd.training import checkpoint as ckpt
from edgekd.training import distributed
from edgekd.training.distributed import SINGLE, Dist
from edgekd.training.setup import Setup, prepare
from edgekd.training.trainer import Trainer
from edgekd.errors import CheckpointError, EdgeKDError
from edgekd.recipe import Recipe, read_yaml_mapping
from edgekd.saved_recipe import RESOLVED_AUTO, describe_keys, saved_recipe_diff

# What a run directory may hold before its first checkpoint (removed when such a run
# is started again with --resume).
_RUN_FILES = {RunLayout.RECIPE, RunLayout.SPLIT, RunLayout.METRICS}


def default_run_dir(recipe: Recipe, root: str | os.PathLike = "runs") -> Path:
    """runs/<recipe-name>-<time>, with -1, -2, ... if that name is taken."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{recipe.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = Path(f"{base}-{i}")
        i += 1
    return path


def find_resumable(recipe: Recipe, root: str | Path = "runs") -> Path:
    root = Path(root)
    cands = [p for p in runs_by_age(root)
             if p.name.startswith(f"{recipe.name}-") and RunLayout(p).is_unfinished()]
    if not cands:
        raise EdgeKDError(f"--resume: no unfinished run of recipe '{recipe.name}' under {root}/; name it with --out")
    return cands[-1]


def check_resume_recipe(saved: dict[str, Any], current: Recipe, allow_change: bool = False,
                        speed: dict[str, Any] | None = None) -> list[str]:
    """Keys that differ between last.pt's recipe and this one; refused unless allow_change.
    `speed`: last.pt's recorded speed settings (a saved `auto` matches a pin to what it resolved to)."""
    diffs = saved_recipe_diff(saved, current, speed)
    if diffs and not allow_change:
        raise CheckpointError(f"--resume: last.pt was trained with a different recipe; keys differ: "
                              f"{describe_keys(diffs)} (pass --allow-recipe-change to resume anyway)")
    return diffs


def check_resume_speed(recorded: dict[str, Any] | None, now: dict[str, Any]) -> None:
    """A resumed run continues in the layout, compilation and precision it started with: if `auto`
    resolves otherwise now (a newer edgekd, other hardware), refuse and say what to pin. Checkpoints
    from before edgekd recorded them (no record) are not checked."""
    if not recorded:
        return
    for key in RESOLVED_AUTO:
        if key in recorded and recorded[key] != now.get(key):
            value = {True: "true", False: "false"}.get(recorded[key], recorded[key])
            raise CheckpointError(
                f"--resume: last.pt trained with train.{key} {value} ({recorded.get(key + '_reason', '')}), but this "
                f"recipe now resolves it to {now.get(key)} ({now.get(key + '_reason', '')}); pin it to continue as the "
                f"run started: --set train.{key}={value}")


def train_run(recipe: Recipe, run_dir: Path, resume: bool, on_epoch=None, progress=None,
              allow_recipe_change: bool = False, warn: Callable[[str], None] | None = None,
              dist: Dist = SINGLE, note: Callable[[str], None] | None = None,
              modules: Mapping[str, nn.Module] | None = None) -> tuple[dict[str, Any], Setup]:
    """Prepare (no files yet), then train into run_dir. A run that fails before its
    first checkpoint leaves no directory behind. Under torchrun every rank calls this;
    all of them check the run directory, rank 0 alone changes it. `note` gets the resolved
    speed settings (the run's first line) and what init: backbone loaded; `modules`: user
    modules for "teacher"/"student" (see prepare). Returns the summary (an empty dict on
    ranks other than 0) and the Setup, whose teacher and student are the trained nets."""
    setup = prepare(recipe, dist, modules)
    if note and dist.is_main:
        note(setup.speed.line())
        if setup.storage_note:
            note(setup.storage_note)
        for role, report in setup.init_reports.items():
            for line in report.lines(role):
                note(line)
    summary = _train_into(setup, run_dir, resume, on_epoch, progress, allow_recipe_change, warn)
    # The other ranks wait for rank 0's final evaluation and files, so that every rank leaves the
    # process group together: a rank that tore gloo down while rank 0 was still working was seen
    # to abort at exit ("terminate called without an active exception"), failing a finished run.
    distributed.barrier(dist)
    return summary, setup


def run_distill(recipe: Recipe, run_dir: Path, resume: bool, **kwargs) -> dict[str, Any]:
    """train_run's summary alone: what edgekd compare and the tests need."""
    return train_run(recipe, run_dir, resume, **kwargs)[0]


def _train_into(setup: Setup, run_dir: Path, resume: bool, on_epoch, progress, allow_recipe_change: bool,
                warn: Callable[[str], None] | None) -> dict[str, Any]:
    recipe, dist = setup.recipe, setup.dist
    main = dist.is_main
    layout = RunLayout(run_dir)
    last = layout.last
    fresh_again = resume and not last.is_file() and layout.recipe.is_file()
    if fresh_again:
        # Killed before its first checkpoint: nothing to continue, so start the same run
        # again from scratch in the same place (the recipe must still match).
        check_resume_recipe(read_yaml_mapping(layout.recipe), recipe, allow_recipe_change)
        resume = False
    state, changed = None, []
    if resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: {last} does not exist; start the run without --resume")
        state = ckpt.load_training_state(last)
        changed = check_resume_recipe(state["recipe"], recipe, allow_recipe_change, state.get("speed_settings"))
        check_resume_speed(state.get("speed_settings"), setup.speed.to_dict())
    elif not fresh_again and run_dir.exists() and any(run_dir.iterdir()):
        raise EdgeKDError(f"{run_dir} already exists and is not empty; pass --resume to continue it or choose another --out")
    distributed.barrier(dist)  # every rank has checked before rank 0 changes anything
    created = False
    if main:
        if run_dir.is_dir():
            files.remove_stale_temps(run_dir)  # a kill during a checkpoint write leaves its temp file
        if fresh_again:
            for leftover in run_dir.iterdir():
                if leftover.is_file() and leftover.name in _RUN_FILES:
                    leftover.unlink()
        if changed and warn:
            warn(f"resuming with a changed recipe: {describe_keys(changed)}")
        if state is None:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EdgeKDError(f"cannot create run directory {run_dir}: {e.strerror or e}") from e
            created = True
    try:
        trainer = Trainer(setup, run_dir, on_epoch=on_epoch, progress=progress)
        if state is not None:
            trainer.load_state(state)
        if main and (state is None or changed):  # a changed recipe is what the run follows now: on disk too
            files.write_yaml(layout.recipe, recipe.to_dict())
        if main and state is None:
            setup.data.split_info.write(layout.split)
        return trainer.fit()
    except BaseException:
        if created and not layout.last.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
