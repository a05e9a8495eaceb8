"""How an INT8 search reads: what was tried (Candidate), how each file's search ended
(FlavourSearch) and the whole (SearchOutcome), each with its log lines, its table row and its
record in manifest.json's int8_search; and the lines run_search logs as it goes.

Which candidate is chosen is decided here too, from the records: the fastest passing one
(speed only decides among those; a failing one records null), passing candidates within
SPEED_TIE of the fastest counting as tied.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from edgekd.deploy.int8 import Int8Flavour, Int8Result, Int8Settings
from edgekd.deploy.int8_search.judge import (SPEED_BATCH, SPEED_MAX_RUNS, SPEED_MIN_S, SPEED_RUNS, Judgement,
                                             Reference)
from edgekd.deploy.int8_search.settings import SearchPlan
from edgekd.files import finite_or_none
from edgekd.text import pct

# FlavourSearch.stopped when nothing was tried: an INT8 file is judged against the FP32 file, and
# when that one fails the gate (max_ece) no INT8 file can be expected to pass it.
FP32_FAILS = "fp32_fails_gate"
# Passing candidates this close to the fastest count as equally fast (timing noise on a shared
# machine is a few percent): the one with fewer float nodes, then the one tried first, wins.
SPEED_TIE = 0.05
# Below this share of the FP32 file's images/s, the search's log says INT8 does not pay off. Under
# 1.0 because the two files are timed apart, each once: timings on a shared CPU wander by ~10%.
SLOWER_THAN_FP32 = 0.9


@dataclass
class Candidate:
    index: int
    stage: str  # "settings", "sensitivity" or "fallback"
    settings: Int8Settings
    float_nodes: list[str]
    started_s: float  # since the search began
    seconds: float = 0.0
    judgement: Judgement | None = None
    images_per_s: float | None = None
    error: str | None = None
    result: Int8Result | None = field(default=None, repr=False)
    path: Path | None = None  # the file, while it is the best passing one

    @property
    def passed(self) -> bool:
        return self.error is None and self.judgement is not None and self.judgement.passed

    @property
    def kl(self) -> float:
        figures = self.judgement.figures if self.judgement else None
        return figures["kl"] if figures else math.inf

    @property
    def shortfall(self) -> float:
        return self.judgement.shortfall if self.judgement else math.inf

    def describe(self) -> str:
        s = self.settings
        weights = "per-channel" if s.per_channel else "per-tensor"
        shown = ", ".join(self.float_nodes[-2:])  # the latest: the one this candidate added
        floats = (f", {len(self.float_nodes)} in float ({'..., ' if len(self.float_nodes) > 2 else ''}{shown})"
                  if self.float_nodes else "")
        return f"{s.method} {weights}{floats}"

    def line(self) -> str:
        if self.error is not None:
            return f"  #{self.index} {self.describe()}: failed ({self.error})"
        j = self.judgement
        if j.figures is None:
            return f"  #{self.index} {self.describe()}: NaN or infinite logits"
        f = j.figures
        verdict = f"PASS, {self.images_per_s:.0f} img/s" if self.passed else f"fail: {j.failed_text()}"
        return (f"  #{self.index} {self.describe()}: acc {pct(f['accuracy'])} ECE {pct(f['ece'])} agree "
                f"{pct(f['agreement'])} ECE drift {pct(f['ece_drift'])}: {verdict}")

    def record(self) -> dict:
        j = self.judgement
        figures = None if j is None or j.figures is None else {k: finite_or_none(v) for k, v in j.figures.items()}
        return {"index": self.index, "stage": self.stage, "method": self.settings.method,
                "per_channel": self.settings.per_channel, "float_nodes": list(self.float_nodes),
                "metrics": figures,
                "passed": self.passed, "failed_checks": None if j is None else
                [c.as_dict() for c in j.checks if c.status == "fail"],
                "images_per_s": self.images_per_s, "seconds": round(self.seconds, 3),
                "started_s": round(self.started_s, 3), "error": self.error}


@dataclass
class FlavourSearch:
    """One INT8 file's search: every candidate, the sensitivity ranking and the outcome."""

    flavour: Int8Flavour
    candidates: list[Candidate] = field(default_factory=list)
    sensitivity: list[dict] = field(default_factory=list)
    stopped: str = "exhausted"  # "passed", "budget", "exhausted" (nothing left to try) or FP32_FAILS
    seconds: float = 0.0

    @property
    def chosen(self) -> Candidate | None:
        """The fastest passing candidate (within SPEED_TIE: fewest float nodes, then the first tried)."""
        passing = [c for c in self.candidates if c.passed]
        if not passing:
            return None
        fastest = max(c.images_per_s for c in passing)
        tied = [c for c in passing if c.images_per_s >= (1 - SPEED_TIE) * fastest]
        return min(tied, key=lambda c: (len(c.float_nodes), c.index))

    @property
    def best(self) -> Candidate | None:
        """The chosen one, else the one closest to passing (then the smallest KL)."""
        judged = [c for c in self.candidates if c.judgement is not None]
        return self.chosen or (min(judged, key=lambda c: (c.shortfall, c.kl)) if judged else None)

    def record(self) -> dict:
        chosen = self.chosen
        return {"passed": chosen is not None, "chosen": None if chosen is None else chosen.index,
                "stopped": self.stopped, "seconds": round(self.seconds, 3),
                "candidates": [c.record() for c in self.candidates], "sensitivity": self.sensitivity}

    def failure(self) -> str:
        """One line: why nothing passed, with the best candidate's figures."""
        if self.stopped == FP32_FAILS:
            return f"not searched: the FP32 file itself fails the gate, so no {self.flavour.what} file can pass"
        if not self.candidates and self.stopped == "budget":
            return (f"the budget ran out before any {self.flavour.what} candidate was tried (preparing and timing "
                    "the FP32 file count too); raise --search-budget")
        best = self.best
        why = {"budget": "within the budget", "exhausted": "among the settings and float fallbacks tried"}
        head = f"no {self.flavour.what} candidate passes the gate {why.get(self.stopped, '')} ({len(self.candidates)} tried)"
        if best is None or best.judgement is None or best.judgement.figures is None:
            return head
        return f"{head}; best: #{best.index} {best.describe()}: {best.judgement.failed_text()}"


