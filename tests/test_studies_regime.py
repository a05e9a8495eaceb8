"""studies/regime.py: the regime of a comparison's ce rows, added to a folder `edgekd compare` wrote
(from prediction files, no training)."""

import json

import numpy as np
import pytest
from test_compare_runs import QUICK, SPLITS, _write_predictions

from edgekd.compare import parse_variants, run_all
from studies import regime


def _compare(out, methods, trained):
    _write_predictions(out, trained, [0, 1, 2], SPLITS)
    return run_all(QUICK, parse_variants(methods), [0, 1, 2], SPLITS, out, log=lambda s: None,
                   eval_split="test", replicates=100)


def test_the_regime_from_the_ce_rows_alone(tmp_path, capsys):
    out = tmp_path / "cmp"
    report = _compare(out, ["ce", "ce+ts", "bdkd"], ["ce", "bdkd"])
    plain_md = (out / "comparison.md").read_text()
    assert regime.main([str(out)]) == 0 and "regime of 3 ce runs" in capsys.readouterr().out
    doc = json.loads((out / "comparison.json").read_text())
    g = doc["regime"]
    ce = [r for r in report["runs"] if r["method"] == "ce"]
    assert g["seeds"] == [0, 1, 2] and g["params_ratio"] == 1000 / 16000
    assert g["accuracy_gap"]["mean"] == pytest.approx(
        np.mean([r["teacher"]["accuracy"] - r["student"]["accuracy"] for r in ce]))
    assert g["student_ece"]["mean"] == pytest.approx(np.mean([r["student"]["ece"] for r in ce]))
    assert g["train_seconds_max"] == 62.0 and g["train_seconds_median"] == 61.0
    # Everything compare wrote is kept as it was; the table sits before the paired differences.
    assert {k: v for k, v in doc.items() if k != "regime"} == json.loads(json.dumps(report))
    md = (out / "comparison.md").read_text()
    assert "1/16.0 of the teacher's" in md and "| one run's training | longest 1.0 min, median 1.0 min |" in md
    assert md.index("### teacher") < md.index("### the regime (ce runs") < md.index("### vs ce (students)")
    assert md.replace("\n" + "\n".join(regime.markdown(doc)), "") == plain_md
    # Run again: the same files.
    before = (out / "comparison.json").read_bytes(), md
    assert regime.main([str(out)]) == 0
    assert ((out / "comparison.json").read_bytes(), (out / "comparison.md").read_text()) == before


def test_a_comparison_without_ce_rows_is_one_line(tmp_path, capsys):
    out = tmp_path / "cmp"
    _compare(out, ["dml", "bdkd"], ["dml", "bdkd"])
    before = (out / "comparison.json").read_bytes()
    assert regime.main([str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no `ce` rows" in err[0]
    assert (out / "comparison.json").read_bytes() == before
    assert regime.main([str(tmp_path / "none")]) == 2 and "is not a readable comparison.json" in capsys.readouterr().err
