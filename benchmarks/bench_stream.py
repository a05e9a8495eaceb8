"""data.storage: memory vs stream: peak memory of a 1-epoch run as the data set grows, and training
throughput against the ImageFolder + DataLoader loop users write by hand.

    .venv/bin/python benchmarks/bench_stream.py [--sizes 10000,40000] [--rss-size 224]
        [--speed-sizes 32,224] [--steps 12] [--repeats 3] [--workers 2] [--out FILE.json]

Run it from the repository root with nothing else running (two cores: a training beside it ruins the
timings). Data: real CIFAR-10 JPEGs (../shared/data/cifar10/train), linked into ImageFolder trees of
the given sizes (the first N/10 files of each class), so every image is a 32 px JPEG upscaled to the
run's size: the decode work is real, the pixels carry no more detail.

Memory (--sizes, --rss-size): `edgekd distill` for one epoch, method ce, teacher and student cnn_tiny
at width 4 (the nets cost little, so the epoch's time and memory are the data's), once with
data.storage memory and once with stream, each a fresh process. The figure is the peak over the run of
the summed proportional set size (PSS, /proc/<pid>/smaps_rollup) of the process and its workers,
sampled every 0.1 s: shared pages are counted once, so forked workers are not double-counted.

Speed (--speed-sizes): one training step (mobilenet_v3_small, CE, SGD, channels-last, fp32) fed by
  - edgekd memory: the in-memory DataModule's loader (device-resident uint8, crops on the batch);
  - edgekd stream: data.storage stream's StreamLoader with --workers processes;
  - hand-written: torchvision.datasets.ImageFolder + transforms v2 (RandomResizedCrop, flip, ToImage,
    ToDtype, Normalize) + DataLoader(shuffle, --workers, persistent) - the loop users write;
images/s is the median over --repeats of --steps timed steps after 3 untimed ones, the three rotating
who goes first. Then the stream loader alone at the largest size with 0, 1 and 2 workers (no model):
the workers setting that serves two cores best.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CIFAR = REPO.parent / "shared" / "data" / "cifar10" / "train"
PATHS = ("edgekd memory", "edgekd stream", "hand-written ImageFolder")


def link_folder(n: int, dest: Path) -> Path:
    """An ImageFolder tree of n CIFAR-10 JPEGs (n/10 per class), as symlinks."""
    classes = sorted(p.name for p in CIFAR.iterdir() if p.is_dir())
    per = n // len(classes)
    for c in classes:
        (dest / c).mkdir(parents=True, exist_ok=True)
        for f in sorted(os.listdir(CIFAR / c))[:per]:
            if not (dest / c / f).exists():
                os.symlink(CIFAR / c / f, dest / c / f)
    return dest


# ---------------------------------------------------------------- memory of a 1-epoch run


def _tree(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, []))
    return out


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def peak_pss_mib(cmd: list[str], env: dict) -> tuple[float, float, int]:
    """Run cmd; (peak summed PSS of its process tree in MiB, seconds, return code)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], sum(_pss_kib(p) for p in _tree(proc.pid)))
            time.sleep(0.1)

    t = threading.Thread(target=sample)
    t.start()
    _, err = proc.communicate()
    t.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed: {err.strip().splitlines()[-1] if err.strip() else proc.returncode}")
    return peak[0] / 1024, time.perf_counter() - start, proc.returncode


