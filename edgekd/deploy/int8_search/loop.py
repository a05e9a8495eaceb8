"""The search loop: per INT8 flavour, candidates tried in order until one passes the gate or
the budget runs out.

1. settings: calibration method (export_defaults.CALIB_METHODS) x per-channel or per-tensor
   weights, the export's own settings first (the file plain export writes);
2. if none passes: per-node sensitivity, measured on data: from the best of them, each
   node of FALLBACK_OPS alone kept in float (nodes_to_exclude: no QDQ around it), ranked
   by how much that lowers the output KL divergence from the FP32 file;
3. greedy fallback: the most harmful nodes to float, one more per candidate, until the
   gate passes (at most MAX_FLOAT_FRACTION of them: beyond that it is not an INT8 file).
   Nodes already in float (Int8Settings.keep_first_last_fp32's first and last layers) are
   not in that pool.

Bounded: a candidate starts only while the budget lasts (the one running finishes), and
the flavours share it; preparing the FP32 file and timing it count too. What is logged and
recorded is worded in report.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgekd.deploy.int8 import (WEIGHTED_OPS, Int8Flavour, Int8Settings, first_and_last_layers, prepare,
                                quantize_prepared)
from edgekd.deploy.int8_search import report
from edgekd.deploy.int8_search.judge import Reference, judge, measure_speed
from edgekd.deploy.int8_search.report import FP32_FAILS, Candidate, FlavourSearch, SearchOutcome
from edgekd.deploy.int8_search.settings import SearchPlan
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.temperature import scaled
from edgekd.errors import first_line
from edgekd.export_defaults import CALIB_METHODS
from edgekd.files import finite_or_none

# Nodes whose sensitivity is measured and that may fall back to float: those with weights
# first, then the element-wise and pooling ops ONNX Runtime quantizes (squeeze-excite's and
# hard-swish's Mul, residual Add). Left out: data movement (Reshape, MaxPool, ...), which only
# passes ranges on, and ops ONNX Runtime never quantizes (HardSigmoid, ReduceMean, ...).
FALLBACK_OPS = (*WEIGHTED_OPS, "Add", "Mul", "Sigmoid", "GlobalAveragePool", "AveragePool", "Softmax")
MAX_FLOAT_FRACTION = 0.5


def sensitivity_entry(node: str, base: Candidate, c: Candidate) -> dict:
    """One node's sensitivity: the output's KL from FP32 with `node` alone in float (candidate c), and
    how much lower than the base's. None where either is unknown: c or the base failed, or gave NaN
    or infinite logits (no KL; and strict JSON has no Infinity)."""
    kl, base_kl = finite_or_none(c.kl), finite_or_none(base.kl)
    return {"node": node, "kl": kl, "kl_gain": None if kl is None or base_kl is None else base_kl - kl,
            "candidate": c.index}


def fallback_pool(model: onnx.ModelProto, exclude: list[str], keep_first_last_fp32: bool = False) -> list[str]:
    """Node names that may fall back to float, weighted nodes first, each group in graph order. Left
    out: `exclude` (already in float) and, with keep_first_last_fp32, the first and last layers
    (quantize_prepared keeps those in float anyway: a candidate for them would change nothing)."""
    if keep_first_last_fp32:
        exclude = [*exclude, *first_and_last_layers(model)]
    named = [n for n in model.graph.node if n.name and n.op_type in FALLBACK_OPS and n.name not in exclude]
    return [n.name for n in named if n.op_type in WEIGHTED_OPS] + [n.name for n in named if n.op_type not in WEIGHTED_OPS]


@dataclass(frozen=True)
class SearchInputs:
    """What every flavour's search starts from, made once by run_search."""

    plan: SearchPlan
    prepared: Path  # the FP32 file after int8.prepare
    calib: np.ndarray  # the calibration images
    # One calibration cache file per method, shared by the flavours: the calibration is the same.
    caches: dict[str, Path]
    reference: Reference
    workdir: Path  # where candidates are written
    clock: Callable[[], float]  # seconds since the search began


