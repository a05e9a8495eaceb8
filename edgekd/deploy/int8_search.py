"""`edgekd export --int8-search`: per INT8 flavour, the fastest INT8 file that passes the recipe's gate.

Plain export writes one calibration per INT8 flavour and leaves the verdict to
`edgekd validate`. The search tries candidates instead, each an INT8 file quantized
from the bundle's FP32 ONNX file with the same calibration images (quantize_prepared),
and keeps the fastest one that passes the recipe's `validate:` gate, accuracy AND
calibration:

1. settings: calibration method (minmax, entropy, percentile) x per-channel or
   per-tensor weights, the export's own settings first (the file plain export writes);
2. if none passes: per-node sensitivity, measured on data: from the best of them, each
   node of FALLBACK_OPS alone kept in float (nodes_to_exclude: no QDQ around it), ranked
   by how much that lowers the output KL divergence from the FP32 file;
3. greedy fallback: the most harmful nodes to float, one more per candidate, until the
   gate passes (at most MAX_FLOAT_FRACTION of them: beyond that it is not an INT8 file).
   Nodes already in float (Int8Settings.keep_first_last_fp32's first and last layers) are
   not in that pool.

Judged on: the run's tune split, or without one a slice of the training split held apart
from the calibration images (SEARCH_SPLITS). Never val: the bundle's figures are measured
there, and a file chosen on val would overstate them; never test.

Judged how: against the FP32 ONNX file's logits and metrics on the same images, with
edgekd.drift's figures (top-1 agreement, accuracy drop, ECE drift) and the gate's own
checks (edgekd.validation.gate): the same definitions `edgekd validate` applies, here on
the search images instead of val. Speed: images/s in ONNX Runtime on the CPU, the median
of timed batches of SPEED_BATCH (measured, not assumed from the number of float nodes), of
the candidates that pass the gate only (speed only decides among those; a failing one
records null); passing candidates within SPEED_TIE of the fastest count as tied.
model_int8.onnx is meant for TensorRT, but it is timed in ONNX Runtime on the CPU too: the
machine export runs on.

Bounded: a candidate starts only while the budget lasts (the one running finishes), and
the flavours share it; preparing the FP32 file and timing it count too. Everything tried
goes into manifest.json's int8_search.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from edgekd import calibration
from edgekd.deploy.int8 import (WEIGHTED_OPS, Int8Flavour, Int8Result, Int8Settings, first_and_last_layers, prepare,
                                quantize_prepared)
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.temperature import scaled
from edgekd.errors import DataError, ExportError, first_line
from edgekd.files import finite_or_none
from edgekd.runtime import OnnxRuntimeSession
from edgekd.export_defaults import CALIB_METHODS, MAX_SEARCH_BUDGET_S
from edgekd.text import pct
from edgekd.validation import gate
from edgekd.validation.metrics import comparisons

# Where candidates may be judged, in order of preference. Never "val" or "test".
SEARCH_SPLITS = ("tune", "train")
# Without a tune split: at most this many training images held apart from calibration.
TRAIN_SLICE = 2000
# Fewer images cannot resolve a gate of a point or two (one image of 100 is a point).
MIN_SEARCH_IMAGES = 100
METHODS = CALIB_METHODS  # every calibration method edgekd offers
# Nodes whose sensitivity is measured and that may fall back to float: those with weights
# first, then the element-wise and pooling ops ONNX Runtime quantizes (squeeze-excite's and
# hard-swish's Mul, residual Add). Left out: data movement (Reshape, MaxPool, ...), which only
# passes ranges on, and ops ONNX Runtime never quantizes (HardSigmoid, ReduceMean, ...).
FALLBACK_OPS = (*WEIGHTED_OPS, "Add", "Mul", "Sigmoid", "GlobalAveragePool", "AveragePool", "Softmax")
MAX_FLOAT_FRACTION = 0.5
# FlavourSearch.stopped when nothing was tried: an INT8 file is judged against the FP32 file, and
# when that one fails the gate (max_ece) no INT8 file can be expected to pass it.
FP32_FAILS = "fp32_fails_gate"
SPEED_BATCH = 64
SPEED_WARMUP = 2
# Timed batches: at least SPEED_RUNS and SPEED_MIN_S of them (a small model's batch takes a few
# ms, and on a busy machine five of those are noise), at most SPEED_MAX_RUNS.
SPEED_RUNS = 5
SPEED_MIN_S = 0.3
SPEED_MAX_RUNS = 50
# Passing candidates this close to the fastest count as equally fast (timing noise on a shared
# machine is a few percent): the one with fewer float nodes, then the one tried first, wins.
SPEED_TIE = 0.05
# The gate checks that bound accuracy and calibration: the search needs one of each.
ACCURACY_CHECKS = ("max_acc_drop", "min_agreement")
CALIBRATION_CHECKS = ("max_ece_drift", "max_ece")


# ---------------------------------------------------------------- what the search is asked, and on what


def search_thresholds(thresholds: dict[str, float]) -> dict[str, float]:
    """The gate thresholds the search judges with: the set ones of the recipe's validate: section
    (ValidateConfig.thresholds, checked by its schema); one accuracy and one calibration check
    are required."""
    if not any(k in thresholds for k in ACCURACY_CHECKS) or not any(k in thresholds for k in CALIBRATION_CHECKS):
        have = ", ".join(f"{k}={v}" for k, v in thresholds.items()) or "none"
        raise ExportError(
            "--int8-search needs the recipe's gate to bound accuracy (validate.max_acc_drop or "
            "validate.min_agreement) and calibration (validate.max_ece_drift or validate.max_ece); "
            f"the run's recipe sets {have}")
    return thresholds


def check_budget(budget: Any) -> float:
    """The same limits as the recipe's export.search_budget and the --search-budget flag."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= MAX_SEARCH_BUDGET_S:
        raise ExportError(f"--search-budget must be a number of seconds > 0 and <= {MAX_SEARCH_BUDGET_S:g} "
                          f"(a day), got {budget!r}")
    return float(budget)


