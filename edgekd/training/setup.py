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

from edgekd.data import DataModule
from edgekd.data.loader import batches_per_epoch
from edgekd.errors import MissingDependencyError, RecipeError
from edgekd.models.pretrained import InitReport
from edgekd.recipe import OptimConfig, Recipe
from edgekd.training import distributed, tensorboard_log
from edgekd.training.build import build_inputs
from edgekd.training.distributed import SINGLE, Dist
from edgekd.training.methods import Distiller, get_method
from edgekd.training.speed import SpeedSettings, resolve_amp, resolve_speed_settings


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


def rank_device(recipe: Recipe, dist: Dist) -> torch.device:
    """The device this rank trains on: train.device, and under torchrun cuda:LOCAL_RANK of it."""
    return distributed.local_device(dist, resolve_device(recipe.train.device))


def prepare(recipe: Recipe, dist: Dist = SINGLE, modules: Mapping[str, nn.Module] | None = None) -> Setup:
    """Build data, models and the method; raise a clean error for any bad input, write nothing.
    The nets and their checkpoints are checked before the data is read (build.build_inputs: every
    problem at once). Under torchrun (dist.enabled) the caller has joined the process group. `modules`
    maps "teacher" and/or "student" to user modules (models/user.py), used (and trained) in place
    of building the recipe's arch; they keep their weights unless the recipe names a checkpoint (and init)."""
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
    if recipe.train.quantize is not None and dist.enabled:
        raise RecipeError("train.quantize runs in one process (INT8-aware training under torchrun was not "
                          "measured); run edgekd distill without torchrun")
    apply_determinism(recipe.train.deterministic, device)  # before any CUDA work
    seed_everything(recipe.train.seed)  # the nets' fresh weights come from this seed
    built = build_inputs(recipe, modules, method_cls.trains_teacher)
    data, teacher, student = built.data, built.teacher, built.student
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
    return Setup(recipe, data, teacher, student, method, device, speed, dist, built.init_reports, built.storage_note)


def make_optimizer(params, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels where the device supports them; foreach elsewhere.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fast)
