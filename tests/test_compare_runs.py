"""`edgekd compare` around the statistics: variants of any recipe key, reuse from prediction
files alone, +ts fitted on tune only, every refusal (one line, exit 2, nothing written), and
one real end-to-end comparison on a test split."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgekd import calibration
from edgekd.compare import parse_variants, plan, predictions, run_all
from edgekd.errors import EdgeKDError, RecipeError

from _cli import edgekd

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "recipes/quickstart.yaml"
SPLITS = ["data.tune_fraction=0.15", "data.test_fraction=0.2", "train.epochs=2"]


def _cli(*args, timeout=300):
    return edgekd("compare", QUICK, "--quiet", *args)


def _one_line_error(res, *needles):
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekd: error:") and "Traceback" not in res.stderr, res.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _calibrated(rng, n, c, scale):
    z = rng.normal(size=(n, c)) * scale
    y = (calibration.softmax(z).cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return z, y


def _write_predictions(out, methods, seeds, overrides, eval_split="test", n=400, tune_scale=3.0):
    """Prediction files as compare writes them, for every planned run, and no run folder.
    Each run's eval logits are calibrated as they are (T = 1); its tune logits are the same
    model overconfident by `tune_scale`, so a temperature fitted on tune is ~tune_scale."""
    rng = np.random.default_rng(0)
    images = {seed: (_calibrated(rng, n, 10, 2.0), _calibrated(rng, n, 10, 2.0)) for seed in seeds}
    made = {}
    for v, seed, r in plan(QUICK, parse_variants(methods), seeds, overrides):
        (z, y), (zt, yt) = images[seed]  # the same images (labels) for every variant of a seed
        z, zt = z + rng.normal(size=z.shape) * 0.3, zt + rng.normal(size=zt.shape) * 0.3
        meta = {"variant": v.label, "seed": seed, "recipe_hash": r.digest(), "recipe": r.to_dict(),
                "eval_split": eval_split, "eval_images": n, "eval_images_digest": "same-images", "tune_images": n,
                "teacher": calibration.calibration_metrics(z * 0.5, y),
                "summary": {"student": {"train_accuracy": 0.9, "params": 1000}, "train_seconds": 60.0 + seed,
                            "teacher": {"train_accuracy": 0.95, "params": 16000}}}
        predictions.save(out, v.slug, seed, meta, y, z, yt, zt * tune_scale)
        made[(v.label, seed)] = (z, y, zt * tune_scale, yt)
    return made


def test_variants_take_keys_of_every_section():
    spec = ["ce:optim.label_smoothing=0.1:train.epochs=3", "bdkd:temperature=2:data.batch_size=32:student.options.width=4",
            "dml:teacher_optim.lr=0.01:validate.max_ece=0.1:teacher.arch=cnn_tiny:optim.milestones=[0.3,0.6]",
            "ce:optim.label_smoothing=0.1:train.epochs=3+ts"]
    variants = parse_variants(spec)
    assert [v.trained for v in variants] == [True, True, True, False]
    runs = {v.label: r for v, _, r in plan(QUICK, variants, [7], [])}
    assert list(runs) == spec[:3]  # the +ts row trains nothing of its own
    ce, bdkd, dml = runs.values()
    assert (ce.optim.label_smoothing, ce.train.epochs, ce.train.seed, ce.distill.method) == (0.1, 3, 7, "ce")
    assert (bdkd.distill.temperature, bdkd.data.batch_size, bdkd.student.options) == (2.0, 32, {"width": 4})
    assert (dml.teacher_optim.lr, dml.gate.max_ece, dml.teacher.arch, dml.optim.milestones) == (0.01, 0.1, "cnn_tiny", [0.3, 0.6])
    with pytest.raises(RecipeError, match="--seeds"):
        parse_variants(["ce:train.seed=3"])
    with pytest.raises(RecipeError, match="optim.lrr"):
        plan(QUICK, parse_variants(["ce:optim.lrr=0.1"]), [0], [])
    with pytest.raises(RecipeError, match="share the run folder"):
        parse_variants(["dml:optim.milestones=[0.5]", "dml:optim.milestones={0.5}"])


def test_reuse_from_prediction_files_without_run_folders(tmp_path):
    out = tmp_path / "cmp"
    made = _write_predictions(out, ["ce", "bdkd"], [0, 1, 2], SPLITS)
    logs = []
    report = run_all(QUICK, parse_variants(["ce", "ce+ts", "bdkd"]), [0, 1, 2], SPLITS, out, log=logs.append,
                     eval_split="test", replicates=200)
    assert not (out / "runs").exists()  # nothing trained, nothing evaluated
    assert sum("reused" in line for line in logs) == 6
    assert report["eval_split"] == "test" and report["eval_images"] == [400]
    # Per-run student metrics are those of the stored (float16) predictions; the summary is their mean.
    for label in ("ce", "bdkd"):
        accs = []
        for seed in (0, 1, 2):
            z, y = made[(label, seed)][:2]
            m = calibration.calibration_metrics(predictions.compact_logits(z).astype(np.float64), y)
            run = next(r for r in report["runs"] if r["method"] == label and r["seed"] == seed)
            assert run["student"]["ece"] == pytest.approx(m["ece"], abs=1e-12)
            assert run["teacher"]["nll"] == pytest.approx(calibration.nll(z * 0.5, y))
            accs.append(m["accuracy"])
        st = report["summary"][label]["student"]["accuracy"]
        assert st["mean"] == pytest.approx(np.mean(accs)) and st["std"] == pytest.approx(np.std(accs, ddof=1))
        assert st["ci"][0] < st["mean"] < st["ci"][1]
        assert 0 < report["summary"][label]["ece_noise_floor"] < 0.1
    vs = report["vs_reference"]
    assert set(vs) == {"ce+ts", "bdkd"} and vs["bdkd"]["seeds"] == [0, 1, 2]
    assert {d["verdict"] for d in vs["bdkd"]["metrics"].values()} <= {"lower", "higher", "no detectable difference"}
    md = (out / "comparison.md").read_text()
    assert "### vs ce (students)" in md and "400 images per run" in md and "3 seeds" in md and "**" not in md
    assert "not a finding" in md
    assert "rows ending in +ts" in md and "never on the test split" in md
    # compare stays generic: the regime of the ce rows belongs to the study that reads it (studies/regime.py).
    assert "regime" not in report and "regime" not in md
    # The same comparison again (e.g. in a later session): identical statistics.
    again = run_all(QUICK, parse_variants(["ce", "ce+ts", "bdkd"]), [0, 1, 2], SPLITS, out, log=logs.append,
                    eval_split="test", replicates=200)
    assert again["summary"] == report["summary"] and again["vs_reference"] == report["vs_reference"]
    # With a seed more (its runs done later): the same comparison, so accepted and extended.
    _write_predictions(tmp_path / "seed3", ["ce", "bdkd"], [3], SPLITS)
    for f in (tmp_path / "seed3" / "predictions").iterdir():
        shutil.copy(f, out / "predictions" / f.name)
    more = run_all(QUICK, parse_variants(["ce", "ce+ts", "bdkd"]), [0, 1, 2, 3], SPLITS, out, log=logs.append,
                   eval_split="test", replicates=200)
    assert more["seeds"] == [0, 1, 2, 3] and more["vs_reference"]["bdkd"]["seeds"] == [0, 1, 2, 3]
    # A second reference: its own paired table. Paired differences are means of per-seed
    # differences, so bdkd - ce+ts must equal (bdkd - ce) - (ce+ts - ce) for every metric.
    both = run_all(QUICK, parse_variants(["ce", "ce+ts", "bdkd"]), [0, 1, 2, 3], SPLITS, out, log=logs.append,
                   eval_split="test", replicates=200, reference=["ce", "ce+ts"])
    assert both["reference"] == "ce" and both["more_references"] == ["ce+ts"]
    assert both["vs_reference"] == more["vs_reference"] and set(both["vs_more_references"]["ce+ts"]) == {"ce", "bdkd"}
    vs_ce, vs_ts = both["vs_reference"], both["vs_more_references"]["ce+ts"]
    for k, d in vs_ts["bdkd"]["metrics"].items():
        want = vs_ce["bdkd"]["metrics"][k]["diff"] - vs_ce["ce+ts"]["metrics"][k]["diff"]
        assert d["diff"] == pytest.approx(want, abs=1e-12) and d["ci"][0] < d["ci"][1]
    md = (out / "comparison.md").read_text()
    assert "### vs ce (students)" in md and "### vs ce+ts (students)" in md


def test_markdown_names_the_ts_fit_only_when_there_are_ts_rows(tmp_path):
    out = tmp_path / "cmp"
    _write_predictions(out, ["ce", "bdkd"], [0, 1], SPLITS)
    run_all(QUICK, parse_variants(["ce", "bdkd"]), [0, 1], SPLITS, out, log=lambda s: None,
            eval_split="test", replicates=50)
    md = (out / "comparison.md").read_text()
    assert "Student metrics use the raw softmax." in md and "+ts" not in md


def test_a_pinned_speed_setting_matches_runs_whose_auto_resolved_to_it(tmp_path):
    """Runs trained with train.amp: auto that resolved to off (recorded in their summary) are the
    runs of a recipe that pins amp: off; not of one that pins bf16."""
    out = tmp_path / "cmp"
    _write_predictions(out, ["ce"], [0], SPLITS)
    for meta in (out / "predictions").glob("*.json"):
        m = json.loads(meta.read_text())
        assert m["recipe"]["train"]["amp"] == "auto"
        m["summary"]["speed_settings"] = {"channels_last": True, "compile": False, "amp": "off"}
        meta.write_text(json.dumps(m))
    run_all(QUICK, parse_variants(["ce"]), [0], SPLITS, out, log=lambda s: None, eval_split="test", replicates=50)
    assert json.loads((out / "comparison.json").read_text())["recipe"]["train"]["amp"] == "auto"
    # The recipe now pins what auto resolved to: the comparison and its runs are still this one.
    report = run_all(QUICK, parse_variants(["ce"]), [0], [*SPLITS, "train.amp=off", "train.channels_last=true"],
                     out, log=lambda s: None, eval_split="test", replicates=50)
    assert report["seeds"] == [0] and not (out / "runs").exists()  # reused, nothing trained
    bf16 = [*SPLITS, "train.amp=bf16", "train.channels_last=true"]
    with pytest.raises(RecipeError, match=r"compares another recipe \(keys differ: train.amp\)"):
        run_all(QUICK, parse_variants(["ce"]), [0], bf16, out, log=lambda s: None, eval_split="test", replicates=50)
    (out / "comparison.json").unlink()  # then the prediction file itself is what differs
    with pytest.raises(RecipeError, match=r"was made with another recipe \(keys differ: train.amp\)"):
        run_all(QUICK, parse_variants(["ce"]), [0], bf16, out, log=lambda s: None, eval_split="test", replicates=50)


def test_what_auto_resolved_to_for_runs_with_and_without_a_record():
    from edgekd.compare.run import resolved_speed
    recorded = {"channels_last": True, "compile": False, "amp": "bf16"}
    assert resolved_speed({"device": "cpu", "speed_settings": recorded}) == recorded
    assert resolved_speed({"device": "cpu"}) == {"amp": "off"}  # before the record: auto was fp32 on CPUs
    assert resolved_speed({"device": "cuda:0"}) is None and resolved_speed(None) is None


def test_ts_row_fits_its_temperature_on_tune_only(tmp_path):
    out = tmp_path / "cmp"
    made = _write_predictions(out, ["ce"], [0, 1], SPLITS, tune_scale=3.0)
    report = run_all(QUICK, parse_variants(["ce+ts", "ce"]), [0, 1], SPLITS, out, log=lambda s: None,
                     eval_split="test", replicates=50)
    assert report["reference"] == "ce+ts"  # a +ts row can be the reference (here: the first)
    for seed in (0, 1):
        z, y, zt, yt = made[("ce", seed)]
        run = next(r for r in report["runs"] if r["method"] == "ce+ts" and r["seed"] == seed)
        on_tune = calibration.fit_temperature(predictions.compact_logits(zt).astype(np.float64), yt)
        on_eval = calibration.fit_temperature(z, y)
        assert run["temperature"] == pytest.approx(on_tune, rel=1e-9)
        assert abs(on_tune - on_eval) > 1.0  # ~3 vs ~1: fitting on the evaluation split would show
        scaled = predictions.compact_logits(z).astype(np.float64) / on_tune
        assert run["student"]["nll"] == pytest.approx(calibration.nll(scaled, y), abs=1e-12)
    assert "teacher" not in report["summary"]["ce+ts"] and report["summary"]["ce+ts"]["temperature"]["n"] == 2


def test_runs_on_other_images_are_not_paired(tmp_path):
    out = tmp_path / "cmp"
    _write_predictions(out, ["ce", "bdkd:data.split_seed=1"], [0, 1], SPLITS)
    meta_path = predictions.paths(out, "bdkd-data.split_seed=1", 1)[1]
    meta = json.loads(meta_path.read_text())
    meta["eval_images_digest"] = "other-images"  # what a different data.split_seed gives
    meta_path.write_text(json.dumps(meta))
    report = run_all(QUICK, parse_variants(["ce", "bdkd:data.split_seed=1"]), [0, 1], SPLITS, out, log=lambda s: None,
                     eval_split="test", replicates=50)
    entry = report["vs_reference"]["bdkd:data.split_seed=1"]
    assert entry["seeds"] == [0] and "seeds 1 left out" in entry["note"] and entry["metrics"]["ece"]["ci"] is None


def test_refusals_before_anything_is_written(tmp_path):
    out = tmp_path / "c"
    with pytest.raises(RecipeError, match="--reference 'dml' is not one of the compared variants: ce, bdkd"):
        run_all(QUICK, parse_variants(["ce", "bdkd"]), [0], SPLITS, out, log=print, reference="dml", eval_split="test")
    with pytest.raises(RecipeError, match="cannot also be evaluated there"):
        run_all(QUICK, parse_variants(["ce", "ce+ts"]), [0], SPLITS, out, log=print, eval_split="tune")
    with pytest.raises(RecipeError, match="has no test split; set data.test_fraction"):
        run_all(QUICK, parse_variants(["ce"]), [0], [], out, log=print, eval_split="test")
    with pytest.raises(RecipeError, match="variant 'bdkd:data.test_fraction=0'"):
        run_all(QUICK, parse_variants(["ce", "bdkd:data.test_fraction=0"]), [0], SPLITS, out, log=print, eval_split="test")
    with pytest.raises(EdgeKDError, match="leave no train image"):
        run_all(QUICK, parse_variants(["ce", "bdkd:data.test_size=1700"]), [0], SPLITS, out, log=print, eval_split="test")
    assert not out.exists()


def test_every_variant_is_built_before_the_first_trains(tmp_path):
    """A checkpoint, a model option or a NaN in the third variant fails before the first two train
    (hours, with a real recipe), naming every bad variant at once; nothing is written."""
    torch = pytest.importorskip("torch")
    from edgekd.errors import CheckpointError, ModelError, Problems
    from edgekd.models import build_model

    out = tmp_path / "c"
    state = build_model("cnn_small", 10, 1, 32).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    variants = ["ce", "bdkd", f"dml:teacher.checkpoint={tmp_path / 'missing.pt'}",
                f"kd:teacher.checkpoint={tmp_path / 'nan.pt'}", "dml:student.options={width: 0}"]
    with pytest.raises(Problems) as e:
        run_all(QUICK, parse_variants(variants), [0, 1], SPLITS, out, log=print, eval_split="test")
    assert [type(p) for p in e.value.problems] == [CheckpointError, CheckpointError, ModelError]
    lines = str(e.value).splitlines()
    assert lines[0] == f"variant {variants[2]!r}: checkpoint {tmp_path / 'missing.pt'} does not exist"
    assert lines[1].startswith(f"variant {variants[3]!r}: checkpoint {tmp_path / 'nan.pt'}: tensor 'fc.weight' holds 1 NaN")
    assert lines[2] == f"variant {variants[4]!r}: cnn_tiny option width must be a positive integer, got 0"
    assert not out.exists()


def test_a_variant_cannot_set_the_method():
    """The method is the variant's name: `dml:method=ce` would train CE under the label dml."""
    for spec in ("dml:method=ce", "dml:temperature=2:distill.method=ce"):
        with pytest.raises(RecipeError, match=rf"^--methods '{spec}': the method is the variant's name \(dml\), not a "
                                              r"key; write ce(:temperature=2)? instead$"):
            parse_variants([spec])


