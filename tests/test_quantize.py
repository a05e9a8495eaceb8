"""INT8-aware training (train.quantize): a real run trains with torchao's fake quantization, resumes
exactly after SIGKILL, and `edgekd export` writes the INT8 file from the learned ranges, which makes
the fake-quantized PyTorch model's predictions; every bad combination is one line, exit 2."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _cli import edgekd
from _runs import canonical
from _training import IMAGE_SIZE, training_fixture

from edgekd.deploy import parity
from edgekd.deploy.onnx_export import export_fp32
from edgekd.deploy.source import load_run_student, split_images
from edgekd.training import quantize
from edgekd.errors import RecipeError
from edgekd.models import build_model
from edgekd.recipe import load_recipe

pytest.importorskip("torchao", reason="train.quantize needs the quantize extra (torchao)")

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = str(REPO / "recipes/quickstart.yaml")


def _args(out: Path, *extra: str) -> tuple[str, ...]:
    # digits at 16 px, batch 64: 23 steps an epoch. 3 epochs, not 2: the INT8 file differs from the
    # fake-quantized model by float rounding only (max |logit diff| ~0.01), which flips a prediction
    # only where two logits nearly tie; after 2 epochs 2 of the 359 val images were such ties.
    return ("distill", QUICKSTART, "--out", str(out), "--quiet", "--set", "train.epochs=3",
            "--set", f"data.image_size={IMAGE_SIZE}", "--set", "train.quantize=int8_cpu", *extra)


@training_fixture()
def qat_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("qat") / "run"
    res = edgekd(*_args(run))
    assert res.returncode == 0, res.stderr
    return run


@training_fixture()
def qat_bundle(qat_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qat-bundle") / "bundle"
    res = edgekd("export", qat_run, "--out", out, "--formats", "fp32,int8_cpu")
    assert res.returncode == 0, res.stderr
    assert "from the ranges learned in training" in res.stdout
    return out


def test_the_run_trains_in_fp32_and_saves_the_quantizers(qat_run):
    summary = json.loads((qat_run / "summary.json").read_text())
    assert summary["speed_settings"]["amp"] == "off" and "train.quantize" in summary["speed_settings"]["amp_reason"]
    ck = torch.load(qat_run / "student.pt", weights_only=True)
    assert ck["quantize"]["flavour"] == "int8_cpu"
    # The float weights under the keys of the model built by name; the quantizers' state apart.
    model = build_model(ck["arch"], ck["num_classes"], ck["in_channels"], ck["image_size"])
    # (torch.export keeps no BatchNorm num_batches_tracked: a counter no eval-mode forward reads.)
    expected = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    assert set(ck["state_dict"]) == expected
    assert ck["quantize"]["state"] and all(k.startswith("activation_post_process") for k in ck["quantize"]["state"])


def test_export_writes_the_trained_quantized_network(qat_run, qat_bundle):
    """The INT8 file, run in ONNX Runtime, against the fake-quantized model rebuilt here from student.pt."""
    manifest = json.loads((qat_bundle / "manifest.json").read_text())
    q = manifest["files"]["model_int8_cpu.onnx"]["quantization"]
    assert q["method"] == "train.quantize" and q["flavour"] == "int8_cpu" and q["samples"] is None
    student = load_run_student(qat_run)
    ck = student.checkpoint
    val = split_images(student, "val")
    x = student.preprocess(val)
    trained = quantize.restore(copy.deepcopy(student.model), ck.quantize, ck.in_channels, ck.image_size, ck.arch)
    with torch.no_grad():
        fake = trained(torch.from_numpy(x)).numpy()
    deployed = parity.onnxruntime_logits(qat_bundle / "model_int8_cpu.onnx", x)
    agreement = np.mean(deployed.argmax(1) == fake.argmax(1))
    assert agreement == pytest.approx(q["fake_quant_agreement"])
    assert np.max(np.abs(deployed - fake)) == pytest.approx(q["max_abs_logit_diff"], rel=1e-5)
    # Near-ties (fake-quant top-2 margin within twice the rounding tolerance) are left out of the gate;
    # every other image must agree (>= 99.5%), and here all 359 do or nearly all.
    assert q["decisive_agreement"] >= 0.995 and 0 <= q["near_ties"] < 359 and q["rounding_tolerance"] >= 0
    assert agreement >= q["decisive_agreement"] - q["near_ties"] / 359 - 1e-12
    # The run's own student figures are the fake-quantized model's: the file reproduces them.
    summary = json.loads((qat_run / "summary.json").read_text())
    assert abs(np.mean(deployed.argmax(1) == val.labels) - summary["student"]["accuracy"]) <= 1 - agreement + 1e-12
    # Integer arithmetic in the file: the activations are uint8 with learned zero points.
    graph = onnx.load(str(qat_bundle / "model_int8_cpu.onnx")).graph
    inits = {i.name: i for i in graph.initializer}
    zero_points = [inits[n.input[2]] for n in graph.node if n.op_type == "QuantizeLinear" and n.input[2] in inits]
    assert zero_points and {z.data_type for z in zero_points} == {onnx.TensorProto.UINT8}



def test_every_convolution_runs_as_an_integer_convolution_in_onnx_runtime(qat_bundle, tmp_path):
    """Each Conv of the INT8-aware file sits between DequantizeLinear and its own QuantizeLinear, the
    pattern ONNX Runtime fuses into QLinearConv (torchao's x86 recipe quantized after the activation
    instead, and every such Conv ran in float, at 0.18x the FP32 file on MobileNetV3-small)."""
    import onnxruntime as ort

    path = qat_bundle / "model_int8_cpu.onnx"
    graph = onnx.load(str(path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    consumers: dict[str, list[str]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n.op_type)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert convs
    for n in convs:
        assert producer.get(n.input[0]) == producer.get(n.input[1]) == "DequantizeLinear", n.name
        assert consumers[n.output[0]] == ["QuantizeLinear"], (n.name, consumers[n.output[0]])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert fused.count("QLinearConv") == len(convs) and "Conv" not in fused, sorted(set(fused))

def test_validate_runs_the_bundle(qat_run, qat_bundle, tmp_path):
    """The trained network is the fake-quantized one: the bundle's reference is its figures (the run's
    own), its INT8 file is what the others are compared with, and the FP32 file (the float weights
    alone, another network) is left out of a plain validate, measured when named."""
    manifest = json.loads((qat_bundle / "manifest.json").read_text())
    summary = json.loads((qat_run / "summary.json").read_text())["student"]
    assert manifest["reference"]["format"] == "int8_cpu" and "fake-quantized" in manifest["reference"]["model"]
    assert manifest["reference"]["accuracy"] == pytest.approx(summary["accuracy"])
    assert manifest["files"]["model_int8_cpu.onnx"]["drift"]["ece_drift"] == pytest.approx(0, abs=0.01)
    res = edgekd("validate", qat_bundle, "--json", tmp_path / "v.json", "--max-ece", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "fp32: the float weights of an INT8-aware run" in res.stdout
    doc = json.loads((tmp_path / "v.json").read_text())
    assert list(doc["formats"]) == ["int8_cpu"]
    assert doc["formats"]["int8_cpu"]["accuracy"] == pytest.approx(
        manifest["files"]["model_int8_cpu.onnx"]["metrics"]["accuracy"])
    assert doc["formats"]["int8_cpu"]["agreement"] == 1.0
    # On other images (no stored reference), drift and agreement are measured from the INT8 file.
    res = edgekd("validate", qat_bundle, "--formats", "fp32,int8_cpu", "--data", "digits", "--json", tmp_path / "w.json")
    doc = json.loads((tmp_path / "w.json").read_text())
    assert doc["formats"]["int8_cpu"]["agreement"] == 1.0 and doc["formats"]["int8_cpu"]["ece_drift"] == 0
    assert doc["formats"]["fp32"]["agreement"] < 1.0


@pytest.mark.slow
def test_sigkill_then_resume_is_exact_with_the_quantizers(qat_run, tmp_path):
    """Mid-epoch 2 (step 30 of 69): the observers' running ranges and the fake quantizers' scales
    come back from last.pt with the weights."""
    victim = tmp_path / "victim"
    killed = subprocess.run([sys.executable, "-m", "edgekd", *_args(victim)], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "EDGEKD_KILL_AT": "step:30"})
    assert killed.returncode == -9, killed.stderr[-500:]
    res = edgekd(*_args(victim), "--resume")
    assert res.returncode == 0, res.stderr
    assert canonical(victim) == canonical(qat_run)
    a, b = (torch.load(r / "student.pt", weights_only=True) for r in (qat_run, victim))
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    assert all(torch.equal(a["quantize"]["state"][k], b["quantize"]["state"][k]) for k in a["quantize"]["state"])


def test_the_int8_search_would_replace_the_learned_ranges(qat_run, tmp_path):
    res = edgekd("export", qat_run, "--out", tmp_path / "b", "--formats", "fp32,int8_cpu", "--int8-search")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "learned ranges" in res.stderr and not (tmp_path / "b").exists()


@pytest.mark.slow  # captures, converts and exports a net: about 15 s
def test_the_tensorrt_flavour_is_symmetric_int8(tmp_path):
    """int8 (TensorRT): symmetric int8 activations, zero point 0, even after a ReLU (where a fused fake
    quantizer would pick -128); weights int8, symmetric per output channel. (int8_cpu's uint8
    activations: test_export_writes_the_trained_quantized_network.)"""
    flavour, dtype = "int8", onnx.TensorProto.INT8
    torch.manual_seed(0)
    model = build_model("cnn_tiny", 10, 1, IMAGE_SIZE)
    student = quantize.prepare(model, flavour, 1, IMAGE_SIZE, "cnn_tiny")
    with torch.no_grad():
        student.train()
        for _ in range(3):  # the observers see some data
            student(torch.randn(16, 1, IMAGE_SIZE, IMAGE_SIZE))
    export_fp32(student.converted(), tmp_path / "q.onnx", 1, IMAGE_SIZE)
    graph = onnx.load(str(tmp_path / "q.onnx")).graph
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    act = [n for n in graph.node if n.op_type == "QuantizeLinear"]
    zp = [inits[n.input[2]] for n in act if n.input[2] in inits]
    types = {i.data_type for i in graph.initializer if i.name in {n.input[2] for n in act}}
    assert act and types == {dtype}
    assert all(np.all(z == 0) for z in zp)
    weights = [n for n in graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
               and inits[n.input[0]].ndim == 4]
    assert weights and all(inits[n.input[0]].dtype == np.int8 and np.all(inits[n.input[2]] == 0)
                           and inits[n.input[1]].size == inits[n.input[0]].shape[0] for n in weights)


@pytest.mark.parametrize("override, message", [
    ("train.amp=bf16", "train.quantize trains with fake quantization in fp32, but train.amp is bf16"),
    ("train.channels_last=true", "without channels_last; set train.channels_last: false"),
    ("train.compile=true", "without compile; set train.compile: false"),
])
def test_settings_it_cannot_train_with_are_refused(override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(QUICKSTART, ["train.quantize=int8_cpu", override])



@pytest.mark.parametrize("layer, op", [(torch.nn.ConvTranspose2d(4, 4, 2, stride=2), "conv_transpose2d (up)")])
def test_a_layer_it_cannot_quantize_is_named(layer, op):
    """A weighted layer the quantizer leaves in float (here a transposed convolution) would train in
    float while the INT8 file quantizes it: refused, naming the op and where it is."""

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.up, self.fc = torch.nn.Conv2d(1, 4, 3, padding=1), layer, torch.nn.Linear(4 * 32 * 32, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.up(torch.relu(self.conv(x))), 1))

    with pytest.raises(RecipeError, match=re.escape(f"cannot quantize: {op} (it quantizes 2-D convolutions")):
        quantize.prepare(Net(), "int8_cpu", 1, 16, "net")

def test_a_bad_flavour_is_one_line(tmp_path):
    res = edgekd(*_args(tmp_path / "r", "--set", "train.quantize=int4"))
    assert res.returncode == 2 and "train.quantize" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_a_float_run_fine_tuned_int8_aware_keeps_its_accuracy(quickstart_3ep, tmp_path):
    """INT8-aware training from a float checkpoint (student.checkpoint = a float run's student.pt), one
    epoch at a fine-tuning learning rate: it starts where the float student is (a fresh net after one
    such epoch is near chance), so it ends near the float student's accuracy."""
    run = tmp_path / "qat"
    res = edgekd(*_args(run, "--set", "train.epochs=1", "--set", f"student.checkpoint={quickstart_3ep / 'student.pt'}",
                        "--set", f"teacher.checkpoint={quickstart_3ep / 'last.pt'}", "--set", "optim.lr=0.001",
                        "--set", "optim.warmup_epochs=0"))
    assert res.returncode == 0, res.stderr
    accuracy = [json.loads((r / "summary.json").read_text())["student"]["accuracy"] for r in (quickstart_3ep, run)]
    assert accuracy[1] >= accuracy[0] - 0.05 and accuracy[1] > 0.5, accuracy


def test_near_ties_are_left_out_of_the_qat_gate():
    """qat_fidelity on made-up logits: a flip on an image whose fake-quant margin is within twice the
    rounding tolerance does not count against the file; a flip on a clear image does."""
    from edgekd.deploy.bundle_writer import qat_fidelity

    fake = np.array([[2.0, 1.95, 0.0], [3.0, 0.0, 0.0], [0.0, 4.0, 1.0], [0.0, 0.0, 5.0]])
    exact = fake + np.array([[0.03, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])  # tolerance 0.03: near-tie margin <= 0.06
    deployed = fake.copy()
    deployed[0] = [1.9, 2.0, 0.0]  # the near-tie flips
    f = qat_fidelity(fake, exact, deployed)
    assert f["near_ties"] == 1 and f["agreement"] == 0.75 and f["decisive_agreement"] == 1.0
    deployed[1] = [0.0, 3.5, 0.0]  # a clear image flips
    assert qat_fidelity(fake, exact, deployed)["decisive_agreement"] == pytest.approx(2 / 3)
