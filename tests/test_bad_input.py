"""The bad-input suite: every mistake a user can make in a recipe, data folder,
checkpoint, ONNX file, bundle or flag gets exit code 2, at most 3 short lines on
stderr naming the problem, no traceback, and leaves the working folder exactly as
it was (nothing created, nothing overwritten). From Python, the same mistake is an
EdgeKDError carrying that line.

Each case builds its inputs inside a fresh working folder, snapshots every file
in it (path -> sha256), runs the real `edgekd` entry point there, and compares.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import click
import numpy as np
import onnx
import pytest
import torch
import torchvision.models as tvm
from PIL import Image

from edgekd import api
from edgekd.cli import main
from edgekd.errors import EdgeKDError, Problems, RecipeError
from edgekd.models import register_model, registry

from _training import IMAGE_SIZE, training_fixture

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = (REPO / "recipes/quickstart.yaml").read_text()


@training_fixture()
def made(tmp_path_factory):
    """One real quickstart run (1 epoch) and its fp32+fp16 bundle, to break copies of."""
    root = tmp_path_factory.mktemp("bad-input")
    run, bundle = root / "run", root / "bundle"
    for args in (["distill", str(REPO / "recipes/quickstart.yaml"), "--set", "train.epochs=1", "--set",
                  f"data.image_size={IMAGE_SIZE}", "--out", str(run), "--quiet"],
                 ["export", str(run), "--out", str(bundle), "--formats", "fp32,fp16"]):
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 0, args
    return run, bundle


# ------------------------------------------------------------------ helpers to build broken inputs

def recipe(w: Path, text: str, name: str = "r.yaml") -> str:
    (w / name).write_text(text)
    return name


def edited_recipe(w: Path, old: str, new: str) -> str:
    assert old in QUICKSTART, old
    return recipe(w, QUICKSTART.replace(old, new, 1))


def imagefolder(w: Path, classes=("a", "b"), n=3, corrupt=False, junk_only=False) -> Path:
    root = w / "imgs"
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            if junk_only:
                (root / c / f"{i}.txt").write_text("not an image")
            else:
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg")
    if corrupt:
        (root / classes[0] / "0.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    return root


def imagefolder_recipe(w: Path, root: Path) -> str:
    return recipe(w, f"""name: t
data: {{name: imagefolder, root: {root}, image_size: 32, val_fraction: 0.3, batch_size: 4}}
teacher: {{arch: cnn_small}}
student: {{arch: cnn_tiny}}
distill: {{method: ce}}
optim: {{name: sgd, lr: 0.01}}
train: {{epochs: 1}}
""")


def teacher_ckpt_recipe(w: Path, ckpt: str) -> str:
    return edited_recipe(w, "teacher:\n  arch: cnn_small", f"teacher:\n  arch: cnn_small\n  checkpoint: {ckpt}")


def pretrained_recipe(w: Path, file: str, arch: str = "mobilenet_v3_small", method: str = "bdkd",
                      role: str = "student") -> str:
    """quickstart with the student (or teacher) started from `file` with init: backbone."""
    old = {"student": "student:\n  arch: cnn_tiny", "teacher": "teacher:\n  arch: cnn_small"}[role]
    text = QUICKSTART.replace(old, f"{role}:\n  arch: {arch}\n  checkpoint: {file}\n  init: backbone", 1)
    # quickstart's distill keys are BD-KD's; another method takes its defaults.
    return recipe(w, text if method == "bdkd" else re.sub(r"distill:\n(  .*\n)+", f"distill:\n  method: {method}\n", text, count=1))


def torchvision_file(w: Path, name: str, file: str = "pre.pth", **kw) -> str:
    """A file as torchvision ships its ImageNet weights: torch.save(state_dict), 1000 classes."""
    torch.save(getattr(tvm, name)(num_classes=1000, **kw).state_dict(), w / file)
    return file


def run_copy(w: Path, made) -> Path:
    dst = w / "run"
    shutil.copytree(made[0], dst)
    return dst


def bundle_copy(w: Path, made) -> Path:
    dst = w / "bundle"
    shutil.copytree(made[1], dst)
    return dst


def run_with_gate(w: Path, made, gate: dict) -> Path:
    """A run copy whose recipe (as saved in student.pt, where export reads it) has `gate` as validate:."""
    run = run_copy(w, made)
    ckpt = torch.load(run / "student.pt", weights_only=False)
    ckpt["recipe"]["validate"] = gate
    torch.save(ckpt, run / "student.pt")
    return run


def search_into_bundle(w: Path, made, *flags: str, run: Path | None = None) -> list[str]:
    """export --int8-search over a copy of the bundle with --overwrite: the bundle must stay as it was."""
    bundle_copy(w, made)
    return ["export", str(run or run_copy(w, made)), "--out", "bundle", "--overwrite", "--int8-search", *flags]


def rehash(bundle: Path, name: str) -> None:
    """Make the manifest agree with a file we replaced, so only the file itself is wrong."""
    m = json.loads((bundle / "manifest.json").read_text())
    data = (bundle / name).read_bytes()
    m["files"][name].update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def edit_manifest(bundle: Path, fn: Callable[[dict], None]) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


class RunsCode:
    """A pickle that would run a shell command when unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


