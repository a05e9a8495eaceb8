"""The online trainer: teacher and student in one loop.

Per step: the method returns named loss terms, the trainer sums them, does one
backward pass and steps each net's optimizer. Per epoch: both nets are evaluated
on the evaluation split, one line goes to metrics.jsonl and the whole training
state to last.pt (atomically). At the end: student.pt, summary.json, reliability
diagrams and the evaluation logits.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

import edgekd
from edgekd import calibration, faults, files
from edgekd.data import DataModule, build_data, choose_loader
from edgekd.distill import checkpoint as ckpt
from edgekd.distill import distributed
from edgekd.distill.distributed import SINGLE, Dist
from edgekd.distill.methods import Distiller, get_method
from edgekd.distill.schedule import lr_factor
from edgekd.errors import CheckpointError, EdgeKDError, MissingDependencyError, RecipeError, first_line
from edgekd.models import build_model, count_parameters, load_weights
from edgekd.recipe import OptimConfig, Recipe, describe_keys, read_yaml_mapping, recipe_diff, with_defaults

SUMMARY_METRICS = ("accuracy", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier")


class NonFiniteLoss(EdgeKDError):
    """A loss went NaN/Inf; the last good checkpoint is kept."""


@dataclass
class Setup:
    """Everything built from a recipe before any file is written."""

    recipe: Recipe
    data: DataModule
    teacher: nn.Module
    student: nn.Module
    method: Distiller
    device: torch.device
    amp_dtype: torch.dtype | None
    dist: Dist = SINGLE


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


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if mode in ("bf16", "fp16"):
            raise RecipeError(f"train.amp: {mode} needs a CUDA device; use off or auto on the CPU")
        return None
    return {"off": None, "auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def join_process_group(recipe: Recipe, dist: Dist) -> None:
    """Under torchrun, join the process group on this rank's device (no-op otherwise)."""
    distributed.init(dist, distributed.local_device(dist, resolve_device(recipe.train.device)))


def prepare(recipe: Recipe, dist: Dist = SINGLE) -> Setup:
    """Build data, models and the method; raise a clean error for any bad input, write nothing.
    Under torchrun (dist.enabled) this also joins the process group."""
    d = recipe.data
    device = distributed.local_device(dist, resolve_device(recipe.train.device))
    amp_dtype = resolve_amp(recipe.train.amp, device)
    distributed.per_rank_batch(d.batch_size, dist)
    method_cls = get_method(recipe.distill.method)
    data = build_data(
        d.name, d.root, image_size=d.image_size, **d.split_args(), subset=d.subset, split_seed=d.split_seed,
        download=d.download, cache_dir=d.cache_dir,
    )
    if recipe.train.eval_split == "tune" and (data.tune is None or len(data.tune.labels) == 0):
        raise RecipeError("train.eval_split is tune but the tune split is empty; set data.tune_fraction or data.tune_size")
    seed_everything(recipe.train.seed)

    def net(cfg) -> nn.Module:
        model = build_model(cfg.arch, data.num_classes, data.in_channels, data.image_size, cfg.options)
        if cfg.checkpoint:
            load_weights(model, ckpt.load_net_weights(cfg.checkpoint), source=cfg.checkpoint)
        return model

    teacher = net(recipe.teacher)
    student = net(recipe.student)
    if recipe.train.channels_last:
        teacher = teacher.to(memory_format=torch.channels_last)
        student = student.to(memory_format=torch.channels_last)
    teacher.to(device)
    student.to(device)
    distributed.init(dist, device)
    # The method calls the wrapped nets (DDP, compiled); state, evaluation and
    # checkpoints use the raw modules, so checkpoint keys never carry "module." or
    # "_orig_mod.". A frozen teacher (kd) has no gradients to all-reduce.
    sync_bn = recipe.train.sync_bn
    t_run = distributed.wrap(teacher, dist, device, sync_bn) if method_cls.trains_teacher else teacher
    s_run = distributed.wrap(student, dist, device, sync_bn)
    if recipe.train.compile:
        t_run, s_run = torch.compile(t_run), torch.compile(s_run)
    method = method_cls(t_run, s_run, recipe.distill, label_smoothing=recipe.optim.label_smoothing)
    if dist.enabled:  # same initial weights everywhere (DDP checks), own dropout stream per rank
        seed_everything(recipe.train.seed + 1_000_003 * dist.rank)
    return Setup(recipe, data, teacher, student, method, device, amp_dtype, dist)


