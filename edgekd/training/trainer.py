"""The online training loop: teacher and student in one loop.

    fit -> train_epoch -> train_step

Per step: the method returns named loss terms, the trainer sums them, does one
backward pass and steps each net's optimizer (a non-finite step changes nothing).
Per epoch: both nets are evaluated on the evaluation split, one line goes to
metrics.jsonl (and to TensorBoard with train.log: [tensorboard]) and the whole
training state to last.pt (atomically). At the end,
artifacts.write_artifacts writes student.pt, summary.json, reliability diagrams
and the evaluation logits.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from edgekd import calibration, faults, files
from edgekd.contracts import NetEval, RunLayout
from edgekd.data import choose_loader
from edgekd.training import checkpoint as ckpt
from edgekd.training import distributed, tensorboard_log
from edgekd.contracts import Evals
from edgekd.training.artifacts import write_artifacts
from edgekd.training.distributed import Dist
from edgekd.training.methods import StepOutput
from edgekd.training.schedule import lr_factor
from edgekd.training.setup import Setup, make_optimizer
from edgekd.training.speed import autocast
from edgekd.errors import CheckpointError, EdgeKDError, RecipeError, first_line


class NonFiniteLoss(EdgeKDError):
    """A loss went NaN/Inf; the last good checkpoint is kept."""


@torch.no_grad()
def predict(model: nn.Module, loader, channels_last: bool) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels of every batch of loader, in eval mode, in fp32 whatever train.amp is:
    the figures a run reports (and compare scores) are those of the FP32 model export writes;
    bf16 logits moved a quickstart student's ECE by 0.25 point."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        logits.append(model(x).float())
        labels.append(y)
    model.train(was_training)
    return torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy()


class Trainer:
    """Runs the epochs of one recipe into one run directory."""

    def __init__(self, setup: Setup, run_dir: Path, on_epoch: Callable[[dict], None] | None = None,
                 progress=None):
        self.setup = setup
        self.recipe = recipe = setup.recipe
        self.dist: Dist = setup.dist
        self.run_dir = run_dir
        self.on_epoch = on_epoch or (lambda rec: None)
        self.progress = progress
        self.opt_student = make_optimizer(setup.student.parameters(), recipe.optim, setup.device)
        self.teacher_optim = recipe.teacher_optim or recipe.optim
        self.opt_teacher = (make_optimizer(setup.teacher.parameters(), self.teacher_optim, setup.device)
                            if setup.method.trains_teacher else None)
        self.scaler = torch.amp.GradScaler(setup.device.type) if setup.amp_dtype == torch.float16 else None
        self._params = {o: [p for g in o.param_groups for p in g["params"]] for o in self._optimizers()}
        # Each rank gets batch_size / world_size images of the same global batch.
        # Both loader kinds yield identical batches; they differ only in where the uint8
        # images live (device memory, or host memory behind DataLoader workers).
        d, aug = recipe.data, recipe.data.augment
        self.loader_kind = ("stream" if setup.data.storage == "stream"
                            else choose_loader(d.loader, setup.data.train_nbytes(), setup.device))
        self.train_loader = setup.data.train_loader(
            distributed.per_rank_batch(d.batch_size, self.dist), setup.device, seed=recipe.train.seed,
            augment=True, crop=aug.crop, crop_padding=aug.crop_padding, crop_scale=aug.crop_scale,
            crop_ratio=aug.crop_ratio, hflip=aug.hflip,
            rank=self.dist.rank, world_size=self.dist.world_size, loader=self.loader_kind, workers=d.workers,
        )
        self.eval_loader = setup.data.eval_loader(recipe.train.eval_split, d.eval_batch_size, setup.device, d.workers)
        self.steps_per_epoch = len(self.train_loader)
        if self.steps_per_epoch == 0:
            raise RecipeError(
                f"data.batch_size {d.batch_size} is larger than the {len(setup.data.train.labels)} training images"
            )
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.bad_steps = 0  # non-finite steps skipped in this run so far
        self.loss_terms: tuple[str, ...] = ()  # the method's loss term names, known after a step

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.opt_student, self.opt_teacher) if o is not None]

    # -- state ------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "recipe": self.recipe.to_dict(),
            "speed_settings": self.setup.speed.to_dict(),  # what auto resolved to: a resume must keep it
            "student": self.setup.student.state_dict(),
            "teacher": self.setup.teacher.state_dict(),
            "opt_student": self.opt_student.state_dict(),
            "opt_teacher": self.opt_teacher.state_dict() if self.opt_teacher else None,
            "scaler": self.scaler.state_dict() if self.scaler else None,
            # Under torchrun every rank's RNG streams are kept, so a resume is exact there too.
            "rng": ckpt.rng_state() if not self.dist.enabled else distributed.gather(ckpt.rng_state(), self.dist),
            "history": self.history,
        }

    def load_state(self, st: dict[str, Any]) -> None:
        try:
            self.setup.student.load_state_dict(st["student"])
            self.setup.teacher.load_state_dict(st["teacher"])
            self.opt_student.load_state_dict(st["opt_student"])
            if self.opt_teacher and st.get("opt_teacher"):
                self.opt_teacher.load_state_dict(st["opt_teacher"])
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

    # -- the loop: fit -> train_epoch -> train_step -----------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs, checkpointing after each, then write the run's
        artifacts. Returns the summary (an empty dict on ranks other than 0)."""
        evals = None
        with tensorboard_log.open_log(self.recipe, self.run_dir, self.dist.is_main) as tensorboard:
            while self.epoch < self.recipe.train.epochs:
                rec = {"epoch": self.epoch + 1, **self.train_epoch()}
                evals = self._evaluate_if_due(rec)
                self.epoch += 1
                self.history.append(rec)
                self._save_epoch(rec)
                if tensorboard is not None:
                    tensorboard.epoch(rec, self.loss_terms, evals)
        if not self.dist.is_main:
            return {}
        if evals is None:  # resumed a finished run: evaluate once more for the summary
            evals = self.evaluate()
        return write_artifacts(self.setup, self.run_dir, evals, self.epoch, self.history, self.loader_kind)

    def train_epoch(self) -> dict[str, Any]:
        """One pass over the training split; returns the epoch's metrics.jsonl fields."""
        self.setup.method.train()
        self.train_loader.set_epoch(self.epoch)
        self.bad_steps = sum(int(h.get("skipped_steps", 0)) for h in self.history)
        bad_before = self.bad_steps
        totals = _EpochTotals(self.setup.device)
        first_step = self.epoch * self.steps_per_epoch
        lr = 0.0
        for i, (x, y) in enumerate(self.train_loader):
            lr = self._set_lr(first_step + i)
            out = self.train_step(x, y, step=i + 1)
            if out is None:
                continue  # skipped: no update and nothing counted
            totals.add(out, y)
            if self.progress is not None:
                self.progress(i + 1, self.steps_per_epoch, totals.running)
        seconds = time.perf_counter() - totals.start
        if self.dist.enabled:  # one all-reduce per epoch: global sums, counts and images seen
            totals.all_reduce(self.dist)
        self.loss_terms = totals.loss_keys
        return totals.record(lr=lr, seconds=seconds, skipped_steps=self.bad_steps - bad_before)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepOutput | None:
        """Forward, loss, backward and update on one batch (step: 1-based within the epoch).
        Returns the method's output, or None for a non-finite step that was skipped
        (nothing updated); raises NonFiniteLoss past train.max_bad_steps."""
        if self.setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(self.setup.device, self.setup.amp_dtype):
            out = self.setup.method.forward_train(x, y)
        loss = sum(out.losses.values())
        bad = self._backward_and_step(loss)
        faults.hit("step")
        if bad is None:
            return out
        self.bad_steps += 1
        terms = [k for k, v in out.losses.items() if not torch.isfinite(v)]
        where = f"non-finite {bad} at epoch {self.epoch + 1}, step {step}" + (
            f" (loss terms: {', '.join(terms)})" if terms else "")
        limit = self.recipe.train.max_bad_steps
        if self.bad_steps > limit:
            raise NonFiniteLoss(
                f"{where}; the last good checkpoint is kept"
                + (f" ({limit} bad steps allowed by train.max_bad_steps)" if limit else
                   " (lower optim.lr, set optim.grad_clip, or allow skips with train.max_bad_steps)"))
        return None

    def _set_lr(self, step: int) -> float:
        epochs = self.recipe.train.epochs
        lr_s = self.recipe.optim.lr * lr_factor(step, self.steps_per_epoch, epochs, self.recipe.optim)
        for g in self.opt_student.param_groups:
            g["lr"] = lr_s
        if self.opt_teacher:
            lr_t = self.teacher_optim.lr * lr_factor(step, self.steps_per_epoch, epochs, self.teacher_optim)
            for g in self.opt_teacher.param_groups:
                g["lr"] = lr_t
        return lr_s

    def _backward_and_step(self, loss: torch.Tensor) -> str | None:
        """Backward and step both nets. Returns None after a good step, or what was
        non-finite ("loss", "teacher gradient", ...) after a step that changed nothing."""
        opts = self._optimizers()
        for o in opts:
            o.zero_grad(set_to_none=True)
        clip = self.recipe.optim.grad_clip
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

    # -- evaluation and checkpoints -----------------------------------------------------------
    def evaluate(self) -> Evals:
        out = {}
        for role, net in (("teacher", self.setup.teacher), ("student", self.setup.student)):
            logits, labels = predict(net, self.eval_loader, self.setup.channels_last)
            out[role] = NetEval(logits, labels, calibration.calibration_metrics(logits, labels))
            if role == "teacher":
                faults.hit("eval")
        return out

    def _evaluate_if_due(self, rec: dict[str, Any]) -> Evals | None:
        """Evaluate after every train.eval_every-th and the last epoch, adding the
        results to rec. Rank 0 evaluates the whole split; the others wait in state()."""
        train = self.recipe.train
        due = (self.epoch + 1) % train.eval_every == 0 or self.epoch + 1 == train.epochs
        if not (due and self.dist.is_main):
            return None
        t_eval = time.perf_counter()
        evals = self.evaluate()
        for role in ("teacher", "student"):
            for k in ("accuracy", "ece", "nll"):
                rec[f"{role}_{k}"] = evals[role].metrics[k]
        rec["eval_seconds"] = time.perf_counter() - t_eval
        return evals

    def _save_epoch(self, rec: dict[str, Any]) -> None:
        state = self.state()  # a collective under torchrun: every rank's RNG state
        if not self.dist.is_main:
            return
        ckpt.save_training_state(RunLayout(self.run_dir).last, state)
        # metrics.jsonl is rewritten from the checkpoint's history, so after a
        # crash and --resume it never holds an epoch twice or a lost one.
        files.atomic_write_text(RunLayout(self.run_dir).metrics, "".join(json.dumps(r) + "\n" for r in self.history))
        self.on_epoch(rec)


