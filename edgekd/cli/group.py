"""The `edgekd` command group, which every command module registers on, and what they share."""

from __future__ import annotations

import click

from edgekd import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekd")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors (for bug reports).")
def cli(debug: bool) -> None:
    """edgekd: distill a large image classifier into a small, well-calibrated one
    (online BD-KD), export it to ONNX/TensorRT, and validate accuracy AND
    calibration on the target runtime.

    \b
      edgekd distill recipes/quickstart.yaml
      edgekd export                # newest run under runs/
      edgekd validate              # newest bundle under export/
    """


def csv_list(value: str | None, split=lambda text, sep: text.split(sep)) -> list[str] | None:
    """A comma-separated option's items (None when the option is not given); an empty list is bad input."""
    if value is None:
        return None
    items = [v.strip() for v in split(value, ",") if v.strip()]
    if not items:
        raise click.BadParameter("expected a comma-separated list")
    return items