# ------------------------------------------------------------------ the cases
# name -> (build(w, made) -> argv, words the one-line message must contain)

def _c(build, *needles):
    return build, needles


CASES = {
    # recipes
    "recipe: typo in a key": _c(lambda w, m: ["distill", edited_recipe(w, "  epochs: 25", "  epocs: 25")], "train.epocs"),
    "recipe: wrong type": _c(lambda w, m: ["distill", edited_recipe(w, "  epochs: 25", "  epochs: ten")], "train.epochs"),
    "recipe: out of range": _c(lambda w, m: ["distill", edited_recipe(w, "  epochs: 25", "  epochs: 0")], "train.epochs"),
    "recipe: negative lr": _c(lambda w, m: ["distill", edited_recipe(w, "  lr: ", "  lr: -")], "optim.lr"),
    "recipe: broken YAML": _c(lambda w, m: ["distill", recipe(w, "data: [digits\nteacher: x\n")], "YAML"),
    "recipe: YAML python tag": _c(lambda w, m: ["distill", recipe(w, "data: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n")], "r.yaml"),
    "recipe: empty file": _c(lambda w, m: ["distill", recipe(w, "")], "empty"),
    "recipe: a list, not a mapping": _c(lambda w, m: ["distill", recipe(w, "- data\n- teacher\n")], "mapping"),
    "recipe: unknown arch": _c(lambda w, m: ["distill", edited_recipe(w, "arch: cnn_tiny", "arch: resnet9000")], "resnet9000"),
    "recipe: unknown method": _c(lambda w, m: ["distill", edited_recipe(w, "method: bdkd", "method: magic")], "magic"),
    "recipe: missing file": _c(lambda w, m: ["distill", "nope.yaml"], "nope.yaml"),
    "recipe: a directory": _c(lambda w, m: ["distill", "."], "."),
    "recipe: INT8 search budget 0": _c(lambda w, m: ["distill", recipe(w, QUICKSTART + "export:\n  search_budget: 0\n")],
                                       "export.search_budget"),
    "recipe: INT8 search budget over a day": _c(
        lambda w, m: ["distill", recipe(w, QUICKSTART + "export:\n  search_budget: 86401\n")],
        "export.search_budget", "86400"),
    "recipe: --set without =": _c(lambda w, m: ["distill", str(REPO / "recipes/quickstart.yaml"), "--set", "train.epochs"], "KEY=VALUE"),
    "recipe: --set unknown key": _c(lambda w, m: ["distill", str(REPO / "recipes/quickstart.yaml"), "--set", "train.epoch=3"], "train.epoch"),
    # data
    "data: missing folder": _c(lambda w, m: ["distill", imagefolder_recipe(w, w / "missing")], "missing"),
    "data: empty folder": _c(lambda w, m: ["distill", imagefolder_recipe(w, (w / "empty").mkdir() or w / "empty")], "empty"),
    "data: no images, only text files": _c(lambda w, m: ["distill", imagefolder_recipe(w, imagefolder(w, junk_only=True))], "imgs"),
    "data: corrupt JPEG": _c(lambda w, m: ["distill", imagefolder_recipe(w, imagefolder(w, corrupt=True))], "0.jpg"),
    "data: class folders differ from the model's": _c(
        lambda w, m: ["validate", str(bundle_copy(w, m)), "--data", f"imagefolder:{imagefolder(w, classes=('cat', 'dog'))}"],
        "cat"),
    "data: --int8-search with no tune split and no training image left after calibration": _c(
        lambda w, m: search_into_bundle(w, m, "--calib-samples", "1400"), "no data to search on"),
    # checkpoints
    "recipe: --int8-search, the gate the run saved is missing": _c(
        lambda w, m: search_into_bundle(w, m, run=run_with_gate(w, m, {})), "needs the recipe's gate"),
    "recipe: --int8-search, the gate the run saved is impossible (negative tolerance)": _c(
        lambda w, m: search_into_bundle(w, m, run=run_with_gate(w, m, {"max_acc_drop": -0.01, "max_ece": 0.05})),
        "validate.max_acc_drop", "greater than or equal to 0"),
    "recipe: --int8-search, the gate the run saved asks for agreement above 100%": _c(
        lambda w, m: search_into_bundle(w, m, run=run_with_gate(w, m, {"min_agreement": 1.5, "max_ece": 0.05})),
        "validate.min_agreement"),
    "checkpoint: truncated teacher": _c(
        lambda w, m: (shutil.copy(m[0] / "student.pt", w / "t.pt"), (w / "t.pt").write_bytes((w / "t.pt").read_bytes()[:500]),
                      ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1], "t.pt"),
    "checkpoint: wrong architecture": _c(
        lambda w, m: (shutil.copy(m[0] / "student.pt", w / "t.pt"), ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1], "t.pt"),
    "checkpoint: pickle that runs code": _c(
        lambda w, m: ((w / "t.pt").write_bytes(pickle.dumps(RunsCode())), ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1], "t.pt"),
    "checkpoint: torch.save file with a pickle that runs code": _c(
        lambda w, m: (torch.save({"conv.weight": RunsCode()}, w / "t.pt"), ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1],
        "t.pt was refused by the safe loader (weights_only): Trying to load unsupported GLOBAL"),
    "checkpoint: teacher and student both missing, named in one go": _c(
        lambda w, m: ["distill", recipe(w, QUICKSTART.replace("arch: cnn_small", "arch: cnn_small\n  checkpoint: t.pt", 1)
                                        .replace("arch: cnn_tiny", "arch: cnn_tiny\n  checkpoint: s.pt", 1))],
        "checkpoint t.pt does not exist", "checkpoint s.pt does not exist"),
    "checkpoint: a NaN in the teacher's weights": _c(
        lambda w, m: (_nan_teacher(w / "t.pt"), ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1],
        "t.pt: tensor 'fc.bias' holds 1 NaN or infinite value of 10"),
    "checkpoint: checkpoint_key not in the file": _c(
        lambda w, m: (torch.save({"epoch": 3, "weights": {}}, w / "t.pt"),
                      ["distill", teacher_ckpt_recipe(w, "t.pt\n  checkpoint_key: state_dict")])[-1],
        "teacher.checkpoint_key 'state_dict' is not in t.pt; its top-level keys: epoch, weights"),
    "checkpoint: the net fits under two prefixes": _c(
        lambda w, m: (torch.save({"state_dict": {f"{p}.{k}": v for p in ("ema", "online") for k, v in
                                                 registry.build_model("cnn_small", 10, 1, 32).state_dict().items()}},
                                 w / "t.pt"), ["distill", teacher_ckpt_recipe(w, "t.pt")])[-1],
        "under each of 'ema.', 'online.'; set teacher.checkpoint_prefix"),
    "checkpoint: run without student.pt": _c(
        lambda w, m: ((run_copy(w, m) / "student.pt").unlink(), ["export", "run", "--out", "b"])[-1], "student.pt"),
    "checkpoint: truncated student.pt": _c(
        lambda w, m: ((lambda p: p.write_bytes(p.read_bytes()[:1000]))(run_copy(w, m) / "student.pt"),
                      ["export", "run", "--out", "b"])[-1], "student.pt"),
    "checkpoint: foreign torch file": _c(
        lambda w, m: (torch.save({"model": torch.zeros(3)}, run_copy(w, m) / "student.pt"), ["export", "run", "--out", "b"])[-1],
        "not an edgekd student checkpoint"),
    # pretrained starts (student.init / teacher.init: backbone)
    "pretrained: a file for another architecture": _c(
        lambda w, m: ["distill", pretrained_recipe(w, torchvision_file(w, "shufflenet_v2_x0_5"))],
        "pre.pth does not fit mobilenet_v3_small", "not in the file", "at least 50% needed"),
    "pretrained: tensors mostly do not fit (another width)": _c(
        lambda w, m: ["distill", pretrained_recipe(w, torchvision_file(w, "mobilenet_v3_small", width_mult=0.5))],
        "pre.pth does not fit mobilenet_v3_small", "file [8, 3, 3, 3], model [16, 1, 3, 3]"),
    "pretrained: a plain pickle of lists": _c(
        lambda w, m: ((w / "pre.pth").write_bytes(pickle.dumps({"features.0.0.weight": [[0.1, 0.2]]})),
                      ["distill", pretrained_recipe(w, "pre.pth")])[-1], "pre.pth is not a file written by torch.save"),
    "pretrained: a torch file without tensors": _c(
        lambda w, m: (torch.save({"epoch": 3, "arch": "mobilenet_v3_small"}, w / "pre.pth"),
                      ["distill", pretrained_recipe(w, "pre.pth")])[-1], "pre.pth holds no model weights"),
    "pretrained: not a torch file (a JPEG)": _c(
        lambda w, m: (Image.new("RGB", (8, 8)).save(w / "pre.jpg"), ["distill", pretrained_recipe(w, "pre.jpg")])[-1],
        "pre.jpg is not a file written by torch.save"),
    "pretrained: init backbone without a file": _c(
        lambda w, m: ["distill", edited_recipe(w, "arch: cnn_tiny", "arch: cnn_tiny\n  init: backbone")],
        "student: init: backbone needs checkpoint (the pretrained file to load)"),
    "pretrained: a fresh classifier on a frozen (kd) teacher": _c(
        lambda w, m: (torch.save(tvm.resnet18(num_classes=1000).state_dict(), w / "t.pth"),
                      ["distill", pretrained_recipe(w, "t.pth", "resnet18", method="kd", role="teacher")])[-1],
        "teacher.init: backbone left the teacher's classifier untrained", "distill.method kd"),
    "checkpoint: --resume with no last.pt": _c(
        lambda w, m: ["distill", str(REPO / "recipes/quickstart.yaml"), "--out", "nothing", "--resume"], "last.pt"),
    # ONNX files
    "onnx: truncated (manifest hash no longer matches)": _c(
        lambda w, m: ((lambda p: p.write_bytes(p.read_bytes()[:4000]))(bundle_copy(w, m) / "model_fp32.onnx"),
                      ["validate", "bundle"])[-1], "model_fp32.onnx"),
    "onnx: not ONNX at all (manifest re-hashed)": _c(
        lambda w, m: ((bundle_copy(w, m) / "model_fp16.onnx").write_bytes(b"hello, not a protobuf"),
                      rehash(w / "bundle", "model_fp16.onnx"), ["validate", "bundle"])[-1], "model_fp16.onnx"),
    "onnx: wrong input shape (manifest re-hashed)": _c(
        lambda w, m: (_reshape_input(bundle_copy(w, m) / "model_fp32.onnx"), rehash(w / "bundle", "model_fp32.onnx"),
                      ["validate", "bundle"])[-1], "model_fp32.onnx"),
    "onnx: not ONNX at all, on OpenVINO (manifest re-hashed)": _c(
        lambda w, m: ((bundle_copy(w, m) / "model_fp16.onnx").write_bytes(b"hello, not a protobuf"),
                      rehash(w / "bundle", "model_fp16.onnx"), ["validate", "bundle", "--runtime", "openvino"])[-1],
        "model_fp16.onnx could not be loaded by OpenVINO"),
    # engines
    "engine: TensorRT runtime asked for, not installed": _c(
        lambda w, m: ["validate", str(bundle_copy(w, m)), "--runtime", "tensorrt"], "TensorRT"),
    # bundles
    "bundle: missing manifest": _c(
        lambda w, m: ((bundle_copy(w, m) / "manifest.json").unlink(), ["validate", "bundle"])[-1], "manifest.json"),
    "bundle: sha256 mismatch": _c(
        lambda w, m: ((lambda p: p.write_bytes(p.read_bytes()[:-1] + b"\x00"))(bundle_copy(w, m) / "model_fp16.onnx"),
                      ["validate", "bundle"])[-1], "sha256"),
    "bundle: manifest edited by hand": _c(
        lambda w, m: (edit_manifest(bundle_copy(w, m), lambda d: d["preprocessing"].update(resize=[28, 28])),
                      ["validate", "bundle"])[-1], "resize"),
    "bundle: manifest not JSON": _c(
        lambda w, m: ((bundle_copy(w, m) / "manifest.json").write_text("{"), ["validate", "bundle"])[-1], "JSON"),
    "bundle: not a folder": _c(lambda w, m: ((w / "f").write_text("x"), ["validate", "f"])[-1], "f"),
    # flags
    "flag: non-numeric threshold": _c(lambda w, m: ["validate", str(bundle_copy(w, m)), "--max-ece", "abc"], "--max-ece"),
    "flag: threshold out of range": _c(lambda w, m: ["validate", str(bundle_copy(w, m)), "--max-ece", "5"], "--max-ece"),
    "flag: --runtime openvino --formats int8, bundle without INT8 files": _c(
        lambda w, m: ["validate", str(bundle_copy(w, m)), "--runtime", "openvino", "--formats", "int8"],
        "'int8'", "this bundle has: fp32, fp16"),
    "flag: --providers with --runtime openvino": _c(
        lambda w, m: ["validate", str(bundle_copy(w, m)), "--runtime", "openvino", "--providers", "cpu"],
        "--providers", "--runtime openvino"),
    "flag: unknown validate format": _c(lambda w, m: ["validate", str(bundle_copy(w, m)), "--formats", "int4"], "int4"),
    "flag: unknown export format": _c(lambda w, m: ["export", str(run_copy(w, m)), "--out", "b", "--formats", "fp64"], "fp64"),
    "flag: --search-budget 0": _c(lambda w, m: search_into_bundle(w, m, "--search-budget", "0"), "--search-budget"),
    "flag: --search-budget -5": _c(lambda w, m: search_into_bundle(w, m, "--search-budget=-5"), "--search-budget"),
    "flag: --search-budget over a day": _c(lambda w, m: search_into_bundle(w, m, "--search-budget", "90000"),
                                           "--search-budget", "86400"),
    "flag: --search-budget without --int8-search": _c(
        lambda w, m: ["export", str(run_copy(w, m)), "--out", "b", "--search-budget", "60"], "--int8-search"),
    "flag: --int8-search without an INT8 format": _c(
        lambda w, m: search_into_bundle(w, m, "--formats", "fp32,fp16"), "--formats"),
    "flag: unknown --data spec": _c(lambda w, m: ["validate", str(bundle_copy(w, m)), "--data", "mnist"], "mnist"),
    "flag: export --out under a file": _c(
        lambda w, m: ((w / "file").write_text("x"), ["export", str(run_copy(w, m)), "--out", "file/b"])[-1], "file"),
    "flag: compare seeds not integers": _c(lambda w, m: ["compare", str(REPO / "recipes/quickstart.yaml"), "--seeds", "a,b"], "--seeds"),
    "flag: compare variant that sets the method": _c(
        lambda w, m: ["compare", str(REPO / "recipes/quickstart.yaml"), "--methods", "ce,dml:method=ce"],
        "the method is the variant's name (dml)"),
    "flag: compare third variant's checkpoint missing": _c(
        lambda w, m: ["compare", str(REPO / "recipes/quickstart.yaml"), "--methods", "ce,bdkd,dml:teacher.checkpoint=t.pt",
                      "--out", "cmp"], "variant 'dml:teacher.checkpoint=t.pt': checkpoint t.pt does not exist"),
    "flag: compare unknown method": _c(lambda w, m: ["compare", str(REPO / "recipes/quickstart.yaml"), "--methods", "ce,xyz"], "xyz"),
    "flag: unknown option": _c(lambda w, m: ["distill", str(REPO / "recipes/quickstart.yaml"), "--epochs", "3"], "--epochs"),
}


