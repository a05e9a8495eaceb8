"""`edgekd export --temperature`: a temperature that ships inside every file.

One real quickstart run with a tune split (16 px, 3 epochs), exported with and without a
temperature; the files are run in ONNX Runtime and compared with each other and with the
temperature's effect computed independently from the FP32 logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import edgekd
from edgekd.calibration import calibration_metrics, fit_temperature
from edgekd.data import load_split_images
from edgekd.data.preprocess import normalize
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.source import load_run_student
from edgekd.deploy.temperature import NODE_NAME
from edgekd.errors import ExportError

import _cli
from _training import training_fixture

REPO = Path(__file__).resolve().parents[1]
FORMATS = ["fp32", "fp16", "int8", "int8_cpu"]


@training_fixture()
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("temperature") / "run"
    edgekd.distill(REPO / "recipes/quickstart.yaml", out=out, overrides={
        "train.epochs": 3, "data.image_size": 16, "data.tune_fraction": 0.2, "train.amp": "off"})
    return out


@training_fixture()
def plain(run):
    return edgekd.export(run, out=run.parent / "plain", formats=FORMATS)


def split(bundle, which: str) -> tuple[np.ndarray, np.ndarray]:
    m = bundle.manifest
    images = load_split_images(m["data"], which)
    return normalize(images.images, m["preprocessing"]["mean"], m["preprocessing"]["std"]), images.labels


def test_a_given_temperature_divides_every_files_logits(run, plain):
    shipped = edgekd.export(run, out=run.parent / "t17", formats=FORMATS, temperature=1.7)
    x, _ = split(plain, "val")
    for fmt in FORMATS:
        raw, scaled = onnxruntime_logits(plain.file(fmt), x), onnxruntime_logits(shipped.file(fmt), x)
        # The same file but for one float division at the end (the same calibration for INT8).
        np.testing.assert_allclose(scaled, raw / np.float32(1.7), rtol=1e-6, atol=1e-7, err_msg=fmt)
        graph = onnx.load(str(shipped.file(fmt))).graph
        last = graph.node[-1]
        assert (last.op_type, last.name, list(last.output)) == ("Div", NODE_NAME, [graph.output[0].name]), fmt
        # After the last dequantize: nothing quantizes the division's input or output.
        producer = {o: n for n in graph.node for o in n.output}[last.input[0]]
        assert producer.op_type != "QuantizeLinear" and not any(last.output[0] in n.input for n in graph.node)
    t = shipped.manifest["temperature"]
    assert (t["value"], t["source"]) == (1.7, "given") and t["tune"]["n"] == len(split(plain, "tune")[1])
    assert "temperature" not in plain.manifest
    # PyTorch's reference figures are of the model as shipped too.
    assert shipped.reference["ece"] != plain.reference["ece"]


def test_fit_on_tune_and_validate_measures_the_files_as_shipped(run, plain):
    fitted = edgekd.export(run, out=run.parent / "fit", formats=FORMATS, temperature="fit")
    student = load_run_student(run)
    tune = load_split_images(student.split_info, "tune")
    expected = fit_temperature(student.logits(student.preprocess(tune)), tune.labels)
    t = fitted.manifest["temperature"]
    assert t["value"] == expected and t["source"] == "fit" and t["tune"]["after"]["nll"] <= t["tune"]["before"]["nll"]
    # validate's ECE on val is the tune-fitted temperature's effect on the FP32 file's own logits.
    report = edgekd.validate(fitted)
    x, labels = split(plain, "val")
    raw = onnxruntime_logits(plain.file("fp32"), x)
    for fmt in ("fp32", "fp16"):
        expected_ece = calibration_metrics(onnxruntime_logits(plain.file(fmt), x) / np.float32(expected), labels)["ece"]
        assert report.formats[fmt]["ece"] == pytest.approx(expected_ece, abs=1e-9), fmt
    assert report.formats["fp32"]["ece"] != pytest.approx(calibration_metrics(raw, labels)["ece"], abs=1e-6)
    res = _cli.edgekd("validate", fitted.path)
    assert f"temperature: every file divides its logits by {expected:.4g} (fit)" in res.stdout, res.stdout


def test_with_the_int8_search_the_files_are_judged_as_shipped(run, plain):
    """The search's reference is the FP32 file with the temperature, on the tune split; whether anything
    passes the quickstart's strict gate after 3 epochs does not matter here (exit 0 or 1)."""
    out = run.parent / "searched"
    res = _cli.edgekd("export", run, "--out", out, "--formats", "fp32,int8_cpu", "--temperature", "2",
                      "--int8-search", "--search-budget", "120")
    assert res.returncode in (0, 1), res.stderr
    s = json.loads((out / "manifest.json").read_text())["int8_search"]
    assert s["temperature"] == 2.0
    x, labels = split(plain, "tune")
    shipped = onnxruntime_logits(out / "model_fp32.onnx", x)
    assert s["reference"]["ece"] == calibration_metrics(shipped, labels)["ece"]
    assert s["reference"]["ece"] != calibration_metrics(onnxruntime_logits(plain.file("fp32"), x), labels)["ece"]


@pytest.mark.parametrize("value, message", [
    (0, "--temperature takes 'fit' or a number > 0 and <= 100, got 0"),
    (-1.5, "got -1.5"), (float("nan"), "got nan"), (1000, "got 1000"), ("warm", "takes 'fit' or a number > 0, got 'warm'"),
])
def test_a_temperature_that_is_no_temperature_is_refused(run, tmp_path, value, message):
    with pytest.raises(ExportError, match=message.replace("(", r"\(").replace(")", r"\)").replace("+", r"\+")):
        edgekd.export(run, out=tmp_path / "b", temperature=value)
    assert not (tmp_path / "b").exists()


def test_fit_without_a_tune_split_is_refused_before_anything_is_written(tmp_path):
    run = tmp_path / "run"
    edgekd.distill(REPO / "recipes/quickstart.yaml", out=run, overrides={"train.epochs": 1, "data.image_size": 16})
    res = _cli.edgekd("export", run, "--out", tmp_path / "b", "--temperature", "fit")
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1, res.stderr
    assert "--temperature fit fits on the run's tune split, and" in res.stderr and "has none" in res.stderr
    assert not (tmp_path / "b").exists()
    # A given value needs no tune split.
    assert _cli.edgekd("export", run, "--out", tmp_path / "b", "--temperature", "1.5", "--formats", "fp32").returncode == 0
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["temperature"]["tune"] is None
