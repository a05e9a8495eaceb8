"""Shared by the tests that run the real `edgekd` entry point in-process.

In-process, because a `python -m edgekd` process spends 4 to 9 seconds importing torch,
torchvision, onnx and the exporter before it does anything, and the suite runs the
command a few hundred times. A separate process is kept where the process itself is
what is tested: SIGKILL and resume, torchrun, validate without torch installed, an
environment read at start-up.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from edgekd.cli import main

REPO = Path(__file__).resolve().parents[1]


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`edgekd ARGS`: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err


def edgekd(*args, cwd: str | os.PathLike = REPO, timeout: float | None = None) -> subprocess.CompletedProcess:
    """`edgekd ARGS` in this process, from `cwd`: what `subprocess.run([... "-m", "edgekd", ...])`
    would return (returncode, stdout, stderr), without starting Python again. `timeout` is
    accepted for the callers' sake and not enforced."""
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["edgekd", *argv], code, out.getvalue(), err.getvalue())