def make_optimizer(params, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    # Fused kernels where the device supports them; foreach elsewhere.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, **fast)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fast)


@torch.no_grad()
def predict(model: nn.Module, loader, amp_dtype, channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(x.device, amp_dtype):
            z = model(x)
        logits.append(z.float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy()


def _autocast(device: torch.device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return calibration.calibration_metrics(logits, labels)


class Trainer:
    """Runs the epochs of one recipe into one run directory."""

    def __init__(self, setup: Setup, run_dir: Path, on_epoch: Callable[[dict], None] | None = None,
                 progress=None):
        self.s = setup
        self.r = setup.recipe
        self.run_dir = run_dir
        self.on_epoch = on_epoch or (lambda rec: None)
        self.progress = progress
        self.opt_s = make_optimizer(setup.student.parameters(), self.r.optim, setup.device)
        t_cfg = self.r.teacher_optim or self.r.optim
        self.t_cfg = t_cfg
        trains_teacher = setup.method.trains_teacher
        self.opt_t = make_optimizer(setup.teacher.parameters(), t_cfg, setup.device) if trains_teacher else None
        self.scaler = torch.amp.GradScaler(setup.device.type) if setup.amp_dtype == torch.float16 else None
        self._params = {o: [p for g in o.param_groups for p in g["params"]] for o in (self.opt_s, self.opt_t) if o}
        aug = self.r.data.augment
        self.dist = setup.dist
        # Each rank gets batch_size / world_size images of the same global batch.
        # Both loader kinds yield identical batches; they differ only in where the uint8
        # images live (device memory, or host memory behind DataLoader workers).
        self.loader_kind = choose_loader(self.r.data.loader, setup.data.train.images.nbytes, setup.device)
        self.train_loader = setup.data.train_loader(
            distributed.per_rank_batch(self.r.data.batch_size, self.dist), setup.device, seed=self.r.train.seed,
            augment=True, crop_padding=aug.crop_padding, hflip=aug.hflip,
            rank=self.dist.rank, world_size=self.dist.world_size, loader=self.loader_kind, workers=self.r.data.workers,
        )
        self.eval_loader = setup.data.eval_loader(self.r.train.eval_split, self.r.data.eval_batch_size, setup.device)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise RecipeError(
                f"data.batch_size {self.r.data.batch_size} is larger than the {len(setup.data.train.labels)} training images"
            )
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "recipe": self.r.to_dict(),
            "student": self.s.student.state_dict(),
            "teacher": self.s.teacher.state_dict(),
            "opt_student": self.opt_s.state_dict(),
            "opt_teacher": self.opt_t.state_dict() if self.opt_t else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            # Under torchrun every rank's RNG streams are kept, so a resume is exact there too.
            "rng": ckpt.rng_state() if not self.dist.enabled else distributed.gather(ckpt.rng_state(), self.dist),
            "history": self.history,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        try:
            self.s.student.load_state_dict(st["student"])
            self.s.teacher.load_state_dict(st["teacher"])
            self.opt_s.load_state_dict(st["opt_student"])
            if self.opt_t and st.get("opt_teacher"):
                self.opt_t.load_state_dict(st["opt_teacher"])
            if self.scaler and st.get("scaler"):
                self.scaler.load_state_dict(st["scaler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"last.pt does not match this recipe's models: {first_line(e, 160)}") from e
        rng = st["rng"]
        if isinstance(rng, list):  # saved by a torchrun job: one state per rank
            if len(rng) != self.dist.world_size:
                raise CheckpointError(f"last.pt was written by {len(rng)} processes; resume it with "
                                      f"--nproc-per-node {len(rng)}, not {self.dist.world_size}")
            rng = rng[self.dist.rank]
        elif self.dist.enabled:
            raise CheckpointError("last.pt was written by a single process; resume it without torchrun")
        ckpt.set_rng_state(rng)
        self.epoch = int(st["epoch"])
        self.history = list(st["history"])

    # -- loop ---------------------------------------------------------------------------------
    def _set_lr(self, step: int) -> float:
        epochs = self.r.train.epochs
        lr_s = self.r.optim.lr * lr_factor(step, self.steps_per_epoch, epochs, self.r.optim)
        for g in self.opt_s.param_groups:
            g["lr"] = lr_s
        if self.opt_t:
            lr_t = self.t_cfg.lr * lr_factor(step, self.steps_per_epoch, epochs, self.t_cfg)
            for g in self.opt_t.param_groups:
                g["lr"] = lr_t
        return lr_s

    def _optim_step(self, loss: torch.Tensor) -> str | None:
        """Backward and step both nets. Returns None after a good step, or what was
        non-finite ("loss", "teacher gradient", ...) after a step that changed nothing."""
        opts = [o for o in (self.opt_s, self.opt_t) if o is not None]
        for o in opts:
            o.zero_grad(set_to_none=True)
        clip = self.r.optim.grad_clip
        if self.scaler:
            # fp16: the scaler already skips steps with overflowing gradients (that is how
            # it finds its scale); a NaN loss gives NaN gradients, so it skips that step too.
            # The backward runs even then, so every DDP rank joins the gradient all-reduce.
            self.scaler.scale(loss).backward()
            for o in opts:
                if clip:
                    self.scaler.unscale_(o)
                    torch.nn.utils.clip_grad_norm_(self._params[o], clip)
                self.scaler.step(o)
            self.scaler.update()
            return None if bool(torch.isfinite(loss)) else "loss"
        loss.backward()
        # The gradient norm of each net (clipping to grad_clip, or a no-op with inf) and
        # the loss are checked with one host sync per step: the guard must know before
        # the update, and a NaN update would ruin the weights for good.
        norms = [torch.nn.utils.clip_grad_norm_(self._params[o], clip or float("inf")) for o in opts]
        finite = torch.isfinite(torch.stack([loss.detach().float(), *[n.float() for n in norms]]))
        if bool(finite.all()):
            for o in opts:
                o.step()
            return None
        for o in opts:
            o.zero_grad(set_to_none=True)
        if not bool(finite[0]):
            return "loss"
        names = ["student", "teacher"]
        return " and ".join(f"{names[j]} gradient" for j in range(len(opts)) if not bool(finite[j + 1]))

    def train_epoch(self) -> dict[str, Any]:
        s, m = self.s, self.s.method
        m.train()
        loader = self.train_loader
        loader.set_epoch(self.epoch)
        dev = s.device
        sums: dict[str, torch.Tensor] = {}
        correct_s = torch.zeros((), device=dev)
        correct_t = torch.zeros((), device=dev)
        seen = 0
        skipped = 0
        skipped_before = sum(int(h.get("skipped_steps", 0)) for h in self.history)
        t0 = time.perf_counter()
        step0 = self.epoch * self.steps_per_epoch
        lr = 0.0
        for i, (x, y) in enumerate(loader):
            lr = self._set_lr(step0 + i)
            if self.r.train.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(dev, s.amp_dtype):
                out = m.forward_train(x, y)
            loss = sum(out.losses.values())
            bad = self._optim_step(loss)
            faults.hit("step")
            if bad is not None:
                skipped += 1
                terms = [k for k, v in out.losses.items() if not torch.isfinite(v)]
                where = f"non-finite {bad} at epoch {self.epoch + 1}, step {i + 1}" + (
                    f" (loss terms: {', '.join(terms)})" if terms else "")
                limit = self.r.train.max_bad_steps
                if skipped_before + skipped > limit:
                    raise NonFiniteLoss(
                        f"{where}; the last good checkpoint is kept"
                        + (f" ({limit} bad steps allowed by train.max_bad_steps)" if limit else
                           " (lower optim.lr, set optim.grad_clip, or allow skips with train.max_bad_steps)"))
                continue  # skipped: no update and nothing counted
            n = y.shape[0]
            seen += n
            with torch.no_grad():
                for k, v in {**out.losses, **out.stats}.items():
                    sums[k] = sums.get(k, 0) + v.detach().float() * n
                correct_s += (out.student_logits.argmax(1) == y).sum()
                correct_t += (out.teacher_logits.argmax(1) == y).sum()
            if self.progress is not None:
                self.progress(i + 1, self.steps_per_epoch, lambda: {
                    "loss": float(sum(v for k, v in sums.items() if k not in out.stats) / seen),
                    "acc": float(correct_s) / seen,
                    "img/s": seen / max(1e-9, time.perf_counter() - t0),
                })
        secs = time.perf_counter() - t0
        if self.dist.enabled:  # one all-reduce per epoch: global sums, counts and images seen
            keys = sorted(sums)
            packed = torch.stack([torch.as_tensor(float(seen), device=dev), correct_s.float(), correct_t.float(),
                                  *[sums[k].reshape(()) for k in keys]])
            distributed.all_sum(packed, self.dist)
            seen, correct_s, correct_t = int(packed[0]), packed[1], packed[2]
            sums = dict(zip(keys, packed[3:]))
        seen = max(seen, 1)  # every step skipped (train.max_bad_steps): report zeros, not a crash
        rec = {k: float(v) / seen for k, v in sums.items()}
        rec["loss"] = sum(v for k, v in rec.items() if k in out.losses)
        rec.update(
            lr=lr, seconds=secs, images_per_s=seen / secs, skipped_steps=skipped,
            student_train_accuracy=float(correct_s) / seen, teacher_train_accuracy=float(correct_t) / seen,
        )
        return rec

    def evaluate(self) -> dict[str, Any]:
        s = self.s
        out = {}
        for role, net in (("teacher", s.teacher), ("student", s.student)):
            logits, labels = predict(net, self.eval_loader, s.amp_dtype, self.r.train.channels_last)
            out[role] = (logits, labels, _metrics(logits, labels))
            if role == "teacher":
                faults.hit("eval")
        return out

    def fit(self) -> dict[str, Any]:
        last = self.run_dir / "last.pt"
        metrics_path = self.run_dir / "metrics.jsonl"
        evals = None
        while self.epoch < self.r.train.epochs:
            rec = {"epoch": self.epoch + 1, **self.train_epoch()}
            evals = None
            due = (self.epoch + 1) % self.r.train.eval_every == 0 or self.epoch + 1 == self.r.train.epochs
            if due and self.dist.is_main:  # rank 0 evaluates the whole split; the others wait in state()
                t_eval = time.perf_counter()
                evals = self.evaluate()
                for role in ("teacher", "student"):
                    for k in ("accuracy", "ece", "nll"):
                        rec[f"{role}_{k}"] = evals[role][2][k]
                rec["eval_seconds"] = time.perf_counter() - t_eval
            self.epoch += 1
            self.history.append(rec)
            state = self.state()  # a collective under torchrun: every rank's RNG state
            if self.dist.is_main:
                ckpt.save_training_state(last, state)
                # metrics.jsonl is rewritten from the checkpoint's history, so after a
                # crash and --resume it never holds an epoch twice or a lost one.
                files.atomic_write_text(metrics_path, "".join(_jsonl(r) for r in self.history))
                self.on_epoch(rec)
        if not self.dist.is_main:
            return {}
        if evals is None:  # resumed a finished run: evaluate once more for the summary
            evals = self.evaluate()
        return self.finish(evals)

    def finish(self, evals) -> dict[str, Any]:
        from edgekd import plots

        s, r, d = self.s, self.r, self.s.data
        student, teacher = s.student, s.teacher
        summary: dict[str, Any] = {
            "run": self.run_dir.name,
            "recipe": r.name,
            "recipe_hash": r.digest(),
            "method": r.distill.method,
            "epochs": self.epoch,
            "eval_split": r.train.eval_split,
            "eval_images": int(len(evals["student"][1])),
            "train_seconds": float(sum(h["seconds"] for h in self.history)),
            "split": d.split_info,
            "edgekd_version": edgekd.__version__,
            "torch_version": torch.__version__,
            "device": str(s.device),
            "loader": self.loader_kind,
            "processes": self.dist.world_size,
        }
        last_rec = self.history[-1] if self.history else {}
        for role, net in (("teacher", teacher), ("student", student)):
            logits, labels, met = evals[role]
            summary[role] = {
                "arch": getattr(r, role).arch,
                "params": count_parameters(net),
                **{k: met[k] for k in SUMMARY_METRICS},
                "train_accuracy": last_rec.get(f"{role}_train_accuracy"),
                "ts_headroom": calibration.temperature_headroom(logits, labels),
            }
            plots.reliability_diagram(
                calibration.reliability_bins(logits, labels), self.run_dir / f"reliability_{role}.png",
                title=f"{role} {getattr(r, role).arch} ({r.distill.method}) on {r.train.eval_split}",
            )
        buf = self.run_dir / "eval_logits.npz"
        _save_npz(buf, labels=evals["student"][1], student_logits=evals["student"][0],
                  teacher_logits=evals["teacher"][0])
        ckpt.save_student(self.run_dir / "student.pt", {
            "arch": r.student.arch,
            "options": dict(r.student.options),
            "num_classes": d.num_classes,
            "in_channels": d.in_channels,
            "image_size": d.image_size,
            "state_dict": {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()},
            "preprocessing": d.preprocessing(),
            "class_names": list(d.class_names),
            "split": d.split_info,
            "recipe": r.to_dict(),
            "recipe_hash": r.digest(),
            "metrics": {k: summary["student"][k] for k in SUMMARY_METRICS},
            "edgekd_version": edgekd.__version__,
        })
        files.write_json(self.run_dir / "summary.json", summary)
        return summary


def _jsonl(rec: dict) -> str:
    import json

    return json.dumps(rec) + "\n"


def _save_npz(path: Path, **arrays) -> None:
    import io

    b = io.BytesIO()
    np.savez_compressed(b, **arrays)
    files.atomic_write_bytes(path, b.getvalue())


def check_resume_recipe(saved: dict[str, Any], current: Recipe, allow_change: bool = False) -> list[str]:
    """Keys that differ between last.pt's recipe and this one; refused unless allow_change."""
    diffs = recipe_diff(with_defaults(saved), current.to_dict())
    if diffs and not allow_change:
        raise CheckpointError(f"--resume: last.pt was trained with a different recipe; keys differ: "
                              f"{describe_keys(diffs)} (pass --allow-recipe-change to resume anyway)")
    return diffs


# What a run directory may hold before its first checkpoint (removed when such a run
# is started again with --resume).
_RUN_FILES = {"recipe.yaml", "split.json", "metrics.jsonl"}


def run_distill(recipe: Recipe, run_dir: Path, resume: bool, on_epoch=None, progress=None,
                allow_recipe_change: bool = False, warn: Callable[[str], None] | None = None,
                dist: Dist = SINGLE) -> dict[str, Any]:
    """Prepare (no files yet), then train into run_dir. A run that fails before its
    first checkpoint leaves no directory behind. Under torchrun every rank calls this;
    all of them check the run directory, rank 0 alone changes it. Returns the summary
    (an empty dict on ranks other than 0)."""
    setup = prepare(recipe, dist)
    try:
        return _run(setup, run_dir, resume, on_epoch, progress, allow_recipe_change, warn)
    finally:
        distributed.shutdown(dist)


def _run(setup: Setup, run_dir: Path, resume: bool, on_epoch, progress, allow_recipe_change: bool,
         warn: Callable[[str], None] | None) -> dict[str, Any]:
    recipe, dist = setup.recipe, setup.dist
    main = dist.is_main
    last = run_dir / "last.pt"
    fresh_again = resume and not last.is_file() and (run_dir / "recipe.yaml").is_file()
    if fresh_again:
        # Killed before its first checkpoint: nothing to continue, so start the same run
        # again from scratch in the same place (the recipe must still match).
        check_resume_recipe(read_yaml_mapping(run_dir / "recipe.yaml"), recipe, allow_recipe_change)
        resume = False
    state, changed = None, []
    if resume:
        if not last.is_file():
            raise CheckpointError(f"--resume: {last} does not exist; start the run without --resume")
        state = ckpt.load_training_state(last)
        changed = check_resume_recipe(state["recipe"], recipe, allow_recipe_change)
    elif not fresh_again and run_dir.exists() and any(run_dir.iterdir()):
        raise EdgeKDError(f"{run_dir} already exists and is not empty; pass --resume to continue it or choose another --out")
    distributed.barrier(dist)  # every rank has checked before rank 0 changes anything
    created = False
    if main:
        if run_dir.is_dir():
            files.remove_stale_temps(run_dir)  # a kill during a checkpoint write leaves its temp file
        if fresh_again:
            for leftover in run_dir.iterdir():
                if leftover.is_file() and leftover.name in _RUN_FILES:
                    leftover.unlink()
        if changed and warn:
            warn(f"resuming with a changed recipe: {describe_keys(changed)}")
        if state is None:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise EdgeKDError(f"cannot create run directory {run_dir}: {e.strerror or e}") from e
            created = True
    try:
        trainer = Trainer(setup, run_dir, on_epoch=on_epoch, progress=progress)
        if state is not None:
            trainer.load_state(state)
        if main and (state is None or changed):  # a changed recipe is what the run follows now: on disk too
            files.write_yaml(run_dir / "recipe.yaml", recipe.to_dict())
        if main and state is None:
            files.write_json(run_dir / "split.json", setup.data.split_info)
        return trainer.fit()
    except BaseException:
        if created and not (run_dir / "last.pt").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def default_run_dir(recipe: Recipe, root: str | os.PathLike = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{recipe.name}-{stamp}"
    path, i = base, 1
    while path.exists():
        path = Path(f"{base}-{i}")
        i += 1
    return path
