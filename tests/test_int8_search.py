"""`edgekd export --int8-search`: the judging rules on numpy, then the search on a real model.

The real model is a quickstart student (digits, with a tune split) with one layer made
INT8-hostile on purpose: a stage-2 channel is switched off (BatchNorm weight 0, bias -1:
after the ReLU it is exactly 0 on every image) and the third conv reads it with weights of
1000. In float those weights multiply zeros and change nothing; in INT8 every output
channel's weight scale is set by the 1000s, so the conv's real weights round to zero,
whatever the calibration method and per-channel or not. Only keeping that one conv in
float saves the file, and the search has to find that out from data.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper

from edgekd.calibration import calibration_metrics
from edgekd.data import load_split_images
from edgekd.data.preprocess import normalize
from edgekd.data.split import make_split, split_fingerprint
from edgekd.deploy import int8_search as search
from edgekd.deploy.bundle import search_data
from edgekd.deploy.int8 import Int8Settings, pick_calibration
from edgekd.deploy.parity import onnxruntime_logits
from edgekd.deploy.source import load_run_student
from edgekd.drift import reference_gap
from edgekd.errors import DataError, ExportError

REPO = Path(__file__).resolve().parents[1]
GATE = {"max_ece": None, "max_acc_drop": 0.03, "min_agreement": 0.9, "max_ece_drift": 0.03}
# Met by no INT8 file that quantizes anything (ECE moves with any change of the logits), yet a valid gate.
UNREACHABLE = {"max_ece": None, "max_acc_drop": 0.0, "min_agreement": 1.0, "max_ece_drift": 0.0}


def edgekd(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "edgekd", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------- numpy-level rules (fast)


def test_candidates_are_judged_on_tune_else_train_never_val_or_test():
    assert search.search_split({"train": 900, "val": 200, "tune": 100, "test": 300}) == "tune"
    assert search.search_split({"train": 900, "val": 200, "tune": 0, "test": 300}) == "train"
    assert search.search_split({"train": 900, "val": 200}) == "train"
    images, labels = np.zeros((200, 1, 8, 8), np.float32), np.zeros(200, np.int64)
    for forbidden in ("val", "test"):
        with pytest.raises(ExportError, match="never on"):
            search.SearchData(forbidden, images, labels, "x")
    assert search.SearchData("tune", images, labels, "x").record() == {"split": "tune", "n": 200, "note": "x"}


def test_train_slice_is_held_apart_from_calibration():
    picked = pick_calibration(1000, Int8Settings(samples=300))
    rest = search.held_apart(1000, picked, seed=0)
    assert len(rest) == 700 and not set(rest) & set(picked) and set(rest) | set(picked) == set(range(1000))
    capped = search.held_apart(1000, picked, seed=0, cap=100)
    assert len(capped) == 100 and set(capped) <= set(rest) and np.all(np.diff(capped) > 0)


def test_too_few_images_is_no_data_to_search_on():
    with pytest.raises(DataError, match="no data to search on: .* gives 99 images"):
        search.SearchData("tune", np.zeros((99, 1, 8, 8), np.float32), np.zeros(99, np.int64), "the tune split")


def test_the_gate_must_bound_accuracy_and_calibration():
    assert search.search_thresholds({"max_acc_drop": 0.01, "max_ece": 0.05, "min_agreement": None}) == \
        {"max_acc_drop": 0.01, "max_ece": 0.05}
    for incomplete in ({}, {"max_acc_drop": 0.01, "min_agreement": 0.9}, {"max_ece_drift": 0.01}):
        with pytest.raises(ExportError, match="needs the recipe's gate to bound accuracy"):
            search.search_thresholds(incomplete)


@pytest.mark.parametrize("budget", [0, -1, float("nan"), float("inf"), True, "60"])
def test_budget_must_be_positive_seconds(budget):
    with pytest.raises(ExportError, match="--search-budget must be a number of seconds > 0"):
        search.check_budget(budget)


def test_judge_applies_the_validate_gate_to_edgekd_drift_figures():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    ref_logits = rng.normal(size=(400, 5)) * 3 + 4 * np.eye(5)[labels]
    ref = search.Reference.of(ref_logits, labels)
    same = search.judge(ref_logits.copy(), ref, {"max_acc_drop": 0.0, "max_ece_drift": 0.0, "min_agreement": 1.0})
    assert same.passed and same.shortfall == 0 and same.figures["kl"] == pytest.approx(0, abs=1e-12)

    noisy = ref_logits + rng.normal(size=ref_logits.shape) * 2
    j = search.judge(noisy, ref, {"max_acc_drop": 0.0, "min_agreement": 0.99})
    gap = reference_gap(noisy, calibration_metrics(noisy, labels), ref_logits, ref.metrics)
    assert (j.figures["agreement"], j.figures["acc_drop"], j.figures["ece_drift"]) == \
        (gap.top1_agreement, gap.accuracy_drop, gap.ece_drift)
    assert not j.passed and j.figures["kl"] > 0
    assert j.shortfall == pytest.approx(max(gap.accuracy_drop, 0) + 0.99 - gap.top1_agreement)
    assert "agreement" in j.failed_text()
    assert not search.judge(np.full_like(noisy, np.nan), ref, {"max_acc_drop": 0.5}).passed


def test_fallback_pool_lists_weighted_nodes_first_in_graph_order():
    nodes = [helper.make_node("Conv", ["x", "w0"], ["a"], name="c0"), helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Add", ["b", "b"], ["c"], name="add"), helper.make_node("Conv", ["c", "w1"], ["d"], name="c1"),
             helper.make_node("Reshape", ["d", "s"], ["e"], name="flat"), helper.make_node("Gemm", ["e", "w2"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "g", [], [])
    assert search.fallback_pool(helper.make_model(graph), exclude=[]) == ["c0", "c1", "fc", "add"]
    assert search.fallback_pool(helper.make_model(graph), exclude=["c1"]) == ["c0", "fc", "add"]


# ---------------------------------------------------------------- on a real model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 4-epoch quickstart run with a tune split (20% of digits)."""
    run = tmp_path_factory.mktemp("int8-search") / "run"
    res = edgekd("distill", REPO / "recipes/quickstart.yaml", "--set", "train.epochs=4", "--set",
                 "optim.warmup_epochs=0", "--set", "data.tune_fraction=0.2", "--out", run, "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return run


def poison(run: Path, out: Path, gate: dict) -> Path:
    """A copy of `run` whose third conv is ruined by INT8 alone (see the module docstring), with `gate`."""
    shutil.copytree(run, out)
    student = load_run_student(run)
    tune = load_split_images(student.split_info, "tune")
    x = student.preprocess(tune)
    bn, conv = student.model.features[5], student.model.features[8]
    weights = copy.deepcopy(student.model.state_dict())

    def switched_off(k: int) -> None:
        student.model.load_state_dict(weights)
        with torch.no_grad():
            bn.weight[k], bn.bias[k] = 0.0, -1.0

    def accuracy_without(k: int) -> float:
        switched_off(k)
        return float(np.mean(student.logits(x).argmax(1) == tune.labels))

    k = max(range(bn.num_features), key=accuracy_without)  # the channel the model misses least
    switched_off(k)
    with torch.no_grad():
        conv.weight[:, k] = 1000.0
    ckpt = torch.load(out / "student.pt", weights_only=False)
    ckpt["state_dict"] = {n: t.clone() for n, t in student.model.state_dict().items()}
    ckpt["recipe"]["validate"] = dict(gate)
    torch.save(ckpt, out / "student.pt")
    return out


def hostile_node(fp32: Path) -> str:
    """The conv of the FP32 file whose weights hold the 1000s."""
    model = onnx.load(str(fp32))
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found = [n.name for n in model.graph.node
             if n.op_type == "Conv" and n.input[1] in weights and np.abs(weights[n.input[1]]).max() >= 500]
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(scope="module")
def hostile(trained):
    return poison(trained, trained.parent / "hostile", GATE)


@pytest.fixture(scope="module")
def searched(hostile):
    out = hostile.parent / "searched"
    res = edgekd("export", hostile, "--out", out, "--int8-search")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out, json.loads((out / "manifest.json").read_text()), res.stdout


def tune_split(manifest: dict) -> tuple[np.ndarray, np.ndarray]:
    pre = manifest["preprocessing"]
    tune = load_split_images(manifest["data"], "tune")
    return normalize(tune.images, pre["mean"], pre["std"]), tune.labels


def test_search_keeps_the_hostile_conv_in_float_and_passes(searched):
    out, manifest, stdout = searched
    node = hostile_node(out / "model_fp32.onnx")
    x, labels = tune_split(manifest)
    fp32 = onnxruntime_logits(out / "model_fp32.onnx", x)
    for name in ("model_int8.onnx", "model_int8_cpu.onnx"):
        record = manifest["int8_search"]["files"][name]
        first, chosen = record["candidates"][0], record["candidates"][record["chosen"]]
        # Every calibration setting fails: the damage is in the weights, not the activation ranges.
        settings = [c for c in record["candidates"] if c["stage"] == "settings"]
        assert len(settings) == 6 and not any(c["passed"] for c in settings)
        assert (first["method"], first["per_channel"], first["float_nodes"]) == ("minmax", True, [])
        assert record["passed"] and chosen["passed"] and chosen["float_nodes"] == [node]
        entry = manifest["files"][name]["quantization"]
        assert entry["excluded_nodes"] == [node] and entry["search"]["candidate"] == record["chosen"]
        # The file in the bundle: that conv reads float weights, every other conv dequantized INT8 ones.
        model = onnx.load(str(out / name))
        produced_by = {o: n.op_type for n in model.graph.node for o in n.output}
        convs = {n.name: produced_by.get(n.input[1], "initializer") for n in model.graph.node if n.op_type == "Conv"}
        assert convs.pop(node) == "initializer" and set(convs.values()) == {"DequantizeLinear"}
        # And it passes the gate on the tune split, measured here independently of the search.
        z = onnxruntime_logits(out / name, x)
        gap = reference_gap(z, calibration_metrics(z, labels), fp32, calibration_metrics(fp32, labels))
        assert gap.top1_agreement >= GATE["min_agreement"] and gap.accuracy_drop <= GATE["max_acc_drop"]
        assert gap.ece_drift <= GATE["max_ece_drift"]
        assert chosen["metrics"]["agreement"] == gap.top1_agreement
    assert "1 in float" in stdout and node in stdout


def test_search_judged_on_the_tune_split_against_the_fp32_file(searched):
    out, manifest, _ = searched
    s = manifest["int8_search"]
    assert s["data"]["split"] == "tune" and s["data"]["n"] == manifest["data"]["sizes"]["tune"]
    x, labels = tune_split(manifest)
    m = calibration_metrics(onnxruntime_logits(out / "model_fp32.onnx", x), labels)
    assert (s["reference"]["accuracy"], s["reference"]["ece"]) == (m["accuracy"], m["ece"])
    assert s["gate"] == {k: v for k, v in GATE.items() if v is not None}
    for record in s["files"].values():
        for c in record["candidates"]:
            assert c["images_per_s"] > 0 and c["seconds"] > 0 and set(c["metrics"]) == \
                {"accuracy", "ece", "acc_drop", "ece_drift", "agreement", "kl"}


def test_validate_lists_the_float_nodes(searched):
    out, _, _ = searched
    res = edgekd("validate", out, "--formats", "int8_cpu")
    node = hostile_node(out / "model_fp32.onnx")
    assert f"int8_cpu: 1 node in float: {node}" in res.stdout, res.stdout + res.stderr


def test_without_a_tune_split_the_search_uses_training_images_apart_from_calibration(hostile):
    """The same data split but without tune: a held-apart slice of train, never val."""
    student = load_run_student(hostile)
    info = dict(student.split_info)
    info.update(tune_fraction=0.0, tune_size=None)
    from edgekd.data.sources import load_source

    n = len(load_source(info["name"], info.get("root"), info.get("image_size"), False, None))
    split = make_split(n, val_fraction=info["val_fraction"], seed=info["seed"])
    info.update(fingerprint=split_fingerprint(split), sizes={k: len(v) for k, v in split.items() if k != "test"})
    student.ckpt["split"] = info
    s = Int8Settings()
    picked = pick_calibration(len(split["train"]), s)
    data = search_data(student, picked, s.seed)
    assert data.split == "train" and len(data.labels) == len(split["train"]) - len(picked)
    train = load_split_images(info, "train")
    held = np.setdiff1d(np.arange(len(split["train"])), picked)
    assert np.array_equal(data.images, student.preprocess(train.take(held)))
    assert not set(split["train"][held]) & set(split["val"])


def test_no_candidate_passes_exits_1_without_an_int8_file(trained):
    run = poison(trained, trained.parent / "unreachable", UNREACHABLE)
    out = run.parent / "unreachable-bundle"
    res = edgekd("export", run, "--out", out, "--int8-search", "--formats", "fp32,fp16,int8_cpu")
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 1 and len(lines) == 1, res.stdout[-2000:] + res.stderr
    assert "no INT8 (CPU) candidate passes the gate" in lines[0] and "best: #" in lines[0]
    assert "agreement" in lines[0] and "Traceback" not in res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert {p.name for p in out.iterdir()} == {"manifest.json", "model_fp32.onnx", "model_fp16.onnx"}
    assert set(manifest["files"]) == {"model_fp32.onnx", "model_fp16.onnx"}
    assert manifest["files"]["model_fp32.onnx"]["parity"]["top1_agreement"] == 1.0
    record = manifest["int8_search"]["files"]["model_int8_cpu.onnx"]
    assert record["passed"] is False and record["chosen"] is None and record["stopped"] == "exhausted"
    assert not any(c["passed"] for c in record["candidates"])
    stages = {c["stage"] for c in record["candidates"]}
    assert stages == {"settings", "sensitivity", "fallback"}  # it tried everything before giving up
    assert edgekd("validate", out).returncode in (0, 1)  # a complete bundle: checksums, manifest


def test_the_budget_stops_the_search(hostile, searched):
    out = hostile.parent / "budget-bundle"
    budget = 1.0
    res = edgekd("export", hostile, "--out", out, "--int8-search", "--search-budget", budget,
                 "--formats", "fp32,int8_cpu")
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr
    s = json.loads((out / "manifest.json").read_text())["int8_search"]
    record = s["files"]["model_int8_cpu.onnx"]
    assert record["stopped"] == "budget" and s["budget_s"] == budget
    assert all(c["started_s"] < budget for c in record["candidates"])  # none started after the budget
    assert s["seconds"] <= budget + max(c["seconds"] for c in record["candidates"]) + 0.5
    unbounded = searched[1]["int8_search"]["files"]["model_int8_cpu.onnx"]
    assert len(record["candidates"]) < len(unbounded["candidates"])


def test_validate_refuses_a_manifest_whose_float_nodes_are_not_names(searched, tmp_path):
    out = tmp_path / "edited"
    shutil.copytree(searched[0], out)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["model_int8.onnx"]["quantization"]["excluded_nodes"] = "node_Conv_58"
    (out / "manifest.json").write_text(json.dumps(manifest))
    res = edgekd("validate", out)
    assert res.returncode == 2 and res.stderr.count("\n") == 1, res.stderr
    assert "quantization.excluded_nodes must be a list of node names" in res.stderr