def test_cli_refusals_are_one_line(tmp_path):
    out = tmp_path / "c"
    _one_line_error(_cli("--methods", "ce,ce+ts", "--out", str(out)), "'ce+ts'", "data.tune_fraction")
    _one_line_error(_cli("--methods", "ce,bdkd", "--reference", "kd", "--out", str(out)), "--reference 'kd'")
    _one_line_error(_cli("--methods", "ce,bdkd", "--reference", "ce", "--reference", "kd", "--out", str(out)),
                    "--reference 'kd' is not one of the compared variants")
    _one_line_error(_cli("--methods", "ce,bdkd", "--reference", "bdkd", "--reference", "bdkd", "--out", str(out)),
                    "--reference 'bdkd' is given twice")
    _one_line_error(_cli("--methods", "ce", "--eval-split", "test", "--out", str(out)), "no test split")
    _one_line_error(_cli("--methods", "ce", "--set", "data.test_size=1500", "--eval-split", "test", "--out", str(out)),
                    "test (1500)")
    assert not out.exists()


def test_another_comparison_in_out_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "cmp"
    _write_predictions(out, ["ce", "bdkd"], [0, 1], SPLITS)
    args = ["--methods", "ce,bdkd", "--seeds", "0,1", "--eval-split", "test", "--bootstrap", "50", "--out", str(out),
            *[a for o in SPLITS for a in ("--set", o)]]
    assert _cli(*args).returncode == 0
    before = (out / "comparison.json").read_bytes()
    # Another recipe (different split sizes), another evaluation split: refused, nothing changed.
    other = [a.replace("0.15", "0.1") for a in args]
    _one_line_error(_cli(*other), "compares another recipe", "data.tune_fraction", "--overwrite")
    _one_line_error(_cli(*[a.replace("test", "val") if a == "test" else a for a in args]), "reports on the test split")
    assert (out / "comparison.json").read_bytes() == before
    # A prediction file of another recipe is refused too (comparison.json gone, say).
    (out / "comparison.json").unlink()
    _one_line_error(_cli(*other), "ce-s0.json was made with another recipe", "data.tune_fraction")
    assert _cli(*args).returncode == 0
    # --overwrite replaces a comparison of another evaluation split when the predictions match.
    doc = json.loads((out / "comparison.json").read_text())
    doc["eval_split"] = "val"
    (out / "comparison.json").write_text(json.dumps(doc))
    _one_line_error(_cli(*args), "reports on the val split, not test")
    assert _cli(*args, "--overwrite").returncode == 0
    assert json.loads((out / "comparison.json").read_text())["eval_split"] == "test"


