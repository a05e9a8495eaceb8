"""ONNX Runtime: pick execution providers and run an ONNX file. onnxruntime is imported lazily."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd import optional
from edgekd.errors import BundleError, EdgeKDError, first_line
from edgekd.runtime.base import Runner, require_one_float_input_and_output

# Fastest first; ONNX Runtime falls back down the list per node. Azure (remote
# inference) and other non-local providers are never picked by default.
PROVIDER_PRIORITY = (
    "TensorrtExecutionProvider", "CUDAExecutionProvider", "ROCMExecutionProvider", "MIGraphXExecutionProvider",
    "OpenVINOExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider", "CPUExecutionProvider",
)
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "rocm": "ROCMExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider",
                    "coreml": "CoreMLExecutionProvider", "cpu": "CPUExecutionProvider"}


def import_onnxruntime():
    return optional.load("onnxruntime", "ONNX files need")


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version, or None if it is not installed (or does not load)."""
    return optional.version_of("onnxruntime")


def choose_providers(requested: list[str] | None) -> list[str]:
    """Requested providers (full names or aliases like cuda, cpu), else every local one, fastest first."""
    available = import_onnxruntime().get_available_providers()
    if requested is None:
        return [p for p in PROVIDER_PRIORITY if p in available]
    chosen = []
    for name in requested:
        full = PROVIDER_ALIASES.get(name.lower(), name)
        if full not in available:
            raise EdgeKDError(f"execution provider {name!r} is not available here; available: {', '.join(available)}")
        chosen.append(full)
    return chosen


class OnnxRuntimeSession(Runner):
    """One InferenceSession on `providers`: `with OnnxRuntimeSession(path, providers) as s: s.run(batch)`."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: list[str]):
        self.path, self.requested_providers = Path(path), list(providers)
        self._session = None

    def _activate(self) -> None:
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallback warnings are reported in `providers`
        name = self.path.name
        try:
            self._session = ort.InferenceSession(str(self.path), sess_options=options,
                                                 providers=self.requested_providers)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's pybind errors share no base class but Exception
            raise BundleError(f"{name} is not a loadable ONNX model ({first_line(e)[:200]})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        require_one_float_input_and_output(name, [i.type for i in inputs], [o.type for o in outputs], "tensor(float)")
        self.providers = self._session.get_providers()
        self.input_name, self.input_shape = inputs[0].name, list(inputs[0].shape)
        self.output_name, self.output_shape = outputs[0].name, list(outputs[0].shape)
        self._outputs = [self.output_name]

    def _deactivate(self) -> None:
        self._session = None  # the only reference: ONNX Runtime frees the session (and its arena) now

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(self._outputs, {self.input_name: batch})[0]