class Int8Search:
    """The search for one flavour, until `deadline` (on inputs.clock); `on_candidate` sees each
    candidate once it is judged."""

    def __init__(self, flavour: Int8Flavour, inputs: SearchInputs, deadline: float,
                 on_candidate: Callable[[Candidate], Any] = lambda c: None):
        self.flavour, self.inputs, self.deadline, self.on_candidate = flavour, inputs, deadline, on_candidate
        self.clock = inputs.clock
        self.out = FlavourSearch(flavour)

    def out_of_time(self) -> bool:
        return self.clock() >= self.deadline

    def run(self) -> FlavourSearch:
        start = self.clock()
        stopped = self._search()
        chosen = self.out.chosen
        # A settings candidate may pass and the budget run out while faster ones are tried: it passed.
        self.out.stopped = "passed" if chosen is not None else stopped
        self.out.seconds = self.clock() - start
        for c in self.out.candidates:
            if c.path is not None and c is not chosen:
                c.path.unlink(missing_ok=True)
                c.path = None
        return self.out

    def _search(self) -> str:
        for s in self._settings_grid():
            if self.out_of_time():
                return "budget"
            self._try("settings", s, [])
        if self.out.chosen is not None:
            return "passed"
        base = self.out.best
        if base is None:  # every setting failed to quantize
            return "exhausted"
        return self._fallback(base)

    def _settings_grid(self) -> list[Int8Settings]:
        """The export's own settings first (what plain export would write), then the others."""
        base = self.inputs.plan.settings.base
        first = (base.method, base.per_channel)
        rest = [(m, pc) for m in CALIB_METHODS for pc in (True, False) if (m, pc) != first]
        return [replace(base, method=m, per_channel=pc) for m, pc in [first, *rest]]

    def _fallback(self, base: Candidate) -> str:
        pool = fallback_pool(onnx.load(str(self.inputs.prepared)), base.float_nodes, base.settings.keep_first_last_fp32)
        cap = max(1, int(MAX_FLOAT_FRACTION * len(pool)))
        for node in pool:  # sensitivity: each node alone kept in float
            if self.out_of_time():
                return "budget"
            c = self._try("sensitivity", base.settings, [*base.float_nodes, node])
            self.out.sensitivity.append(sensitivity_entry(node, base, c))
            if c.passed:
                return "passed"
        harmful = sorted((s for s in self.out.sensitivity if s["kl_gain"] is not None and s["kl_gain"] > 0),
                         key=lambda s: -s["kl_gain"])
        floats = list(base.float_nodes)
        for step, s in enumerate(harmful[:cap]):
            floats.append(s["node"])
            if step == 0:
                continue  # measured alone during sensitivity, and it failed
            if self.out_of_time():
                return "budget"
            if self._try("fallback", base.settings, list(floats)).passed:
                return "passed"
        return "exhausted"

    def _try(self, stage: str, s: Int8Settings, float_nodes: list[str]) -> Candidate:
        c = Candidate(len(self.out.candidates), stage, s, float_nodes, started_s=self.clock())
        given, plan = self.inputs, self.inputs.plan
        path = given.workdir / f"{self.flavour.precision}-{c.index}.onnx"
        try:
            c.result = quantize_prepared(given.prepared, path, given.calib, s, self.flavour, given.caches[s.method],
                                         float_nodes)
            logits = scaled(onnxruntime_logits(path, plan.data.images), plan.temperature)
            c.judgement = judge(logits, given.reference, plan.settings.thresholds)
            if c.judgement.passed:  # speed only chooses among passing files: the others are not timed
                c.images_per_s = measure_speed(path, plan.data.images)
        except Exception as e:  # noqa: BLE001 - one candidate the quantizer or ONNX Runtime refuses: record it, go on
            c.error = first_line(e, 200)
        c.seconds = self.clock() - c.started_s
        self.out.candidates.append(c)
        if c.passed:  # kept until the end: which one is chosen depends on those still to come
            c.path = path
        else:  # a search may try hundreds of files
            path.unlink(missing_ok=True)
        self.on_candidate(c)
        return c


def run_search(plan: SearchPlan, fp32: Path, calib: np.ndarray, flavours: dict[str, Int8Flavour], workdir: Path,
               log: Callable[[str], Any] = print,
               on_candidate: Callable[[Candidate, float], Any] = lambda c, elapsed: None, timer: Callable[[], float] = time.perf_counter) -> SearchOutcome:
    """Search every flavour (file name -> flavour) within the plan's budget, the time left shared
    evenly by the flavours still to search. Each flavour's chosen file is left in `workdir`
    (FlavourSearch.chosen.path). `timer`: the seconds every budget decision reads (a test's
    own clock makes them independent of how fast the machine is)."""
    began = timer()

    def clock() -> float:
        return timer() - began

    prepared = workdir / "prepared.onnx"
    prepare(fp32, prepared)
    data, budget_s = plan.data, plan.settings.budget_s
    ref = Reference.of(scaled(onnxruntime_logits(fp32, data.images), plan.temperature), data.labels,
                       measure_speed(fp32, data.images))
    log(report.opening_line(plan, fp32, ref))
    fp32_judged = judge(ref.logits, ref, plan.settings.thresholds)
    if not fp32_judged.passed:
        log(report.fp32_fails_line(fp32, fp32_judged))
        flavour_searches = {name: FlavourSearch(flavour, stopped=FP32_FAILS) for name, flavour in flavours.items()}
        return SearchOutcome(plan, ref, flavour_searches, clock(), fp32_judged)
    inputs = SearchInputs(plan, prepared, calib, {m: workdir / f"ranges-{m}.json" for m in CALIB_METHODS}, ref,
                          workdir, clock)
    results: dict[str, FlavourSearch] = {}
    for i, (name, flavour) in enumerate(flavours.items()):
        deadline = clock() + max(0.0, budget_s - clock()) / (len(flavours) - i)

        def candidate_done(c: Candidate) -> None:
            log(c.line())  # every candidate, once: the final error and the manifest name them by number
            on_candidate(c, clock())

        log(f"{name}:")
        found = results[name] = Int8Search(flavour, inputs, deadline, candidate_done).run()
        sensitivity = report.sensitivity_line(found)
        if sensitivity is not None:
            log(sensitivity)
        for line in report.outcome_lines(name, found, ref, fp32):
            log(line)
    return SearchOutcome(plan, ref, results, clock(), fp32_judged)
