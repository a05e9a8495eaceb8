"""`edgekd export` on a real quickstart run: the bundle's files, parity, manifest, atomicity, bad input.

One quickstart run (3 epochs) is distilled and exported once per module, both
through the CLI in a subprocess, exactly as a user runs them.
"""

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import torch
import yaml

from edgekd.data import load_split_images
from edgekd.data.preprocess import normalize
from edgekd.deploy import export_bundle
from edgekd.deploy.bundle import parse_formats
from edgekd.deploy.int8 import (CPU_INT8, TENSORRT_INT8, Int8Settings, activation_ranges, pick_calibration,
                                quantization_entry, quantize_int8)
from edgekd.deploy.parity import require_fp32_parity
from edgekd.deploy.tensorrt import builder_flags, find_target, profile_shapes
from edgekd.errors import (ExportError, FailedCheck, Int8SearchError, MissingDependencyError, ParityError,
                           PeerLostError)
from edgekd.files import sha256_file
from edgekd.models import build_model, load_weights
from edgekd.recipe import ValidateConfig
from edgekd.runtime import TRT_MISSING

import _cli
from _training import IMAGE_SIZE, training_fixture

REPO = Path(__file__).resolve().parents[1]
ONNX_FILES = ("model_fp32.onnx", "model_fp16.onnx", "model_int8.onnx", "model_int8_cpu.onnx")
BUNDLE_FILES = {*ONNX_FILES, "int8_calibration.json", "manifest.json"}


def edgekd(*args, cwd=REPO, timeout=600):
    return _cli.edgekd(*args, cwd=cwd)


def tensorrt_importable() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def tensorrt_and_gpu() -> bool:
    if not tensorrt_importable():
        return False
    try:
        find_target()
    except MissingDependencyError:
        return False
    return True