def search_split(sizes: dict[str, int]) -> str:
    """The split candidates are judged on: tune when the run has one, else train (a slice held
    apart from the calibration images). Never val or test, whatever the sizes."""
    return "tune" if int(sizes.get("tune") or 0) > 0 else "train"


def held_apart(n_train: int, calibration_index: np.ndarray, seed: int, cap: int = TRAIN_SLICE) -> np.ndarray:
    """Training-split indices not used for calibration, at most `cap` of them (a seeded sample)."""
    rest = np.setdiff1d(np.arange(n_train), calibration_index)
    if len(rest) > cap:
        rest = np.sort(np.random.default_rng(seed).choice(rest, size=cap, replace=False))
    return rest


@dataclass
class SearchData:
    """The images candidates are judged on, preprocessed as for eval."""

    split: str  # one of SEARCH_SPLITS
    images: np.ndarray
    labels: np.ndarray
    note: str  # how they were chosen, for the manifest and the log

    def __post_init__(self) -> None:
        if self.split not in SEARCH_SPLITS:  # the rule, enforced where the images enter the search
            raise ExportError(f"the INT8 search judges on the {' or '.join(SEARCH_SPLITS)} split, never on "
                              f"{self.split!r}")
        if len(self.labels) < MIN_SEARCH_IMAGES:
            # A tune split is fixed when training; the held-apart training images are what calibration leaves.
            fix = ("train with a larger tune split (data.tune_fraction or data.tune_size)" if self.split == "tune"
                   else "lower --calib-samples, or train with a tune split (data.tune_fraction or data.tune_size)")
            raise DataError(f"no data to search on: {self.note} gives {len(self.labels)} images, the INT8 search "
                            f"needs at least {MIN_SEARCH_IMAGES}; {fix}")

    def record(self) -> dict:
        return {"split": self.split, "n": int(len(self.labels)), "note": self.note}


# ---------------------------------------------------------------- judging one candidate (numpy only)


@dataclass(frozen=True)
class Reference:
    """The FP32 ONNX file on the search images: what every candidate is compared with."""

    logits: np.ndarray
    labels: np.ndarray
    metrics: dict  # calibration_metrics
    images_per_s: float | None = None

    @classmethod
    def of(cls, logits: np.ndarray, labels: np.ndarray, images_per_s: float | None = None) -> "Reference":
        return cls(logits, labels, calibration.calibration_metrics(logits, labels), images_per_s)


@dataclass
class Judgement:
    figures: dict[str, float] | None  # accuracy, ece, acc_drop, ece_drift, agreement, kl; None: non-finite logits
    checks: list[gate.Check]

    @property
    def passed(self) -> bool:
        return self.figures is not None and gate.passed(self.checks)

    @property
    def shortfall(self) -> float:
        """How far from passing: the summed excess over each failed threshold (0 when it passes)."""
        if self.figures is None:
            return math.inf
        return sum(abs(c.value - c.threshold) for c in self.checks if c.status == "fail")

    def failed_text(self) -> str:
        return ", ".join(f"{c.metric} {pct(c.value)} {'>' if c.op == '<=' else '<'} {pct(c.threshold)}"
                         for c in self.checks if c.status == "fail") or "passes"


def mean_kl(reference_logits: np.ndarray, logits: np.ndarray) -> float:
    """Mean KL(p_reference || p) over images, in nats: how far a candidate's whole output
    distribution moved, confidence included (a finer signal than top-1 for ranking nodes)."""
    ref = calibration.log_softmax(reference_logits.astype(np.float64))
    cand = calibration.log_softmax(logits.astype(np.float64))
    return float(np.mean(np.sum(np.exp(ref) * (ref - cand), axis=1)))


