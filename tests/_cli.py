"""Shared by the tests that run the real `edgekd` entry point in-process."""

import pytest

from edgekd.cli import main


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """`edgekd ARGS`: its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as e:
        main(list(args))
    out, err = capsys.readouterr()
    return e.value.code, out, err
