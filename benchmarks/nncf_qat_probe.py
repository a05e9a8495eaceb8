"""NNCF PyTorch QAT vs edgekd's torchao PT2E QAT on edgekd's float MobileNetV3-small (CIFAR-10, 32x32).

Not part of edgekd (nncf is not a dependency): run in a side venv that sees the project's .venv packages
through a .pth file and adds nncf, so the project's venv is left as it is:

    python3.11 -m venv /tmp/nncf-venv
    echo "$PWD/.venv/lib/python3.11/site-packages" > /tmp/nncf-venv/lib/python3.11/site-packages/main_venv.pth
    /tmp/nncf-venv/bin/pip install nncf            # 3.4.0 on 2026-12-06 (+ ninja, psutil, pydot, tabulate)
    PROBE_RUN=<float MobileNetV3-small run> PROBE_EXPORTS=<folder with mnv3-plain/ and mnv3-qat-conv/ bundles> \
      PROBE_OUT=/tmp/nncf-probe NNCF_EXTENSION_LOAD_TIMEOUT=0 OMP_NUM_THREADS=1 /tmp/nncf-venv/bin/python benchmarks/nncf_qat_probe.py

(the run and bundles of docs/performance.md's INT8-aware table). Writes PROBE_OUT/results.json
(committed as results/nncf-qat-probe.json) and the ONNX files under PROBE_OUT/out/.

Steps
1. float student -> nncf.quantize (PTQ init: preset MIXED, target CPU, per-tensor activations)
   on 1,024 train images, as NNCF's QAT guide's step 1.
2. fine-tune N SGD steps (lr 1e-3, momentum 0.9, batch 128, CE, random horizontal flips).
3. export as NNCF's code allows for ONNX Runtime: nncf.strip(NATIVE) -> torch FakeQuantize modules ->
   torch.onnx.export(dynamo=False). The other routes are tried and their failures recorded.
4. the same, with BatchNorm folded into the convolutions before nncf.quantize (NNCF's torch backend
   keeps BN as a separate op; OpenVINO folds it, ONNX Runtime cannot fold it behind a DequantizeLinear).
5. the same fine-tune with edgekd's torchao PT2E QAT (edgekd.training.quantize.prepare('int8_cpu'),
   export with edgekd.deploy.onnx_export.export_fp32).
6. fidelity (ORT vs the fake-quant torch model), graph structure (as written and after ORT's own
   optimizer), val accuracy, and ORT speed in rotating rounds next to edgekd's FP32/PTQ/QAT files.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import platform
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", "0")  # the C++ extension compiles slowly on a busy 2-core box

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import numpy_helper
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(0)

import nncf  # noqa: E402
import torchao  # noqa: E402

from edgekd.deploy.onnx_export import export_fp32  # noqa: E402
from edgekd.deploy.source import load_run_student, split_images  # noqa: E402
from edgekd.training import quantize as ek_quantize  # noqa: E402

HERE = Path(os.environ.get("PROBE_OUT", "/tmp/nncf-probe"))
OUT = HERE / "out"
OUT.mkdir(parents=True, exist_ok=True)
RUN = Path(os.environ.get("PROBE_RUN", "runs/mnv3-float"))
EXPORTS = Path(os.environ.get("PROBE_EXPORTS", "export"))
STEPS = int(os.environ.get("PROBE_STEPS", "150"))
BATCH = 128
LR = 1e-3
CALIB_IMAGES = 1024
ROUNDS = int(os.environ.get("PROBE_ROUNDS", "11"))
CALLS = 5
BENCH_BATCH = 64

results: dict = {
    "versions": {
        "python": platform.python_version(), "torch": torch.__version__, "nncf": nncf.__version__,
        "torchao": torchao.__version__, "onnx": onnx.__version__, "onnxruntime": ort.__version__,
        "numpy": np.__version__,
    },
    "setup": {"steps": STEPS, "batch": BATCH, "lr": LR, "optimizer": "SGD momentum 0.9",
              "calibration_images": CALIB_IMAGES, "bench_batch": BENCH_BATCH, "rounds": ROUNDS,
              "calls_per_round": CALLS, "ort_threads": "intra_op 1, inter_op 1, sequential"},
}


def log(*a):
    print(*a, flush=True)


def first(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return f"{type(e).__name__}: {s[0][:300] if s else ''}"


# ----------------------------------------------------------------------------------------------- data
st = load_run_student(RUN)
val, train = split_images(st, "val"), split_images(st, "train")
x_val = st.preprocess(val).astype(np.float32)
y_val = np.asarray(val.labels)
x_tr = st.preprocess(train).astype(np.float32)
y_tr = np.asarray(train.labels)
log("val", x_val.shape, "train", x_tr.shape)


@torch.no_grad()
def torch_logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    return torch.cat([model(torch.from_numpy(x[i:i + 500])) for i in range(0, len(x), 500)]).numpy()


def acc(logits: np.ndarray) -> float:
    return float((logits.argmax(1) == y_val).mean())


float_logits = torch_logits(st.model, x_val)
results["float_torch_val_acc"] = acc(float_logits)
log("float acc", results["float_torch_val_acc"])


def batches(seed: int):
    rng = np.random.default_rng(seed)
    while True:
        idx = rng.choice(len(x_tr), BATCH, replace=False)
        xb = x_tr[idx].copy()
        flip = rng.random(BATCH) < 0.5
        xb[flip] = xb[flip][..., ::-1]
        yield torch.from_numpy(np.ascontiguousarray(xb)), torch.from_numpy(y_tr[idx]).long()


def finetune(model: nn.Module, params, set_train) -> dict:
    opt = torch.optim.SGD(params, lr=LR, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    set_train()
    gen = batches(1)
    losses, t0 = [], time.perf_counter()
    for step in range(STEPS):
        xb, yb = next(gen)
        loss = loss_fn(model(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 25 == 0:
            log(f"  step {step} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    dt = time.perf_counter() - t0
    model.eval()
    return {"seconds": round(dt, 1), "s_per_step": round(dt / STEPS, 3),
            "loss_first10": float(np.mean(losses[:10])), "loss_last10": float(np.mean(losses[-10:]))}


# ------------------------------------------------------------------------------------------- ONNX tools
def ort_session(path, optimized_out: Path | None = None, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level
    if optimized_out is not None:
        so.optimized_model_filepath = str(optimized_out)
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(sess, x: np.ndarray) -> np.ndarray:
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 500]})[0] for i in range(0, len(x), 500)])


def graph_facts(path: Path) -> dict:
    """Op counts and, per Conv/Gemm, whether it is DequantizeLinear -> op -> QuantizeLinear; Q/DQ dtypes."""
    m = onnx.load(str(path))
    g = m.graph
    inits = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    consts = {}
    producer, consumers = {}, {}
    for n in g.node:
        for o in n.output:
            producer[o] = n
        for i in n.input:
            consumers.setdefault(i, []).append(n)
        if n.op_type == "Constant":
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)

    def value(name):
        if name in inits:
            return inits[name]
        if name in consts:
            return consts[name]
        p = producer.get(name)
        if p is not None and p.op_type == "Identity":
            return value(p.input[0])
        return None

    def src(name):  # skip Identity nodes
        p = producer.get(name)
        while p is not None and p.op_type == "Identity":
            p = producer.get(p.input[0])
        return p

    ops = Counter(n.op_type for n in g.node if n.op_type not in ("Constant",))
    conv_like = [n for n in g.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    full_qdq, in_dq, w_dq, w_int_init, out_q = 0, 0, 0, 0, 0
    between = Counter()  # what sits between a Conv and the next QuantizeLinear when not direct
    for n in conv_like:
        a, w = src(n.input[0]), src(n.input[1])
        i_ok = a is not None and a.op_type == "DequantizeLinear"
        w_ok = w is not None and w.op_type == "DequantizeLinear"
        w_int = w_ok and value(w.input[0]) is not None and value(w.input[0]).dtype in (np.int8, np.uint8)
        cons = consumers.get(n.output[0], [])
        o_ok = bool(cons) and all(c.op_type == "QuantizeLinear" for c in cons)
        if not o_ok:
            between["->".join(c.op_type for c in cons)] += 1
        in_dq += i_ok
        w_dq += w_ok
        w_int_init += w_int
        out_q += o_ok
        full_qdq += i_ok and w_ok and o_ok
    act_dtypes, weight_dtypes, act_per_channel, weight_per_channel = Counter(), Counter(), 0, 0
    weight_dq_names = set()
    for n in conv_like:
        w = src(n.input[1])
        if w is not None and w.op_type == "DequantizeLinear":
            weight_dq_names.add(w.name or id(w))
    for n in g.node:
        if n.op_type != "DequantizeLinear":
            continue
        zp = value(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        data = value(n.input[0])
        dt = str(zp.dtype) if zp is not None else (str(data.dtype) if data is not None else "?")
        scale = value(n.input[1])
        per_ch = scale is not None and scale.size > 1
        if (n.name or id(n)) in weight_dq_names:
            weight_dtypes[dt] += 1
            weight_per_channel += per_ch
        else:
            act_dtypes[dt] += 1
            act_per_channel += per_ch
    opsets = {o.domain or "ai.onnx": o.version for o in m.opset_import}
    return {
        "bytes": path.stat().st_size, "opsets": opsets,
        "ops": dict(sorted(ops.items(), key=lambda kv: -kv[1])),
        "conv_gemm": len(conv_like), "conv_gemm_DQ_op_Q": full_qdq, "input_from_DQ": in_dq,
        "weight_from_DQ": w_dq, "weight_int8_initializer": w_int_init, "output_to_Q": out_q,
        "output_not_Q_goes_to": dict(between),
        "weight_DQ_dtypes": dict(weight_dtypes), "weight_DQ_per_channel": weight_per_channel,
        "activation_DQ_dtypes": dict(act_dtypes), "activation_DQ_per_channel": act_per_channel,
    }


def ort_fused(path: Path, tag: str) -> dict:
    """What ONNX Runtime's own optimizer makes of the file (ORT_ENABLE_ALL, as the benchmark runs it)."""
    out = OUT / f"ortopt_{tag}.onnx"
    try:
        ort_session(path, out)
        m = onnx.load(str(out))
        c = Counter(n.op_type for n in m.graph.node)
        keys = ["QLinearConv", "Conv", "FusedConv", "NchwcConv", "QLinearMatMul", "QGemm", "Gemm", "MatMulIntegerToFloat",
                "QuantizeLinear", "DequantizeLinear", "BatchNormalization", "QLinearAdd", "QLinearMul",
                "QLinearGlobalAveragePool", "QLinearSigmoid", "HardSwish", "Relu"]
        return {k: c.get(k, 0) for k in keys if c.get(k, 0)} | {"total_nodes": sum(c.values())}
    except Exception as e:  # noqa: BLE001
        return {"error": first(e)}


