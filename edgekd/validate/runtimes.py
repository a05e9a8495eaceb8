"""Runtimes that turn a float32 NCHW batch into logits: ONNX Runtime and TensorRT.

Both are imported lazily, so a device needs only the one it uses. A Runtime exposes
what the loaded model says about its I/O (checked against the manifest by
bundle.check_model_io) and `run(batch) -> logits`. `run` is the only thing timed
for throughput, so it does no work beyond the runtime's own call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from edgekd.errors import BundleError, EdgeKDError, MissingDependencyError, first_line

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


class Runtime(Protocol):
    name: str  # "onnxruntime" or "tensorrt"
    providers: list[str]  # what actually runs the model (ONNX Runtime's providers, or the GPU)
    input_name: str
    input_shape: list
    output_name: str
    output_shape: list
    max_batch: int | None  # largest batch the model accepts (a TensorRT profile); None: any

    def run(self, batch: np.ndarray) -> np.ndarray: ...


# ---------------------------------------------------------------- ONNX Runtime


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError("ONNX files need ONNX Runtime, which is not installed: pip install onnxruntime "
                                     "(or onnxruntime-gpu)") from e
    return onnxruntime


def onnxruntime_version() -> str | None:
    """The installed ONNX Runtime's version, or None if it is not installed."""
    try:
        return import_onnxruntime().__version__
    except MissingDependencyError:
        return None


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


class OnnxRuntimeSession:
    name = "onnxruntime"
    max_batch = None

    def __init__(self, path: str | Path, providers: list[str]):
        ort = import_onnxruntime()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallback warnings are reported in `providers`
        try:
            self._session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
        except Exception as e:  # noqa: BLE001 - ONNX Runtime's pybind errors share no base class but Exception
            detail = first_line(e)
            raise BundleError(f"{Path(path).name} is not a loadable ONNX model ({detail[:200]})") from None
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1:
            raise BundleError(f"{Path(path).name} has {len(inputs)} inputs and {len(outputs)} outputs; expected 1 and 1")
        if inputs[0].type != "tensor(float)" or outputs[0].type != "tensor(float)":
            raise BundleError(f"{Path(path).name} takes {inputs[0].type} and gives {outputs[0].type}; "
                              "bundles use float32 input and output")
        self.providers = self._session.get_providers()
        self.input_name, self.input_shape = inputs[0].name, list(inputs[0].shape)
        self.output_name, self.output_shape = outputs[0].name, list(outputs[0].shape)
        self._outputs = [self.output_name]

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self._session.run(self._outputs, {self.input_name: batch})[0]


# ---------------------------------------------------------------- TensorRT

TRT_MISSING = "TensorRT and an NVIDIA GPU are not available on this machine"


def _version_prefix(version: str) -> str:
    """'10.3.0.26' -> '10.3.0': engines are tied to the major.minor.patch release that built them."""
    return ".".join(str(version).split(".")[:3])


def engine_mismatch(file: str, built_trt: str | None, built_cc: str | None, have_trt: str, have_cc: str) -> str | None:
    """Why an engine cannot run here (built for another TensorRT or GPU), or None."""
    if built_trt is None or built_cc is None:
        return f"{file}: manifest.json lacks tensorrt_version or compute_capability"
    if _version_prefix(built_trt) == _version_prefix(have_trt) and str(built_cc) == str(have_cc):
        return None
    return (f"{file} was built for TensorRT {built_trt} on compute capability {built_cc}; this device has "
            f"TensorRT {_version_prefix(have_trt)} on {have_cc}: re-run edgekd export --trt on this device")


def import_tensorrt():
    try:
        import tensorrt
    except ImportError as e:
        raise MissingDependencyError(f"{TRT_MISSING}: the tensorrt package is not installed "
                                     "(pip install 'edgekd[trt]' on a machine with an NVIDIA GPU)") from e
    return tensorrt


class TensorRTEngine:
    """A serialized engine, run with TensorRT 10's name-based API (enqueueV3) on one CUDA stream."""

    name = "tensorrt"

    def __init__(self, path: str | Path, entry: dict):
        from edgekd.validate.gpu_memory import open_gpu

        trt = import_tensorrt()
        gpu = open_gpu()  # MissingDependencyError without cuda-python/pycuda or a GPU
        file = Path(path).name
        why = engine_mismatch(file, entry.get("tensorrt_version"), entry.get("compute_capability"),
                              trt.__version__, gpu.compute_capability)
        if why:
            raise BundleError(why)
        self._trt, self._gpu = trt, gpu
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(Path(path).read_bytes())
        if self._engine is None:
            raise BundleError(f"{file} could not be deserialized by TensorRT {trt.__version__} (corrupt or not an engine)")
        self._context = self._engine.create_execution_context()
        names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
        ins = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise BundleError(f"{file} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_shape = list(self._engine.get_tensor_shape(self.input_name))
        self.output_shape = list(self._engine.get_tensor_shape(self.output_name))
        self._in_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(self._engine.get_tensor_dtype(self.output_name)))
        # Profile 0 is the one edgekd export builds: (min, opt, max) input shapes.
        self.max_batch = int(self._engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.providers = [f"TensorRT {trt.__version__} on {gpu.device_name} (sm {gpu.compute_capability})"]
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)

    def _device_buffer(self, tensor: str, nbytes: int) -> int:
        """One device buffer per tensor, grown when a larger batch comes (allocation is not timed twice)."""
        ptr, size = self._buffers.get(tensor, (0, 0))
        if size < nbytes:
            if ptr:
                self._gpu.free(ptr)
            ptr = self._gpu.alloc(nbytes)
            self._buffers[tensor] = (ptr, nbytes)
            self._context.set_tensor_address(tensor, ptr)
        return ptr

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=self._in_dtype)
        if not self._context.set_input_shape(self.input_name, x.shape):
            raise EdgeKDError(f"TensorRT rejected input shape {list(x.shape)} (engine input {self.input_shape}, "
                              f"max batch {self.max_batch})")
        out = np.empty(tuple(self._context.get_tensor_shape(self.output_name)), dtype=self._out_dtype)
        self._gpu.to_device(self._device_buffer(self.input_name, x.nbytes), x)
        out_ptr = self._device_buffer(self.output_name, out.nbytes)
        if not self._context.execute_async_v3(self._gpu.stream_handle):
            raise EdgeKDError("TensorRT failed to run the engine (execute_async_v3 returned False)")
        self._gpu.to_host(out, out_ptr)
        self._gpu.synchronize()
        return out.astype(np.float32, copy=False)

    def __del__(self):
        for ptr, _ in getattr(self, "_buffers", {}).values():
            try:
                self._gpu.free(ptr)
            except Exception:  # noqa: BLE001 - interpreter shutdown may have torn CUDA down already
                pass