def judge(logits: np.ndarray, ref: Reference, thresholds: dict[str, float]) -> Judgement:
    """The candidate's figures against the FP32 file and the gate's checks on them."""
    if not np.all(np.isfinite(logits)):
        return Judgement(None, [])
    metrics = calibration.calibration_metrics(logits, ref.labels)
    gap = comparisons(metrics, logits, ref.metrics, ref.logits, ref.labels, thresholds.get(gate.THRESHOLD))
    # The decision figures a gate can check (worst class, decisions at a threshold) are judged like the
    # others; the per-class list and the names are for validate's report, not a candidate's record.
    decisions = {k: gap[k] for k in ("class_acc_drop", "threshold_agreement") if gap.get(k) is not None}
    figures = {"accuracy": metrics["accuracy"], "ece": metrics["ece"], "acc_drop": gap["acc_drop"],
               "ece_drift": gap["ece_drift"], "agreement": gap["agreement"], **decisions,
               "kl": mean_kl(ref.logits, logits)}
    return Judgement(figures, gate.evaluate({"candidate": figures}, thresholds))


# Below this share of the FP32 file's images/s, the search's log says INT8 does not pay off. Under
# 1.0 because the two files are timed apart, each once: timings on a shared CPU wander by ~10%.
SLOWER_THAN_FP32 = 0.9


def measure_speed(path: Path, images: np.ndarray) -> float:
    """Images/s of `path` in ONNX Runtime on the CPU (default threads, as `edgekd validate`):
    SPEED_BATCH images a call, the median call of at least SPEED_RUNS and SPEED_MIN_S."""
    batch = np.resize(images, (SPEED_BATCH, *images.shape[1:]))  # repeats images when fewer than a batch
    with OnnxRuntimeSession(path, ["CPUExecutionProvider"]) as session:
        for _ in range(SPEED_WARMUP):
            session.run(batch)
        times: list[float] = []
        while len(times) < SPEED_MAX_RUNS and (len(times) < SPEED_RUNS or sum(times) < SPEED_MIN_S):
            start = time.perf_counter()
            session.run(batch)
            times.append(time.perf_counter() - start)
    return SPEED_BATCH / float(np.median(times))


# ---------------------------------------------------------------- candidates


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


class Int8Search:
    """The search for one flavour. `prepared`: the FP32 file after int8.prepare; `caches`: one
    calibration cache file per method (shared by the flavours: the calibration is the same)."""

    def __init__(self, flavour: Int8Flavour, prepared: Path, calib: np.ndarray, base: Int8Settings,
                 caches: dict[str, Path], data: SearchData, ref: Reference, thresholds: dict[str, float],
                 workdir: Path, clock: Callable[[], float], deadline: float,
                 on_candidate: Callable[[Candidate], Any] = lambda c: None, temperature: float | None = None):
        self.flavour, self.prepared, self.calib, self.base = flavour, prepared, calib, base
        self.caches, self.data, self.ref, self.thresholds = caches, data, ref, thresholds
        self.temperature = temperature
        self.workdir, self.clock, self.deadline, self.on_candidate = workdir, clock, deadline, on_candidate
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
        first = (self.base.method, self.base.per_channel)
        rest = [(m, pc) for m in METHODS for pc in (True, False) if (m, pc) != first]
        return [replace(self.base, method=m, per_channel=pc) for m, pc in [first, *rest]]

    def _fallback(self, base: Candidate) -> str:
        pool = fallback_pool(onnx.load(str(self.prepared)), base.float_nodes, base.settings.keep_first_last_fp32)
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
        path = self.workdir / f"{self.flavour.precision}-{c.index}.onnx"
        try:
            c.result = quantize_prepared(self.prepared, path, self.calib, s, self.flavour, self.caches[s.method],
                                         float_nodes)
            logits = scaled(onnxruntime_logits(path, self.data.images), self.temperature)
            c.judgement = judge(logits, self.ref, self.thresholds)
            if c.judgement.passed:  # speed only chooses among passing files: the others are not timed
                c.images_per_s = measure_speed(path, self.data.images)
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


# ---------------------------------------------------------------- the whole search


