"""Pass/fail: thresholds from the flags, else the manifest's gate (the recipe's validate: section).

One check per (format, threshold that is set). A check whose value cannot be
measured in this run (agreement without the FP32 file, drift without a reference)
is reported as SKIP and neither passes nor fails the gate.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekd.text import pct

# threshold key (as in manifest["gate"] and the flags) -> (metric in the per-format results, comparison)
CHECKS = {
    "max_ece": ("ece", "<="),
    "max_acc_drop": ("acc_drop", "<="),
    "min_agreement": ("agreement", ">="),
    "max_ece_drift": ("ece_drift", "<="),
    # The decisions a device makes (against the FP32 ONNX file on the same images): no class quietly
    # broken, and the same accept/reject decisions at the confidence threshold `threshold`.
    "max_class_acc_drop": ("class_acc_drop", "<="),
    "min_threshold_agreement": ("threshold_agreement", ">="),
}
# Not a check: the confidence at and above which a device acts (min_threshold_agreement's tau).
THRESHOLD = "threshold"


@dataclass
class Check:
    format: str
    metric: str
    value: float | None
    threshold: float
    op: str
    status: str  # "pass", "fail" or "skip"
    detail: str | None = None  # e.g. which class the worst class drop is

    def line(self, width: int) -> str:
        note = " (not measurable in this run)" if self.status == "skip" else (f" ({self.detail})" if self.detail else "")
        return f"{self.status.upper():4} {self.format:<{width}}  {self.metric} {pct(self.value)} {self.op} {pct(self.threshold)}{note}"

    def as_dict(self) -> dict:
        return asdict(self)


def resolve_thresholds(flags: dict, manifest_gate: dict) -> dict[str, float | None]:
    """Flag if given, else the manifest's value, else None (not checked); `threshold` too."""
    return {k: flags.get(k) if flags.get(k) is not None else manifest_gate.get(k) for k in (*CHECKS, THRESHOLD)}


def threshold_problem(thresholds: dict) -> str | None:
    """Why these thresholds cannot be checked as a whole (None: they can): an agreement of decisions
    at a confidence threshold needs the threshold, which is a confidence in (0, 1)."""
    tau = thresholds.get(THRESHOLD)
    if tau is not None and (isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0 < tau < 1):
        return f"threshold must be a confidence in (0, 1), got {tau!r}"
    if thresholds.get("min_threshold_agreement") is not None and tau is None:
        return ("min_threshold_agreement is the share of the same accept/reject decisions at a confidence "
                "threshold: set threshold too (e.g. 0.9)")
    return None


# Figures are differences of fractions of images (k/n): a drop of exactly 10 of 2,000 images comes
# out of float arithmetic as 0.0050000000000000044. A value this close to its limit is at it.
TOLERANCE = 1e-9


def within(value: float, limit: float, op: str) -> bool:
    return value <= limit + TOLERANCE if op == "<=" else value >= limit - TOLERANCE


def evaluate(results: dict[str, dict], thresholds: dict[str, float | None]) -> list[Check]:
    checks = []
    for fmt, r in results.items():
        for key, (metric, op) in CHECKS.items():
            limit = thresholds.get(key)
            if limit is None:
                continue
            value = r.get(metric)
            if value is None:
                status = "skip"
            else:
                status = "pass" if within(value, limit, op) else "fail"
            detail = None
            if metric == "class_acc_drop" and r.get("class_acc_drop_class") is not None:
                detail = f"class {r.get('class_acc_drop_name', r['class_acc_drop_class'])}"
            checks.append(Check(fmt, metric, value, limit, op, status, detail))
    return checks


def passed(checks: list[Check]) -> bool:
    return all(c.status != "fail" for c in checks)


def report_lines(checks: list[Check]) -> list[str]:
    """One line per check, then the verdict."""
    width = max((len(c.format) for c in checks), default=0)
    lines = [c.line(width) for c in checks]
    failed = sum(c.status == "fail" for c in checks)
    skipped = sum(c.status == "skip" for c in checks)
    judged = len(checks) - skipped
    note = f"; {skipped} skipped" if skipped else ""
    if not checks:
        lines.append("VERDICT: PASS (no thresholds set)")
    elif failed:
        lines.append(f"VERDICT: FAIL ({failed} of {judged} checks failed{note})")
    else:
        lines.append(f"VERDICT: PASS ({judged} check{'' if judged == 1 else 's'}{note})")
    return lines
