"""Decisions and classes in the gate: the worst class's accuracy drop and the same accept/reject
decisions at a confidence threshold, against the FP32 file, in validate and in the INT8 search."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgekd.deploy import int8_search as search
from edgekd.drift import decision_gap
from edgekd.errors import RecipeError
from edgekd.recipe import ValidateConfig, load_recipe
from edgekd.validation import gate

from _cli import edgekd

# 6 images, 3 classes. The reference is right on all; the file breaks class 2 (both its images go to 0).
LABELS = np.array([0, 0, 1, 1, 2, 2])
REFERENCE = np.log(np.array([[.95, .04, .01], [.60, .30, .10], [.05, .92, .03],
                             [.20, .70, .10], [.02, .03, .95], [.10, .10, .80]]))
FILE = np.log(np.array([[.96, .03, .01], [.50, .40, .10], [.05, .93, .02],
                        [.10, .80, .10], [.91, .04, .05], [.50, .10, .40]]))


def test_the_worst_class_and_the_decisions_at_a_threshold():
    g = decision_gap(FILE, REFERENCE, LABELS, threshold=0.9)
    assert g["per_class_accuracy"] == [1.0, 1.0, 0.0]
    assert (g["class_acc_drop"], g["class_acc_drop_class"]) == (1.0, 2)
    # Accepts (confidence >= 0.9): reference images 0, 2, 4; file images 0, 2, 4. Image 4 is accepted by
    # both but as another class: a different decision. Agreement 5/6, each accepts 3/6.
    assert g["threshold_agreement"] == pytest.approx(5 / 6)
    assert g["coverage"] == g["reference_coverage"] == 0.5
    assert "threshold_agreement" not in decision_gap(FILE, REFERENCE, LABELS)
    same = decision_gap(REFERENCE, REFERENCE, LABELS, threshold=0.5)
    assert same["class_acc_drop"] == 0 and same["threshold_agreement"] == 1.0


def test_a_class_absent_from_the_images_is_not_a_drop():
    g = decision_gap(FILE[:4], REFERENCE[:4], LABELS[:4])
    assert g["per_class_accuracy"] == [1.0, 1.0, None] and g["class_acc_drop"] == 0


def test_the_gate_names_the_class_and_needs_its_threshold():
    results = {"int8": {"class_acc_drop": 0.02, "class_acc_drop_class": 3, "class_acc_drop_name": "cat",
                        "threshold_agreement": 0.97}}
    checks = gate.evaluate(results, {"max_class_acc_drop": 0.01, "min_threshold_agreement": 0.99, "threshold": 0.9})
    assert [(c.metric, c.status) for c in checks] == [("class_acc_drop", "fail"), ("threshold_agreement", "fail")]
    assert checks[0].line(4) == "FAIL int8  class_acc_drop 2.00% <= 1.00% (class cat)"
    assert gate.threshold_problem({"min_threshold_agreement": 0.9}).startswith("min_threshold_agreement is the share")
    assert gate.threshold_problem({"threshold": 1.0}) == "threshold must be a confidence in (0, 1), got 1.0"
    assert gate.threshold_problem({"threshold": 0.9, "min_threshold_agreement": 0.9}) is None


def test_the_recipe_keys():
    assert ValidateConfig(threshold=0.9, min_threshold_agreement=0.95).thresholds() == {
        "threshold": 0.9, "min_threshold_agreement": 0.95}
    with pytest.raises(ValueError, match="set threshold too"):
        ValidateConfig(min_threshold_agreement=0.95)
    for bad in ("validate.threshold=1", "validate.threshold=0", "validate.max_class_acc_drop=2"):
        with pytest.raises(RecipeError):
            load_recipe("recipes/quickstart.yaml", [bad])


def test_the_int8_search_judges_candidates_on_them():
    ref = search.Reference.of(REFERENCE, LABELS)
    lax = {"max_acc_drop": 1.0, "max_ece_drift": 1.0}
    assert search.judge(FILE, ref, lax).passed
    broken = search.judge(FILE, ref, {**lax, "max_class_acc_drop": 0.5})
    assert not broken.passed and "class_acc_drop 100.00% > 50.00%" in broken.failed_text()
    decided = search.judge(FILE, ref, {**lax, "threshold": 0.9, "min_threshold_agreement": 0.9})
    assert not decided.passed and decided.figures["threshold_agreement"] == pytest.approx(5 / 6)


@pytest.mark.slow
def test_validate_reports_and_gates_them(quickstart_3ep_bundle, tmp_path):
    res = edgekd("validate", quickstart_3ep_bundle, "--threshold", "0.9", "--min-threshold-agreement", "0.5",
                 "--max-class-acc-drop", "0.5", "--json", tmp_path / "v.json")
    assert res.returncode in (0, 1), res.stderr
    doc = json.loads((tmp_path / "v.json").read_text())
    fp32 = doc["formats"]["fp32"]
    assert fp32["class_acc_drop"] == 0 and fp32["threshold_agreement"] == 1.0
    assert fp32["coverage"] == fp32["reference_coverage"] and len(fp32["per_class_accuracy"]) == 10
    for fmt, r in doc["formats"].items():
        assert r["class_acc_drop_name"] == str(r["class_acc_drop_class"]) and 0 <= r["coverage"] <= 1, fmt
    checked = {(c["format"], c["metric"]) for c in doc["gate"]["checks"]}
    assert ("int8", "class_acc_drop") in checked and ("int8", "threshold_agreement") in checked
    assert doc["gate"]["thresholds"]["threshold"] == 0.9
    header = next(line for line in res.stdout.splitlines() if line.startswith("format "))
    assert "class drop" in header and "decisions" in header and "coverage" in header
    assert any("class_acc_drop" in line and "(class " in line for line in res.stdout.splitlines())


@pytest.mark.parametrize("flags, message", [
    (["--min-threshold-agreement", "0.9"], "min_threshold_agreement is the share of the same accept/reject"),
    (["--threshold", "1"], "--threshold"),
])
def test_bad_decision_flags_are_one_line(quickstart_3ep_bundle, flags, message):
    res = edgekd("validate", quickstart_3ep_bundle, *flags)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