def _nan_teacher(path: Path) -> None:
    state = registry.build_model("cnn_small", 10, 1, 32).state_dict()
    state["fc.bias"][3] = float("nan")
    torch.save(state, path)


def _reshape_input(path: Path) -> None:
    model = onnx.load(str(path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value, dims[3].dim_value = IMAGE_SIZE + 8, IMAGE_SIZE + 8
    onnx.save(model, str(path))


def _snapshot(w: Path) -> dict[str, str]:
    return {str(p.relative_to(w)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir")
            for p in sorted(w.rglob("*"))}


def test_there_are_at_least_30_cases():
    assert len(CASES) >= 30


def test_docs_reliability_counts_these_cases():
    """docs/reliability.md's count and table of bad-input cases are the CASES here, category by category."""
    text = (REPO / "docs/reliability.md").read_text()
    total = re.search(r"`tests/test_bad_input.py`: (\d+) cases", text)
    assert total and int(total.group(1)) == len(CASES)
    table = {m.group(1).split()[0].lower().rstrip("s"): int(m.group(2))
             for m in re.finditer(r"^\| ([^|]+?): [^|]*\| (\d+) \|$", text, re.M)}
    counted: dict[str, int] = {}
    for name in CASES:
        counted[name.split(":")[0]] = counted.get(name.split(":")[0], 0) + 1
    assert table == counted


@pytest.fixture
def w(tmp_path, monkeypatch):
    """An empty working directory, the current one for the test: whatever a case writes lands here."""
    w = tmp_path / "w"
    w.mkdir()
    monkeypatch.chdir(w)
    return w


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, made, w, capfd):
    build, needles = CASES[name]
    _assert_refused(name, w, build(w, made), needles, capfd)


def _assert_refused(name: str, w: Path, argv: list, needles, capfd) -> None:
    """Run edgekd in w: exit 2, 1-3 short lines naming the problem, no traceback, w unchanged."""
    before = _snapshot(w)
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    out, err = capfd.readouterr()
    assert e.value.code == 2, (name, e.value.code, err[-2000:])
    lines = [x for x in err.splitlines() if x.strip()]
    assert 1 <= len(lines) <= 3, (name, err)
    assert all(len(x) <= 300 for x in lines), (name, err)
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, (name, needle, err)
    assert _snapshot(w) == before, f"{name}: the working folder changed"
    assert not (w / "pwned.txt").exists()


def _conv_head(num_classes: int, in_channels: int, image_size: int) -> torch.nn.Module:
    """A net whose logits come from a 1x1 conv, not an nn.Linear: no classifier init: backbone can name."""
    return torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, num_classes, 1),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())  # fmt: skip