def memory_rows(sizes: list[int], image_size: int, workers: int, work: Path) -> list[dict]:
    rows = []
    for n in sizes:
        root = link_folder(n, work / f"cifar-{n}")
        for storage in ("memory", "stream"):
            out = work / f"run-{storage}-{n}"
            cmd = [sys.executable, "-m", "edgekd", "distill", "recipes/quickstart.yaml", "--out", str(out), "--quiet",
                   "--set", "data.name=imagefolder", "--set", f"data.root={root}",
                   "--set", f"data.image_size={image_size}", "--set", f"data.storage={storage}",
                   "--set", f"data.workers={workers}", "--set", "data.val_size=500", "--set", "train.epochs=1",
                   "--set", "distill.method=ce", "--set", "teacher.arch=cnn_tiny", "--set", "student.arch=cnn_tiny",
                   "--set", "teacher.options.width=4", "--set", "student.options.width=4",
                   "--set", "data.augment.hflip=true"]
            pss, seconds, _ = peak_pss_mib(cmd, {**os.environ})
            rows.append({"images": n, "storage": storage, "image_size": image_size, "peak_pss_mib": round(pss),
                         "seconds": round(seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    return rows


# ---------------------------------------------------------------- training throughput


def _model(image_size: int):
    import torch

    from edgekd.models import build_model

    net = build_model("mobilenet_v3_small", 10, 3, image_size).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    return net, opt


def _step(net, opt, x, y):
    import torch

    loss = torch.nn.functional.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _loaders(root: Path, image_size: int, batch: int, workers: int):
    import torch
    from torchvision import datasets
    from torchvision.transforms import v2

    from edgekd.data import build_data

    split = dict(image_size=image_size, val_fraction=None, val_size=100, split_seed=0)
    mem = build_data("imagefolder", str(root), storage="memory", **split)
    stream = build_data("imagefolder", str(root), storage="stream", **split)
    common = dict(device="cpu", seed=0, crop="resized", hflip=True)
    tf = v2.Compose([v2.RandomResizedCrop(image_size, antialias=True), v2.RandomHorizontalFlip(), v2.ToImage(),
                     v2.ToDtype(torch.float32, scale=True), v2.Normalize(stream.mean, stream.std)])
    hand = torch.utils.data.DataLoader(datasets.ImageFolder(str(root), transform=tf), batch_size=batch, shuffle=True,
                                       num_workers=workers, persistent_workers=workers > 0, drop_last=True)
    return {
        PATHS[0]: mem.train_loader(batch, loader="device", **common),
        PATHS[1]: stream.train_loader(batch, workers=workers, **common),
        PATHS[2]: hand,
    }


def _endless(loader):
    epoch = 0
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def speed_rows(root: Path, sizes: list[int], steps: int, repeats: int, workers: int, batch: int = 64) -> list[dict]:
    import torch

    torch.manual_seed(0)
    rows = []
    for size in sizes:
        loaders = _loaders(root, size, batch, workers)
        its = {k: _endless(v) for k, v in loaders.items()}
        net, opt = _model(size)
        times: dict[str, list[float]] = {k: [] for k in loaders}
        for r in range(repeats):
            order = PATHS[r % 3:] + PATHS[: r % 3]
            for name in order:
                for _ in range(3):
                    x, y = next(its[name])
                    _step(net, opt, x, y)
                start = time.perf_counter()
                for _ in range(steps):
                    x, y = next(its[name])
                    _step(net, opt, x, y)
                times[name].append(steps * batch / (time.perf_counter() - start))
        for name in PATHS:
            rows.append({"image_size": size, "path": name, "workers": workers,
                         "images_per_s": round(statistics.median(times[name]), 1),
                         "runs": [round(v, 1) for v in times[name]]})
            print(json.dumps(rows[-1]), flush=True)
        del its, loaders
    return rows


def workers_rows(root: Path, size: int, steps: int, repeats: int, batch: int = 64) -> list[dict]:
    from edgekd.data import build_data

    data = build_data("imagefolder", str(root), image_size=size, val_fraction=None, val_size=100, storage="stream")
    rows = []
    for workers in (0, 1, 2):
        ld = data.train_loader(batch, "cpu", seed=0, crop="resized", workers=workers)
        it = _endless(ld)
        for _ in range(3):
            next(it)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(steps):
                next(it)
            runs.append(steps * batch / (time.perf_counter() - start))
        rows.append({"image_size": size, "workers": workers, "loader_images_per_s": round(statistics.median(runs), 1)})
        print(json.dumps(rows[-1]), flush=True)
        del it, ld
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,40000", help="data set sizes for the memory runs (0: skip them)")
    ap.add_argument("--rss-size", type=int, default=224, help="image size of the memory runs")
    ap.add_argument("--speed-sizes", default="32,224", help="image sizes for the throughput runs (0: skip them)")
    ap.add_argument("--speed-images", type=int, default=10000, help="data set size for the throughput runs")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=None, help="write every row as JSON here")
    args = ap.parse_args(argv)
    if not CIFAR.is_dir():
        sys.exit(f"no CIFAR-10 JPEGs at {CIFAR}")
    result: dict = {"cpu": _cpu(), "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        sizes = [int(v) for v in args.sizes.split(",") if int(v)]
        if sizes:
            result["memory"] = memory_rows(sizes, args.rss_size, args.workers, work)
        speed = [int(v) for v in args.speed_sizes.split(",") if int(v)]
        if speed:
            root = link_folder(args.speed_images, work / f"cifar-{args.speed_images}")
            result["speed"] = speed_rows(root, speed, args.steps, args.repeats, args.workers)
            result["workers"] = workers_rows(root, max(speed), args.steps, args.repeats)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
