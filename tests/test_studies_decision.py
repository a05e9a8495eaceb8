"""The pre-registered decision, read from real comparison.json files (made by `edgekd compare`
from prediction files, no training): the verdicts are compare's own, the recommendation follows
the plan's rule, the sanity check tells identical runs from different ones, outputs are never
overwritten silently."""

import copy
import json
import shutil

import pytest
from test_compare_runs import QUICK, SPLITS, _write_predictions

from edgekd.compare import parse_variants, predictions, run_all
from studies import regime
from studies.cifar10_distill import decision

BDKD, DML, SANITY = "bdkd:temperature=4", "dml:temperature=8", "bdkd:temperature=8:weighting=forward:teacher_divergence=forward"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("decision")
    rep, abl = root / "report", root / "ablations"
    _write_predictions(rep, ["ce", DML, BDKD], [1, 2, 3], SPLITS)
    run_all(QUICK, parse_variants(["ce", "ce+ts", DML, BDKD]), [1, 2, 3], SPLITS, rep, log=lambda s: None,
            eval_split="test", replicates=100, reference=[DML, "ce+ts"])
    regime.add_regime(rep)
    _write_predictions(abl, [BDKD, DML, f"{BDKD}:weighting=reverse", SANITY], [1, 2, 3], SPLITS)
    for seed in (1, 2, 3):  # the sanity variant's students are DML's, as when the code is right
        shutil.copyfile(predictions.paths(abl, _slug(DML), seed)[0], predictions.paths(abl, _slug(SANITY), seed)[0])
    run_all(QUICK, parse_variants([BDKD, DML, f"{BDKD}:weighting=reverse", SANITY]), [1, 2, 3], SPLITS, abl,
            log=lambda s: None, eval_split="test", replicates=100)
    return root, rep, abl


def _slug(label):
    return parse_variants([label])[0].slug


def _args(root, rep, abl, *more):
    return ["--report", str(rep), "--ablations", str(abl), "--bdkd", BDKD, "--dml", DML, "--ce-ts", "ce+ts",
            "--sanity", SANITY, "--out", str(root / "result"), *more]


