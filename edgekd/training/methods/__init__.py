"""Distillation methods. Importing this package registers every method."""

from edgekd.training.methods import bdkd, ce, dml, kd  # noqa: F401  (registration)
from edgekd.training.methods.base import Distiller, StepOutput, available_methods, get_method, register_method

__all__ = ["Distiller", "StepOutput", "available_methods", "get_method", "register_method"]