@pytest.fixture
def conv_head_model(monkeypatch):
    """_conv_head registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    register_model("conv_head_test")(_conv_head)
    return "conv_head_test"


def test_backbone_on_a_model_without_a_classifier(conv_head_model, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    torch.save(_conv_head(10, 1, 32).state_dict(), tmp_path / "pre.pt")  # a file that fits it perfectly
    argv = ["distill", pretrained_recipe(tmp_path, "pre.pt", arch=conv_head_model)]
    _assert_refused("init backbone, no classifier", tmp_path, argv,
                    ["cannot find the classifier of conv_head_test", "its last layer '2' is a Conv2d", "init: full"], capfd)


def test_bf16_forced_on_a_cpu_without_bf16(tmp_path, monkeypatch, capfd):
    """Only torch's CPU capability probe is replaced: this CPU then reports no bf16 instructions."""
    monkeypatch.chdir(tmp_path)
    caps = {**torch.cpu.get_capabilities(), **{k: False for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")}}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    argv = ["distill", str(REPO / "recipes/quickstart.yaml"), "--set", "train.amp=bf16", "--set", "train.device=cpu"]
    _assert_refused("bf16 on a CPU without it", tmp_path, argv, ["train.amp: bf16", "this CPU has no bf16 instructions"],
                    capfd)


def test_compile_forced_without_a_cpp_compiler(tmp_path, monkeypatch, capfd):
    """Inductor's own compiler search is pointed at a compiler that does not exist."""
    from torch._inductor import config

    monkeypatch.chdir(tmp_path)
    argv = ["distill", str(REPO / "recipes/quickstart.yaml"), "--set", "train.compile=true", "--set", "train.device=cpu"]
    with config.patch({"cpp.cxx": ("edgekd-no-such-c++",)}):  # torch's own way to set it for a while
        _assert_refused("compile without a C++ compiler", tmp_path, argv,
                        ["train.compile: true, but torch.compile on the CPU needs a C++ compiler", "auto or false"],
                        capfd)


# The same cases from Python (edgekd.api): the call that does what the command line does
# raises an EdgeKDError, never SystemExit: the very error (class and one-line message) that
# the command prints, unless click refused the command line before it reached the API.
API_KEYS = {"--set": "overrides", "--out": "out", "--resume": "resume", "--formats": "formats", "--data": "data",
            "--runtime": "runtime", "--providers": "providers", "--overwrite": "overwrite",
            "--int8-search": "int8_search", "--search-budget": "search_budget", "--calib-samples": "calib_samples"}
SWITCHES = ("--resume", "--overwrite", "--int8-search")
NUMBERS = {"--search-budget": float, "--calib-samples": int}  # click parses these; plain digits are passed on


def api_call(argv: list[str]) -> Callable[[], object] | None:
    """The API call for argv, or None if argv holds something only the command line parses
    (a number in a flag, an unknown option, edgekd compare)."""
    verb, *rest = argv
    fn = {"distill": api.distill, "export": api.export, "validate": api.validate}.get(verb)
    if fn is None:
        return None
    args, kwargs = [], {}
    items = iter(rest)
    for a in items:
        key = API_KEYS.get(a)
        if not a.startswith("--"):
            args.append(a)
        elif key is None:
            return None
        elif a in SWITCHES:
            kwargs[key] = True
        elif a == "--set":
            kwargs.setdefault(key, []).append(next(items))
        elif a in NUMBERS:
            value = next(items)
            if not value.replace(".", "", 1).isdigit():
                return None
            kwargs[key] = NUMBERS[a](value)
        else:
            value = next(items)
            kwargs[key] = value.split(",") if a in ("--formats", "--providers") else value
    return lambda: fn(*args, **kwargs)


# Cases whose argv only the command line parses (a number click converts, an unknown option,
# edgekd compare): no API call does what they do. test_cli_only_cases_have_no_api_call keeps
# this list exact, so a case cannot drop out of the API run unnoticed.
CLI_ONLY = {"flag: non-numeric threshold", "flag: threshold out of range", "flag: --search-budget -5",
            "flag: compare seeds not integers", "flag: compare unknown method", "flag: unknown option",
            "flag: compare variant that sets the method", "flag: compare third variant's checkpoint missing"}


@pytest.mark.parametrize("name", sorted(CLI_ONLY))
def test_cli_only_cases_have_no_api_call(name, made, w):
    build, _ = CASES[name]
    assert api_call([str(a) for a in build(w, made)]) is None


@pytest.mark.parametrize("name", [n for n in CASES if n not in CLI_ONLY])
def test_bad_input_from_python(name, made, w, capfd):
    build, _ = CASES[name]
    argv = [str(a) for a in build(w, made)]
    call = api_call(argv)
    assert call is not None, f"{name}: no API call for {argv}; if only the command line parses it, add it to CLI_ONLY"
    before = _snapshot(w)
    with pytest.raises(EdgeKDError) as e:
        call()
    problems = e.value.problems if isinstance(e.value, Problems) else [e.value]  # several: one line each
    assert e.value.exit_code == 2 and len(str(e.value).splitlines()) == len(problems), (name, str(e.value))
    assert _snapshot(w) == before, f"{name}: the working folder changed"
    with pytest.raises(Exception) as cli:  # --debug: main lets the error out instead of printing it
        main(["--debug", *argv])
    if isinstance(cli.value, click.UsageError):
        return  # click refused the argument before the command called the API (a directory for a file, ...)
    assert (type(cli.value), str(cli.value)) == (type(e.value), str(e.value)), name


@pytest.mark.parametrize("debug", ["flag", "env"])
def test_debug_raises_instead_of_printing_one_line(debug, tmp_path, monkeypatch, capfd):
    """--debug (or EDGEKD_DEBUG=1) lets the real error out of main(), where Python prints its traceback."""
    monkeypatch.chdir(tmp_path)
    argv = ["distill", "nope.yaml"]
    if debug == "flag":
        argv.insert(0, "--debug")
    else:
        monkeypatch.setenv("EDGEKD_DEBUG", "1")
    capfd.readouterr()
    with pytest.raises(RecipeError, match=r"^recipe nope\.yaml does not exist$"):
        main(argv)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")  # not the one-line "edgekd: error: ..." (nor anything else)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # a `python -m edgekd` process
def test_debug_shows_the_traceback(tmp_path):
    res = subprocess.run([sys.executable, "-m", "edgekd", "--debug", "distill", "nope.yaml"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    err = res.stderr
    assert res.returncode == 1, (res.returncode, err)  # Python's code for an uncaught exception
    assert err.startswith("Traceback (most recent call last):\n"), err
    # The frames go down into edgekd's own code, and the last line is the error itself.
    assert re.search(r'File ".*[/\\]edgekd[/\\]recipe_io\.py", line \d+, in ', err), err
    assert err.rstrip().splitlines()[-1] == "edgekd.errors.RecipeError: recipe nope.yaml does not exist"
    assert "edgekd: error:" not in err and res.stdout == ""
    assert list(tmp_path.iterdir()) == []
