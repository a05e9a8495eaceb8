"""NetEval: one net's evaluation; EvalLogits: both nets' logits as a finished run keeps them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekd.contracts.errors import ContractError, require_keys


@dataclass(frozen=True)
class NetEval:
    """One net's logits and the labels on the evaluation split, and the calibration metrics of them
    (accuracy, ece, nll, ...: edgekd.calibration.METRIC_KEYS). In memory only: a run writes its
    figures to metrics.jsonl and summary.json, its logits to eval_logits.npz (EvalLogits)."""

    logits: np.ndarray
    labels: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return int(len(self.labels))


@dataclass(frozen=True)
class EvalLogits:
    """eval_logits.npz: the labels of the evaluation split and both nets' logits on it, which
    `edgekd compare` reuses instead of evaluating the final nets again."""

    # Version 1 is every file written so far; none records it (see SplitInfo.FORMAT for why a
    # version is written only once a second one exists).
    FORMAT = "edgekd.eval_logits/1"
    FORMAT_KEY = "format"
    _LABELS, _STUDENT, _TEACHER = "labels", "student_logits", "teacher_logits"

    labels: np.ndarray
    student: np.ndarray
    teacher: np.ndarray

    @classmethod
    def of(cls, teacher: NetEval, student: NetEval) -> "EvalLogits":
        return cls(labels=student.labels, student=student.logits, teacher=teacher.logits)

    def logits(self, role: str) -> np.ndarray:
        return {"student": self.student, "teacher": self.teacher}[role]

    def write(self, path: str | Path) -> None:
        from edgekd.files import write_npz

        write_npz(path, **{self._LABELS: self.labels, self._STUDENT: self.student, self._TEACHER: self.teacher})

    @classmethod
    def read(cls, path: str | Path) -> "EvalLogits":
        with np.load(path) as z:
            found = str(z[cls.FORMAT_KEY]) if cls.FORMAT_KEY in z.files else cls.FORMAT
            if found != cls.FORMAT:
                raise ContractError(f"{path} holds evaluation logits of format {found!r}; this edgekd reads "
                                    f"{cls.FORMAT!r}")
            require_keys(dict.fromkeys(z.files), (cls._LABELS, cls._STUDENT, cls._TEACHER), ContractError,
                         f"{path} lacks {{missing}}; it is not a run's eval_logits")
            return cls(labels=z[cls._LABELS], student=z[cls._STUDENT], teacher=z[cls._TEACHER])


Evals = dict[str, NetEval]  # an evaluation of both nets, by role: "teacher", "student"
