"""Data-parallel training on PyTorch's own engine: torchrun + DistributedDataParallel.

`torchrun --nproc-per-node=N -m edgekd distill RECIPE` (or `edgekd distill RECIPE
--nproc-per-node N`, which runs the same launcher) starts N processes; each reads
its rank from the environment torchrun sets. The recipe keeps its meaning
whatever N is: `data.batch_size` is the global batch, split evenly over the ranks.
Rank 0 alone writes files and evaluates; the others wait for it at a barrier.
With one process (no torchrun) everything here is a no-op.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as tdist

from edgekd.errors import EdgeKDError, PeerLostError, RecipeError, first_line


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = Dist()


def from_env() -> Dist:
    """The process's place in a torchrun job (RANK, WORLD_SIZE, LOCAL_RANK), or SINGLE."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise EdgeKDError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (set by torchrun): {e}") from e
    return Dist(rank, world, local) if world > 1 else SINGLE


def init(d: Dist, device: torch.device) -> None:
    """Join the process group: NCCL between GPUs, gloo on the CPU."""
    if d.enabled and not tdist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        tdist.init_process_group(backend=backend, rank=d.rank, world_size=d.world_size,
                                 device_id=device if device.type == "cuda" else None)


def shutdown(d: Dist) -> None:
    if d.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


@contextlib.contextmanager
def process_group(d: Dist, device: torch.device) -> Iterator[None]:
    """The process group for the body, joined on entry and left on exit however the body ends (a
    RecipeError found after joining included). The one place a run joins and leaves; a group that
    was already joined (by the caller) is left to its owner."""
    owner = d.enabled and not tdist.is_initialized()
    if owner:
        init(d, device)
    try:
        yield
    finally:
        if owner:
            shutdown(d)


def require_joined(d: Dist) -> None:
    """Under torchrun, the nets are wrapped in DDP: the group must have been joined by process_group."""
    if d.enabled and not tdist.is_initialized():
        raise EdgeKDError(f"rank {d.rank} of {d.world_size} has not joined the process group; run the training "
                          "inside edgekd.training.distributed.process_group (edgekd.distill() does)")


def local_device(d: Dist, device: torch.device) -> torch.device:
    """One GPU per process: rank r of a node takes cuda:LOCAL_RANK."""
    if d.enabled and device.type == "cuda":
        if d.local_rank >= torch.cuda.device_count():
            raise EdgeKDError(f"LOCAL_RANK {d.local_rank} but only {torch.cuda.device_count()} GPU(s) are visible")
        return torch.device("cuda", d.local_rank)
    return device


def per_rank_batch(batch_size: int, d: Dist) -> int:
    if batch_size % d.world_size:
        raise RecipeError(f"data.batch_size {batch_size} (the global batch) is not divisible by "
                          f"{d.world_size} processes; choose a multiple of {d.world_size}")
    return batch_size // d.world_size


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


def broadcast(obj: Any, d: Dist) -> Any:
    """Rank 0's value of a picklable object, on every rank."""
    if not d.enabled:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, d: Dist) -> list[Any]:
    """Every rank's value, in rank order, on every rank."""
    if not d.enabled:
        return [obj]
    out: list[Any] = [None] * d.world_size
    tdist.all_gather_object(out, obj)
    return out


def all_sum(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if d.enabled:
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def wrap(net: torch.nn.Module, d: Dist, device: torch.device, sync_bn: bool) -> torch.nn.Module:
    """DistributedDataParallel around one net (each of teacher and student gets its own)."""
    if not d.enabled:
        return net
    from torch.nn.parallel import DistributedDataParallel as DDP

    if sync_bn:
        net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    return DDP(net, device_ids=[device.index] if device.type == "cuda" else None)


@contextlib.contextmanager
def peer_errors(d: Dist) -> Iterator[None]:
    """A collective that fails because another rank died becomes one line, not a traceback."""
    try:
        yield
    except (RuntimeError, tdist.DistBackendError) as e:
        msg = str(e)
        lost = isinstance(e, tdist.DistBackendError) or any(
            w in msg for w in ("Connection closed", "Connection reset", "Broken pipe", "gloo", "NCCL", "timed out"))
        if not d.enabled or not lost:
            raise
        first = first_line(e)
        raise PeerLostError(f"rank {d.rank}: lost another training process ({first[:160]}); "
                            f"resume the run with --resume") from e


def launch(nproc: int, child_argv: list[str]) -> int:
    """Run `python -m edgekd <child_argv>` in nproc processes through torch's launcher
    (torch.distributed.run, i.e. torchrun --standalone). Returns the exit code."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # Each child already prints its own one-line error; the launcher's logs would add
    # a page of noise (and a traceback) around it.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--module", "edgekd", *child_argv])
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        # A child's own exit code (2 for bad input); 128+N for one killed by signal N.
        return next((c for c in codes if c > 0), 128 - min(codes) if codes and min(codes) < 0 else 1)
    return 0
