"""The contracts between stages (edgekd/contracts.py): one name per run file, spelled nowhere else."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgekd.contracts import RunLayout

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
NAMES = [RunLayout.RECIPE, RunLayout.SPLIT, RunLayout.METRICS, RunLayout.LAST, RunLayout.STUDENT,
         RunLayout.SUMMARY, RunLayout.EVAL_LOGITS]  # (TENSORBOARD's word is also the package and logger name)


@pytest.mark.parametrize("name", NAMES)
def test_no_stage_spells_a_run_file_name(name):
    """As a string literal, a run file's name lives in contracts.py only (prose in comments and
    docstrings may mention it: it is not a quoted literal there)."""
    spelled = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "contracts.py"
               for i, line in enumerate(p.read_text().splitlines(), 1)
               if f'"{name}"' in line or f"'{name}'" in line]
    assert not spelled, spelled


def test_complete_and_unfinished(tmp_path):
    run = RunLayout(tmp_path)
    assert not run.is_complete() and not run.is_unfinished()
    run.last.write_text("x")
    assert run.is_unfinished() and not run.is_complete()
    run.student.write_text("x")
    assert not run.is_unfinished() and not run.is_complete()  # summary.json is written last
    run.summary.write_text("{}")
    assert run.is_complete()
    assert run.reliability("student") == tmp_path / "reliability_student.png"