@dataclass
class SearchOutcome:
    plan: SearchPlan
    reference: Reference
    flavours: dict[str, FlavourSearch]  # by file name
    seconds: float
    fp32: Judgement  # the FP32 file against itself: only max_ece can fail, and then INT8 has to do better

    @property
    def passed(self) -> bool:
        return all(f.chosen is not None for f in self.flavours.values())

    @property
    def failed_files(self) -> list[str]:
        return [name for name, f in self.flavours.items() if f.chosen is None]

    def failure(self) -> str:
        """One short line: what failed (the details are in table() and the manifest)."""
        if not self.fp32.passed:
            return (f"model_fp32.onnx itself fails the gate on the {self.plan.data.split} split "
                    f"({self.fp32.failed_text()}), so nothing was searched")
        return f"no candidate passes the gate for {' or '.join(self.failed_files)}"

    def table(self) -> list[str]:
        """Per INT8 file: what was tried, how it ended, and the chosen or best candidate."""
        rows = [("file", "tried", "ended", "chosen or best candidate")]
        for name, f in self.flavours.items():
            pick = f.chosen
            if pick is not None:
                what = f"#{pick.index} {pick.describe()}: passes, {pick.images_per_s:.0f} img/s"
            else:
                what = f.failure().split("; best: ", 1)[-1] if f.candidates else f.failure()
            rows.append((name, str(len(f.candidates)), f.stopped, what))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        return [f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:<{widths[2]}}  {d}" for a, b, c, d in rows]

    def record(self) -> dict:
        """manifest.json's int8_search (export/README.md)."""
        ref = self.reference
        return {
            "budget_s": self.plan.settings.budget_s, "seconds": round(self.seconds, 3), "data": self.plan.data.record(),
            "gate": dict(self.plan.settings.thresholds), "temperature": self.plan.temperature,
            "reference": {"file": "model_fp32.onnx", "accuracy": ref.metrics["accuracy"], "ece": ref.metrics["ece"],
                          "images_per_s": ref.images_per_s, "passes_gate": self.fp32.passed},
            "speed": {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "batch": SPEED_BATCH,
                      "timed_batches": f"{SPEED_RUNS}..{SPEED_MAX_RUNS}, at least {SPEED_MIN_S:g} s",
                      "statistic": "median"},
            "files": {name: f.record() for name, f in self.flavours.items()},
        }


def opening_line(plan: SearchPlan, fp32: Path, ref: Reference) -> str:
    data = plan.data
    return (f"INT8 search: up to {plan.settings.budget_s:g} s, judged on {data.note} ({len(data.labels)} images) "
            f"against {fp32.name} (acc {pct(ref.metrics['accuracy'])}, ECE {pct(ref.metrics['ece'])}, "
            f"{ref.images_per_s:.0f} img/s); gate: "
            + ", ".join(f"{k} {v:g}" for k, v in plan.settings.thresholds.items()))


def fp32_fails_line(fp32: Path, judged: Judgement) -> str:
    return f"  {fp32.name} itself fails the gate on these images ({judged.failed_text()}): nothing to search"


def sensitivity_line(found: FlavourSearch) -> str | None:
    """The nodes most harmful in INT8 (None when no sensitivity was measured)."""
    if not found.sensitivity:
        return None
    ranked = sorted((s for s in found.sensitivity if (s["kl_gain"] or 0) > 0), key=lambda s: -s["kl_gain"])
    return (f"  sensitivity of {len(found.sensitivity)} nodes (each alone in float); most harmful in INT8: "
            + (", ".join(f"{s['node']} (KL {s['kl'] + s['kl_gain']:.3g} -> {s['kl']:.3g})" for s in ranked[:3])
               or "none (no single node in float brings the output closer to FP32)"))


def outcome_lines(name: str, found: FlavourSearch, ref: Reference, fp32: Path) -> list[str]:
    """How one file's search ended, and a note when the chosen file is slower than FP32."""
    chosen = found.chosen
    if chosen is None:
        return [f"  {name}: {found.failure()}"]
    lines = [f"  {name}: #{chosen.index} {chosen.describe()}, {chosen.images_per_s:.0f} img/s "
             f"({chosen.images_per_s / ref.images_per_s:.2f}x FP32)"]
    if not found.flavour.tensorrt and ref.images_per_s and chosen.images_per_s < SLOWER_THAN_FP32 * ref.images_per_s:
        # It passes, so it is written; but a user choosing a file for speed should know. Not for
        # the TensorRT file, which is not meant for ONNX Runtime's CPU provider anyway.
        lines.append(f"  note: {name} is slower than {fp32.name} on this machine (ONNX Runtime CPU, batch "
                     f"{SPEED_BATCH}, {chosen.images_per_s / ref.images_per_s:.2f}x); INT8 does not pay off for this "
                     f"model here: serve the FP32 file unless its size decides")
    return lines
