"""RunLayout: the files of one run folder, by name.

A run folder (written by `edgekd distill`, read by `export`, `compare` and `--resume`) holds each
file under one name, here; no stage spells another's file names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunLayout:
    """The files of one run folder. Written in this order: recipe.yaml and split.json when the run
    starts, metrics.jsonl and last.pt after every epoch, then at the end eval_logits.npz, the
    reliability diagrams, student.pt, and summary.json last (its presence marks a complete run)."""

    root: Path

    RECIPE = "recipe.yaml"  # the resolved recipe the run trains (compared on --resume)
    SPLIT = "split.json"  # the data split: sizes, seeds, fingerprint
    METRICS = "metrics.jsonl"  # one JSON record per epoch
    LAST = "last.pt"  # the training state --resume continues from
    STUDENT = "student.pt"  # the finished student: what export reads
    SUMMARY = "summary.json"  # the finished run's figures; written last
    EVAL_LOGITS = "eval_logits.npz"  # both nets' logits on the evaluation split
    TENSORBOARD = "tensorboard"  # event files, with train.log: [tensorboard]

    @property
    def recipe(self) -> Path:
        return self.root / self.RECIPE

    @property
    def split(self) -> Path:
        return self.root / self.SPLIT

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def last(self) -> Path:
        return self.root / self.LAST

    @property
    def student(self) -> Path:
        return self.root / self.STUDENT

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def eval_logits(self) -> Path:
        return self.root / self.EVAL_LOGITS

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    def reliability(self, role: str) -> Path:
        """The reliability diagram of the teacher's or the student's final evaluation."""
        return self.root / f"reliability_{role}.png"

    def is_complete(self) -> bool:
        """Finished: its student and its summary are written."""
        return self.student.is_file() and self.summary.is_file()

    def is_unfinished(self) -> bool:
        """Started and checkpointed, not finished: what --resume continues."""
        return self.last.is_file() and not self.student.is_file()


def runs_by_age(root: str | Path) -> list[Path]:
    """The run folders under `root` (hidden ones left out), oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)


def newest_complete_run(root: str | Path = "runs") -> Path | None:
    """The most recently changed complete run under `root`, or None."""
    done = [p for p in runs_by_age(root) if RunLayout(p).is_complete()]
    return done[-1] if done else None
