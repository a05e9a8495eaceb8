"""Model zoo: build classifiers by name, load checkpoints strictly.

Importing this package imports torch and fills the registry (the model modules
register themselves with @register_model).
"""

from . import cifar_resnet, small_cnn, torchvision_models, wrn  # noqa: F401  (fill the registry)
from .registry import (
    available_models,
    build_model,
    count_parameters,
    load_weights,
    model_options,
    register_model,
)

__all__ = [
    "available_models",
    "build_model",
    "count_parameters",
    "load_weights",
    "model_options",
    "register_model",
]
