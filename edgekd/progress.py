"""Progress on the terminal: training (a rich progress bar, or one short line per epoch with --quiet)
and export's INT8 search (a bar over its time budget)."""

from __future__ import annotations

import sys
import time
from typing import Callable

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                           TimeRemainingColumn)


class EpochReporter:
    """Shows steps within an epoch (loss, acc, img/s, ETA) and a line per finished epoch."""

    # Reading running losses forces a device sync: do it a few times a second, not every step.
    REFRESH_S = 0.5

    def __init__(self, epochs: int, quiet: bool = False):
        self.epochs = epochs
        self.quiet = quiet
        self.console = Console(stderr=False, highlight=False)
        self._progress: Progress | None = None
        self._task = None
        self._last = 0.0

    def __enter__(self):
        if not self.quiet and self.console.is_terminal:
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}/{task.fields[epochs]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def step(self, i: int, n: int, stats: Callable[[], dict]) -> None:
        if self._progress is None:
            return
        now = time.perf_counter()
        if self._task is None:
            self._task = self._progress.add_task("train", total=n, epoch=1, epochs=self.epochs, stats="")
        if i == 1:
            self._progress.reset(self._task, total=n)
        if now - self._last >= self.REFRESH_S or i == n:
            self._last = now
            s = stats()
            text = f"loss {s['loss']:.3f} acc {100 * s['acc']:.1f}% {s['img/s']:.0f} img/s"
            self._progress.update(self._task, completed=i, stats=text)

    def epoch_done(self, rec: dict) -> None:
        e = rec["epoch"]
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, epoch=min(e + 1, self.epochs))
        if "student_accuracy" in rec:
            evals = (f"teacher acc {100 * rec['teacher_accuracy']:.2f}% ECE {100 * rec['teacher_ece']:.2f}% | "
                     f"student acc {100 * rec['student_accuracy']:.2f}% ECE {100 * rec['student_ece']:.2f}%")
        else:  # an epoch without evaluation (train.eval_every > 1): training accuracy only
            evals = (f"teacher train acc {100 * rec['teacher_train_accuracy']:.2f}% | "
                     f"student train acc {100 * rec['student_train_accuracy']:.2f}%")
        line = f"epoch {e}/{self.epochs} loss {rec['loss']:.3f} | {evals} | {rec['images_per_s']:.0f} img/s {rec['seconds']:.1f}s"
        if rec.get("skipped_steps"):
            line += f" | {rec['skipped_steps']} non-finite step(s) skipped"
        self.note(line)

    def note(self, line: str) -> None:
        """One line above the progress bar (or on stdout without one); printed in --quiet mode too."""
        if self._progress is not None:
            self._progress.console.print(line)
        else:
            print(line, file=sys.stdout, flush=True)


class SearchProgress:
    """`edgekd export --int8-search` on a terminal: a bar over the search's time budget (the
    search stops starting candidates when it is spent), the candidates tried and how many pass.
    Lines the search prints go above it. Not on a terminal: no bar, the lines only."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.console = Console(highlight=False)
        self._progress: Progress | None = None
        self._task = None
        self._tried = self._passed = 0

    def __enter__(self):
        if self.console.is_terminal:
            self._progress = Progress(TextColumn("INT8 search"), BarColumn(), TextColumn("{task.fields[stats]}"),
                                      TimeElapsedColumn(), TextColumn(f"of {self.budget_s:g} s"),
                                      console=self.console, transient=True)
            self._progress.__enter__()
            self._task = self._progress.add_task("search", total=self.budget_s, stats="")
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False

    def candidate(self, candidate, elapsed_s: float) -> None:
        """One more candidate judged (an int8_search.Candidate), `elapsed_s` into the search."""
        self._tried += 1
        self._passed += bool(candidate.passed)
        if self._progress is not None:
            self._progress.update(self._task, completed=min(elapsed_s, self.budget_s),
                                  stats=f"{self._tried} candidates, {self._passed} passing")
