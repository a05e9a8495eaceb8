"""The pre-registered grid-point rule (studies/selection.py), checked against hand-worked cases."""

import json

import pytest

from edgekd.errors import EdgeKDError
from studies.selection import main, select


def _summary(points):
    """points: {label: (accuracy, ece, nll)} -> a comparison.json with those seed means."""
    return {"summary": {
        label: {"student": {"accuracy": {"mean": a}, "ece": {"mean": e}, "nll": {"mean": n}}}
        for label, (a, e, n) in points.items()}}


def test_lowest_ece_within_the_accuracy_window_per_method():
    cmp = _summary({
        "dml:temperature=4": (0.600, 0.050, 1.10),
        "dml:temperature=8": (0.592, 0.030, 1.12),   # 0.8 point below the best: eligible, lowest ECE
        "dml:kl_weight=2": (0.585, 0.010, 1.00),     # 1.5 points below: not eligible despite the lowest ECE
        "bdkd:temperature=4": (0.610, 0.040, 1.00),
        "bdkd:temperature=8": (0.605, 0.040, 0.90),  # same ECE: the lower NLL wins the tie
        "ce+ts": (0.70, 0.001, 0.5),                 # post-hoc rows are not grid points
    })
    assert select(cmp, 0.01) == {"dml": "dml:temperature=8", "bdkd": "bdkd:temperature=8"}
    # With no window only each method's most accurate point is eligible.
    assert select(cmp, 0.0) == {"dml": "dml:temperature=4", "bdkd": "bdkd:temperature=4"}


def test_a_point_exactly_at_the_window_edge_is_eligible():
    cmp = _summary({"dml:a": (0.63, 0.05, 1.0), "dml:b": (0.62, 0.04, 1.0)})
    assert select(cmp, 0.01) == {"dml": "dml:b"}


def test_bad_window_and_bad_file_are_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(EdgeKDError, match="fraction"):
        select(_summary({"dml": (0.5, 0.1, 1.0)}), 1.0)
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(_summary({"dml:a": (0.6, 0.05, 1.0), "dml:b": (0.6, 0.04, 1.0)})))
    assert main([str(path)]) == 0
    assert capsys.readouterr().out == "dml: dml:b\n"
    path.write_text("{not json")
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a readable comparison.json" in err
    path.write_text(json.dumps(_summary({"dml:a": (0.6, 0.05, 1.0)})))
    assert main([str(path), "--within", "-0.5"]) == 2
    assert "fraction" in capsys.readouterr().err


@pytest.mark.parametrize("content, problem", [
    ([], "expected an object with a 'summary' object, got list"),
    ({"runs": []}, "expected an object with a 'summary' object, got an object without 'summary'"),
    ({"summary": {"a": 3}}, "summary['a'].student.accuracy.mean is not a finite number"),
    ({"summary": {"dml:a": {"student": {"accuracy": {"mean": 0.6}, "ece": {"mean": "low"}, "nll": {"mean": 1}}}}},
     "summary['dml:a'].student.ece.mean is not a finite number"),
    ({"summary": {}}, "its summary has no trained variant"),
])
def test_valid_json_of_the_wrong_shape_is_one_line_exit_2(tmp_path, capsys, content, problem):
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(content))
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"edgekd: error: {path} is not a readable comparison.json ({problem})\n"
