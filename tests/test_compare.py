"""`edgekd compare`: variants parsing, a real two-method comparison, reuse of finished runs."""

import json
from pathlib import Path

import pytest

from edgekd.compare import parse_variants
from edgekd.errors import RecipeError

import _cli

REPO = Path(__file__).resolve().parents[1]


def test_parse_variants():
    vs = parse_variants(["ce", "bdkd:weighting=soft:temperature=2", "dml:optim.lr=0.1"])
    assert [v.method for v in vs] == ["ce", "bdkd", "dml"]
    assert vs[1].overrides == ("distill.method=bdkd", "distill.weighting=soft", "distill.temperature=2")
    assert vs[2].overrides == ("distill.method=dml", "optim.lr=0.1")
    assert "/" not in vs[1].slug and ":" not in vs[1].slug
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        parse_variants(["bdkd:soft"])
    with pytest.raises(RecipeError, match="twice"):
        parse_variants(["ce", "ce"])


def _compare(out, *extra):
    # 16 px: the 8x8 digits lose nothing, the runs cost a quarter of 32 px.
    return _cli.edgekd("compare", REPO / "recipes/quickstart.yaml", "--methods", "ce,bdkd:weighting=soft", "--seeds",
                       "0,1", "--set", "train.epochs=2", "--set", "data.image_size=16", "--out", out, "--quiet", *extra)


@pytest.mark.slow
def test_compare_end_to_end_and_reuse(tmp_path):
    out = tmp_path / "cmp"
    res = _compare(out)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "comparison.json").read_text())
    assert report["command"].startswith("edgekd compare")
    assert [(r["method"], r["seed"]) for r in report["runs"]] == [
        ("ce", 0), ("ce", 1), ("bdkd:weighting=soft", 0), ("bdkd:weighting=soft", 1)]
    for r in report["runs"]:
        for role in ("teacher", "student"):
            assert {"accuracy", "ece", "nll", "brier"} <= set(r[role])
    # mean over seeds in the summary equals the mean of the runs
    accs = [r["student"]["accuracy"] for r in report["runs"] if r["method"] == "ce"]
    assert report["summary"]["ce"]["student"]["accuracy"]["mean"] == pytest.approx(sum(accs) / 2)
    md = (out / "comparison.md").read_text()
    # Each student row shows its own mean accuracy and 95% CI, as the JSON has them.
    from edgekd.compare.report import format_stat

    for label in ("ce", "bdkd:weighting=soft"):
        acc = report["summary"][label]["student"]["accuracy"]
        assert acc["ci"] is not None and acc["ci"][0] < acc["mean"] < acc["ci"][1]
        assert f"| {label} | {format_stat('accuracy', acc)} |" in md
    assert (out / "reliability_students.png").stat().st_size > 1000
    # A second call reuses every finished run instead of training again.
    res = _compare(out)
    assert res.returncode == 0 and res.stdout.count("reused") == 4


@pytest.mark.slow  # a Python process
def test_compare_bad_variant_fails_before_training(tmp_path):
    res = _cli.edgekd("compare", REPO / "recipes/quickstart.yaml", "--methods", "ce,bdkd:weighting=medium", "--out",
                      tmp_path / "c")
    assert res.returncode == 2 and "distill.weighting" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "c").exists()
