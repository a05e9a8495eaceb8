"""Shared by the crash-safety tests: a run's results without its wall-clock fields."""

import json
from pathlib import Path

TIMING = {"seconds", "eval_seconds", "images_per_s", "train_seconds", "run"}


def canonical(run: Path) -> tuple[str, str]:
    """summary.json and metrics.jsonl as canonical JSON text, to compare byte for byte."""
    summary = {k: v for k, v in json.loads((run / "summary.json").read_text()).items() if k not in TIMING}
    lines = [{k: v for k, v in json.loads(x).items() if k not in TIMING}
             for x in (run / "metrics.jsonl").read_text().splitlines()]
    return json.dumps(summary, sort_keys=True), json.dumps(lines, sort_keys=True)
