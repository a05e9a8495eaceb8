"""The data and both nets of a recipe, built as training builds them and with no process-wide effect:
what training's start-up (setup.prepare) and `edgekd compare`'s evaluation of finished runs share.

prepare() adds what only a training process wants (determinism flags, seeds, the process group,
DDP, torch.compile, the method); rebuilding a finished run's nets to evaluate them needs none of it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from torch import nn

from edgekd.data import DataModule, Normalization, build_data, resolve_storage
from edgekd.data.loader import check_workers
from edgekd.data.sources import source_shape
from edgekd.errors import DataError, RecipeError
from edgekd.models import user
from edgekd.models.pretrained import InitReport
from edgekd.models.timm_models import is_timm, pretrained_input
from edgekd.recipe import Recipe
from edgekd.training.nets import build_nets


@dataclass
class Inputs:
    data: DataModule
    teacher: nn.Module
    student: nn.Module  # the fake-quantized graph when train.quantize is set
    # What student.init / teacher.init: backbone loaded, by role (full loads leave none).
    init_reports: dict[str, InitReport] = field(default_factory=dict)
    storage_note: str | None = None  # why data.storage: auto chose to stream (None otherwise)


def build_inputs(recipe: Recipe, modules: Mapping[str, nn.Module] | None, trains_teacher: bool) -> Inputs:
    """Nets and checkpoints first (every problem at once, before any image is read), then the data.
    Fresh weights come from torch's RNG as the caller left it."""
    modules = dict(modules or {})
    for role in ("teacher", "student"):
        user.require_module(role, getattr(recipe, role).arch, modules.get(role))
    d = recipe.data
    normalization, cfg_size = net_normalization(recipe)
    image_size = d.image_size if d.image_size is not None else cfg_size
    shape = source_shape(d.name, d.root, image_size)
    nets = build_nets(recipe, shape, modules, trains_teacher)
    student = nets.student
    if recipe.train.quantize is not None:  # captured before the data loads: a net it cannot take fails now
        from edgekd.training import quantize

        student = quantize.prepare(student, recipe.train.quantize, shape.in_channels, shape.image_size,
                                   recipe.student.arch)
    storage, why, scanned = resolve_storage(d.storage, d.name, d.root, shape.image_size, shape.in_channels)
    if storage == "stream" or d.loader == "host":
        check_workers(d.workers)
    data = build_data(
        d.name, d.root, image_size=image_size, **d.split_args(), subset=d.subset, split_seed=d.split_seed,
        download=d.download, cache_dir=d.cache_dir, storage=storage, normalization=normalization, files=scanned,
    )
    if (data.num_classes, data.in_channels, data.image_size) != (shape.num_classes, shape.in_channels, shape.image_size):
        raise DataError(f"data.root {d.root} gave {data.num_classes} classes of {data.in_channels}-channel "
                        f"{data.image_size}px images, but its folders announced {shape.num_classes} classes of "
                        f"{shape.in_channels}-channel {shape.image_size}px; set data.image_size")
    if recipe.train.eval_split == "tune" and (data.tune is None or len(data.tune.labels) == 0):
        raise RecipeError("train.eval_split is tune but the tune split is empty; set data.tune_fraction or data.tune_size")
    note = f"data.storage auto: {storage} ({why})" if d.storage == "auto" and storage == "stream" else None
    return Inputs(data, nets.teacher, student, nets.init_reports, note)


def net_normalization(recipe: Recipe) -> tuple[Normalization | None, int | None]:
    """data.normalize -> (a net's own input statistics or None for the data's, that net's input size).
    auto: the teacher's, else the student's, for a timm net whose weights come from a checkpoint."""
    choice = recipe.data.normalize
    if choice == "data":
        return None, None
    for role in ("teacher", "student") if choice == "auto" else (choice,):
        net = getattr(recipe, role)
        if not is_timm(net.arch):
            if choice != "auto":
                raise RecipeError(f"data.normalize: {role} takes a timm {role}'s pretrained_cfg, but {role}.arch is "
                                  f"{net.arch}; allowed: a timm/<name> {role}, or data.normalize data or auto")
            continue
        if choice == "auto" and not net.checkpoint:
            continue  # fresh weights learn whatever statistics the data has
        cfg = pretrained_input(net.arch)
        return Normalization(f"{net.arch} pretrained_cfg", cfg["mean"], cfg["std"], cfg["crop_pct"]), cfg["image_size"]
    return None, None
