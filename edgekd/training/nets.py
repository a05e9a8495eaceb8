"""The two nets a recipe trains, built and started from their checkpoints before any image is read.

Reading a real data set takes minutes; a checkpoint that is missing, of another format or
architecture, or holds a NaN should not cost them. Everything here needs only the data's
shape (data.sources.source_shape: classes, channels, side, from the folder names alone), so
`edgekd distill` and `edgekd compare` check both nets first, and report every problem they
find at once (one line each) instead of one per try.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from edgekd.data.sources import SourceShape
from edgekd.training import checkpoint as ckpt
from edgekd.errors import EdgeKDError, RecipeError, raise_all
from edgekd.models import build_model, user
from edgekd.models.pretrained import InitReport, init_weights
from edgekd.recipe import Recipe

ROLES = ("teacher", "student")


@dataclass
class Nets:
    teacher: nn.Module
    student: nn.Module
    # What student.init / teacher.init: backbone loaded, by role (full loads leave none).
    init_reports: dict[str, InitReport] = field(default_factory=dict)


def _net(recipe: Recipe, role: str, shape: SourceShape, given: nn.Module | None) -> tuple[nn.Module, InitReport | None]:
    cfg = getattr(recipe, role)
    if given is not None:
        user.check_output(role, given, shape.num_classes, shape.in_channels, shape.image_size)
        model = given
    else:
        model = build_model(cfg.arch, shape.num_classes, shape.in_channels, shape.image_size, cfg.options)
    if not cfg.checkpoint:
        return model, None
    weights = ckpt.read_net_weights(cfg.checkpoint, role, cfg.checkpoint_key)
    try:
        report = init_weights(model, weights.state, cfg.init, source=cfg.checkpoint, num_classes=shape.num_classes,
                              prefix=cfg.checkpoint_prefix, role=role)
    except EdgeKDError as e:
        if not weights.foreign_entry:
            raise
        # A training framework's file: say where the weights were taken from, and what else it holds.
        raise type(e)(f"{e}; {weights.describe()}") from None
    return model, report


def build_nets(recipe: Recipe, shape: SourceShape, modules: Mapping[str, nn.Module] | None = None,
               trains_teacher: bool = True) -> Nets:
    """Both nets of `recipe` for data of `shape`, each started from its checkpoint when it names one
    (torch's RNG as seeded by the caller gives the fresh weights). Every problem with either net is
    raised at once (errors.raise_all). `trains_teacher`: the method's; a frozen teacher whose
    classifier init: backbone left untrained is refused."""
    modules = dict(modules or {})
    built: dict[str, tuple[nn.Module, InitReport | None]] = {}
    problems: list[EdgeKDError] = []
    for role in ROLES:
        try:
            built[role] = _net(recipe, role, shape, modules.get(role))
        except EdgeKDError as e:
            problems.append(e)
    raise_all(problems)
    reports = {role: report for role, (_, report) in built.items() if report is not None}
    t_init = reports.get("teacher")
    if t_init is not None and t_init.classifier_reinitialised and not trains_teacher:
        raise RecipeError(f"teacher.init: backbone left the teacher's classifier untrained ({t_init.classifier}: the "
                          f"file has another class count), but distill.method {recipe.distill.method} keeps the "
                          f"teacher frozen; give a teacher trained on these classes or a method that trains it")
    return Nets(built["teacher"][0], built["student"][0], reports)


def check_trainable(recipe: Recipe) -> None:
    """What `edgekd compare` checks of each run before training any: the data's shape, both nets
    from their checkpoints, and the method built on them with the recipe's distill: settings."""
    import torch

    from edgekd.data.sources import source_shape
    from edgekd.training.methods import get_method

    d = recipe.data
    method_cls = get_method(recipe.distill.method)
    state = torch.get_rng_state()  # fresh weights draw from torch's RNG: leave it as it was
    try:
        nets = build_nets(recipe, source_shape(d.name, d.root, d.image_size), trains_teacher=method_cls.trains_teacher)
        method_cls(nets.teacher, nets.student, recipe.distill, label_smoothing=recipe.optim.label_smoothing)
    finally:
        torch.set_rng_state(state)