def test_decision_files_follow_the_comparisons(folders, capsys):
    root, rep, abl = folders
    assert decision.main(_args(root, rep, abl)) == 0
    doc = json.loads((root / "result.json").read_text())
    report = json.loads((rep / "comparison.json").read_text())
    d = doc["decision"]
    assert doc["report"] == report and doc["ablations"]["reference"] == BDKD
    # The contrasts are compare's own paired tables, not recomputed.
    assert d["h1_bdkd_minus_dml"]["ece"] == report["vs_reference"][BDKD]["metrics"]["ece"]
    assert d["h2_bdkd_minus_ce_ts"]["ece"] == report["vs_more_references"]["ce+ts"][BDKD]["metrics"]["ece"]
    assert d["ce_ts_minus_dml"]["ece"] == report["vs_reference"]["ce+ts"]["metrics"]["ece"]
    assert set(d["ablations_minus_bdkd"]) == {f"{BDKD}:weighting=reverse"}  # DML* and the sanity row are not ablations
    assert d["sanity"]["identical"] and d["sanity"]["seeds"] == [1, 2, 3]
    assert d["h2"] in ("holds: BD-KD's raw student has a lower test ECE than CE+TS",
                       "rejected: CE+TS has a lower test ECE than BD-KD's raw student", "no detectable difference")
    # Regime: the synthetic runs have a 1/16 student and 61-63 s runs; gap and ECE as the ce runs give them.
    cond = {c["key"]: c for c in d["regime"]["conditions"]}
    assert cond["params_ratio"]["holds"] and cond["train_seconds_max"]["measured"] == 63.0
    assert cond["train_seconds_max"]["holds"] and d["regime"]["train_seconds_median"] == 62.0
    assert cond["accuracy_gap"]["measured"] == pytest.approx(report["regime"]["accuracy_gap"]["mean"])
    assert cond["accuracy_gap"]["holds"] == (report["regime"]["accuracy_gap"]["mean"] >= 0.05)
    md = (root / "result.md").read_text()
    assert "identical student log-probabilities" in md and "](result-reliability.png)" in md and "](report/reliability_students.png)" in md
    assert "### vs ce+ts (students)" in md and "## The regime's four conditions" in md and "**" not in md
    assert "#### the regime (ce runs" in md  # the report comparison's own regime table, one level down
    assert (root / "result-reliability.png").read_bytes() == (rep / "reliability_students.png").read_bytes()
    assert "## Notes" not in md
    (root / "note.md").write_text("Seed 3 shared the cores with another job.\n")
    assert decision.main(_args(root, rep, abl, "--overwrite", "--note", str(root / "note.md"))) == 0
    assert "## Notes (written by hand, not derived by this module)\n\nSeed 3 shared the cores" in (root / "result.md").read_text()
    # Never overwritten silently: one line, exit 2, the files as they were.
    before = (root / "result.md").read_bytes()
    capsys.readouterr()
    assert decision.main(_args(root, rep, abl)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "result.json exists; pass --overwrite" in err[0]
    assert (root / "result.md").read_bytes() == before
    assert decision.main(_args(root, rep, abl, "--overwrite")) == 0


def test_the_recommendation_follows_the_plan_rule(folders):
    _, rep, abl = folders
    report, ablations = decision._load(rep), decision._load(abl)

    def with_verdicts(h1, h2, ts):
        doc = copy.deepcopy(report)
        doc["vs_reference"][BDKD]["metrics"]["ece"]["verdict"] = h1
        doc["vs_more_references"]["ce+ts"][BDKD]["metrics"]["ece"]["verdict"] = h2
        doc["vs_reference"]["ce+ts"]["metrics"]["ece"]["verdict"] = ts
        return decision.decide(doc, ablations, BDKD, DML, "ce+ts", SANITY)

    none = "no detectable difference"
    assert with_verdicts("higher", none, none)["recommendation"].startswith("among the online methods, DML")
    assert with_verdicts("lower", none, none)["recommendation"].startswith("among the online methods, BD-KD")
    assert with_verdicts(none, none, none)["recommendation"].startswith("no ECE-based preference")
    ts_wins = with_verdicts(none, "higher", "lower")["recommendation"]
    assert ts_wins.startswith("post-hoc temperature scaling") and "no ECE-based preference" in ts_wins
    both = with_verdicts("higher", "higher", "lower")["recommendation"]  # both of the plan's statements apply
    assert both.startswith("post-hoc temperature scaling") and "DML (the recommended and default method)" in both
    assert with_verdicts("lower", none, none)["h1"].startswith("holds")
    assert with_verdicts("higher", none, none)["h1"].startswith("rejected")
    assert with_verdicts(none, "lower", none)["h2"].startswith("holds: BD-KD's raw student")
    assert with_verdicts(none, "higher", none)["h2"].startswith("rejected: CE+TS")
    assert with_verdicts(none, none, none)["h2"] == none


def test_the_time_condition_is_the_longest_run_as_pre_registered(folders):
    _, rep, abl = folders
    report = decision._load(rep)
    report["regime"]["train_seconds_max"] = 1150.0  # one slow run fails it, whatever the median
    cond = {c["key"]: c for c in decision.decide(report, None, BDKD, DML, "ce+ts", None)["regime"]["conditions"]}
    assert not cond["train_seconds_max"]["holds"] and cond["train_seconds_max"]["measured"] == 1150.0


def test_a_sanity_variant_that_differs_is_reported(folders, tmp_path):
    _, rep, abl = folders
    other = tmp_path / "abl"
    shutil.copytree(abl, other)
    p = predictions.load(other, _slug(SANITY), 2)
    logits = p.logits.copy()
    logits[0] += [0.5] + [0.0] * (logits.shape[1] - 1)  # one image's prediction moves
    predictions.save(other, _slug(SANITY), 2, {k: v for k, v in p.meta.items() if k not in ("format", "logits")},
                     p.labels, logits, p.tune_labels, p.tune_logits)
    s = decision.decide(decision._load(rep), decision._load(other), BDKD, DML, "ce+ts", SANITY)["sanity"]
    assert not s["identical"] and s["max_abs_logit_difference"][1] == 0 and s["max_abs_logit_difference"][2] > 0.01


def test_a_saved_auto_is_what_it_resolved_to_in_the_sanity_check(folders, tmp_path):
    """DML*'s runs saved train.amp: auto (resolved to off, recorded in their summary); the sanity
    runs, trained after the recipe pinned amp: off, saved off. That is one recipe; a pin to
    another value is not."""
    _, rep, abl = folders
    other = tmp_path / "abl"
    shutil.copytree(abl, other)

    def set_amp(label, amp, resolved):
        meta_path = predictions.paths(other, _slug(label), 1)[1]
        meta = json.loads(meta_path.read_text())
        meta["recipe"]["train"]["amp"] = amp
        meta["summary"]["speed_settings"] = {"channels_last": False, "compile": False, "amp": resolved}
        meta_path.write_text(json.dumps(meta))

    set_amp(DML, "auto", "off")
    set_amp(SANITY, "off", "off")
    assert decision.decide(decision._load(rep), decision._load(other), BDKD, DML, "ce+ts", SANITY)["sanity"]["identical"]
    set_amp(SANITY, "bf16", "bf16")
    with pytest.raises(decision.EdgeKDError, match=r"is not DML by construction .*\(train\)"):
        decision.decide(decision._load(rep), decision._load(other), BDKD, DML, "ce+ts", SANITY)


def test_bad_input_is_one_line_and_writes_nothing(folders, tmp_path, capsys):
    root, rep, abl = folders
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "comparison.json").write_text("[1, 2]")
    shape = tmp_path / "shape"
    shutil.copytree(rep, shape)
    doc = json.loads((shape / "comparison.json").read_text())
    del doc["regime"]["student_ece"]
    (shape / "comparison.json").write_text(json.dumps(doc))
    plain = tmp_path / "plain"  # as `edgekd compare` writes it, before studies.regime
    shutil.copytree(rep, plain)
    doc = json.loads((plain / "comparison.json").read_text())
    del doc["regime"]
    (plain / "comparison.json").write_text(json.dumps(doc))
    cases = [
        (["--report", str(tmp_path / "junk")], "is not a comparison.json written by `edgekd compare`"),
        (["--report", str(tmp_path / "none")], "is not a readable comparison.json"),
        (["--report", str(shape)], "a comparison.json of an unexpected shape (KeyError"),
        (["--report", str(plain)], f"has no regime section; add it with `python -m studies.regime {plain}`"),
        (["--dml", BDKD], "reference is 'dml:temperature=8', not --dml"),
        (["--ce-ts", "ce"], "has no paired table against 'ce'"),
        (["--ablations", str(rep)], "reference is 'dml:temperature=8', not --bdkd"),
        (["--sanity", f"{BDKD}:weighting=reverse"], "is not DML by construction"),
        (["--out", str(tmp_path / "nowhere" / "result")], "does not exist"),
        (["--note", str(tmp_path / "no-note.md")], "--note"),
    ]
    for change, needle in cases:
        args = _args(tmp_path, rep, abl)
        for flag, value in zip(change[::2], change[1::2]):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        capsys.readouterr()
        assert decision.main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("edgekd: error:") and needle in err[0], (needle, err)
        assert not list(tmp_path.glob("result*"))
    args = _args(tmp_path, rep, abl)
    del args[args.index("--sanity"):args.index("--sanity") + 2]
    assert decision.main(args) == 2 and "--ablations needs --sanity" in capsys.readouterr().err
