"""Model zoo: build classifiers by name, load checkpoints strictly.

Importing this package imports torch and fills the registry (the model modules
register themselves with @register_model).

Other installed packages add models through the ``edgekd.models`` entry point
group (plugins.py); they are found when a model is first looked up or listed.
"""

from . import cifar_resnet, small_cnn, torchvision_models, wrn  # noqa: F401  (fill the registry)
from .catalog import ModelInfo, model_catalog
from .registry import (
    ambiguous_models,
    available_models,
    build_model,
    count_parameters,
    load_weights,
    model_options,
    model_source,
    register_model,
)

__all__ = [
    "ModelInfo",
    "ambiguous_models",
    "available_models",
    "build_model",
    "count_parameters",
    "load_weights",
    "model_catalog",
    "model_options",
    "model_source",
    "register_model",
]
