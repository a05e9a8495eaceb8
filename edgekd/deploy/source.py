"""What export starts from: a run's student.pt, its model, and the images of its split.

Every problem with the run is found here, before anything is written.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgekd.contracts import RunLayout, SplitInfo, StudentCheckpoint
from edgekd.contracts.run_layout import newest_complete_run
from edgekd.data import ImageSet, load_split_images
from edgekd.data.preprocess import normalize
from edgekd.training.checkpoint import load_student
from edgekd.errors import CheckpointError, EdgeKDError
from edgekd.files import sha256_file
from edgekd.models import build_model, load_weights
from edgekd.models.user import class_name, is_user_arch

TORCH_BATCH = 256


@dataclass
class Student:
    run_dir: Path
    checkpoint: StudentCheckpoint
    sha256: str
    model: nn.Module

    @property
    def path(self) -> Path:
        """The student.pt it was read from."""
        return RunLayout(self.run_dir).student

    @property
    def recipe(self) -> dict:
        return self.checkpoint.recipe

    @property
    def split_info(self) -> SplitInfo:
        return self.checkpoint.split

    @property
    def quantized_flavour(self) -> str | None:
        """The INT8 flavour a train.quantize run learned its ranges for (None: trained in float)."""
        return self.checkpoint.quantized_flavour

    def preprocess(self, images: ImageSet) -> np.ndarray:
        """uint8 NHWC -> float32 NCHW with the run's own mean/std: what every file is fed."""
        pre = self.checkpoint.preprocessing
        return normalize(images.images, pre["mean"], pre["std"])

    @torch.no_grad()
    def logits(self, x: np.ndarray) -> np.ndarray:
        """The float weights' logits (eval mode, FP32, CPU): what the FP32 file must reproduce."""
        return _batched_logits(self.model.eval(), x)

    @functools.cached_property
    def trained_network(self) -> nn.Module:
        """The network the run trained: the float model, or for a train.quantize run the
        fake-quantized one (its learned ranges applied), whose float weights alone are another net."""
        if self.quantized_flavour is None:
            return self.model
        from edgekd.training import quantize

        ck = self.checkpoint
        return quantize.restore(copy.deepcopy(self.model), ck.quantize, ck.in_channels, ck.image_size, ck.arch)

    @torch.no_grad()
    def trained_logits(self, x: np.ndarray) -> np.ndarray:
        """The trained network's logits: the reference every file's drift is measured from, and what
        a shipped temperature is fitted to."""
        return _batched_logits(self.trained_network.eval(), x)


def _batched_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    out = [model(torch.from_numpy(x[i : i + TORCH_BATCH])) for i in range(0, len(x), TORCH_BATCH)]
    return torch.cat(out).numpy().astype(np.float32)


def resolve_run(run_dir: str | Path | None, log: Callable[[str], Any]) -> Path:
    """RUN_DIR, or the newest complete run under runs/ (announced, since the user did not name it)."""
    if run_dir is None:
        run_dir = newest_complete_run("runs")
        if run_dir is None:
            raise EdgeKDError("no complete run under runs/ (one with student.pt); run edgekd distill first or name RUN_DIR")
        log(f"exporting run {run_dir}")
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise EdgeKDError(f"run directory {run_dir} does not exist")
    if not run_dir.is_dir():
        raise EdgeKDError(f"{run_dir} is not a directory")
    if not RunLayout(run_dir).student.is_file():
        raise EdgeKDError(f"{run_dir} has no {RunLayout.STUDENT}; is the run finished? (edgekd distill writes it at "
                          "the end)")
    return run_dir


def load_run_student(run_dir: Path, model: nn.Module | None = None) -> Student:
    """The run's student.pt, its weights loaded into a model rebuilt from its arch, or into a
    CPU copy of `model` (needed for a user model, which no name rebuilds; the caller's
    module is left as it is)."""
    path = RunLayout(run_dir).student
    ckpt = load_student(path)
    if model is not None:
        model = copy.deepcopy(model).to(device="cpu", memory_format=torch.contiguous_format)
    elif is_user_arch(ckpt.arch):
        raise CheckpointError(
            f"the student of {run_dir} is a user model ({ckpt.arch}), which edgekd cannot rebuild from a name; "
            f"export it from Python with the module: edgekd.export(run, student={class_name(ckpt.arch)}(...))")
    else:
        model = build_model(ckpt.arch, ckpt.num_classes, ckpt.in_channels, ckpt.image_size, ckpt.options)
    load_weights(model, ckpt.state_dict, source=str(path))
    return Student(run_dir, ckpt, sha256_file(path), model.eval())


def split_images(student: Student, which: str) -> ImageSet:
    """One split of the run's data, rebuilt exactly (load_split_images checks the fingerprint)."""
    # The recipe's image cache only speeds up decoding an image folder; the split does not depend on it.
    cache_dir = (student.recipe.get("data") or {}).get("cache_dir")
    return load_split_images(student.split_info, which, cache_dir=cache_dir)
