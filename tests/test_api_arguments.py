"""The Python API's contract for any argument: a wrong type is a typed EdgeKDError of one line
naming the argument, raised before any work (nothing is written, nothing trains).

Every parameter of every public function is driven with an object no parameter accepts;
the required ones are given valid values so that only the one under test is wrong.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

import edgekd
from edgekd.arguments import checked, INT
from edgekd.errors import ArgumentError, BundleError, EdgeKDError
from edgekd.validation.bundle import Bundle

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "recipes" / "quickstart.yaml"


class Wrong:
    """An object of a type no argument of the API takes."""

    def __repr__(self) -> str:
        return "Wrong()"


REQUIRED = {"distill": {"recipe": QUICKSTART}}
PUBLIC = [edgekd.distill, edgekd.export, edgekd.validate]
CASES = [(fn, name) for fn in PUBLIC for name in inspect.signature(fn).parameters]


def test_every_parameter_is_checked():
    """A new parameter without a Kind would slip through: every one of the public functions has one."""
    for fn in PUBLIC:
        kinds = inspect.getclosurevars(fn).nonlocals["kinds"]
        assert set(kinds) == set(inspect.signature(fn).parameters), fn.__name__


@pytest.mark.parametrize("fn, name", CASES, ids=[f"{fn.__name__}-{name}" for fn, name in CASES])
def test_a_wrong_type_is_a_typed_one_line_error_naming_the_argument(fn, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = {**REQUIRED.get(fn.__name__, {}), name: Wrong()}
    with pytest.raises(EdgeKDError) as e:
        fn(**args)
    message = str(e.value)
    assert message.startswith(f"{name} must be ") and message.endswith(", not a Wrong"), message
    assert len(message.splitlines()) == 1 and e.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []  # checked before anything was read or written


@pytest.mark.parametrize("call, message", [
    (lambda: edgekd.distill(), "distill(): missing a required argument: 'recipe'"),
    (lambda: edgekd.export(epochs=3), "export(): got an unexpected keyword argument 'epochs'"),
    (lambda: edgekd.validate("b", "digits"), "validate(): too many positional arguments"),
    (lambda: edgekd.validate(batch=True), "batch must be an integer, not a bool"),
    (lambda: edgekd.distill(QUICKSTART, resume="yes"), "resume must be True or False, not a str"),
    (lambda: edgekd.distill(QUICKSTART, on_epoch=print, warn=3), "warn must be a callable or None, not a int"),
    (lambda: edgekd.export(calib_samples="512"), "calib_samples must be an integer, not a str"),
    (lambda: edgekd.validate(formats=("fp32", 16)), "formats must be a list of strings or None; 16 is a int"),
    (lambda: edgekd.validate(providers="cpu"), "providers='cpu' is one string; pass a list such as ['cpu']"),
])
def test_calls_python_would_refuse_with_a_bare_typeerror(call, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArgumentError) as e:
        call()
    assert str(e.value) == message
    assert isinstance(e.value, TypeError) and isinstance(e.value, EdgeKDError)  # caught as either


def test_bundle_methods_take_a_format_name(tmp_path):
    bundle = Bundle(tmp_path, {"files": {"model_fp32.onnx": {}}}, {"fp32": "model_fp32.onnx"})
    assert bundle.file("fp32") == tmp_path / "model_fp32.onnx"
    for method in (bundle.file, bundle.entry, bundle.float_nodes):
        with pytest.raises(ArgumentError, match=r"^fmt must be a string, not a int$"):
            method(8)
        with pytest.raises(BundleError, match=r"^format 'int8' is not in bundle .*; it has fp32$"):
            method("int8")


def test_a_kind_for_a_parameter_the_function_lacks_is_a_bug_caught_at_import():
    with pytest.raises(ValueError, match="has no parameter"):
        checked(batchsize=INT)(lambda batch: batch)