def fidelity(path: Path, ref_logits: np.ndarray) -> dict:
    s = ort_session(path)
    lo = ort_logits(s, x_val)
    return {"val_acc_onnx": acc(lo), "val_acc_torch_fakequant": acc(ref_logits),
            "top1_agreement_onnx_vs_torch": float((lo.argmax(1) == ref_logits.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(lo - ref_logits).max()),
            "mean_abs_logit_diff": float(np.abs(lo - ref_logits).mean())}


# --------------------------------------------------------------------------------------------- NNCF
def fold_bn(model: nn.Module) -> nn.Module:
    """Fold every Conv2d -> BatchNorm2d pair of a Sequential (torchvision's Conv2dNormActivation)."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    model = copy.deepcopy(model).eval()
    for mod in model.modules():
        if isinstance(mod, nn.Sequential):
            names = list(mod._modules)
            for a, b in zip(names, names[1:]):
                if isinstance(mod._modules[a], nn.Conv2d) and isinstance(mod._modules[b], nn.BatchNorm2d):
                    mod._modules[a] = fuse_conv_bn_eval(mod._modules[a], mod._modules[b])
                    mod._modules[b] = nn.Identity()
    return model


def nncf_quantize(model: nn.Module) -> nn.Module:
    calib = [torch.from_numpy(x_tr[i:i + BATCH]) for i in range(0, CALIB_IMAGES, BATCH)]
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters
    adv = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False))
    return nncf.quantize(copy.deepcopy(model).eval(), nncf.Dataset(calib), subset_size=len(calib),
                         preset=nncf.QuantizationPreset.MIXED, target_device=nncf.TargetDevice.CPU,
                         advanced_parameters=adv)


def quantizer_summary(q: nn.Module) -> dict:
    from nncf.torch.function_hook.wrapper import get_hook_storage
    from nncf.torch.quantization.layers import BaseQuantizer
    c = Counter()
    for name, mod in get_hook_storage(q).named_hooks():
        if isinstance(mod, BaseQuantizer):
            kind = "weight" if name.startswith("pre_hooks") else "activation"
            c[f"{kind}: {type(mod).__name__} levels[{mod.level_low},{mod.level_high}] "
              f"{'per-channel' if mod.per_channel else 'per-tensor'}"] += 1
    return dict(c)


def export_attempts(q: nn.Module, tag: str) -> tuple[Path | None, dict]:
    """Every route from the NNCF model to ONNX; returns the ORT-runnable file and what each route did."""
    x = torch.from_numpy(x_val[:4])
    tried = {}
    ts_kw = dict(dynamo=False, opset_version=18, input_names=["input"], output_names=["logits"],
                 dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})

    def quiet():
        st_ = contextlib.ExitStack()
        st_.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore")
        st_.enter_context(contextlib.redirect_stdout(io.StringIO()))
        return st_

    # (1) NNCF's own example route (examples/post_training_quantization/torch/ssd300_vgg16): the NNCF model as is
    p = OUT / f"{tag}_asis_torchscript.onnx"
    try:
        with quiet():
            torch.onnx.export(copy.deepcopy(q).eval(), (x,), str(p), **ts_kw)
        doms = sorted({n.domain for n in onnx.load(str(p)).graph.node if n.domain})
        try:
            ort_session(p)
            tried["as_is_torchscript"] = f"written, custom domains {doms}, ORT loads it"
        except Exception as e:  # noqa: BLE001
            tried["as_is_torchscript"] = f"written (custom domains {doms}); ORT: {first(e)}"
    except Exception as e:  # noqa: BLE001
        tried["as_is_torchscript"] = f"export failed: {first(e)}"
    # (2) the NNCF model through torch.export (the exporter edgekd uses)
    try:
        with quiet():
            torch.onnx.export(copy.deepcopy(q).eval(), (x,), dynamo=True, opset_version=18,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        tried["as_is_dynamo"] = "ok"
    except Exception as e:  # noqa: BLE001
        tried["as_is_dynamo"] = f"export failed: {first(e)}"
    # (3) nncf.strip(NATIVE): NNCF quantizers -> torch.ao FakeQuantize modules
    t0 = time.perf_counter()
    stripped = nncf.strip(q, do_copy=True, strip_format=nncf.StripFormat.NATIVE,
                          example_input=torch.zeros(2, 3, 32, 32)).eval()
    tried["strip_seconds"] = round(time.perf_counter() - t0, 2)
    strip_logits = torch_logits(stripped, x_val)
    q_logits = torch_logits(q, x_val)
    tried["strip_vs_nncf_max_abs_logit_diff_val"] = float(np.abs(strip_logits - q_logits).max())
    tried["strip_vs_nncf_top1_agreement_val"] = float((strip_logits.argmax(1) == q_logits.argmax(1)).mean())
    tried["stripped_torch_val_acc"] = acc(strip_logits)
    export_attempts.stripped_logits = strip_logits
    try:
        with quiet():
            prog = torch.onnx.export(stripped, (x,), dynamo=True, opset_version=18, input_names=["input"],
                                     output_names=["logits"], dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
            prog.save(str(OUT / f"{tag}_strip_dynamo.onnx"), external_data=False)
        tried["strip_native_dynamo"] = "ok"
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        cause = next((ln.strip() for ln in msg.splitlines() if "GuardOnDataDependent" in ln or "Could not guard" in ln), "")
        tried["strip_native_dynamo"] = f"export failed: {first(e)} | {cause[:200]}"
    p = OUT / f"{tag}_strip_torchscript.onnx"
    good = None
    try:
        t0 = time.perf_counter()
        with quiet():
            torch.onnx.export(stripped, (x,), str(p), **ts_kw)
        onnx.checker.check_model(str(p), full_check=True)
        tried["strip_native_torchscript"] = f"ok, checker passes ({time.perf_counter() - t0:.1f}s)"
        good = p
    except Exception as e:  # noqa: BLE001
        tried["strip_native_torchscript"] = f"failed: {first(e)}"
    return good, tried


def run_nncf(tag: str, base: nn.Module) -> dict:
    r: dict = {}
    t0 = time.perf_counter()
    q = nncf_quantize(base)
    r["quantize_seconds"] = round(time.perf_counter() - t0, 1)
    r["quantizers"] = quantizer_summary(q)
    r["ptq_val_acc_torch"] = acc(torch_logits(q, x_val))
    log(tag, "PTQ acc", r["ptq_val_acc_torch"], r["quantize_seconds"], "s")
    n_params = sum(p.numel() for p in q.parameters() if p.requires_grad)
    r["trainable_params"] = n_params

    def set_train():
        q.train()
        for m in q.modules():  # NNCF's QAT guide: turn Dropout off while training with quantization
            if isinstance(m, nn.Dropout):
                m.eval()
    r["finetune"] = finetune(q, [p for p in q.parameters() if p.requires_grad], set_train)
    ref = torch_logits(q, x_val)
    r["qat_val_acc_torch"] = acc(ref)
    log(tag, "QAT acc", r["qat_val_acc_torch"], r["finetune"])
    path, r["export"] = export_attempts(q, tag)
    log(tag, "export", json.dumps(r["export"], indent=1))
    if path is not None:
        r["file"] = str(path)
        r["fidelity"] = fidelity(path, ref)
        r["fidelity_vs_stripped_torch"] = fidelity(path, export_attempts.stripped_logits)
        r["graph"] = graph_facts(path)
        r["ort_optimized"] = ort_fused(path, tag)
        log(tag, json.dumps({k: r[k] for k in ("fidelity", "graph", "ort_optimized")}, indent=1))
    return r


def run_torchao(tag: str) -> dict:
    r: dict = {}
    t0 = time.perf_counter()
    student = ek_quantize.prepare(copy.deepcopy(st.model).eval(), "int8_cpu", 3, 32, "mobilenet_v3_small")
    # calibrate the observers on the same 1,024 train images (train mode, observers on), no weight update
    student.train()
    with torch.no_grad():
        for i in range(0, CALIB_IMAGES, BATCH):
            student(torch.from_numpy(x_tr[i:i + BATCH]))
    r["prepare_calibrate_seconds"] = round(time.perf_counter() - t0, 1)
    r["ptq_val_acc_torch"] = acc(torch_logits(student, x_val))
    log(tag, "init acc", r["ptq_val_acc_torch"])
    r["finetune"] = finetune(student, list(student.parameters()), student.train)
    ref = torch_logits(student, x_val)
    r["qat_val_acc_torch"] = acc(ref)
    log(tag, "QAT acc", r["qat_val_acc_torch"], r["finetune"])
    path = OUT / f"{tag}.onnx"
    t0 = time.perf_counter()
    conv = student.converted()
    conv_logits = torch_logits(conv, x_val)
    r["converted_vs_fakequant_max_abs_logit_diff"] = float(np.abs(conv_logits - ref).max())
    export_fp32(conv, path, 3, 32)
    r["export_seconds"] = round(time.perf_counter() - t0, 1)
    r["export"] = "edgekd export_fp32: convert_pt2e -> torch.onnx.export(dynamo=True), checker passes"
    r["file"] = str(path)
    r["fidelity"] = fidelity(path, ref)
    r["graph"] = graph_facts(path)
    r["ort_optimized"] = ort_fused(path, tag)
    log(tag, json.dumps({k: r[k] for k in ("fidelity", "graph", "ort_optimized")}, indent=1))
    return r


def bench(files: dict[str, Path]) -> dict:
    x = x_val[:BENCH_BATCH]
    sess = {k: ort_session(p) for k, p in files.items()}
    for s in sess.values():  # warm-up
        for _ in range(3):
            s.run(None, {s.get_inputs()[0].name: x})
    per = {k: [] for k in files}
    keys = list(files)
    for r in range(ROUNDS):
        order = keys[r % len(keys):] + keys[:r % len(keys)]  # rotate who goes first
        for k in order:
            s = sess[k]
            name = s.get_inputs()[0].name
            t0 = time.perf_counter()
            for _ in range(CALLS):
                s.run(None, {name: x})
            per[k].append(CALLS * BENCH_BATCH / (time.perf_counter() - t0))
    med = {k: float(np.median(v)) for k, v in per.items()}
    # ratio per round (same round, so the background load is shared), then the median of those
    ratios = {k: float(np.median(np.array(per[k]) / np.array(per["fp32"]))) for k in files}
    return {"images_per_s_median": med, "ratio_to_fp32_median_of_rounds": ratios,
            "ratio_of_medians": {k: med[k] / med["fp32"] for k in files},
            "rounds": {k: [round(v, 1) for v in per[k]] for k in files}}


def main():
    t_all = time.perf_counter()
    for tag, fn in [("nncf", lambda: run_nncf("nncf", st.model)),
                    ("nncf_bnfold", lambda: run_nncf("nncf_bnfold", fold_bn(st.model))),
                    ("torchao_same_ft", lambda: run_torchao("torchao_same_ft"))]:
        log("=" * 30, tag)
        try:
            results[tag] = fn()
        except Exception as e:  # noqa: BLE001
            results[tag] = {"error": first(e), "trace": traceback.format_exc()[-3000:]}
            log(results[tag]["trace"])
        (HERE / "results.json").write_text(json.dumps(results, indent=1))
    # edgekd's own files (as the bundles hold them)
    edge = {"fp32": EXPORTS / "mnv3-plain/model_fp32.onnx",
            "edgekd_ptq_int8_cpu": EXPORTS / "mnv3-plain/model_int8_cpu.onnx",
            "edgekd_torchao_qat_int8_cpu": EXPORTS / "mnv3-qat-conv/model_int8_cpu.onnx"}
    results["edgekd_files"] = {}
    for k, p in edge.items():
        s = ort_session(p)
        results["edgekd_files"][k] = {"file": str(p), "val_acc_onnx": acc(ort_logits(s, x_val)),
                                      "graph": graph_facts(p), "ort_optimized": ort_fused(p, k)}
    files = dict(edge)
    for tag in ("nncf", "nncf_bnfold", "torchao_same_ft"):
        f = results.get(tag, {}).get("file")
        if f:
            files[tag] = Path(f)
    log("bench", list(files))
    results["speed"] = bench(files)
    results["total_seconds"] = round(time.perf_counter() - t_all, 1)
    (HERE / "results.json").write_text(json.dumps(results, indent=1))
    log(json.dumps(results["speed"]["ratio_to_fp32_median_of_rounds"], indent=1))


if __name__ == "__main__":
    main()