def assert_one_line_error(proc, *needles, code=2):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert len(lines) == 1 and lines[0].startswith("edgekd: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def leftovers(parent: Path, name: str) -> list[str]:
    """The folder itself or atomic_dir's hidden temp folders for it."""
    if not parent.is_dir():
        return []
    return [p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}.")]


@training_fixture()
def run_dir(quickstart_3ep):
    return quickstart_3ep  # conftest.py: shared with test_validate


@training_fixture()
def bundle(quickstart_3ep_bundle):
    return quickstart_3ep_bundle


@training_fixture()
def manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


# ---------------------------------------------------------------- the files


def test_bundle_holds_exactly_the_documented_files(bundle):
    assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES  # no .data side files, no leftovers


@pytest.mark.parametrize("name", ONNX_FILES)
def test_onnx_files_are_self_contained(bundle, name):
    model = onnx.load(str(bundle / name), load_external_data=False)
    external = [t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external == []
    onnx.checker.check_model(str(bundle / name), full_check=True)
    assert next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) == 18


@pytest.mark.parametrize("name", ONNX_FILES)
@pytest.mark.parametrize("batch", [1, 7])
def test_each_file_runs_any_batch_in_onnxruntime(bundle, name, batch):
    session = ort.InferenceSession(str(bundle / name), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name, inp.type, out.type) == ("input", "logits", "tensor(float)", "tensor(float)")
    # dynamic batch, fixed H x W
    assert inp.shape[1:] == [1, IMAGE_SIZE, IMAGE_SIZE] and not isinstance(inp.shape[0], int)
    x = np.random.default_rng(batch).normal(size=(batch, 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    logits = session.run(None, {"input": x})[0]
    assert logits.shape == (batch, 10) and logits.dtype == np.float32 and np.isfinite(logits).all()


def _qdq_nodes(path):
    """(initializers by name, QuantizeLinear nodes, DequantizeLinear nodes) of a quantized file."""
    model = onnx.load(str(path))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert q and dq
    return consts, q, dq


def test_int8_file_is_symmetric_qdq_with_per_channel_weights(bundle):
    consts, q, dq = _qdq_nodes(bundle / "model_int8.onnx")
    # What TensorRT's explicit quantization parses: INT8 with zero point 0, no INT32 (bias) DequantizeLinear.
    zero_points = [consts[n.input[2]] for n in q + dq]
    assert all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert all(consts[n.input[0]].dtype == np.int8 for n in dq if n.input[0] in consts)
    weight_scales = [consts[n.input[1]] for n in dq if n.input[0] in consts and consts[n.input[0]].ndim == 4]
    assert weight_scales and all(s.size > 1 for s in weight_scales)  # one scale per output channel


def test_calibration_ranges_match_the_int8_model(bundle, manifest):
    cal = json.loads((bundle / "int8_calibration.json").read_text())
    quant = manifest["files"]["model_int8.onnx"]["quantization"]
    assert cal["split"] == quant["split"] == "train" and cal["method"] == quant["method"] == "minmax"
    assert cal["samples"] == quant["samples"] == min(512, manifest["data"]["sizes"]["train"])
    assert quant["ranges_file"] == "int8_calibration.json"
    model = onnx.load(str(bundle / "model_int8.onnx"))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    used = {n.input[0]: float(consts[n.input[1]]) for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert set(cal["tensors"]) == set(used)  # every quantized activation, and only those
    for name, r in cal["tensors"].items():
        assert r["zero_point"] == 0 and r["scale"] == pytest.approx(used[name], rel=1e-7), name
        if "min" in r:  # symmetric: never wider than what the calibrator saw (a ReLU may narrow it)
            assert 127 * r["scale"] <= max(abs(r["min"]), abs(r["max"])) * (1 + 1e-6), name
    x = cal["tensors"]["input"]  # the input has no ReLU after it: exactly its calibrated range
    assert 127 * x["scale"] == pytest.approx(max(abs(x["min"]), abs(x["max"])), rel=1e-6)


def test_int8_cpu_file_is_uint8_qdq_with_per_channel_weights(bundle):
    """ONNX Runtime's CPU flavour: uint8 activations with a zero point, int8 symmetric per-channel weights."""
    consts, q, dq = _qdq_nodes(bundle / "model_int8_cpu.onnx")
    # Activations: every QuantizeLinear quantizes a computed tensor to uint8, per tensor.
    assert all(n.input[0] not in consts for n in q)
    activation_zero_points = [consts[n.input[2]] for n in q]
    assert all(z.dtype == np.uint8 and z.size == 1 for z in activation_zero_points)
    assert any(z.item() != 0 for z in activation_zero_points)  # asymmetric: the input's range is not [0, max]
    assert all(consts[n.input[1]].size == 1 for n in q)
    # Weights: stored int8, one scale per output channel, zero point 0 (symmetric).
    weights = [n for n in dq if n.input[0] in consts and consts[n.input[0]].ndim == 4]
    assert weights
    for n in weights:
        w, scale, zero = consts[n.input[0]], consts[n.input[1]], consts[n.input[2]]
        assert w.dtype == np.int8 and scale.size == w.shape[0] > 1
        assert zero.dtype == np.int8 and not zero.any()
    # The ReLUs are folded into the quantization ranges; what is left fuses into integer kernels.
    graph = onnx.load(str(bundle / "model_int8_cpu.onnx")).graph
    assert not [n.op_type for n in graph.node if n.op_type in ("Relu", "Clip")]


def test_int8_cpu_runs_every_conv_as_an_integer_kernel(bundle, tmp_path):
    """The point of the file: ONNX Runtime's CPU provider leaves no Conv in float."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # no hardware-specific NCHWc
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(bundle / "model_int8_cpu.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    fp32_convs = sum(n.op_type == "Conv" for n in onnx.load(str(bundle / "model_fp32.onnx")).graph.node)
    assert "Conv" not in ops and ops.count("QLinearConv") == fp32_convs > 0


def test_int8_and_int8_cpu_share_one_calibration(bundle, manifest):
    """Same images, method and measured ranges; only the scale/zero point derived from them differ."""
    quant = manifest["files"]["model_int8.onnx"]["quantization"]
    cpu = manifest["files"]["model_int8_cpu.onnx"]["quantization"]
    for key in ("method", "samples", "split", "seed", "weights", "excluded_nodes"):
        assert cpu[key] == quant[key], key
    assert cpu["activations"] == "per-tensor asymmetric uint8" and quant["activations"] == "per-tensor symmetric int8"
    assert cpu["quant_format"] == quant["quant_format"] == "QDQ"
    assert cpu["tensorrt"] is False and quant["tensorrt"] is True and "not for TensorRT" in cpu["runtime"]
    assert cpu["ranges_file"] is None
    cal = json.loads((bundle / "int8_calibration.json").read_text())["tensors"]
    model = onnx.load(str(bundle / "model_int8_cpu.onnx"))
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    checked = 0
    for n in (n for n in model.graph.node if n.op_type == "QuantizeLinear"):
        r = cal.get(n.input[0])
        if r is None or "min" not in r:
            continue
        low, high = min(r["min"], 0.0), max(r["max"], 0.0)  # uint8 asymmetric: [min, max] widened to hold 0
        assert float(consts[n.input[1]]) == pytest.approx((high - low) / 255, rel=1e-6), n.input[0]
        assert int(consts[n.input[2]]) == round(-low / ((high - low) / 255)), n.input[0]
        checked += 1
    assert "input" in cal and checked >= 1


def test_per_tensor_weights_setting_gives_one_scale_per_weight(bundle, tmp_path):
    """Int8Settings(per_channel=False), the alternative benchmarks/bench_export.py measures: one weight scale
    per layer, recorded as such; the activations are calibrated exactly as with per-channel weights."""
    calib = np.random.default_rng(0).normal(size=(64, 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    s = Int8Settings(per_channel=False)
    result = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "t.onnx", calib, s, CPU_INT8)
    consts, _, dq = _qdq_nodes(tmp_path / "t.onnx")
    weight_scales = [consts[n.input[1]] for n in dq if n.input[0] in consts and consts[n.input[0]].ndim == 4]
    assert weight_scales and all(scale.size == 1 for scale in weight_scales)
    assert quantization_entry(result, s, 64)["weights"] == "per-tensor symmetric int8"
    per_channel = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "c.onnx", calib, Int8Settings(), CPU_INT8)
    assert quantization_entry(per_channel, Int8Settings(), 64)["weights"] == "per-channel symmetric int8"
    assert result.ranges == per_channel.ranges


def test_int8_manifest_entries_are_what_bundles_have_always_recorded():
    """One function over the two flavours writes exactly the keys, values and order of schema_version 1
    (export/README.md), and each flavour hands the quantizer the options its file was always made with."""
    from edgekd.deploy.int8 import Int8Result

    s = Int8Settings(samples=7, seed=3)
    int8 = quantization_entry(Int8Result(TENSORRT_INT8, ["n0"], {}), s, 5, "int8_calibration.json")
    assert list(int8.items()) == [
        ("method", "minmax"), ("samples", 5), ("split", "train"), ("seed", 3), ("weights", "per-channel symmetric int8"),
        ("activations", "per-tensor symmetric int8"), ("biases", "float"), ("quant_format", "QDQ"), ("tensorrt", True),
        ("excluded_nodes", ["n0"]), ("ranges_file", "int8_calibration.json")]
    cpu = quantization_entry(Int8Result(CPU_INT8, [], {}), s, 5)
    assert list(cpu.items()) == [
        ("method", "minmax"), ("samples", 5), ("split", "train"), ("seed", 3), ("weights", "per-channel symmetric int8"),
        ("activations", "per-tensor asymmetric uint8"), ("biases", "int32"), ("quant_format", "QDQ"), ("tensorrt", False),
        ("runtime", "ONNX Runtime on CPUs; not for TensorRT (it rejects non-zero zero points): use model_int8.onnx there"),
        ("excluded_nodes", []), ("ranges_file", None)]
    assert TENSORRT_INT8.extra_options == {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    assert CPU_INT8.extra_options == {"ActivationSymmetric": False, "WeightSymmetric": True, "QuantizeBias": True}


def test_per_channel_setting_must_be_a_bool(bundle, tmp_path):
    calib = np.zeros((8, 1, IMAGE_SIZE, IMAGE_SIZE), np.float32)
    with pytest.raises(ExportError, match="per_channel must be true or false"):
        quantize_int8(bundle / "model_fp32.onnx", tmp_path / "q.onnx", calib, Int8Settings(per_channel="no"),
                      TENSORRT_INT8)
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_with_an_uneven_sample_count(bundle, tmp_path, method):
    """100 images do not split into batches of 64; the histogram calibrators need equal batches."""
    calib = np.random.default_rng(0).normal(size=(100, 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    result = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "q.onnx", calib, Int8Settings(method=method),
                           TENSORRT_INT8)
    assert result.ranges and (tmp_path / "q.onnx").is_file()
    result = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "c.onnx", calib, Int8Settings(method=method),
                           CPU_INT8)
    assert result.ranges and (tmp_path / "c.onnx").is_file()


def test_entropy_calibration_clips_where_minmax_does_not(bundle, tmp_path):
    """ONNX Runtime's EntropyCalibrater at its default bins (128 and 128) returns MinMax's ranges
    exactly; edgekd's entropy ranges (int8.ENTROPY_BINS) cut the tails of some activations and
    never reach outside MinMax's."""
    calib = np.random.default_rng(0).normal(size=(128, 1, IMAGE_SIZE, IMAGE_SIZE)).astype(np.float32)
    minmax = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "m.onnx", calib, Int8Settings(), CPU_INT8).ranges
    entropy = quantize_int8(bundle / "model_fp32.onnx", tmp_path / "e.onnx", calib, Int8Settings(method="entropy"),
                            CPU_INT8).ranges
    assert set(entropy) == set(minmax)
    # The scale each activation's QuantizeLinear uses: its range over 255 levels.
    scales = {t: (r["scale"], entropy[t]["scale"]) for t, r in minmax.items()}
    assert all(e <= m * (1 + 1e-6) for m, e in scales.values()), scales
    assert sum(e < 0.9 * m for m, e in scales.values()) >= len(scales) // 4, scales
    # A ReLU's output starts at 0 (zero point 0 in uint8): ONNX Runtime drops the ReLU and lets that
    # range clip, so entropy must keep it starting at 0 too, or the ReLU would be lost.
    relu_like = [t for t, r in minmax.items() if r["zero_point"] == 0]
    assert relu_like and all(entropy[t]["zero_point"] == 0 for t in relu_like)


# ---------------------------------------------------------------- the manifest


def test_manifest_hashes_and_sizes_match_the_files(bundle, manifest):
    assert set(manifest["files"]) == BUNDLE_FILES - {"manifest.json"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(bundle / name), name
        assert entry["bytes"] == (bundle / name).stat().st_size, name
    assert [manifest["files"][n]["precision"] for n in ONNX_FILES] == ["fp32", "fp16", "int8", "int8_cpu"]


def test_manifest_describes_the_run(run_dir, manifest):
    recipe = yaml.safe_load((REPO / "recipes/quickstart.yaml").read_text())
    assert manifest["schema_version"] == 1 and manifest["kind"] == "edgekd.bundle"
    assert manifest["source"]["student_sha256"] == sha256_file(run_dir / "student.pt")
    assert manifest["source"]["recipe"] == "quickstart"
    assert manifest["data"] == json.loads((run_dir / "split.json").read_text())
    # Every gate key, the ones the recipe leaves unset as null.
    assert manifest["gate"] == {**dict.fromkeys(ValidateConfig.model_fields), **recipe["validate"]}
    assert manifest["input"] == {"name": "input", "shape": ["batch", 1, IMAGE_SIZE, IMAGE_SIZE], "dtype": "float32",
                                 "layout": "NCHW"}
    assert manifest["output"]["shape"] == ["batch", 10] and manifest["model"]["arch"] == "cnn_tiny"
    assert manifest["tools"]["onnxruntime"] == ort.__version__ and manifest["tools"]["tensorrt"] is None


def test_fp32_parity_is_recorded_and_true(run_dir, bundle, manifest):
    """Recompute on the val split what the manifest claims: PyTorch vs the FP32 file."""
    val = load_split_images(manifest["data"], "val")
    pre = manifest["preprocessing"]
    x = normalize(val.images, pre["mean"], pre["std"])
    ckpt = torch.load(run_dir / "student.pt", weights_only=True)
    model = build_model(ckpt["arch"], ckpt["num_classes"], ckpt["in_channels"], ckpt["image_size"])
    load_weights(model, ckpt["state_dict"], "student.pt")
    with torch.no_grad():
        torch_logits = model.eval()(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(bundle / "model_fp32.onnx"), providers=["CPUExecutionProvider"])
    onnx_logits = session.run(None, {"input": x})[0]
    assert np.abs(onnx_logits - torch_logits).max() < 1e-3

    ref, fp32 = manifest["reference"], manifest["files"]["model_fp32.onnx"]
    assert ref["n"] == fp32["parity"]["n"] == len(val.labels) == manifest["data"]["sizes"]["val"]
    assert ref["accuracy"] == pytest.approx(float(np.mean(torch_logits.argmax(1) == val.labels)))
    assert fp32["parity"]["max_abs_logit_diff"] < 1e-3 and fp32["parity"]["top1_agreement"] >= 0.999
    assert abs(fp32["drift"]["accuracy_drop"]) < 1e-9 and fp32["drift"]["ece_drift"] < 1e-6
    for name in ONNX_FILES:  # every file's figures are recorded, FP16/INT8/INT8-CPU without a pass/fail
        entry = manifest["files"][name]
        assert set(entry["metrics"]) == {"accuracy", "ece", "nll", "brier"}
        assert 0 <= entry["parity"]["top1_agreement"] <= 1
        assert entry["drift"]["accuracy_drop"] == pytest.approx(ref["accuracy"] - entry["metrics"]["accuracy"])


def test_edgekd_validate_accepts_the_bundle(bundle):
    res = edgekd("validate", bundle, "--max-ece", "1", "--max-acc-drop", "1", "--min-agreement", "0",
                 "--max-ece-drift", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "VERDICT: PASS" in res.stdout


# ---------------------------------------------------------------- atomicity, TensorRT, bad input


def test_interrupted_export_leaves_nothing(run_dir, tmp_path):
    """Ctrl-C after the FP32 and FP16 files are written: no bundle, no temp folder."""
    out = tmp_path / "bundle"
    written = []

    def log(line):
        written.append(line)
        if line.startswith("writing model_int8.onnx"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_bundle(run_dir=run_dir, out=out, log=log)
    assert any(line.startswith("writing model_fp16.onnx") for line in written)
    assert leftovers(tmp_path, "bundle") == []


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is installed here")
def test_trt_without_tensorrt_still_writes_the_onnx_bundle(run_dir, tmp_path):
    out = tmp_path / "trt"
    res = edgekd("export", run_dir, "--out", out, "--formats", "fp32,fp16", "--trt")
    assert_one_line_error(res, "TensorRT is not installed", f"the ONNX files in {out} are complete")
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"model_fp32.onnx", "model_fp16.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(out / name)


@pytest.mark.trt
@pytest.mark.skipif(not tensorrt_and_gpu(), reason=TRT_MISSING)
def test_trt_engines_are_built_and_recorded(run_dir, tmp_path):
    out = tmp_path / "trt"
    res = edgekd("export", run_dir, "--out", out, "--trt", "--max-batch", "16")
    assert res.returncode == 0, res.stderr[-3000:]
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert {n for n, e in files.items() if e["format"] == "tensorrt"} == {"model_fp16.engine", "model_int8.engine"}
    assert "model_int8_cpu.onnx" in files  # written, but no engine is ever built from it
    for precision in ("fp16", "int8"):
        entry = files[f"model_{precision}.engine"]
        assert entry["format"] == "tensorrt" and entry["precision"] == precision
        assert entry["profile"] == {"min": 1, "opt": 8, "max": 16} and entry["from"] == f"model_{precision}.onnx"
        assert entry["tensorrt_version"] and entry["gpu_name"] and entry["compute_capability"]
        assert entry["sha256"] == sha256_file(out / f"model_{precision}.engine")


def _no_student(tmp_path):
    (tmp_path / "run").mkdir()
    return tmp_path / "run", "has no student.pt"


def _truncated_student(tmp_path, run_dir):
    (tmp_path / "run").mkdir()
    data = (run_dir / "student.pt").read_bytes()
    (tmp_path / "run" / "student.pt").write_bytes(data[: len(data) // 2])
    return tmp_path / "run", "truncated or not a PyTorch checkpoint"


def _foreign_student(tmp_path):
    (tmp_path / "run").mkdir()
    torch.save({"model": torch.zeros(3)}, tmp_path / "run" / "student.pt")
    return tmp_path / "run", "is not an edgekd student checkpoint"


@pytest.mark.parametrize("case", ["missing run", "no student.pt", "truncated", "foreign", "unknown format",
                                  "out under a file"])
def test_bad_input_is_one_line_and_leaves_nothing(case, run_dir, tmp_path):
    out, extra = tmp_path / "out", []
    if case == "missing run":
        run, needle = tmp_path / "nope", "does not exist"
    elif case == "no student.pt":
        run, needle = _no_student(tmp_path)
    elif case == "truncated":
        run, needle = _truncated_student(tmp_path, run_dir)
    elif case == "foreign":
        run, needle = _foreign_student(tmp_path)
    elif case == "unknown format":
        run, needle, extra = run_dir, "unknown format 'bf16'; allowed: fp32, fp16, int8, int8_cpu", \
            ["--formats", "fp32,bf16"]
    else:
        (tmp_path / "file").write_text("not a folder")
        run, needle, out = run_dir, "cannot write to", tmp_path / "file" / "out"
    res = edgekd("export", run, "--out", out, *extra)
    assert_one_line_error(res, needle)
    assert not out.exists() and leftovers(out.parent, out.name) == []


def test_existing_out_is_refused_and_kept(run_dir, bundle):
    before = sha256_file(bundle / "manifest.json")
    res = edgekd("export", run_dir, "--out", bundle)
    assert_one_line_error(res, "already exists")
    assert sha256_file(bundle / "manifest.json") == before


# ---------------------------------------------------------------- pieces that need no model


def test_formats_always_include_fp32_in_bundle_order():
    assert parse_formats(None) == ["fp32", "fp16", "int8", "int8_cpu"]
    assert parse_formats(["int8"]) == ["fp32", "int8"]
    assert parse_formats(["int8_cpu", "fp16"]) == ["fp32", "fp16", "int8_cpu"]
    with pytest.raises(ExportError, match="allowed: fp32, fp16, int8, int8_cpu"):
        parse_formats(["fp32", "engine"])


def test_trt_never_builds_from_int8_cpu():
    """Refused before any work (no run is even looked for): int8_cpu is not a TensorRT file."""
    with pytest.raises(ExportError, match="never int8_cpu"):
        export_bundle(run_dir="does-not-matter", formats=["fp32", "int8_cpu"], trt=True, log=lambda line: None)


def test_int8_cpu_alone_calibrates_itself(run_dir, manifest, tmp_path):
    """--formats int8_cpu without int8: its own calibration (same images and method, so the very same
    file as in the default bundle, where it reuses int8's calibration), no ranges file."""
    out = export_bundle(run_dir=run_dir, out=tmp_path / "b", formats=["int8_cpu"], log=lambda line: None)
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert set(files) == {"model_fp32.onnx", "model_int8_cpu.onnx"}
    assert files["model_int8_cpu.onnx"]["quantization"]["samples"] > 0
    assert files["model_int8_cpu.onnx"]["sha256"] == sha256_file(out / "model_int8_cpu.onnx")
    assert files["model_int8_cpu.onnx"]["sha256"] == manifest["files"]["model_int8_cpu.onnx"]["sha256"]


def test_calibration_images_are_a_seeded_sample_not_the_first_n():
    s = Int8Settings(samples=100)
    picked = pick_calibration(1000, s)
    assert len(set(picked.tolist())) == 100 and picked.max() < 1000
    assert np.array_equal(picked, pick_calibration(1000, s))  # same images every export
    assert not np.array_equal(picked, np.arange(100))  # the train split is stored class by class
    assert len(pick_calibration(30, s)) == 30  # fewer training images than asked: all of them


def test_ranges_record_none_for_a_range_that_is_not_finite():
    """int8_calibration.json is strict JSON: an activation that overflowed on a calibration image is None."""
    from onnx import TensorProto, helper
    from onnxruntime.quantization.calibrate import TensorData

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info("q", TensorProto.INT8, [1])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.5]), helper.make_tensor("z", TensorProto.INT8, [], [0])])
    calibrated = {"x": TensorData(lowest=np.float32(-np.inf), highest=np.float32(3.0))}
    assert activation_ranges(helper.make_model(graph), calibrated) == \
        {"x": {"min": None, "max": 3.0, "scale": 0.5, "zero_point": 0}}


def test_failed_checks_share_one_base_with_exit_1_bad_input_exits_2():
    """The CLI exits with an EdgeKDError's exit_code: 1 for every FailedCheck, 2 for bad input."""
    for failed in (ParityError, PeerLostError, Int8SearchError):
        assert issubclass(failed, FailedCheck) and failed("x").exit_code == 1
    assert not issubclass(Int8SearchError, ParityError)  # an unpassed search is not a parity failure
    assert ExportError("x").exit_code == 2 and not issubclass(ExportError, FailedCheck)


def test_fp32_parity_rule():
    ref = np.array([[5.0, 1.0, 0.0], [2.0, 2.0 + 1e-4, 0.0], [0.0, 3.0, 1.0]], dtype=np.float32)
    require_fp32_parity("m.onnx", ref, ref + 5e-4)  # within 1e-3 + 1e-4 x the largest logit
    tie_flipped = ref.copy()
    tie_flipped[1] = [2.0 + 1e-4, 2.0, 0.0]  # a near-tie may flip: rounding, not a broken export
    require_fp32_parity("m.onnx", ref, tie_flipped)
    with pytest.raises(ParityError, match="m.onnx disagrees with PyTorch"):
        require_fp32_parity("m.onnx", ref, ref + np.float32(0.01))
    decided_flip = ref.copy()
    decided_flip[0] = [1.0, 5.0, 0.0]
    with pytest.raises(ParityError):
        require_fp32_parity("m.onnx", ref, decided_flip)
    big = ref * 1e5  # huge logits: float32 rounding alone exceeds 1e-3
    require_fp32_parity("m.onnx", big, big + 1.0)


def test_tensorrt_profile_shapes():
    assert profile_shapes(64, 3, 32) == {"min": (1, 3, 32, 32), "opt": (32, 3, 32, 32), "max": (64, 3, 32, 32)}
    assert profile_shapes(1, 1, 28)["opt"] == (1, 1, 28, 28)
    with pytest.raises(ExportError):
        profile_shapes(0, 3, 32)


@pytest.mark.parametrize("version, precision, flags", [
    ("10.3.0.26", "fp16", ("FP16",)),
    ("10.13.0", "int8", ("INT8", "FP16")),
    ("11.0.0", "fp16", ()),  # strongly typed: precision comes from the ONNX file
    ("11.4.1", "int8", ()),
])
def test_tensorrt_builder_flags_by_version(version, precision, flags):
    assert builder_flags(version, precision) == flags


def test_tensorrt_older_than_10_is_refused():
    with pytest.raises(MissingDependencyError, match="TensorRT 8.6.1 is too old"):
        builder_flags("8.6.1", "fp16")


@pytest.mark.skipif(tensorrt_importable(), reason="TensorRT is installed here")
def test_find_target_names_the_missing_tensorrt():
    with pytest.raises(MissingDependencyError, match=r"^--trt: TensorRT is not installed \(pip install"):
        find_target()


def test_default_out_is_under_the_current_directory(run_dir, tmp_path, monkeypatch):
    """export/<run-name>/ relative to where edgekd runs, never to where the package is installed."""
    monkeypatch.chdir(tmp_path)
    out = export_bundle(run_dir=run_dir, formats=["fp32"], log=lambda line: None)
    assert out == Path("export") / run_dir.name
    assert (tmp_path / "export" / run_dir.name / "manifest.json").is_file()
    assert not (REPO / "export" / run_dir.name).exists()
    assert sorted(os.listdir(tmp_path / "export" / run_dir.name)) == ["manifest.json", "model_fp32.onnx"]
