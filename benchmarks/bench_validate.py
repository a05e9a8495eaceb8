"""Validator throughput vs a bare ONNX Runtime loop on the same preprocessed batches.

    .venv/bin/python benchmarks/bench_validate.py [BUNDLE] [--formats fp32,int8] [--batch 64] [--rounds 7]

For each ONNX format, alternates (who goes first swaps every round, so drifting
machine load is shared) between
  - validator: edgekd.validation.metrics.run_format, the function `edgekd validate`
    reports throughput from, on the session `edgekd validate` opens;
  - bare:      `for b in batches: session.run(None, {name: b})` on a fresh
    onnxruntime.InferenceSession with the same providers, timed the same way,
and prints the median images/s of each and their ratio. Exit 1 if a ratio is
below --min-ratio (default 0.9). Torch-free, like the validator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import onnxruntime as ort

from edgekd.validation import open_runtimes
from edgekd.validation.bundle import is_engine, load_bundle, select_formats
from edgekd.validation.data import load_eval_data
from edgekd.validation.metrics import TimingBudget, make_batches, run_format


def bare_throughput(session: ort.InferenceSession, batches: list, seconds: float) -> float:
    """Whole passes of a plain session.run loop until `seconds` of loop time."""
    name = session.get_inputs()[0].name
    for b in {len(b): b for b in batches}.values():  # warm up every batch shape, as the validator does
        session.run(None, {name: b})
    images, spent = 0, 0.0
    while spent < seconds or images == 0:
        start = time.perf_counter()
        for b in batches:
            session.run(None, {name: b})
        spent += time.perf_counter() - start
        images += sum(len(b) for b in batches)
    return images / spent


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("bundle", nargs="?", type=Path, default=None, help="bundle folder (default: newest under export/)")
    p.add_argument("--formats", default=None, help="comma-separated ONNX formats (default: all ONNX files)")
    p.add_argument("--data", default=None, help="as edgekd validate --data (default: the run's val split)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--seconds", type=float, default=1.0, help="loop time per measurement")
    p.add_argument("--min-ratio", type=float, default=0.9)
    args = p.parse_args()

    bundle = load_bundle(args.bundle)
    formats = [f for f in select_formats(bundle, args.formats.split(",") if args.formats else None, "onnxruntime", True)
               if not is_engine(f)]
    with open_runtimes(bundle, formats, None) as runtimes:
        data = load_eval_data(args.data, bundle)
        batches = make_batches(data.inputs, args.batch)
        budget = TimingBudget(throughput_seconds=args.seconds)
        print(f"{data.n} images ({data.spec}), batch {args.batch}, {args.rounds} rounds of {args.seconds:.1f} s each; "
              f"onnxruntime {ort.__version__} {runtimes[formats[0]].providers}")
        print(f"{'format':<8} {'validator img/s':>16} {'bare run img/s':>16} {'ratio':>7}")
        worst = float("inf")
        for fmt in formats:
            bare = ort.InferenceSession(str(bundle.file(fmt)), providers=runtimes[fmt].providers)
            ours, theirs = [], []
            for i in range(args.rounds):
                # Alternate who goes first, so a trend in machine load does not favour either side.
                for side in ("ours", "bare") if i % 2 == 0 else ("bare", "ours"):
                    if side == "ours":
                        ours.append(run_format(runtimes[fmt], data.inputs, args.batch, budget).throughput)
                    else:
                        theirs.append(bare_throughput(bare, batches, args.seconds))
            v, b = statistics.median(ours), statistics.median(theirs)
            worst = min(worst, v / b)
            print(f"{fmt:<8} {v:>16.0f} {b:>16.0f} {v / b:>7.3f}")
    print(f"lowest ratio {worst:.3f} (required >= {args.min_ratio})")
    return 0 if worst >= args.min_ratio else 1


if __name__ == "__main__":
    sys.exit(main())
