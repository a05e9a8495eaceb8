"""The distiller interface and the method registry.

A method is a small nn.Module holding the teacher and the student. Its
`forward_train(x, y)` runs both nets once and returns their logits plus a dict of
named loss terms; the trainer sums the terms, backpropagates once and steps each
net's optimizer. Because every term detaches the other net's output where the
math says so, one backward pass through the sum gives each net exactly its own
gradients. The trainer never branches on the method's name.

Each method registers under its settings class (edgekd/training/method_settings.py,
torch-free): its name, the `distill:` keys it takes (`self.cfg`) and what it needs
of the run, such as whether the teacher trains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.training.method_settings import METHOD_SETTINGS, MethodSettings


@dataclass
class StepOutput:
    student_logits: torch.Tensor
    teacher_logits: torch.Tensor
    losses: dict[str, torch.Tensor]  # summed by the trainer; each is a scalar
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # logged, never backpropagated


class Distiller(nn.Module):
    # Set by register_method from the method's settings class.
    settings: type[MethodSettings] = MethodSettings
    trains_teacher: bool = True

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: MethodSettings, label_smoothing: float = 0.0):
        super().__init__()
        if not isinstance(cfg, self.settings):
            raise TypeError(f"{type(self).__name__} takes {self.settings.__name__}, not {type(cfg).__name__}")
        self.teacher = teacher
        self.student = student
        self.cfg = cfg
        self.label_smoothing = label_smoothing

    def train(self, mode: bool = True):
        super().train(mode)
        if not self.trains_teacher:
            self.teacher.eval()  # frozen: its BatchNorm statistics must not drift either
        return self

    def ce(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor) -> StepOutput:
        raise NotImplementedError


_METHODS: dict[str, type[Distiller]] = {}


def register_method(settings: type[MethodSettings]) -> Callable[[type[Distiller]], type[Distiller]]:
    """Register a Distiller as the training code of the method `settings` declares."""
    name = settings.method_name()
    if METHOD_SETTINGS.get(name) is not settings:
        raise ValueError(f"method {name!r} has no settings in edgekd.training.method_settings.METHOD_SETTINGS")

    def deco(cls: type[Distiller]) -> type[Distiller]:
        if name in _METHODS:
            raise ValueError(f"method {name!r} registered twice")
        cls.settings = settings
        cls.trains_teacher = settings.trains_teacher
        _METHODS[name] = cls
        return cls

    return deco


def get_method(name: str) -> type[Distiller]:
    from edgekd.errors import RecipeError

    if name not in _METHODS:
        raise RecipeError(f"distill.method: unknown method {name!r}; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]


def available_methods() -> list[str]:
    return sorted(_METHODS)
