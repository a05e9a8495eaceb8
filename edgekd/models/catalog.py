"""What `edgekd models` lists: every model a recipe can name, built once at a given
input size for its parameter count, with its options and where it comes from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .registry import available_models, build_model, count_parameters, model_options, model_source


@dataclass(frozen=True)
class ModelInfo:
    name: str
    params: int  # at the catalog's input size and number of classes
    options: dict[str, Any]  # option name -> default
    source: str  # "built in", or the plugin's "<package> <version>"


def model_catalog(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> list[ModelInfo]:
    """Every built-in and plugin model, sorted by name. Plugins are imported and built
    here, so a broken one is the ModelError naming its package."""
    rows = []
    for name in available_models():
        model = build_model(name, num_classes, in_channels, image_size)
        rows.append(ModelInfo(name, count_parameters(model), model_options(name), model_source(name)))
    return rows
