"""The contracts between stages (edgekd/contracts/): one name per run file and per key, spelled
nowhere else; each contract round-trips, refuses another version in one line, and reads the files
edgekd wrote before the contracts existed (tests/data/old_formats/)."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgekd.contracts import (BundleManifest, ContractError, EvalLogits, ManifestError, NetEval, RunLayout, SplitInfo,
                              SplitInfoError, StudentCheckpoint, StudentCheckpointError)
from edgekd.errors import BundleError, CheckpointError, DataError

PACKAGE = Path(__file__).resolve().parents[1] / "edgekd"
CONTRACTS = PACKAGE / "contracts"
OLD = Path(__file__).resolve().parent / "data" / "old_formats"

FILE_NAMES = [RunLayout.RECIPE, RunLayout.SPLIT, RunLayout.METRICS, RunLayout.LAST, RunLayout.STUDENT,
              RunLayout.SUMMARY, RunLayout.EVAL_LOGITS, BundleManifest.FILE]
# (TENSORBOARD's word is also the package and logger name)

# Keys only the contracts may read or write: distinctive names of student.pt, manifest.json, the split
# and eval_logits.npz. Generic words (name, model, data, files, ...) and the split's *_fraction / *_size
# (the recipe's data keys too) would match other dicts.
CONTRACT_KEYS = ["schema_version", "student_sha256", "in_channels", "num_classes", "class_names", "preprocessing",
                 "state_dict", "edgekd_version", "incomplete", "num_images", "fingerprint", "sizes",
                 "teacher_logits", "student_logits"]
# Where the same word is another file's or library's own key, not a contract's.
OTHER_OWNERS = {
    ("edgekd/data/sources.py", "class_names"): "the decoded-image cache's own .npz",
    ("edgekd/models/timm_models.py", "num_classes"): "timm.create_model's argument",
    ("edgekd/compare/predictions.py", "student_logits"): "a comparison's prediction file (its own FORMAT)",
    ("edgekd/training/checkpoint.py", "state_dict"): "where other tools' checkpoints keep weights (WEIGHT_KEYS)",
    ("edgekd/training/artifacts.py", "edgekd_version"): "summary.json, which has no contract yet",
    # validate's consistency checks of the manifest's sections, which stay JSON objects (export/README.md)
    ("edgekd/validation/bundle.py", "num_classes"): "the check of the manifest's model section",
}


def _python_files():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if CONTRACTS not in p.parents]


def _where(p: Path, i: int) -> str:
    return f"{p.relative_to(PACKAGE.parent)}:{i}"


@pytest.mark.parametrize("name", FILE_NAMES)
def test_no_stage_spells_a_run_or_bundle_file_name(name):
    """As a string literal, a run file's or the manifest's name lives in edgekd/contracts/ only (prose
    in comments and docstrings may mention it: it is not a quoted literal there)."""
    spelled = [_where(p, i) for p in _python_files() for i, line in enumerate(p.read_text().splitlines(), 1)
               if f'"{name}"' in line or f"'{name}'" in line]
    assert not spelled, spelled


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_no_stage_reads_or_writes_a_contract_key(key):
    """Indexed (x["key"], x.get("key")) or written as a dict key ("key": ...), a contract's key is
    spelled in edgekd/contracts/ only."""
    pattern = re.compile(r"""(\[|\.get\(|\.pop\()\s*["']%s["']|["']%s["']\s*:""" % (key, key))
    spelled = [_where(p, i) for p in _python_files() for i, line in enumerate(p.read_text().splitlines(), 1)
               if pattern.search(line) and (str(p.relative_to(PACKAGE.parent)), key) not in OTHER_OWNERS]
    assert not spelled, spelled


def test_contracts_import_no_stage():
    """The contracts sit below every stage: they import edgekd.errors and edgekd.files, nothing else of edgekd."""
    imports = {m for p in CONTRACTS.glob("*.py")
               for m in re.findall(r"^\s*(?:from|import) (edgekd[\w.]*)", p.read_text(), re.M)}
    assert {m for m in imports if not m.startswith("edgekd.contracts")} <= {"edgekd.errors", "edgekd.files"}


# ---------------------------------------------------------------- RunLayout


def test_complete_and_unfinished(tmp_path):
    run = RunLayout(tmp_path)
    assert not run.is_complete() and not run.is_unfinished()
    run.last.write_text("x")
    assert run.is_unfinished() and not run.is_complete()
    run.student.write_text("x")
    assert not run.is_unfinished() and not run.is_complete()  # summary.json is written last
    run.summary.write_text("{}")
    assert run.is_complete()
    assert run.reliability("student") == tmp_path / "reliability_student.png"


# ---------------------------------------------------------------- SplitInfo


def _old_split() -> dict:
    return json.loads((OLD / "run" / RunLayout.SPLIT).read_text())


def test_split_info_round_trips_an_old_split_exactly(tmp_path):
    raw = _old_split()
    info = SplitInfo.from_dict(raw)
    assert list(info.to_dict().items()) == list(raw.items())  # keys, values and order: same bytes on disk
    assert info.size("val") == 359 and info.size("test") == 0 and not info.streamed
    info.write(tmp_path / "split.json")
    assert (tmp_path / "split.json").read_bytes() == (OLD / "run" / RunLayout.SPLIT).read_bytes()
    assert SplitInfo.read(tmp_path / "split.json") == info


def test_split_info_keeps_the_optional_stream_keys():
    streamed = replace(SplitInfo.from_dict(_old_split()), storage="stream", resize_mode="centre_crop", crop_pct=0.875,
                       normalization="resnet18 pretrained_cfg")
    raw = streamed.to_dict()
    assert list(raw)[-4:] == ["storage", "resize_mode", "crop_pct", "normalization"]
    assert SplitInfo.from_dict(raw) == streamed and streamed.streamed


def test_split_info_refuses_another_version_and_a_missing_key():
    raw = _old_split()
    with pytest.raises(SplitInfoError, match=r"format 'edgekd.split/2'; this edgekd reads 'edgekd.split/1'"):
        SplitInfo.from_dict({**raw, "format": "edgekd.split/2"})
    del raw["name"]
    with pytest.raises(DataError, match="lacks name; it must come from build_data"):
        SplitInfo.from_dict(raw, "split.json")


# ---------------------------------------------------------------- StudentCheckpoint


def _student_dict() -> dict:
    return {"format": "edgekd.student/1", "arch": "cnn_tiny", "options": {}, "num_classes": 10, "in_channels": 1,
            "image_size": 16, "state_dict": {"w": [1.0]}, "quantize": None,
            "preprocessing": {"resize": [16, 16], "mean": [0.3], "std": [0.3]}, "class_names": list("0123456789"),
            "split": _old_split(), "recipe": {"name": "quickstart"}, "recipe_hash": "394460f0b0a0e908",
            "metrics": {"accuracy": 0.5}, "edgekd_version": "0.1.0"}


def test_student_checkpoint_round_trips():
    raw = _student_dict()
    ck = StudentCheckpoint.from_dict(raw)
    assert list(ck.to_dict().items()) == list(raw.items())
    assert ck.split == SplitInfo.from_dict(raw["split"]) and ck.recipe_name == "quickstart"
    assert ck.quantized_flavour is None
    assert replace(ck, quantize={"flavour": "int8_cpu"}).quantized_flavour == "int8_cpu"


def test_student_checkpoint_of_format_1_without_the_keys_added_later():
    raw = {k: v for k, v in _student_dict().items()
           if k not in ("options", "quantize", "recipe", "recipe_hash", "metrics", "edgekd_version")}
    ck = StudentCheckpoint.from_dict(raw)
    assert ck.options == {} and ck.quantize is None and ck.recipe == {} and ck.recipe_hash is None


@pytest.mark.parametrize("fmt, needles", [
    ("edgekd.student/2", ["is an edgekd student checkpoint of format 'edgekd.student/2'",
                          "this edgekd reads 'edgekd.student/1'"]),
    ("edgekd.training/1", ["is not an edgekd student checkpoint (format 'edgekd.training/1'"]),
    (None, ["is not an edgekd student checkpoint (format None"]),
])
def test_student_checkpoint_refuses_another_version(fmt, needles):
    with pytest.raises(StudentCheckpointError) as e:
        StudentCheckpoint.from_dict({**_student_dict(), "format": fmt}, "run/student.pt")
    message = str(e.value)
    assert isinstance(e.value, CheckpointError) and isinstance(e.value, ContractError) and e.value.exit_code == 2
    assert "\n" not in message and message.startswith("run/student.pt ")
    assert all(n in message for n in needles), message


def test_student_checkpoint_names_every_missing_key():
    raw = _student_dict()
    del raw["split"], raw["in_channels"]
    with pytest.raises(StudentCheckpointError, match=r"student.pt lacks in_channels, split; re-run edgekd distill"):
        StudentCheckpoint.from_dict(raw, "student.pt")


def test_an_old_student_pt_reads_and_writes_back_unchanged(tmp_path):
    torch = pytest.importorskip("torch")
    from edgekd.training.checkpoint import load_student, save_student

    ck = load_student(OLD / "run" / RunLayout.STUDENT)
    assert ck.arch == "cnn_tiny" and ck.split.fingerprint == _old_split()["fingerprint"]
    raw = torch.load(OLD / "run" / RunLayout.STUDENT, weights_only=True)
    again = ck.to_dict()
    assert list(again) == list(raw) and all(again[k] == raw[k] for k in raw if k != "state_dict")
    save_student(tmp_path / "student.pt", ck)
    again = load_student(tmp_path / "student.pt")
    assert again == ck  # every field but the tensors, which == does not compare
    assert all(torch.equal(again.state_dict[k], v) for k, v in ck.state_dict.items())


# ---------------------------------------------------------------- BundleManifest


def test_an_old_manifest_round_trips_exactly(tmp_path):
    m = BundleManifest.read(OLD / "bundle")
    raw = json.loads(BundleManifest.path_in(OLD / "bundle").read_text())
    assert list(m.to_dict().items()) == list(raw.items())
    assert m.num_classes == 10 and m.channels == 1 and m.image_size == 16 and m.temperature_value is None
    assert m["files"] == m.files and "temperature" not in m and m.get("incomplete") is None  # read as its JSON
    m.write(tmp_path)
    assert BundleManifest.path_in(tmp_path).read_bytes() == BundleManifest.path_in(OLD / "bundle").read_bytes()


def test_optional_manifest_sections_are_written_only_when_they_apply(tmp_path):
    m = replace(BundleManifest.read(OLD / "bundle"), temperature={"value": 1.5, "source": "given"},
                incomplete="the INT8 search found no file for model_int8_cpu.onnx")
    assert list(m.to_dict())[-2:] == ["temperature", "incomplete"]
    m.write(tmp_path)
    again = BundleManifest.read(tmp_path)
    assert again == m and again.temperature_value == 1.5
    assert BundleManifest.incomplete_reason(tmp_path) == m.incomplete
    assert BundleManifest.incomplete_reason(OLD / "bundle") is None


def _edited_manifest(tmp_path, **changes) -> Path:
    raw = json.loads(BundleManifest.path_in(OLD / "bundle").read_text())
    raw.update(changes)
    for key in [k for k, v in changes.items() if v is None]:
        del raw[key]
    BundleManifest.path_in(tmp_path).write_text(json.dumps(raw))
    return tmp_path


@pytest.mark.parametrize("changes, needle", [
    ({"schema_version": 2}, "has schema_version 2; this edgekd reads schema_version 1: upgrade edgekd"),
    ({"schema_version": 0}, "has schema_version 0; this edgekd reads schema_version 1"),
    ({"kind": "other"}, "is not an edgekd bundle manifest (kind must be 'edgekd.bundle')"),
    ({"gate": None, "files": None}, "lacks keys: gate, files"),
])
def test_manifest_refuses_another_version_or_a_missing_key(tmp_path, changes, needle):
    with pytest.raises(ManifestError) as e:
        BundleManifest.read(_edited_manifest(tmp_path, **changes))
    assert isinstance(e.value, BundleError) and needle in str(e.value) and "\n" not in str(e.value)


def test_no_manifest_or_not_json(tmp_path):
    with pytest.raises(ManifestError, match="has no manifest.json; is it a bundle written by edgekd export"):
        BundleManifest.read(tmp_path)
    BundleManifest.path_in(tmp_path).write_text("{")
    with pytest.raises(ManifestError, match="is not valid JSON"):
        BundleManifest.read(tmp_path)


# ---------------------------------------------------------------- NetEval, EvalLogits


def test_eval_logits_round_trip(tmp_path):
    labels = np.array([0, 1, 1])
    teacher = NetEval(np.eye(3, 2, dtype=np.float32), labels, {"accuracy": 1.0})
    student = NetEval(np.ones((3, 2), np.float32), labels, {"accuracy": 2 / 3})
    assert student.n == 3
    EvalLogits.of(teacher=teacher, student=student).write(tmp_path / RunLayout.EVAL_LOGITS)
    back = EvalLogits.read(tmp_path / RunLayout.EVAL_LOGITS)
    assert np.array_equal(back.labels, labels) and np.array_equal(back.logits("teacher"), teacher.logits)
    assert np.array_equal(back.student, student.logits)


def test_eval_logits_refuses_another_version(tmp_path):
    path = tmp_path / "e.npz"
    np.savez(path, format=np.array("edgekd.eval_logits/2"), labels=np.zeros(1))
    with pytest.raises(ContractError, match="format 'edgekd.eval_logits/2'; this edgekd reads 'edgekd.eval_logits/1'"):
        EvalLogits.read(path)
    np.savez(path, labels=np.zeros(1))
    with pytest.raises(ContractError, match="lacks student_logits, teacher_logits"):
        EvalLogits.read(path)


# ---------------------------------------------------------------- files from before the contracts


@pytest.mark.slow  # exports a run (torch, ONNX)
def test_an_old_run_still_exports_and_its_bundle_validates(tmp_path):
    from _cli import edgekd

    run = tmp_path / "run"
    shutil.copytree(OLD / "run", run)
    exported = edgekd("export", run, "--out", tmp_path / "bundle", "--formats", "fp32")
    assert exported.returncode == 0, exported.stderr
    new, old = BundleManifest.read(tmp_path / "bundle"), BundleManifest.read(OLD / "bundle")
    # The reference now also names the network and its file; an old bundle's lacks them (read as fp32).
    named = {k: new.reference.pop(k) for k in ("model", "format")}
    assert named == {"model": "the float student", "format": "fp32"} and old.reference_format == "fp32"
    assert (new.model, new.input, new.preprocessing, new.data, new.reference) == \
        (old.model, old.input, old.preprocessing, old.data, old.reference)
    # The one-epoch student's ECE is above the recipe's gate: the thresholds say what is checked here.
    for bundle in (OLD / "bundle", tmp_path / "bundle"):
        checked = edgekd("validate", bundle, "--max-ece", "1")
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "VERDICT: PASS" in checked.stdout
