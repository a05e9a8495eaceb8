"""Finding runs on disk: the newest complete one (for export), an unfinished one (for --resume)."""

from __future__ import annotations

from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.recipe import Recipe


def _runs(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime)


def newest_complete_run(root: str | Path = "runs") -> Path:
    root = Path(root)
    done = [p for p in _runs(root) if (p / "student.pt").is_file() and (p / "summary.json").is_file()]
    if not done:
        raise EdgeKDError(f"no complete run under {root}/ (one with student.pt); run edgekd distill first or name RUN_DIR")
    return done[-1]


def find_resumable(recipe: Recipe, root: str | Path = "runs") -> Path:
    root = Path(root)
    cands = [p for p in _runs(root)
             if p.name.startswith(f"{recipe.name}-") and (p / "last.pt").is_file() and not (p / "student.pt").is_file()]
    if not cands:
        raise EdgeKDError(f"--resume: no unfinished run of recipe '{recipe.name}' under {root}/; name it with --out")
    return cands[-1]
