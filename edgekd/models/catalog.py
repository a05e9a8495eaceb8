"""What `edgekd models` lists: every model a recipe can name, built once at a given
input size for its parameter count, with its options and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekd.errors import ModelError

from .registry import available_models, build_model, count_parameters, model_options, model_source


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int  # at the catalog's input size and number of classes
    options: dict[str, Any]  # option name -> default
    source: str  # "built in", or the plugin's "<package> <version>"


def model_catalog(num_classes: int = 10, in_channels: int = 3, image_size: int = 32,
                  broken: list[ModelError] | None = None) -> list[ModelInfo]:
    """Every built-in and plugin model that builds, sorted by name. Plugins are imported and built
    here: a broken one (its import or factory raises, or exits) is the ModelError naming its
    package, appended to `broken` when given (the others are still listed), else raised."""
    rows = []
    for name in available_models():
        try:
            model = build_model(name, num_classes, in_channels, image_size)
        except ModelError as e:
            if broken is None:
                raise
            broken.append(e)
            continue
        rows.append(ModelInfo(name, count_parameters(model), model_options(name), model_source(name)))
    return rows
