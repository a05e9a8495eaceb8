"""Crash points for testing crash safety: kill this process at a named moment.

`EDGEKD_KILL_AT=<point>:<n>` makes the n-th arrival at `point` send SIGKILL to
the process itself, which is what a pre-empted job or a power cut looks like.
The reliability tests use it to kill a real `edgekd distill` mid-epoch,
mid-evaluation and mid-checkpoint-write, then resume it. Points:

- `step`: after the n-th optimizer step of this process;
- `eval`: inside the n-th evaluation, after the teacher, before the student;
- `checkpoint`: inside the n-th atomic write of last.pt, after the temporary
  file is written and fsynced, before it is renamed over the previous one.

Unset (always, outside the tests), `hit()` is one dict lookup.
"""

from __future__ import annotations

import os
import signal

_ENV = "EDGEKD_KILL_AT"
_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get(_ENV)
    if not spec:
        return None
    point, _, n = spec.partition(":")
    return point, int(n or 1)


def hit(point: str) -> None:
    target = _target()
    if target is None or target[0] != point:
        return
    _counts[point] = _counts.get(point, 0) + 1
    if _counts[point] == target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
