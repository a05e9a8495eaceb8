"""The Python API (edgekd.api, also edgekd.distill/export/validate): typed errors with the
command's messages and no SystemExit, user nn.Modules distilled, exported and validated end
to end, validate without torch, and examples/python_api.py run as written.

The bad-input suite (test_bad_input.py) also runs each of its cases through the API.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import edgekd
from edgekd import api
from edgekd.cli import main
from edgekd.training.checkpoint import load_student
from edgekd.errors import (BundleError, CheckpointError, EdgeKDError, ExportError, GateError, ModelError,
                           RecipeError)

from _training import IMAGE_SIZE, training_fixture

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes/quickstart.yaml"


def quickstart() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def cli_error(argv: list[str], capfd) -> str:
    """The one line `edgekd ARGV` prints on stderr, without its "edgekd: error: " prefix (exit 2)."""
    capfd.readouterr()
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in argv])
    err = capfd.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1, err
    return err.removeprefix("edgekd: error: ")


# ------------------------------------------------------------------ the package and its names


def test_api_names_are_the_functions_and_subpackages_are_modules():
    """No subpackage shares an API name: `import edgekd.<subpackage>` gives the module, edgekd.<name> the function."""
    import importlib
    import types

    import edgekd.training.checkpoint  # noqa: F401
    import edgekd.validation.bundle  # noqa: F401
    from edgekd.validation.bundle import Bundle

    assert (edgekd.distill, edgekd.export, edgekd.validate) == (api.distill, api.export, api.validate)
    assert (edgekd.Run, edgekd.Bundle, edgekd.Report) == (api.Run, Bundle, api.Report)
    from edgekd import distill, validate

    assert (distill, validate) == (api.distill, api.validate)
    for sub in ("training", "deploy", "validation", "compare", "data", "models", "runtime", "contracts"):
        module = importlib.import_module(f"edgekd.{sub}")
        assert isinstance(module, types.ModuleType) and module.__name__ == f"edgekd.{sub}"
        assert getattr(edgekd, sub) is module
    assert set(api.__all__) <= set(dir(edgekd))


@pytest.mark.slow  # a Python process
def test_import_edgekd_and_its_api_names_import_no_torch():
    code = ("import edgekd, sys\nassert 'torch' not in sys.modules\n"
            "edgekd.distill, edgekd.export, edgekd.validate, edgekd.Run, edgekd.Bundle, edgekd.Report\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'matplotlib', 'pydantic')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _is_main_guard(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ('__name__ == "__main__"', "__name__ == '__main__'")


def test_library_code_never_exits_or_uses_click():
    """Only the edgekd/cli/ package (and a module's own `if __name__ == "__main__":` block, when it is run as a
    program) turns errors into exit codes; everything else raises EdgeKDError. Catching a
    SystemExit (a plugin or optional package that exits while it loads) is turning one into an
    EdgeKDError, so `except SystemExit` is allowed."""
    offenders = []
    for path in sorted((REPO / "edgekd").rglob("*.py")):
        if path.relative_to(REPO).parts[:2] == ("edgekd", "cli"):  # the command line: where click belongs
            continue
        tree = ast.parse(path.read_text())
        program = {id(n) for guard in ast.walk(tree) if _is_main_guard(guard) for n in ast.walk(guard)}
        caught = {id(n) for handler in ast.walk(tree) if isinstance(handler, ast.ExceptHandler) and handler.type
                  for n in ast.walk(handler.type)}
        for node in ast.walk(tree):
            if id(node) in program or (id(node) in caught and getattr(node, "id", None) == "SystemExit"):
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Name):
                names = [node.id]
            elif isinstance(node, ast.Attribute):
                names = [node.attr]
            if any(n.split(".")[0] == "click" or n in ("SystemExit", "exit", "_exit") for n in names):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert offenders == []


def test_api_reference_in_docs_is_current():
    spec = importlib.util.spec_from_file_location("api_reference", REPO / "docs/api_reference.py")
    reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(reference)
    _, written = reference.current()
    assert written == reference.render(), "docs/api.md is out of date: run python docs/api_reference.py"


# ------------------------------------------------------------------ typed errors, the command's messages


def test_bad_recipe_dict_is_a_recipe_error_with_the_commands_message(tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    raw = quickstart()
    raw["train"]["epocs"] = 3
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(RecipeError) as from_dict:
        edgekd.distill(raw)
    with pytest.raises(RecipeError) as from_file:
        edgekd.distill("r.yaml")
    line = cli_error(["distill", "r.yaml"], capfd)
    assert str(from_file.value) == line
    assert line.startswith("r.yaml: unknown key 'train.epocs' (a typo?); allowed here: epochs, ")
    assert str(from_dict.value) == "recipe" + line.removeprefix("r.yaml")
    assert list(tmp_path.iterdir()) == [tmp_path / "r.yaml"]


@pytest.mark.parametrize("overrides, argv", [
    ({"train.epoch": 3}, ["--set", "train.epoch=3"]),
    ({"optim.lr": -1}, ["--set", "optim.lr=-1"]),
    (["train.epochs"], ["--set", "train.epochs"]),
    (["train.epochs=zero"], ["--set", "train.epochs=zero"]),
])
def test_bad_overrides_say_what_set_says(overrides, argv, tmp_path, monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RecipeError) as e:
        edgekd.distill(QUICKSTART, overrides=overrides)
    assert str(e.value) == cli_error(["distill", QUICKSTART, *argv], capfd)
    assert list(tmp_path.iterdir()) == []


def test_overrides_mapping_values_are_used_as_given_and_nothing_passed_in_changes():
    raw = quickstart()
    before = json.dumps(raw, sort_keys=True)
    r = api.resolve_recipe(raw, {"train.epochs": 2, "optim.milestones": [0.3], "distill.temperature": 2})
    assert (r.train.epochs, r.optim.milestones, r.distill.temperature, r.name) == (2, [0.3], 2.0, "quickstart")
    assert json.dumps(raw, sort_keys=True) == before
    # A Recipe object: overrides give a new one; a mapping without a name is called "recipe".
    assert api.resolve_recipe(r, ["train.epochs=4"]).train.epochs == 4 and r.train.epochs == 2
    del raw["name"]
    assert api.resolve_recipe(raw).name == "recipe"


@pytest.mark.parametrize("call, error, message", [
    (lambda: edgekd.distill(42), RecipeError, "recipe must be a path, a dict or a Recipe, not a int"),
    (lambda: edgekd.distill(QUICKSTART, overrides="train.epochs=2"), RecipeError,
     "overrides 'train.epochs=2' is one string; pass a list ['train.epochs=2'] or a dict"),
    (lambda: edgekd.distill(QUICKSTART, overrides=[("train.epochs", 2)]), RecipeError,
     "override ('train.epochs', 2) is not a KEY=VALUE string; pass ['train.epochs=5'] or {'train.epochs': 5}"),
    (lambda: edgekd.distill(QUICKSTART, overrides={"": 2}), RecipeError,
     "override '': KEY must be a dotted path like optim.lr"),
    (lambda: edgekd.distill(QUICKSTART, progress="loud"), EdgeKDError,
     "progress='loud' is not one of off, epochs, bar"),
    (lambda: edgekd.distill(QUICKSTART, allow_recipe_change=True), EdgeKDError,
     "allow_recipe_change=True only makes sense with resume=True"),
    (lambda: edgekd.distill(QUICKSTART, student="cnn_tiny"), ModelError,
     "student must be a torch.nn.Module or None, not a str"),
    (lambda: edgekd.distill(QUICKSTART, teacher=(m := nn.Linear(2, 2)), student=m), ModelError,
     "teacher and student are the same module; online distillation trains two nets"),
    (lambda: edgekd.distill({**quickstart(), "student": {"arch": "cnn_tiny", "options": {"width": 4}}},
                            student=nn.Linear(2, 2)), RecipeError,
     "recipe: student.options configure a model named by student.arch; the student module passed in takes none "
     "(set them when you build it)"),
    (lambda: edgekd.export("no-such-run"), EdgeKDError, "run directory no-such-run does not exist"),
    (lambda: edgekd.export("no-such-run", formats="fp32,int8"), ExportError,
     "formats='fp32,int8' is one string; pass a list such as ['fp32', 'int8']"),
    (lambda: edgekd.validate("no-such-bundle"), BundleError, "bundle folder no-such-bundle does not exist"),
    (lambda: edgekd.validate("no-such-bundle", max_ece=5), EdgeKDError, "max_ece must be a fraction in [0, 1], got 5"),
    (lambda: edgekd.validate("no-such-bundle", batch=0), EdgeKDError, "batch must be an integer >= 1, got 0"),
    (lambda: edgekd.validate("no-such-bundle", runtime="tvm"), EdgeKDError,
     "runtime 'tvm' is not one of onnxruntime, openvino, tensorrt"),
])
def test_bad_arguments_are_typed_errors(call, error, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error) as e:
        call()
    assert str(e.value) == message and e.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


def test_every_error_shares_the_base_and_says_its_exit_code():
    from edgekd import errors

    kinds = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert all(issubclass(c, EdgeKDError) for c in kinds), kinds
    failed = {c.__name__ for c in kinds if c.exit_code == 1}
    assert failed == {"FailedCheck", "ParityError", "PeerLostError", "Int8SearchError", "GateError"}
    assert all(issubclass(getattr(errors, name), errors.FailedCheck) for name in failed)


# ------------------------------------------------------------------ user models, end to end


class PlainTeacher(nn.Module):
    """A CNN that is not in edgekd's registry, built the way a user writes one."""

    def __init__(self, channels: int = 1, classes: int = 10, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x))


