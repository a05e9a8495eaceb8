"""`edgekd export --temperature`: one temperature inside every file of the bundle.

Post-hoc temperature scaling (logits / T, T fitted by NLL on held-out data) calibrates a
model as well as online distillation does (README, Result), but it is a step of the
serving code that is easily lost at export. Here it becomes part of the model: every
file's output goes through one Div by T, appended after its last op, so after the last
DequantizeLinear of an INT8 file (the division stays in float, whatever the file's
precision) and inside any TensorRT engine built from the file. `edgekd validate` then
measures the files as shipped.

T comes from the user (`--temperature 1.7`) or is fitted (`fit`) on the run's tune split,
never on val (where the bundle's figures are measured) or test: calibration.fit_temperature,
the NLL minimiser compare's `+ts` rows use. Judged and measured here with the same division
in numpy (float32 / float32 rounds as ONNX Runtime's Div does), so figures computed from
raw logits and figures of the files agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekd import calibration
from edgekd.errors import ExportError

FIT = "fit"
MAX_TEMPERATURE = 100.0  # calibration.fit_temperature searches [0.05, 20]; a given value may go further
NODE_NAME = "temperature_scaling"
INITIALIZER = "temperature"


def parse_temperature(value: Any) -> float | str | None:
    """None (no temperature), FIT, or a number in (0, MAX_TEMPERATURE]; a string from the command
    line is read as either."""
    if value is None or value == FIT:
        return value
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ExportError(f"--temperature takes 'fit' or a number > 0, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 < value <= MAX_TEMPERATURE:
        raise ExportError(f"--temperature takes 'fit' or a number > 0 and <= {MAX_TEMPERATURE:g}, got {value!r}")
    return float(value)


def scaled(logits: np.ndarray, t: float | None) -> np.ndarray:
    """logits / t in float32, as the Div in the files computes it (None: unchanged)."""
    if t is None:
        return logits
    return (logits.astype(np.float32) / np.float32(t)).astype(np.float32)


@dataclass(frozen=True)
class Temperature:
    """The temperature a bundle ships, where it came from, and what it does on the tune split."""

    value: float
    source: str  # "fit" or "given"
    tune: dict | None  # {"n", "before": {nll, ece}, "after": {nll, ece}}; None without a tune split

    def record(self) -> dict:
        """manifest.json's "temperature" (export/README.md)."""
        how = ("fitted by NLL on the tune split (calibration.fit_temperature)" if self.source == FIT
               else "given (--temperature)")
        return {"value": self.value, "source": self.source, "how": how, "tune": self.tune,
                "applied": f"every file's output divided by {self.value:.6g} (a Div after its last op)"}

    def line(self) -> str:
        text = f"temperature {self.value:.4g} ({'fitted on the tune split' if self.source == FIT else 'given'})"
        if self.tune:
            b, a = self.tune["before"], self.tune["after"]
            text += (f": tune ECE {100 * b['ece']:.2f}% -> {100 * a['ece']:.2f}%, NLL {b['nll']:.4f} -> "
                     f"{a['nll']:.4f} ({self.tune['n']} images)")
        return text + "; inside every file"


def resolve(spec: float | str, tune_logits: np.ndarray | None, tune_labels: np.ndarray | None) -> Temperature:
    """The Temperature for `spec` (FIT or a value), from the student's PyTorch logits on the tune split
    (None: the run has no tune split, which FIT needs; the caller words the error)."""
    value = calibration.fit_temperature(tune_logits, tune_labels) if spec == FIT else float(spec)
    tune = None
    if tune_logits is not None:
        def figures(z: np.ndarray) -> dict:
            m = calibration.calibration_metrics(z, tune_labels)
            return {"nll": m["nll"], "ece": m["ece"]}

        tune = {"n": int(len(tune_labels)), "before": figures(tune_logits),
                "after": figures(scaled(tune_logits, value))}
    return Temperature(value, FIT if spec == FIT else "given", tune)


def append_division(path: Path, t: float) -> None:
    """Rewrite the ONNX file at `path` so that its one output is what it was, divided by `t`: the
    producer's output is renamed and a Div by a float32 initializer writes the output's name."""
    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.output) != 1:
        raise ExportError(f"{path.name} has {len(graph.output)} outputs; a temperature needs exactly one")
    name = graph.output[0].name
    raw = f"{name}_before_temperature"
    for node in graph.node:
        node.output[:] = [raw if o == name else o for o in node.output]
        node.input[:] = [raw if i == name else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.array(t, dtype=np.float32), INITIALIZER))
    graph.node.append(helper.make_node("Div", [raw, INITIALIZER], [name], name=NODE_NAME))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
