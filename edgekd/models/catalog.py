"""What `edgekd models` lists: the models a recipe can name, built once at a given input size for
their parameter count and compute (MACs), with their options and where they come from."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from edgekd.errors import EdgeKDError, ModelError

from . import timm_models
from .registry import available_models, build_model, builtin_models, count_parameters, model_options, model_source

SOURCES = ("builtin", "plugins", "timm")


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int  # at the catalog's input size and number of classes
    macs: int  # multiply-accumulates of one image's forward pass at that size
    options: dict[str, Any]  # option name -> default
    source: str  # "built in", the plugin's "<package> <version>", or "timm <version>"


def natural_key(name: str) -> list:
    """resnet8 < resnet14 < resnet110: digit runs compare as numbers."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def count_macs(model, in_channels: int, image_size: int) -> int:
    """Multiply-accumulates of one forward pass on one image, by torch's own FLOP counter
    (torch.utils.flop_counter: convolutions, matmuls, attention; a MAC is 2 FLOPs)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_channels, image_size, image_size))
    return counter.get_total_flops() // 2


def _names(pattern: str | None, sources: tuple[str, ...]) -> list[str]:
    names: list[str] = []
    if "builtin" in sources or "plugins" in sources:
        builtin = builtin_models()
        for name in available_models():  # built-ins and plugins (not imported for this)
            if ("builtin" if name in builtin else "plugins") in sources:
                names.append(name)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n.lower(), pattern.lower())]
    if "timm" in sources:
        if pattern is None:
            raise EdgeKDError("--source timm lists timm's models matching a PATTERN (timm has over a thousand): "
                              "e.g. edgekd models --source timm 'mobilenetv3*'")
        # A pattern may name them with or without the timm/ prefix.
        bare = pattern[len(timm_models.PREFIX):] if pattern.startswith(timm_models.PREFIX) else pattern
        names += timm_models.model_names(bare)
    return sorted(set(names), key=natural_key)


def model_catalog(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                  broken: list[ModelError] | None = None, pattern: str | None = None,
                  sources: tuple[str, ...] = ("builtin", "plugins")) -> list[ModelInfo]:
    """The models of `sources` whose name matches `pattern` (fnmatch, case-insensitive; None: all),
    in natural order. Plugins are imported and built here: a broken one (its import or factory
    raises, or exits) is the ModelError naming its package, appended to `broken` when given (the
    others are still listed), else raised. A model that does not build at this size is skipped the
    same way."""
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise EdgeKDError(f"unknown model source {unknown[0]!r}; allowed: {', '.join(SOURCES)}")
    rows = []
    for name in _names(pattern, sources):
        try:
            model = build_model(name, num_classes, in_channels, image_size)
            macs = count_macs(model, in_channels, image_size)
        except ModelError as e:
            if broken is None:
                raise
            broken.append(e)
            continue
        except Exception as e:  # noqa: BLE001 - a model that cannot run at this input size
            problem = ModelError(f"{name} does not run on {in_channels}x{image_size}x{image_size} inputs: "
                                 f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            if broken is None:
                raise problem from e
            broken.append(problem)
            continue
        rows.append(ModelInfo(name, count_parameters(model), macs, model_options(name), model_source(name)))
    return rows