class PlainStudent(nn.Module):
    def __init__(self, channels: int = 1, classes: int = 10, width: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(channels, width, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.head(x.mean(dim=(2, 3)))


def arch(cls: type) -> str:
    return f"user:{cls.__module__}.{cls.__qualname__}"


@training_fixture()
def user_run(tmp_path_factory):
    """Two user modules distilled for 2 epochs on the digits, then exported (fp32, int8_cpu)."""
    root = tmp_path_factory.mktemp("api-user")
    torch.manual_seed(0)
    teacher, student = PlainTeacher(), PlainStudent()
    initial = {k: v.clone() for k, v in student.state_dict().items()}
    epochs: list[dict] = []
    run = edgekd.distill(QUICKSTART, overrides={"train.epochs": 2, "train.device": "cpu",
                                                "data.image_size": IMAGE_SIZE}, teacher=teacher,
                         student=student, out=root / "run", on_epoch=epochs.append)
    bundle = edgekd.export(run, out=root / "bundle", formats=["fp32", "int8_cpu"])
    return root, run, (teacher, student, initial), epochs, bundle


def test_user_modules_are_trained_in_place_and_recorded_by_class_path(user_run):
    root, run, (teacher, student, initial), epochs, _ = user_run
    assert run.path == root / "run" and run.teacher is teacher and run.student is student
    assert any(not torch.equal(initial[k], v) for k, v in student.state_dict().items())
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary == run.summary
    assert (summary["teacher"]["arch"], summary["student"]["arch"]) == (arch(PlainTeacher), arch(PlainStudent))
    saved = yaml.safe_load((run.path / "recipe.yaml").read_text())
    assert (saved["teacher"]["arch"], saved["student"]["arch"]) == (arch(PlainTeacher), arch(PlainStudent))
    assert summary["student"]["params"] == sum(p.numel() for p in student.parameters())
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert run.student_metrics["accuracy"] == epochs[-1]["student_accuracy"] == summary["student"]["accuracy"]
    assert set(run.teacher_metrics) == {"accuracy", "ece", "mce", "adaptive_ece", "classwise_ece", "nll", "brier"}
    ck = load_student(run.path / "student.pt")  # weights only: no class, no code
    assert ck.arch == arch(PlainStudent)
    assert all(torch.equal(ck.state_dict[k], v.cpu()) for k, v in student.state_dict().items())


def test_user_model_bundle_validates_with_the_measured_numbers(user_run, tmp_path):
    root, run, _, _, bundle = user_run
    assert isinstance(bundle, edgekd.Bundle) and bundle.path == root / "bundle"
    assert list(bundle.formats) == ["fp32", "int8_cpu"]
    assert bundle.manifest["model"]["arch"] == arch(PlainStudent)
    # The bundle's PyTorch reference is the run's own student on the same val split.
    assert bundle.reference["accuracy"] == pytest.approx(run.student_metrics["accuracy"])
    report = edgekd.validate(bundle, max_ece=1.0, max_acc_drop=0.05, min_agreement=0.9, max_ece_drift=0.05,
                             json_path=tmp_path / "v.json")
    fp32 = report.formats["fp32"]
    assert report.passed and report.verdict == "VERDICT: PASS (8 checks)" and len(report.checks) == 8
    assert fp32["agreement"] == 1.0 and fp32["accuracy"] == pytest.approx(bundle.reference["accuracy"])
    assert fp32["ece"] == pytest.approx(bundle.reference["ece"], abs=1e-4)
    assert len(report.labels) == report.data["n"] == bundle.reference["n"]
    for fmt, logits in report.logits.items():  # the figures are the logits' own
        assert report.formats[fmt]["accuracy"] == pytest.approx(float((logits.argmax(1) == report.labels).mean()))
    assert json.loads((tmp_path / "v.json").read_text()) == json.loads(json.dumps(report.as_dict()))
    report.raise_for_gate()  # passed: nothing raised
    strict = edgekd.validate(bundle.path, formats=["fp32"], max_ece=0.0)
    assert not strict.passed and [c.status for c in strict.checks if c.metric == "ece"] == ["fail"]
    with pytest.raises(GateError) as e:
        strict.raise_for_gate()
    assert str(e.value) == strict.verdict and strict.verdict.startswith("VERDICT: FAIL") and e.value.exit_code == 1


def test_user_model_run_needs_its_modules_again(user_run, tmp_path, monkeypatch, capfd):
    root, run, _, _, bundle = user_run
    monkeypatch.chdir(tmp_path)
    line = cli_error(["export", run.path, "--out", "b"], capfd)
    assert line == (f"the student of {run.path} is a user model ({arch(PlainStudent)}), which edgekd cannot rebuild "
                    "from a name; export it from Python with the module: edgekd.export(run, student=PlainStudent(...))")
    line = cli_error(["distill", run.path / "recipe.yaml", "--out", "r"], capfd)
    assert line.startswith(f"teacher.arch '{arch(PlainTeacher)}' is a model that was passed to edgekd.distill") \
        and line.endswith("edgekd.distill(recipe, teacher=PlainTeacher(...))")
    with pytest.raises(CheckpointError, match=r"student\.pt does not fit PlainTeacher: "):
        edgekd.export(run.path, student=PlainTeacher(), out="b")
    assert list(tmp_path.iterdir()) == []
    # From its directory, with a module of its class: the same student, so the same reference.
    again = edgekd.export(run.path, student=PlainStudent(), out="b", formats=["fp32"])
    assert again.reference == bundle.reference


@pytest.mark.slow  # builds the digits data
@pytest.mark.parametrize("module, message", [
    (nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 7)),
     "the student module (Sequential) gives shape [2, 7] for a batch of 2 images; it must give logits of shape "
     "[batch, 10] (10 classes)"),
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()),
     "the student module (Sequential) fails on a [2, 1, 32, 32] batch of this data: "),
])
def test_user_module_that_does_not_fit_the_data(module, message, tmp_path):
    with pytest.raises(ModelError) as e:
        edgekd.distill(QUICKSTART, student=module, out=tmp_path / "run")
    assert str(e.value).startswith(message) and len(str(e.value).splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a Python process
def test_validate_from_python_without_torch(user_run, tmp_path):
    from test_validate import BLOCKER

    _, _, _, _, bundle = user_run
    report_file = tmp_path / "torch_modules.json"
    code = BLOCKER + ("import edgekd\nr = edgekd.validate(sys.argv[1])\n"
                      "print(json.dumps({f: m['accuracy'] for f, m in r.formats.items()}))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(bundle.path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(REPO), "BLOCKED": "torch",
                                            "TORCH_REPORT": str(report_file)}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(report_file.read_text()) == []
    here = edgekd.validate(bundle)
    assert json.loads(proc.stdout) == {f: m["accuracy"] for f, m in here.formats.items()}


# ------------------------------------------------------------------ the example, as written


@pytest.mark.slow  # trains 2 epochs, exports 4 files, validates them
def test_python_api_example_runs_as_written(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples/python_api.py")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    run_dir = tmp_path / next(x for x in lines if x.startswith("run ")).removeprefix("run ")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert lines[:4] == [
        f"epoch 1: student acc {json.loads((run_dir / 'metrics.jsonl').read_text().splitlines()[0])['student_accuracy']:.2%}",
        f"epoch 2: student acc {summary['student']['accuracy']:.2%}",
        *[f"{role}: acc {summary[role]['accuracy']:.2%} ECE {summary[role]['ece']:.2%} NLL {summary[role]['nll']:.4f}"
          for role in ("teacher", "student")],
    ]
    bundle_line = next(x for x in lines if x.startswith("bundle "))
    bundle = tmp_path / bundle_line.removeprefix("bundle ").split(":")[0]
    assert bundle_line.endswith(": model_fp32.onnx, model_fp16.onnx, model_int8.onnx, model_int8_cpu.onnx")
    report = edgekd.validate(bundle)  # the same files on the same images: the same figures
    for fmt, m in report.formats.items():
        assert (f"{fmt:<9} acc {m['accuracy']:.2%}  ECE {m['ece']:.2%}  agreement with fp32 {m['agreement']:.2%}"
                in lines), fmt
    failed = [x for x in lines if x.startswith("failed: ")]
    assert len(failed) == sum(c.status == "fail" for c in report.checks)
    assert lines[-1] == report.verdict