@dataclass
class SearchPlan:
    """What the search is asked, fixed (and checked) before the bundle is written."""

    budget_s: float
    thresholds: dict[str, float]
    data: SearchData
    # The bundle's temperature (deploy/temperature.py): every file, FP32 included, is judged as it
    # will ship, its logits divided by it. None: no temperature.
    temperature: float | None = None


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
            "budget_s": self.plan.budget_s, "seconds": round(self.seconds, 3),
            "data": self.plan.data.record(), "gate": dict(self.plan.thresholds), "temperature": self.plan.temperature,
            "reference": {"file": "model_fp32.onnx", "accuracy": ref.metrics["accuracy"], "ece": ref.metrics["ece"],
                          "images_per_s": ref.images_per_s, "passes_gate": self.fp32.passed},
            "speed": {"runtime": "onnxruntime", "provider": "CPUExecutionProvider", "batch": SPEED_BATCH,
                      "timed_batches": f"{SPEED_RUNS}..{SPEED_MAX_RUNS}, at least {SPEED_MIN_S:g} s",
                      "statistic": "median"},
            "files": {name: f.record() for name, f in self.flavours.items()},
        }


def run_search(plan: SearchPlan, fp32: Path, calib: np.ndarray, base: Int8Settings,
               flavours: dict[str, Int8Flavour], workdir: Path, log: Callable[[str], Any] = print,
               on_candidate: Callable[[Candidate, float], Any] = lambda c, elapsed: None,
               timer: Callable[[], float] = time.perf_counter) -> SearchOutcome:
    """Search every flavour (file name -> flavour) within plan.budget_s, the time left shared
    evenly by the flavours still to search. Each flavour's chosen file is left in `workdir`
    (FlavourSearch.chosen.path). `timer`: the seconds every budget decision reads (a test's
    own clock makes them independent of how fast the machine is)."""
    began = timer()

    def clock() -> float:
        return timer() - began

    prepared = workdir / "prepared.onnx"
    prepare(fp32, prepared)
    data = plan.data
    ref = Reference.of(scaled(onnxruntime_logits(fp32, data.images), plan.temperature), data.labels,
                       measure_speed(fp32, data.images))
    log(f"INT8 search: up to {plan.budget_s:g} s, judged on {data.note} ({len(data.labels)} images) against "
        f"{fp32.name} (acc {pct(ref.metrics['accuracy'])}, ECE {pct(ref.metrics['ece'])}, "
        f"{ref.images_per_s:.0f} img/s); gate: " + ", ".join(f"{k} {v:g}" for k, v in plan.thresholds.items()))
    fp32_judged = judge(ref.logits, ref, plan.thresholds)
    if not fp32_judged.passed:
        log(f"  {fp32.name} itself fails the gate on these images ({fp32_judged.failed_text()}): nothing to search")
        flavour_searches = {name: FlavourSearch(flavour, stopped=FP32_FAILS) for name, flavour in flavours.items()}
        return SearchOutcome(plan, ref, flavour_searches, clock(), fp32_judged)
    caches = {m: workdir / f"ranges-{m}.json" for m in METHODS}
    results: dict[str, FlavourSearch] = {}
    for i, (name, flavour) in enumerate(flavours.items()):
        deadline = clock() + max(0.0, plan.budget_s - clock()) / (len(flavours) - i)

        def report(c: Candidate) -> None:
            log(c.line())  # every candidate, once: the final error and the manifest name them by number
            on_candidate(c, clock())

        log(f"{name}:")
        search = Int8Search(flavour, prepared, calib, base, caches, data, ref, plan.thresholds, workdir, clock,
                            deadline, report, plan.temperature)
        found = results[name] = search.run()
        if found.sensitivity:
            ranked = sorted((s for s in found.sensitivity if (s["kl_gain"] or 0) > 0), key=lambda s: -s["kl_gain"])
            log(f"  sensitivity of {len(found.sensitivity)} nodes (each alone in float); most harmful in INT8: "
                + (", ".join(f"{s['node']} (KL {s['kl'] + s['kl_gain']:.3g} -> {s['kl']:.3g})" for s in ranked[:3])
                   or "none (no single node in float brings the output closer to FP32)"))
        chosen = found.chosen
        log(f"  {name}: #{chosen.index} {chosen.describe()}, {chosen.images_per_s:.0f} img/s "
            f"({chosen.images_per_s / ref.images_per_s:.2f}x FP32)" if chosen else f"  {name}: {found.failure()}")
        if (chosen and not flavour.tensorrt and ref.images_per_s
                and chosen.images_per_s < SLOWER_THAN_FP32 * ref.images_per_s):
            # It passes, so it is written; but a user choosing a file for speed should know. Not for
            # the TensorRT file, which is not meant for ONNX Runtime's CPU provider anyway.
            log(f"  note: {name} is slower than {fp32.name} on this machine (ONNX Runtime CPU, batch {SPEED_BATCH}, "
                f"{chosen.images_per_s / ref.images_per_s:.2f}x); INT8 does not pay off for this model here: serve "
                f"the FP32 file unless its size decides")
    return SearchOutcome(plan, ref, results, clock(), fp32_judged)
