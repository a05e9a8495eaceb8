"""`edgekd models`: the models a recipe can name, with their size and compute."""

from __future__ import annotations

import click

from edgekd.cli.group import cli, csv_list
from edgekd.errors import ModelError, raise_all


@cli.command("models")
@click.argument("pattern", required=False)
@click.option("--source", "sources", default="builtin,plugins", show_default=True, metavar="LIST",
              help="Which models, comma-separated: builtin, plugins, timm (timm's need a PATTERN).")
@click.option("--image-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Input size (pixels, square) the parameter counts are for: data.image_size.")
@click.option("--in-channels", type=click.IntRange(min=1), default=3, show_default=True,
              help="Input channels (1 for grayscale data such as digits).")
@click.option("--num-classes", type=click.IntRange(min=1), default=10, show_default=True,
              help="Classes of the final layer.")
def models_command(pattern: str | None, sources: str, image_size: int, in_channels: int, num_classes: int) -> int:
    """List the models a recipe can name as teacher.arch or student.arch, in natural
    order (resnet8 before resnet14), with the parameter count and the compute of one
    image (MACs, counted by torch.utils.flop_counter) at the given input size, their
    options (with defaults) and their source: built in, the installed package that
    registers it through the `edgekd.models` entry point group (see README, "Bring
    your own model"), or timm (`timm/<name>`, with the timm extra). PATTERN filters
    the names, fnmatch style, case-insensitive: 'resnet*', '*mobilenet*'.
    A plugin that cannot be imported, or has a bad factory, is one line naming its
    package, exit 2. A name two packages (or a package and edgekd) claim is
    ambiguous: the others are listed, then one line names it, exit 2.
    """
    from edgekd.api import need_torch

    need_torch("models")
    from edgekd.models import ambiguous_models, model_catalog

    broken: list[ModelError] = []
    rows = model_catalog(num_classes, in_channels, image_size, broken, pattern, tuple(csv_list(sources) or ()))
    table = [("model", "parameters", "MACs", "options", "source")] + [
        (m.name, f"{m.params:,}", _si(m.macs), ", ".join(f"{k}={v}" for k, v in m.options.items()) or "-", m.source)
        for m in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    click.echo(f"{len(rows)} model{'' if len(rows) == 1 else 's'}; parameters and MACs (one image) at "
               f"{image_size}x{image_size}, {in_channels} input channel{'s' if in_channels != 1 else ''}, "
               f"{num_classes} classes")
    for name, params, macs, options, source in table:
        click.echo(f"{name:<{widths[0]}}  {params:>{widths[1]}}  {macs:>{widths[2]}}  {options:<{widths[3]}}  {source}")
    # Every other model works; a recipe naming one of these gets the same line.
    raise_all([*broken, *(ModelError(line) for line in ambiguous_models().values())])
    return 0


def _si(n: int) -> str:
    """12,345,678 -> '12.3M'."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)
