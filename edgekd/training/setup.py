"""Everything a run needs before its first step: device, the speed settings
(mixed precision, channels_last, torch.compile), determinism, seeds, data, models,
the method and the optimizers. Nothing here writes a file, so a bad recipe fails
before a run directory exists."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import torch
from torch import nn

from edgekd.data import DataModule, Normalization, build_data, resolve_storage
from edgekd.data.loader import batches_per_epoch, check_workers
from edgekd.training import distributed
from edgekd.training.distributed import SINGLE, Dist
from edgekd.training import tensorboard_log
from edgekd.training.methods import Distiller, get_method
from edgekd.data.sources import source_shape
from edgekd.training.nets import build_nets
from edgekd.training.speed import SpeedSettings, resolve_amp, resolve_speed_settings
from edgekd.errors import DataError, MissingDependencyError, RecipeError
from edgekd.models import user
from edgekd.models.pretrained import InitReport
from edgekd.models.timm_models import is_timm, pretrained_input
from edgekd.recipe import OptimConfig, Recipe


@dataclass
class Setup:
    """Everything built from a recipe before any file is written."""

    recipe: Recipe
    data: DataModule
    teacher: nn.Module
    student: nn.Module
    method: Distiller
    device: torch.device
    speed: SpeedSettings
    dist: Dist = SINGLE
    # What student.init / teacher.init: backbone loaded, by role (full loads leave none).
    init_reports: dict[str, InitReport] = field(default_factory=dict)
    # Why data.storage: auto chose what it chose (None when the recipe set it).
    storage_note: str | None = None

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return self.speed.amp_dtype

    @property
    def channels_last(self) -> bool:
        return self.speed.channels_last


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MissingDependencyError(f"train.device is {name} but no CUDA GPU is visible; use train.device: cpu or auto")
        idx = int(name.split(":")[1]) if ":" in name else 0
        if idx >= torch.cuda.device_count():
            raise MissingDependencyError(f"train.device is {name} but only {torch.cuda.device_count()} GPU(s) are visible")
    return torch.device(name)


def apply_determinism(deterministic: bool, device: torch.device) -> None:
    """Make training on `device` bit-reproducible (train.deterministic: true) or fast.

    CPU: nothing to set. PyTorch's CPU kernels already give the same result run after
    run for a fixed seed and a fixed thread count (OMP_NUM_THREADS), either way.
    CUDA: true picks deterministic cuDNN and cuBLAS kernels (slower) and warns about
    any op that has none; false lets cuDNN time its kernels per input shape and keep
    the fastest, which is quicker but may round differently from run to run.
    These are process-wide settings, so both values set every flag.
    """
    if device.type != "cuda":
        return
    if deterministic:
        # cuBLAS reads this when it creates its handle (at the first matmul): it must
        # be set before any CUDA work. A value the user chose is kept.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def rank_device(recipe: Recipe, dist: Dist) -> torch.device:
    """The device this rank trains on: train.device, and under torchrun cuda:LOCAL_RANK of it."""
    return distributed.local_device(dist, resolve_device(recipe.train.device))


def prepare(recipe: Recipe, dist: Dist = SINGLE, modules: Mapping[str, nn.Module] | None = None) -> Setup:
    """Build data, models and the method; raise a clean error for any bad input, write nothing.
    The nets and their checkpoints are checked before the data is read (nets.build_nets: every
    problem at once). Under torchrun (dist.enabled) this also joins the process group. `modules`
    maps "teacher" and/or "student" to user modules (models/user.py), used (and trained) in place
    of building the recipe's arch; they keep their weights unless the recipe names a checkpoint (and init)."""
    modules = dict(modules or {})
    for role in ("teacher", "student"):
        user.require_module(role, getattr(recipe, role).arch, modules.get(role))
    d = recipe.data
    device = rank_device(recipe, dist)
    resolve_amp(recipe.train.amp, device)  # a forced precision this device lacks fails before the data loads
    per_rank = distributed.per_rank_batch(d.batch_size, dist)
    if dist.enabled and recipe.train.sync_bn and device.type != "cuda":
        # torch's SyncBatchNorm runs on GPUs only; DDP would fail on every rank with a traceback.
        raise RecipeError(f"train.sync_bn: true needs CUDA devices (SyncBatchNorm runs on GPUs only), "
                          f"but this run trains on {device.type}; set train.sync_bn: false")
    method_cls = get_method(recipe.distill.method)
    tensorboard_log.require(recipe.train.log)
    normalization, cfg_size = net_normalization(recipe)
    image_size = d.image_size if d.image_size is not None else cfg_size
    shape = source_shape(d.name, d.root, image_size)
    apply_determinism(recipe.train.deterministic, device)  # before any CUDA work
    seed_everything(recipe.train.seed)  # the nets' fresh weights come from this seed
    nets = build_nets(recipe, shape, modules, method_cls.trains_teacher)
    teacher, student, init_reports = nets.teacher, nets.student, nets.init_reports
    if recipe.train.quantize is not None:  # captured before the data loads: a net it cannot take fails now
        if dist.enabled:
            raise RecipeError("train.quantize runs in one process (INT8-aware training under torchrun was not "
                              "measured); run edgekd distill without torchrun")
        from edgekd.training import quantize

        student = quantize.prepare(student, recipe.train.quantize, shape.in_channels, shape.image_size,
                                   recipe.student.arch)
    storage, why = resolve_storage(d.storage, d.name, d.root, shape.image_size, shape.in_channels)
    if storage == "stream" or d.loader == "host":
        check_workers(d.workers)
    data = build_data(
        d.name, d.root, image_size=image_size, **d.split_args(), subset=d.subset, split_seed=d.split_seed,
        download=d.download, cache_dir=d.cache_dir, storage=storage, normalization=normalization,
    )
    if (data.num_classes, data.in_channels, data.image_size) != (shape.num_classes, shape.in_channels, shape.image_size):
        raise DataError(f"data.root {d.root} gave {data.num_classes} classes of {data.in_channels}-channel "
                        f"{data.image_size}px images, but its folders announced {shape.num_classes} classes of "
                        f"{shape.in_channels}-channel {shape.image_size}px; set data.image_size")
    if recipe.train.eval_split == "tune" and (data.tune is None or len(data.tune.labels) == 0):
        raise RecipeError("train.eval_split is tune but the tune split is empty; set data.tune_fraction or data.tune_size")
    total_steps = recipe.train.epochs * batches_per_epoch(len(data.train.labels), per_rank, dist.world_size)
    speed = resolve_speed_settings(recipe, device, total_steps)
    if speed.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    teacher.to(device)
    student.to(device)
    distributed.require_joined(dist)
    # The method calls the wrapped nets (DDP, compiled); state, evaluation and
    # checkpoints use the raw modules, so checkpoint keys never carry "module." or
    # "_orig_mod.". A frozen teacher (kd) has no gradients to all-reduce.
    sync_bn = recipe.train.sync_bn
    t_run = distributed.wrap(teacher, dist, device, sync_bn) if method_cls.trains_teacher else teacher
    s_run = distributed.wrap(student, dist, device, sync_bn)
    if speed.compile:
        t_run, s_run = torch.compile(t_run), torch.compile(s_run)
    method = method_cls(t_run, s_run, recipe.distill, label_smoothing=recipe.optim.label_smoothing)
    if dist.enabled:  # same initial weights everywhere (DDP checks), own dropout stream per rank
        seed_everything(recipe.train.seed + 1_000_003 * dist.rank)
    storage_note = f"data.storage auto: {storage} ({why})" if d.storage == "auto" and storage == "stream" else None
    return Setup(recipe, data, teacher, student, method, device, speed, dist, init_reports, storage_note)


def make_optimizer(params, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels where the device supports them; foreach elsewhere.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fast)