class _EpochTotals:
    """Running sums over one epoch's good steps, kept on the device: reading them
    syncs the host, so that happens only for the progress bar and at the end."""

    def __init__(self, device: torch.device):
        self.sums: dict[str, torch.Tensor] = {}
        self.correct_student = torch.zeros((), device=device)
        self.correct_teacher = torch.zeros((), device=device)
        self.seen = 0
        self.loss_keys: tuple[str, ...] = ()
        self.stat_keys: tuple[str, ...] = ()
        self.start = time.perf_counter()

    @torch.no_grad()
    def add(self, out: StepOutput, y: torch.Tensor) -> None:
        n = y.shape[0]
        self.seen += n
        for k, v in {**out.losses, **out.stats}.items():
            self.sums[k] = self.sums.get(k, 0) + v.detach().float() * n
        self.correct_student += (out.student_logits.argmax(1) == y).sum()
        self.correct_teacher += (out.teacher_logits.argmax(1) == y).sum()
        self.loss_keys, self.stat_keys = tuple(out.losses), tuple(out.stats)

    def running(self) -> dict[str, float]:
        """Loss, student accuracy and images/s so far (what the progress bar shows)."""
        return {
            "loss": float(sum(v for k, v in self.sums.items() if k not in self.stat_keys) / self.seen),
            "acc": float(self.correct_student) / self.seen,
            "img/s": self.seen / max(1e-9, time.perf_counter() - self.start),
        }

    def all_reduce(self, dist: Dist) -> None:
        """Sum every rank's totals (one collective)."""
        keys = sorted(self.sums)
        packed = torch.stack([torch.as_tensor(float(self.seen), device=self.correct_student.device),
                              self.correct_student.float(), self.correct_teacher.float(),
                              *[self.sums[k].reshape(()) for k in keys]])
        distributed.all_sum(packed, dist)
        self.seen, self.correct_student, self.correct_teacher = int(packed[0]), packed[1], packed[2]
        self.sums = dict(zip(keys, packed[3:]))

    def record(self, lr: float, seconds: float, skipped_steps: int) -> dict[str, Any]:
        seen = max(self.seen, 1)  # every step skipped (train.max_bad_steps): report zeros, not a crash
        rec = {k: float(v) / seen for k, v in self.sums.items()}
        rec["loss"] = sum(v for k, v in rec.items() if k in self.loss_keys)
        rec.update(
            lr=lr, seconds=seconds, images_per_s=seen / seconds, skipped_steps=skipped_steps,
            student_train_accuracy=float(self.correct_student) / seen,
            teacher_train_accuracy=float(self.correct_teacher) / seen,
        )
        return rec
