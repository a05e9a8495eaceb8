"""`edgekd compare --deployed`: rows scored from the files a run would ship.

One real comparison (quickstart at 16 px, 4 epochs, seeds 0 and 1, a test and a tune split,
a gate the INT8 search can meet), then its prediction files checked against the files
themselves, run here again in ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgekd import calibration
from edgekd.compare import parse_variants, predictions
from edgekd.compare.variants import DEPLOYED
from edgekd.contracts import BundleManifest
from edgekd.data import load_split_images
from edgekd.data.preprocess import normalize
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.errors import ExportError, RecipeError

from _cli import edgekd
from _training import IMAGE_SIZE, training_fixture

REPO = Path(__file__).resolve().parents[1]
QUICK = REPO / "recipes/quickstart.yaml"
SETS = ["data.tune_fraction=0.2", "data.test_fraction=0.2", "train.epochs=4", f"data.image_size={IMAGE_SIZE}",
        "validate.max_ece=null", "validate.max_acc_drop=0.05", "validate.min_agreement=0.9",
        "validate.max_ece_drift=0.05"]
DEPLOY = "fp32,int8_cpu,int8_search"


def compare(out: Path, *extra: str):
    return edgekd("compare", QUICK, "--methods", "ce,ce+ts", "--seeds", "0,1", "--eval-split", "test", "--deployed",
                  DEPLOY, "--bootstrap", "50", "--out", out, "--quiet", *[a for s in SETS for a in ("--set", s)], *extra)


@training_fixture()
def deployed(tmp_path_factory):
    out = tmp_path_factory.mktemp("deployed") / "cmp"
    res = compare(out, "--reference", "ce@int8_search")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, res, json.loads((out / "comparison.json").read_text())


def test_every_row_has_its_deployed_rows(deployed):
    _, _, report = deployed
    flavours = DEPLOY.split(",")
    assert report["variants"] == ["ce", *(f"ce@{f}" for f in flavours), "ce+ts", *(f"ce+ts@{f}" for f in flavours)]
    assert report["reference"] == "ce@int8_search"
    for label in report["variants"]:
        assert report["summary"][label]["seeds"] == 2, label


def test_a_deployed_row_is_its_files_logits(deployed):
    out, _, report = deployed
    for run in (r for r in report["runs"] if "@" in r["method"]):
        record = run["deployed"]
        bundle = Path(record["bundle"])
        manifest = BundleManifest.read(bundle)
        test = load_split_images(manifest.data, "test")
        x = normalize(test.images, manifest.preprocessing["mean"], manifest.preprocessing["std"])
        logits = onnxruntime_logits(bundle / DEPLOYED[record["flavour"]], x)
        slug = parse_variants([run["method"].split("@")[0]], [record["flavour"]])[1].slug
        saved = predictions.load(out, slug, run["seed"])
        assert np.array_equal(saved.labels, test.labels)
        np.testing.assert_allclose(saved.logits, predictions.compact_logits(logits).astype(np.float64))
        assert run["student"]["ece"] == pytest.approx(calibration.ece(saved.logits, saved.labels))
        # A +ts row's file holds the temperature fitted on the tune split; the plain rows' files none.
        assert (record["temperature"] is not None) is run["method"].startswith("ce+ts")
        if record["flavour"] == "int8_search":
            assert record["search"]["speed_vs_fp32"] > 0 and manifest["int8_search"]["data"]["split"] == "tune"


def test_the_temperature_inside_the_file_is_the_post_hoc_rows(deployed):
    """ce+ts@fp32 is ce@fp32 divided by the temperature fitted on tune: within float16 storage, the
    PyTorch ce+ts row's figures."""
    _, _, report = deployed
    s = report["summary"]
    assert s["ce+ts@fp32"]["student"]["ece"]["mean"] == pytest.approx(s["ce+ts"]["student"]["ece"]["mean"], abs=2e-3)
    assert s["ce@fp32"]["student"]["accuracy"]["mean"] == pytest.approx(s["ce"]["student"]["accuracy"]["mean"],
                                                                       abs=2e-3)


def test_deployed_files_are_compared_with_their_fp32_file(deployed):
    out, res, report = deployed
    d = report["summary"]["ce@int8_cpu"]["deployed"]["vs_fp32"]
    assert d["of"] == "ce@fp32" and d["seeds"] == [0, 1] and len(d["per_seed"]["ece_drift"]) == 2
    assert 0 <= d["agreement"]["mean"] <= 1 and d["worst_class_drop"]["mean"] >= d["accuracy_drop"]["mean"] - 1e-9
    assert "speed_vs_fp32" in report["summary"]["ce@int8_search"]["deployed"]
    md = (out / "comparison.md").read_text()
    assert "### deployed files against their run's FP32 file" in md and "| ce@int8_search |" in md
    # A second call reuses every run and every deployed file.
    again = compare(out, "--reference", "ce@int8_search")
    assert again.returncode == 0 and "exporting" not in again.stdout and again.stdout.count("reused") == 2


@pytest.mark.parametrize("extra, error, message", [
    (["--deployed", "int4"], RecipeError, "--deployed 'int4' is not a deployed file edgekd scores; allowed: fp32"),
    (["--deployed", "int8_search", "--set", "data.tune_fraction=0"], RecipeError,
     "'ce@int8_search' judges its INT8 candidates on each run's tune split, and the recipe has none"),
    (["--deployed", "int8_search", "--set", "validate.max_ece=null", "--set", "validate.max_ece_drift=null"],
     ExportError, "--int8-search needs the recipe's gate to bound accuracy"),
])
def test_refused_before_anything_trains(tmp_path, extra, error, message):
    out = tmp_path / "cmp"
    res = edgekd("compare", QUICK, "--methods", "ce", "--seeds", "0", "--eval-split", "test", "--out", out,
                 "--set", "data.test_fraction=0.2", "--set", "data.tune_fraction=0.2", *extra)
    assert res.returncode == 2 and message in res.stderr and len(res.stderr.splitlines()) == 1, res.stderr
    assert not out.exists()
