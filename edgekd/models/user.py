"""User models: teacher or student passed to edgekd.distill as an nn.Module instead of
named in the recipe.

A recipe can only name registered models, so it never imports or runs code. A module
passed from Python replaces the recipe's arch, which then records where its class
comes from, "user:<module>.<qualname>", in recipe.yaml, summary.json, student.pt and the
bundle's manifest. No file stores the class itself (student.pt holds weights, loaded
with weights_only=True): continuing such a run or exporting its student needs the
module again, from Python.
"""

from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import ModelError, RecipeError, first_line

USER_PREFIX = "user:"


def user_arch(module: nn.Module) -> str:
    """What the recipe's arch becomes for a module passed in: "user:" and its class path."""
    cls = type(module)
    return f"{USER_PREFIX}{cls.__module__}.{cls.__qualname__}"


def is_user_arch(arch: object) -> bool:
    return isinstance(arch, str) and arch.startswith(USER_PREFIX)


def class_name(arch: str) -> str:
    """'Net' for 'user:pkg.models.Net': how the errors below suggest calling it."""
    return arch.rsplit(".", 1)[-1]


def require_module(role: str, arch: str, given: nn.Module | None) -> None:
    """A recipe that names a user model can be trained only with its module passed again."""
    if given is None and is_user_arch(arch):
        raise RecipeError(
            f"{role}.arch {arch!r} is a model that was passed to edgekd.distill as an nn.Module, which a recipe "
            f"cannot name (it never imports code); pass it again: edgekd.distill(recipe, {role}={class_name(arch)}(...))")


def check_output(role: str, module: nn.Module, num_classes: int, in_channels: int, image_size: int) -> None:
    """Run a user module on a 2-image batch of this data's shape, in eval mode (batch norm
    statistics untouched), so a module that does not fit the data is one line now, not
    a traceback from the first training step."""
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(2, in_channels, image_size, image_size, device=device)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # any error of the user's forward: shown as its first line
        raise ModelError(f"the {role} module ({type(module).__name__}) fails on a [2, {in_channels}, {image_size}, "
                         f"{image_size}] batch of this data: {first_line(e, 200)}") from e
    finally:
        module.train(was_training)
    shape = list(out.shape) if isinstance(out, torch.Tensor) else None
    if shape != [2, num_classes]:
        got = f"shape {shape}" if shape is not None else f"a {type(out).__name__}"
        raise ModelError(f"the {role} module ({type(module).__name__}) gives {got} for a batch of 2 images; "
                         f"it must give logits of shape [batch, {num_classes}] ({num_classes} classes)")
