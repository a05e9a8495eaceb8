"""OpenVINO on the CPU: run a bundle's ONNX files. openvino is imported only when a runner is activated.

Every ONNX file a bundle has loads: fp32, fp16, int8 (symmetric QDQ, the TensorRT
flavour) and int8_cpu (uint8 activations with a zero point). OpenVINO reads each
QuantizeLinear/DequantizeLinear pair as a FakeQuantize and runs the quantized
convolutions with integer kernels, so both INT8 files run as INT8.

Two compile settings, both pinned rather than left to the plugin's defaults:

- inference precision f32. On CPUs with AMX or AVX512_BF16 OpenVINO's default is
  bf16, so an FP32 model would silently be validated in bfloat16: pinned, fp32
  means fp32. The fp16 file's weights are widened and it computes in f32 too
  (OpenVINO treats a model's stored precision as storage, not as how to compute).
- performance hint LATENCY: one stream using the cores, the mode in which one
  caller's synchronous calls (validate's timing loops) go fastest; THROUGHPUT
  splits the cores into streams that only parallel requests keep busy.

The batch axis stays dynamic, as in the file. OpenVINO re-prepares such a model on
the first call after the batch size changes, so that call is slower than the next.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd import optional
from edgekd.errors import BundleError
from edgekd.runtime.base import Runner, require_one_float_input_and_output

OPENVINO_MISSING = "--runtime openvino needs OpenVINO, which is not installed: pip install 'edgekd[openvino]'"
DEVICE = "CPU"
# Lines of OpenVINO's C++ exceptions that say where in its sources the check failed, not what failed.
_SOURCE_LOCATION = ("Exception from ", "Check '", "FrontEnd API failed with ")


def import_openvino():
    return optional.load("openvino", "--runtime openvino needs", missing=OPENVINO_MISSING)


def openvino_version() -> str | None:
    """The installed OpenVINO's version (without its build suffix), or None if it does not load."""
    version = optional.version_of("openvino")
    return None if version is None else version.split("-")[0]


def openvino_reason(error: Exception) -> str:
    """The line of an OpenVINO error that says what went wrong (its first lines say where in OpenVINO)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(_SOURCE_LOCATION)]
    return (said or lines or [type(error).__name__])[0][:200]


class OpenVinoCpu(Runner):
    """One ONNX file compiled for OpenVINO's CPU device: `with OpenVinoCpu(path) as r: r.run(batch)`."""

    name = "openvino"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._compiled = self._request = self._output = None

    def _activate(self) -> None:
        ov = import_openvino()
        from openvino import properties
        from openvino.frontend import FrontEndManager
        from openvino.properties import hint

        file = self.path.name
        config = {hint.inference_precision: ov.Type.f32, hint.performance_mode: hint.PerformanceMode.LATENCY}
        try:
            # The ONNX frontend itself rather than Core.read_model: on a file that is not ONNX,
            # read_model tries every frontend, and TensorFlow's prints parse errors to stderr.
            onnx_frontend = FrontEndManager().load_by_framework("onnx")
            model = onnx_frontend.convert(onnx_frontend.load(str(self.path)))
            self._compiled = ov.Core().compile_model(model, DEVICE, config)
        except Exception as e:  # noqa: BLE001 - OpenVINO's errors share no base class but Exception
            raise BundleError(f"{file} could not be loaded by OpenVINO {openvino_version()} on the CPU "
                              f"({openvino_reason(e)}); validate it with --runtime onnxruntime") from None
        inputs, outputs = self._compiled.inputs, self._compiled.outputs
        require_one_float_input_and_output(file, [p.get_element_type().get_type_name() for p in inputs],
                                           [p.get_element_type().get_type_name() for p in outputs], "f32")
        self.input_name, self.input_shape = inputs[0].get_any_name(), _shape(inputs[0])
        self.output_name, self.output_shape = outputs[0].get_any_name(), _shape(outputs[0])
        self._output = outputs[0]
        compiled = self._compiled
        precision = compiled.get_property(hint.inference_precision).get_type_name()
        threads = compiled.get_property(properties.inference_num_threads)
        self.providers = [f"OpenVINO {openvino_version()} {DEVICE} ({precision} inference precision, "
                          f"{threads} threads, LATENCY hint)"]
        self._request = compiled.create_infer_request()

    def _deactivate(self) -> None:
        # The only references: OpenVINO frees the request, then the compiled model and its memory
        # (the output port holds the compiled model too, so it goes as well).
        self._request = None
        self._output = None
        self._compiled = None

    def run(self, batch: np.ndarray) -> np.ndarray:
        # share_inputs: read the caller's contiguous float32 array in place, as ONNX Runtime does;
        # the output is copied out of the request's buffer, which the next call reuses.
        return self._request.infer({0: batch}, share_inputs=True)[self._output]


def _shape(port) -> list:
    """Fixed axes as ints, dynamic ones as None (how check_model_io reads a dynamic axis)."""
    return [d.get_length() if d.is_static else None for d in port.get_partial_shape()]
