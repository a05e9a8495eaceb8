"""Training throughput fed by DeviceLoader vs HostLoader vs synthetic on-device tensors.

    .venv/bin/python benchmarks/bench_data.py [--subset 5000] [--batch 128] [--steps 20] [--repeats 3] [--device cpu]

Run it from the repository root (the default --data and --cache-dir are relative to it).

Configurations, each measured in a fresh subprocess (so its peak memory is its own):
  - train/device:    one online-distillation step (teacher resnet20 + student resnet8,
                     CE on each, forward + backward + SGD step for both) fed by DeviceLoader;
  - train/host:      the same step fed by HostLoader with --workers worker processes;
  - train/synthetic: the same step on one fixed batch already on the device (no data path);
  - load/device, load/host: the loader alone, each batch moved to the device, no model.
Every repeat runs every configuration once, rotating who goes first, so drifting
load on a shared machine hits all alike; the figure is the median images/s over
--repeats of --steps timed steps after --warmup untimed ones (worker start-up is
in the warm-up). Epochs roll over (set_epoch) when --steps exceeds one, as in training.

Memory: the process's peak RSS (getrusage ru_maxrss); "over setup", how far that
peak rose above the peak reached while loading the data and building the models
(a high-water mark: 0 means the configuration never needed more than loading the
full cached dataset did); the largest worker's peak RSS (forked workers share the
parent's pages, so it is not additive); on CUDA also torch.cuda.max_memory_allocated.

Data: real CIFAR-10 JPEGs (--data) through edgekd.data.build_data with an .npz cache.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Iterator

CONFIGS = ("train/device", "train/host", "train/synthetic", "load/device", "load/host")


# ---------------------------------------------------------------- one configuration (in its own process)


def _max_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def _endless(loader) -> Iterator:
    """Batches across epoch boundaries, calling set_epoch like the trainer does."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def _make_loader(args, kind: str, device):
    from edgekd.data import build_data

    data = build_data(
        "imagefolder", args.data, image_size=32, val_fraction=None, val_size=1000, subset=args.subset,
        cache_dir=args.cache_dir,
    )  # fmt: skip
    # drop_last: every timed step is a full batch, so steps are comparable across configurations.
    return lambda: data.train_loader(args.batch, device, seed=0, drop_last=True, loader=kind, workers=args.workers)


def _make_step(args, device):
    import torch
    import torch.nn.functional as F

    from edgekd.models import build_model

    torch.manual_seed(0)
    models = [build_model(a, num_classes=10, in_channels=3, image_size=32).to(device).train() for a in ("resnet20", "resnet8")]
    opts = [torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4) for m in models]

    def step(x, y) -> None:
        # Online distillation trains both networks every step; the KD term is negligible next to this.
        loss = sum(F.cross_entropy(m(x), y) for m in models)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()

    return step


def _synthetic_batches(args, device) -> Iterator:
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    while True:
        yield x, y


def run_one(args) -> dict:
    import torch

    device = torch.device(args.device)
    stage, source = args.one.split("/")
    make_loader = None if source == "synthetic" else _make_loader(args, source, device)
    step = _make_step(args, device) if stage == "train" else (lambda x, y: None)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    start_rss = _max_rss_mb()  # data and models are in memory; what follows is the configuration's own
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    loader = make_loader() if make_loader else None
    batches = _synthetic_batches(args, device) if loader is None else _endless(loader)
    for _ in range(args.warmup):
        step(*next(batches))
    sync()
    images, t0 = 0, time.perf_counter()
    for _ in range(args.steps):
        x, y = next(batches)
        step(x, y)
        images += len(y)
    sync()
    seconds = time.perf_counter() - t0
    cuda_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del batches, loader
    gc.collect()  # shuts persistent workers down and joins them, so RUSAGE_CHILDREN sees them
    return {
        "images_per_s": images / seconds,
        "rss_mb": _max_rss_mb(),
        "rss_growth_mb": _max_rss_mb() - start_rss,
        "worker_rss_mb": _max_rss_mb(resource.RUSAGE_CHILDREN) if source == "host" else None,
        "cuda_mb": cuda_mb,
    }


# ---------------------------------------------------------------- orchestration


def measure(args, config: str) -> dict:
    cmd = [sys.executable, __file__, "--one", config, *args.passthrough]
    proc = subprocess.run(cmd, capture_output=True, text=True)  # same cwd: relative --data/--cache-dir stay valid
    if proc.returncode != 0:
        raise SystemExit(f"{config} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(value: float | None, width: int) -> str:
    return f"{'-' if value is None else format(value, '.0f'):>{width}}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    # Relative to the working directory (the repo root), spelled as the recipes spell them:
    # the path is part of the .npz cache key, so this reuses their cache.
    p.add_argument("--data", default="../shared/data/cifar10/train", help="CIFAR-10 ImageFolder")
    p.add_argument("--cache-dir", default=".cache/edgekd")
    p.add_argument("--subset", type=int, default=5000, help="training images")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (includes worker start-up)")
    p.add_argument("--workers", type=int, default=2, help="HostLoader worker processes")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: measure one configuration, print JSON
    args = p.parse_args()

    if args.one:
        print(json.dumps(run_one(args)))
        return 0
    configs = args.configs.split(",")
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        p.error(f"unknown configs {sorted(unknown)}; allowed: {', '.join(CONFIGS)}")
    keep = ("data", "cache_dir", "subset", "batch", "steps", "warmup", "workers", "device")
    args.passthrough = [s for k in keep for s in (f"--{k.replace('_', '-')}", str(getattr(args, k)))]

    import torch

    print(f"{args.subset} CIFAR-10 images, batch {args.batch}, {args.steps} timed steps after {args.warmup}, "
          f"{args.repeats} repeats, device {args.device}, {torch.get_num_threads()} torch threads, "
          f"torch {torch.__version__}, host loader workers {args.workers}")  # fmt: skip
    runs: dict[str, list[dict]] = {c: [] for c in configs}
    for r in range(args.repeats):
        # Rotate who goes first, so a trend in machine load does not favour any configuration.
        for config in configs[r % len(configs) :] + configs[: r % len(configs)]:
            runs[config].append(measure(args, config))

    median = {c: statistics.median(m["images_per_s"] for m in runs[c]) for c in configs}
    peak = lambda c, key: max((m[key] for m in runs[c] if m[key] is not None), default=None)  # noqa: E731
    print(f"{'config':<16} {'img/s median':>12} {'min':>9} {'max':>9} {'peak RSS MB':>11} {'over setup':>10} "
          f"{'worker RSS':>10} {'CUDA peak MB':>12}")  # fmt: skip
    for c in configs:
        ips = [m["images_per_s"] for m in runs[c]]
        print(f"{c:<16} {median[c]:>12.0f} {min(ips):>9.0f} {max(ips):>9.0f} {_fmt(peak(c, 'rss_mb'), 11)} "
              f"{_fmt(peak(c, 'rss_growth_mb'), 10)} {_fmt(peak(c, 'worker_rss_mb'), 10)} {_fmt(peak(c, 'cuda_mb'), 12)}")
    print("ratios (median img/s):")
    for source in ("device", "host"):
        if f"train/{source}" in median and "train/synthetic" in median:
            print(f"  train/{source} / train/synthetic = {median[f'train/{source}'] / median['train/synthetic']:.3f}")
    for stage in ("train", "load"):
        if f"{stage}/host" in median and f"{stage}/device" in median:
            print(f"  {stage}/host / {stage}/device = {median[f'{stage}/host'] / median[f'{stage}/device']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
