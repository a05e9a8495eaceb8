"""`train.log: [tensorboard]`: each epoch's metrics.jsonl record, and a reliability
diagram per net at each evaluation, as TensorBoard event files in <run>/tensorboard/.

metrics.jsonl stays the run's record (written whatever train.log says); this is a
view of it for people who watch curves in TensorBoard. Rank 0 writes it, like every
other file of a run. An epoch is logged after its checkpoint, so a run resumed after
a crash never logs an epoch twice.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from edgekd import calibration, optional, plots
from edgekd.contracts import Evals, RunLayout
from edgekd.errors import MissingDependencyError, first_line
from edgekd.recipe import Recipe


LOG_DIR = RunLayout.TENSORBOARD


def require(loggers: list[str]) -> None:
    """Fail before training (and before a run directory exists) when a requested
    logger's package is missing."""
    if "tensorboard" in loggers:
        optional.load("tensorboard", "train.log: [tensorboard] needs",
                      missing="train.log: [tensorboard] needs the tensorboard package, which is not installed: "
                              "pip install 'edgekd[tensorboard]' (or remove tensorboard from train.log)")
        try:
            import torch.utils.tensorboard  # noqa: F401  (torch's writer over that package)
        except Exception as e:  # noqa: BLE001 - a tensorboard torch cannot use: one line, before training
            raise MissingDependencyError(f"train.log: [tensorboard]: torch cannot use the installed tensorboard "
                                         f"({type(e).__name__}: {first_line(e, 160)}); "
                                         "pip install -U 'edgekd[tensorboard]'") from e


class TensorBoardLog:
    def __init__(self, recipe: Recipe, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.eval_split = recipe.train.eval_split
        self.archs = {"student": recipe.student.arch, "teacher": recipe.teacher.arch}
        self.writer = SummaryWriter(log_dir=str(run_dir / LOG_DIR))

    def epoch(self, rec: dict[str, Any], loss_terms: tuple[str, ...], evals: Evals | None) -> None:
        """One epoch's record, its step the epoch number: loss/<term> for each of the
        method's loss terms and loss/total, lr, every other field as train/<field>
        (train accuracies, images/s, the method's stats such as BD-KD's fwd_weight),
        and after an evaluation <eval split>/<net>_<metric> (accuracy, ECE, NLL, Brier,
        ...) and <eval split>/reliability_<net> (an image)."""
        step = rec["epoch"]
        add = self.writer.add_scalar
        evaluated = {f"{net}_{metric}": value for net, result in (evals or {}).items()
                     for metric, value in result.metrics.items() if metric in calibration.METRIC_KEYS}
        for key, value in rec.items():
            if key in loss_terms:
                add(f"loss/{key}", value, step)
            elif key == "loss":
                add("loss/total", value, step)
            elif key == "lr":
                add("lr", value, step)
            elif key != "epoch" and key not in evaluated:  # rec's accuracy/ECE/NLL: below, with the rest
                add(f"train/{key}", value, step)
        for key, value in evaluated.items():
            add(f"{self.eval_split}/{key}", value, step)
        for net, result in (evals or {}).items():
            png = plots.reliability_png(calibration.reliability_bins(result.logits, result.labels),
                                        title=f"{net} {self.archs[net]}, epoch {step}, {self.eval_split}")
            self.writer.add_image(f"{self.eval_split}/reliability_{net}", _rgb(png), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        return np.asarray(im.convert("RGB"))


@contextlib.contextmanager
def open_log(recipe: Recipe, run_dir: Path, is_main: bool) -> Iterator[TensorBoardLog | None]:
    """The run's TensorBoard log while training (None when train.log does not ask for
    it, or on ranks other than 0), closed explicitly when training ends or fails."""
    if "tensorboard" not in recipe.train.log or not is_main:
        yield None
        return
    log = TensorBoardLog(recipe, run_dir)
    try:
        yield log
    finally:
        log.close()
