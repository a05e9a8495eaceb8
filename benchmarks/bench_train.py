"""Training-step overheads, measured side by side in one run.

    .venv/bin/python benchmarks/bench_train.py [--recipe recipes/cifar10-cpu.yaml] [--steps 20] [--rounds 7]

Both measurements use the recipe's teacher and student on its real training
data (device-resident loader), one epoch of --steps batches each time, and
alternate the two contenders round by round (who goes first swaps every round,
so drifting machine load is shared); the medians and their ratio are printed.

1. loss overhead: edgekd's Trainer with `distill.method=bdkd` vs `ce` (same
   nets, data, optimizers; bdkd adds the two KL terms, the entropies and the
   teacher regulariser). Target: bdkd step time / ce step time <= 1.03.
2. trainer efficiency: edgekd's Trainer (`ce`) vs a minimal hand-written PyTorch
   loop doing the same forward / backward / SGD step for both nets on the same
   batches. Target: trainer images/s >= 0.95 x the hand loop's.

Also prints the process's peak memory (RSS on the CPU, max allocated on CUDA).
Exit 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from edgekd.training.setup import make_optimizer, prepare
from edgekd.training.trainer import Trainer
from edgekd.recipe import load_recipe


def trainer_for(recipe_path: Path, method: str, steps: int, extra: list[str]) -> Trainer:
    batch = load_recipe(recipe_path, extra).data.batch_size
    r = load_recipe(recipe_path, [f"distill.method={method}", f"data.subset={steps * batch}", *extra])
    return Trainer(prepare(r), Path(tempfile.mkdtemp(prefix="bench-train-")))


def time_trainer_epoch(t: Trainer) -> float:
    """Images/s of one Trainer.train_epoch (the trainer's own loop, guard and metrics included)."""
    t.epoch = 0  # same epoch (same batches) every round; the learning-rate schedule restarts too
    if t.setup.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    rec = t.train_epoch()
    if t.setup.device.type == "cuda":
        torch.cuda.synchronize()
    return rec["images_per_s"] if t.setup.device.type == "cpu" else len(t.train_loader.labels) / (time.perf_counter() - start)


class HandLoop:
    """What a user would write by hand: both nets, CE each, one backward, two SGD steps."""

    def __init__(self, t: Trainer):
        self.t = t
        r = t.recipe
        self.teacher, self.student = t.setup.teacher, t.setup.student
        self.opt_s = make_optimizer(self.student.parameters(), r.optim, t.setup.device)
        self.opt_t = make_optimizer(self.teacher.parameters(), r.optim, t.setup.device)

    def epoch(self) -> float:
        loader = self.t.train_loader
        loader.set_epoch(0)
        self.teacher.train()
        self.student.train()
        n = 0
        if self.t.setup.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for x, y in loader:
            loss = F.cross_entropy(self.teacher(x), y) + F.cross_entropy(self.student(x), y)
            self.opt_s.zero_grad(set_to_none=True)
            self.opt_t.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_s.step()
            self.opt_t.step()
            n += y.shape[0]
        if self.t.setup.device.type == "cuda":
            torch.cuda.synchronize()
        return n / (time.perf_counter() - start)


def rotate(timers, rounds: int, warm_up: bool = True) -> list[list[float]]:
    """Each timer once per round, the first of the round moving on by one every round (so
    drifting machine load is shared); each timer's results in order. warm_up: one untimed
    call of each first."""
    if warm_up:
        for timer in timers:
            timer()
    out: list[list[float]] = [[] for _ in timers]
    for i in range(rounds):
        for k in range(len(timers)):
            j = (i + k) % len(timers)
            out[j].append(timers[j]())
    return out


def alternate(a, b, rounds: int) -> tuple[list[float], list[float]]:
    """rotate for two: a warm-up of each, then a, b in even rounds and b, a in odd ones."""
    ra, rb = rotate([a, b], rounds)
    return ra, rb


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS (process)"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--recipe", type=Path, default=Path("recipes/cifar10-cpu.yaml"))
    p.add_argument("--steps", type=int, default=20, help="batches per timed epoch")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--max-loss-ratio", type=float, default=1.03)
    p.add_argument("--min-trainer-ratio", type=float, default=0.95)
    args = p.parse_args()
    # The hand-written loop runs the nets eagerly: so does the trainer, unless --set says otherwise.
    args.overrides = ["train.compile=false", *args.overrides]

    ce = trainer_for(args.recipe, "ce", args.steps, args.overrides)
    bdkd = trainer_for(args.recipe, "bdkd", args.steps, args.overrides)
    hand = HandLoop(trainer_for(args.recipe, "ce", args.steps, args.overrides))
    r = ce.recipe
    print(f"# {r.teacher.arch} + {r.student.arch}, batch {r.data.batch_size}, {args.steps} steps x {args.rounds} "
          f"rounds, device {ce.setup.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")

    ce_ips, bd_ips = alternate(lambda: time_trainer_epoch(ce), lambda: time_trainer_epoch(bdkd), args.rounds)
    loss_ratio = statistics.median(ce_ips) / statistics.median(bd_ips)  # step-time ratio bdkd / ce
    tr_ips, hand_ips = alternate(lambda: time_trainer_epoch(ce), hand.epoch, args.rounds)
    trainer_ratio = statistics.median(tr_ips) / statistics.median(hand_ips)

    print("| measurement | images/s (median) | ratio | target | met |")
    print("|---|---|---|---|---|")
    print(f"| trainer, ce | {statistics.median(ce_ips):.0f} | | | |")
    print(f"| trainer, bdkd | {statistics.median(bd_ips):.0f} | step time bdkd/ce {loss_ratio:.3f} "
          f"| <= {args.max_loss_ratio} | {'yes' if loss_ratio <= args.max_loss_ratio else 'NO'} |")
    print(f"| hand-written loop, ce | {statistics.median(hand_ips):.0f} | | | |")
    print(f"| trainer, ce (2nd series) | {statistics.median(tr_ips):.0f} | trainer/hand {trainer_ratio:.3f} "
          f"| >= {args.min_trainer_ratio} | {'yes' if trainer_ratio >= args.min_trainer_ratio else 'NO'} |")
    print(f"peak memory: {peak_memory(ce.setup.device)}")
    ok = loss_ratio <= args.max_loss_ratio and trainer_ratio >= args.min_trainer_ratio
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
