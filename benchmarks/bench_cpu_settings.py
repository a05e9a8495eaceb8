"""CPU training settings, measured side by side in one run: fp32 NCHW, channels_last, channels_last +
torch.compile, and bf16 autocast + channels_last; then short real runs per setting, so a speed-up
that changes results shows.

    PYTHONPATH=. .venv/bin/python benchmarks/bench_cpu_settings.py          # from the repo root, a quiet machine
    PYTHONPATH=. .venv/bin/python benchmarks/bench_cpu_settings.py --tiny --out /tmp/cpu.json   # what tests run

1. speed: for each pair, recipes/cifar10-cpu.yaml (resnet20 -> resnet8) and recipes/mobilenet.yaml
   (resnet18 -> mobilenet_v2), both on the CIFAR-10 JPEGs the cifar10-cpu recipe reads
   (../shared/data/cifar10/train, 32x32, batch 128, bdkd), one Trainer per setting. Each first
   trains one epoch of --steps (--mobilenet-steps) batches on its own: that first epoch's excess
   over a steady one is its warm-up, and for torch.compile the compile time (with a fresh inductor
   cache: what the first run of a recipe pays). Then --rounds rounds time one epoch of each,
   the first of the round rotating (bench_train.rotate). Images/s medians, ratios to fp32 NCHW.
2. compile break-even: compile seconds over the seconds a compiled step saves against
   channels_last (edgekd.training.speed.compile_break_even_steps, the formula of the constant
   AUTO_COMPILE_MIN_STEPS["cpu"]).
3. results: per setting, --seeds real runs of the cifar10-cpu recipe, --epochs epochs on --images
   training images (run_distill: the path of `edgekd distill`); the student's accuracy and ECE on
   the recipe's val split (5,000 images), mean +- sd over the seeds.
bf16 runs only on a CPU with bf16 instructions (edgekd.training.speed.cpu_has_bf16); elsewhere the
setting is reported as not available. The last table says what the AUTO_* constants in
edgekd/training/speed.py would be from these figures, next to what they are.

--tiny: recipes/quickstart.yaml at 16 px (digits, cnn_small -> cnn_tiny), 2 steps, 1 round, 2 seeds of 1
epoch on 256 images, torch.compile with its aot_eager backend (no C++ code generation, which takes
minutes); every part runs and the JSON is complete, but its figures mean nothing.
Exit 2 on bad input (a missing data folder: one line).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_train import rotate, time_trainer_epoch, trainer_for

from edgekd.training import speed as speed_rules
from edgekd.training.run_dir import run_distill
from edgekd.training.speed import compile_break_even_steps, cpu_has_bf16
from edgekd.errors import EdgeKDError, first_line
from edgekd.files import write_json
from edgekd.recipe import load_recipe
from edgekd.text import pct
from edgekd.validation.report import cpu_name

REPO = Path(__file__).resolve().parents[1]
CIFAR_RECIPE = REPO / "recipes/cifar10-cpu.yaml"
MOBILENET_RECIPE = REPO / "recipes/mobilenet.yaml"
TINY_RECIPE = REPO / "recipes/quickstart.yaml"

BASELINE, CHANNELS_LAST, COMPILED, BF16 = "fp32 NCHW", "channels_last", "channels_last + compile", "bf16 + channels_last"
SETTINGS = {  # every key forced, so auto decides nothing here
    BASELINE: ["train.channels_last=false", "train.compile=false", "train.amp=off"],
    CHANNELS_LAST: ["train.channels_last=true", "train.compile=false", "train.amp=off"],
    COMPILED: ["train.channels_last=true", "train.compile=true", "train.amp=off"],
    BF16: ["train.channels_last=true", "train.compile=false", "train.amp=bf16"],
}
COMMON = ["train.device=cpu", "distill.method=bdkd"]


def bad_input(msg: str):
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(2)


def unavailable(setting: str) -> str | None:
    """Why a setting cannot run on this CPU (None if it can)."""
    if setting == BF16 and not cpu_has_bf16():
        return "this CPU has no bf16 instructions"
    return None


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


# -- 1. speed -------------------------------------------------------------------------------------
def measure_pair(name: str, recipe: Path, data_args: list[str], steps: int, rounds: int) -> dict:
    r = load_recipe(recipe, data_args)
    out = {"recipe": str(recipe.relative_to(REPO)), "teacher": r.teacher.arch, "student": r.student.arch,
           "batch_size": r.data.batch_size, "steps": steps, "rounds": rounds, "settings": {}}
    trainers, warm = {}, {}
    for setting, keys in SETTINGS.items():
        why_not = unavailable(setting)
        if why_not:
            out["settings"][setting] = {"available": False, "reason": why_not}
            continue
        t = trainers[setting] = trainer_for(recipe, "bdkd", steps, [*COMMON, *data_args, *keys])
        start = time.perf_counter()
        time_trainer_epoch(t)  # the first epoch: compiles, if this setting does
        warm[setting] = time.perf_counter() - start
        print(f"[{time.strftime('%H:%M:%S')}] {name}, {setting}: first epoch {warm[setting]:.1f} s", flush=True)
    names = list(trainers)
    series = rotate([functools.partial(time_trainer_epoch, trainers[s]) for s in names], rounds, warm_up=False)
    images = len(trainers[BASELINE].train_loader.labels)
    for setting, img_s in zip(names, series):
        median = statistics.median(img_s)
        out["settings"][setting] = {
            "available": True, "img_s": img_s, "median_img_s": median, "first_epoch_seconds": warm[setting],
            "steady_epoch_seconds": images / median, "warm_up_seconds": warm[setting] - images / median,
        }
    base = out["settings"][BASELINE]["median_img_s"]
    for row in out["settings"].values():
        if row["available"]:
            row["ratio_to_fp32_nchw"] = row["median_img_s"] / base
    eager, compiled = out["settings"][CHANNELS_LAST], out["settings"][COMPILED]
    out["compile"] = {
        "seconds": compiled["warm_up_seconds"],
        "speed_up_over_channels_last": compiled["median_img_s"] / eager["median_img_s"],
        "break_even_steps": compile_break_even_steps(compiled["warm_up_seconds"], eager["median_img_s"],
                                                     compiled["median_img_s"], out["batch_size"]),
    }
    return out


# -- 3. results -----------------------------------------------------------------------------------
def short_runs(recipe: Path, data_args: list[str], epochs: int, images: int, seeds: list[int], tmp: Path) -> dict:
    out = {"recipe": str(recipe.relative_to(REPO)), "epochs": epochs, "images": images, "seeds": seeds, "settings": {}}
    for setting, keys in SETTINGS.items():
        why_not = unavailable(setting)
        if why_not:
            out["settings"][setting] = {"available": False, "reason": why_not}
            continue
        runs = []
        for seed in seeds:
            r = load_recipe(recipe, [*COMMON, *data_args, *keys, f"train.epochs={epochs}", f"data.subset={images}",
                                     f"train.seed={seed}"])
            start = time.perf_counter()
            summary = run_distill(r, tmp / f"{setting}-{seed}".replace(" ", "_"), resume=False)
            runs.append({"seed": seed, "student_accuracy": summary["student"]["accuracy"],
                         "student_ece": summary["student"]["ece"], "seconds": time.perf_counter() - start,
                         "eval_split": summary["eval_split"], "eval_images": summary["eval_images"],
                         "speed_settings": summary["speed_settings"]})
            print(f"[{time.strftime('%H:%M:%S')}] results, {setting}, seed {seed}: student acc "
                  f"{pct(runs[-1]['student_accuracy'])} ECE {pct(runs[-1]['student_ece'])}", flush=True)
        acc, ece = mean_sd([x["student_accuracy"] for x in runs]), mean_sd([x["student_ece"] for x in runs])
        out["settings"][setting] = {"available": True, "runs": runs, "accuracy_mean": acc[0], "accuracy_sd": acc[1],
                                    "ece_mean": ece[0], "ece_sd": ece[1]}
    return out


# -- what auto would pick -------------------------------------------------------------------------
def suggest(speed: dict) -> list[dict]:
    """The AUTO_* constants these figures support (the rule: faster on every pair), next to their values."""
    pairs = list(speed.values())
    ratios = [p["settings"][CHANNELS_LAST]["ratio_to_fp32_nchw"] for p in pairs]
    steps = [p["compile"]["break_even_steps"] for p in pairs]
    # The pair that needs the most steps sets the constant; a pair that compiled is no faster: never.
    min_steps = None if None in steps else max(steps)
    bf16 = [p["settings"][BF16]["median_img_s"] / p["settings"][CHANNELS_LAST]["median_img_s"]
            for p in pairs if p["settings"][BF16]["available"]]
    return [
        {"constant": 'AUTO_CHANNELS_LAST["cpu"]', "now": speed_rules.AUTO_CHANNELS_LAST["cpu"],
         "measured": all(x > 1 for x in ratios), "from": "channels_last faster than fp32 NCHW on every pair"},
        {"constant": 'AUTO_COMPILE_MIN_STEPS["cpu"]', "now": speed_rules.AUTO_COMPILE_MIN_STEPS["cpu"],
         "measured": min_steps, "from": "largest break-even over the pairs (none: a pair is no faster compiled)"},
        {"constant": "AUTO_CPU_BF16", "now": speed_rules.AUTO_CPU_BF16,
         "measured": bool(bf16) and all(x > 1 for x in bf16),
         "from": "bf16 + channels_last faster than channels_last on every pair" if bf16 else "no bf16 on this CPU"},
    ]


# -- tables ---------------------------------------------------------------------------------------
def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def fmt_steps(n: int | None) -> str:
    return "never" if n is None else f"{n:,}"


def markdown(report: dict) -> str:
    title = (f"# CPU training settings: {report['cpu']}, {plural(report['threads'], 'thread')}, "
             f"torch {report['torch']}, bf16 instructions: {'yes' if report['cpu_has_bf16'] else 'no'}")
    lines = [title, "",
             "| pair | setting | images/s (median) | x fp32 NCHW | first epoch - steady (s) |", "|---|---|---|---|---|"]
    for p in report["speed"].values():
        pair = f"{p['teacher']} -> {p['student']}"
        for setting, row in p["settings"].items():
            if not row["available"]:
                lines.append(f"| {pair} | {setting} | not available: {row['reason']} | | |")
                continue
            lines.append(f"| {pair} | {setting} | {row['median_img_s']:.1f} | {row['ratio_to_fp32_nchw']:.2f}x "
                         f"| {row['warm_up_seconds']:.1f} |")
    lines += ["", "| pair | compile (s) | compiled / channels_last | break-even steps |", "|---|---|---|---|"]
    for p in report["speed"].values():
        c = p["compile"]
        lines.append(f"| {p['teacher']} -> {p['student']} | {c['seconds']:.1f} | {c['speed_up_over_channels_last']:.2f}x "
                     f"| {fmt_steps(c['break_even_steps'])} |")
    res = report["results"]
    first = next(s for s in res["settings"].values() if s["available"])["runs"][0]
    intro = (f"Short runs of {res['recipe']}: {plural(res['epochs'], 'epoch')} on {res['images']:,} images, seeds "
             f"{', '.join(map(str, res['seeds']))}; the student on the {first['eval_images']:,}-image "
             f"{first['eval_split']} split, mean +- sd:")
    lines += ["", intro, "",
              "| setting | accuracy | ECE | seconds a run |", "|---|---|---|---|"]
    for setting, row in res["settings"].items():
        if not row["available"]:
            lines.append(f"| {setting} | not available: {row['reason']} | | |")
            continue
        secs = statistics.mean(x["seconds"] for x in row["runs"])
        lines.append(f"| {setting} | {pct(row['accuracy_mean'])} +- {100 * row['accuracy_sd']:.2f} "
                     f"| {pct(row['ece_mean'])} +- {100 * row['ece_sd']:.2f} | {secs:.0f} |")
    lines += ["", "| edgekd/training/speed.py | now | from these figures | rule |", "|---|---|---|---|"]
    for s in report["suggested"]:
        now, measured = s["now"], s["measured"]
        if "STEPS" in s["constant"]:
            now, measured = fmt_steps(now), fmt_steps(measured)
        lines.append(f"| {s['constant']} | {now} | {measured} | {s['from']} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "results/bench-cpu-settings.json")
    ap.add_argument("--steps", type=int, default=12, help="batches per timed epoch, resnet20 -> resnet8 pair")
    ap.add_argument("--mobilenet-steps", type=int, default=3, help="batches per timed epoch, resnet18 -> mobilenet_v2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="epochs of each short real run")
    ap.add_argument("--images", type=int, default=2000, help="training images of each short real run")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the short real runs, comma-separated")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, one per core)")
    ap.add_argument("--tiny", action="store_true", help="digits and tiny settings, every part in about a minute")
    args = ap.parse_args()
    if min(args.steps, args.mobilenet_steps, args.rounds, args.epochs, args.images) < 1:
        bad_input("--steps, --mobilenet-steps, --rounds, --epochs and --images must be at least 1")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        bad_input(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2")
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.tiny:
        tiny = ["data.image_size=16"]  # the 8x8 digits at 16 px: every part runs, in a quarter of the work
        pairs = {"quickstart": (TINY_RECIPE, tiny, 2)}
        args.rounds, args.epochs, args.images, seeds = 1, 1, 256, seeds[:2]
        results_recipe, results_args = TINY_RECIPE, tiny
        # dynamo + AOTAutograd without inductor's C++ code generation (minutes, even for tiny nets).
        torch.compile = functools.partial(torch.compile, backend="aot_eager")
    else:
        cifar = load_recipe(CIFAR_RECIPE).data
        if not Path(cifar.root).is_dir():
            bad_input(f"{cifar.root} (data.root of {CIFAR_RECIPE.name}, relative to where this runs) is not a folder; "
                      f"run from the repo root, next to ../shared/data/cifar10/train")
        # The mobilenet pair on the same JPEGs as the cifar10-cpu pair (mobilenet.yaml would download).
        on_jpegs = ["data.name=imagefolder", f"data.root={cifar.root}", "data.image_size=32", "data.download=false",
                    f"data.cache_dir={cifar.cache_dir}"]
        pairs = {"cifar10-cpu": (CIFAR_RECIPE, [], args.steps),
                 "mobilenet": (MOBILENET_RECIPE, on_jpegs, args.mobilenet_steps)}
        results_recipe, results_args = CIFAR_RECIPE, []
    # A fresh inductor cache: the compile time measured is what a recipe's first run pays.
    inductor_cache = tempfile.TemporaryDirectory(prefix="bench-cpu-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = inductor_cache.name

    t0 = time.perf_counter()
    report: dict = {"schema": 1, "mode": "tiny" if args.tiny else "full", "torch": torch.__version__,
                    "python": platform.python_version(), "cpu": cpu_name(), "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(), "cpu_has_bf16": cpu_has_bf16(),
                    "compile_backend": "aot_eager" if args.tiny else "inductor", "speed": {}}
    try:
        for name, (recipe, data_args, steps) in pairs.items():
            report["speed"][name] = measure_pair(name, recipe, data_args, steps, args.rounds)
        with tempfile.TemporaryDirectory(prefix="bench-cpu-runs-") as tmp:
            report["results"] = short_runs(results_recipe, results_args, args.epochs, args.images, seeds, Path(tmp))
    except EdgeKDError as e:
        bad_input(first_line(e, 300))
    finally:
        inductor_cache.cleanup()
    report["suggested"] = suggest(report["speed"])
    report["seconds"] = time.perf_counter() - t0
    report["markdown"] = markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, report)
    print(report["markdown"])
    print(f"\n{report['seconds']:.0f} s; JSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