@pytest.mark.slow
def test_compare_on_a_test_split_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    args = ["--methods", "ce,bdkd,ce+ts", "--seeds", "0,1", "--eval-split", "test", "--out", str(out),
            *[a for o in SPLITS for a in ("--set", o)]]
    res = _cli(*args, timeout=1200)
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "comparison.json").read_text())
    assert report["eval_split"] == "test" and report["reference"] == "ce" and report["seeds"] == [0, 1]
    n_test = round(0.2 * 1797)
    assert report["eval_images"] == [n_test]
    assert [(r["method"], r["seed"]) for r in report["runs"]] == [
        ("ce", 0), ("ce", 1), ("bdkd", 0), ("bdkd", 1), ("ce+ts", 0), ("ce+ts", 1)]
    for label in ("ce", "bdkd"):
        for seed in (0, 1):
            npz, meta = predictions.paths(out, label, seed)
            with np.load(npz) as z:
                assert z["student_logits"].dtype == np.float16 and z["student_logits"].shape == (n_test, 10)
                assert z["tune_student_logits"].shape == (round(0.15 * 1797), 10)
            saved = json.loads(meta.read_text())
            assert saved["eval_split"] == "test" and saved["summary"]["eval_split"] == "val"  # trained on val as before
            assert {"accuracy", "ece", "nll", "brier"} <= set(saved["teacher"])
    assert report["vs_reference"]["ce+ts"]["metrics"]["accuracy"]["diff"] == 0  # TS keeps every argmax
    assert report["vs_reference"]["bdkd"]["seeds"] == [0, 1]
    md = (out / "comparison.md").read_text()
    assert "test split: 359 images per run, 2 seeds" in md and "| bdkd | 2 | ECE |" in md
    # The run folders are not kept across sessions: the same comparison from the predictions alone.
    shutil.rmtree(out / "runs")
    res = _cli(*args)
    assert res.returncode == 0 and res.stdout.count("reused from") == 4
    again = json.loads((out / "comparison.json").read_text())
    assert again["summary"] == report["summary"] and again["vs_reference"] == report["vs_reference"]


def test_a_run_killed_before_its_first_checkpoint_is_started_again(tmp_path):
    """A run folder holding only what training writes before its first checkpoint (recipe, split)
    is trained again in place, not refused as a non-empty folder."""
    out = tmp_path / "cmp"
    args = ["--methods", "ce", "--seeds", "0", "--eval-split", "val", "--out", str(out), "--set", "train.epochs=1"]
    assert _cli(*args).returncode == 0
    run_dir = next((out / "runs").iterdir())
    for f in run_dir.iterdir():
        if f.name not in ("recipe.yaml", "split.json"):
            shutil.rmtree(f) if f.is_dir() else f.unlink()
    shutil.rmtree(out / predictions.FOLDER)
    res = _cli(*args)
    assert res.returncode == 0, res.stderr
    assert f"training in {run_dir}" in res.stdout and (run_dir / "summary.json").is_file()
