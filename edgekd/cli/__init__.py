"""The `edgekd` command line: one thin click command per verb over the Python API (edgekd.api).

Heavy imports (torch, onnx) happen inside the API calls, so `edgekd validate` runs
on a device that has only numpy and ONNX Runtime. Errors (EdgeKDError) become one
line on stderr and their exit code (2 for the user's input, 1 for a failed result);
`--debug` shows the traceback instead.

One module per group of commands: training (distill, compare), deployment (export,
validate), models; group.py holds the group they register on.
"""

from __future__ import annotations

import os
import sys

import click

# Each command module registers its commands on the group when imported.
from edgekd.cli import deployment, models, training  # noqa: F401
from edgekd.cli.group import cli
from edgekd.errors import EdgeKDError, Problems, first_line


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("EDGEKD_DEBUG") == "1"
    try:
        # obj: the raw arguments, which distill --nproc-per-node hands on to its processes.
        rv = cli.main(args=args, prog_name="edgekd", standalone_mode=False, obj={"argv": list(args)})
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("edgekd: aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:
        if debug:
            raise
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
        click.echo(f"edgekd: error: {e.format_message()}{hint}", err=True)
        sys.exit(2)
    except click.ClickException as e:
        if debug:
            raise
        click.echo(f"edgekd: error: {e.format_message()}", err=True)
        sys.exit(e.exit_code)
    except EdgeKDError as e:  # FailedCheck too: its exit_code is 1
        if debug:
            raise
        lines = [first_line(p) for p in e.problems] if isinstance(e, Problems) else [first_line(e)]
        for msg in lines:
            click.echo(f"edgekd: error: {msg}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("edgekd: interrupted", err=True)
        sys.exit(130)
    sys.exit(rv if isinstance(rv, int) else 0)

