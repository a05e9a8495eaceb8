"""A serialized TensorRT engine, run with the name-based API of TensorRT 10 and 11 (enqueueV3).

tensorrt and a CUDA binding (edgekd.runtime.gpu_memory) are imported only when an
engine is activated, so a machine without them can still import this module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekd import optional
from edgekd.errors import BundleError, EdgeKDError
from edgekd.runtime.base import TRT_MISSING, Runner
from edgekd.runtime.gpu_memory import open_gpu


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
    return optional.load("tensorrt", "the TensorRT runtime needs",
                         missing=f"{TRT_MISSING}: the tensorrt package is not installed "
                                 "(pip install 'edgekd[trt]' on a machine with an NVIDIA GPU)")


class TensorRTEngine(Runner):
    """One engine on one CUDA stream: `with TensorRTEngine(path, manifest_entry) as e: e.run(batch)`.

    `entry` is the engine's manifest entry: the TensorRT version and compute capability
    that built it, checked against this device before the engine is deserialized.
    Deactivating frees the device buffers, the TensorRT objects and the stream.
    """

    name = "tensorrt"

    def __init__(self, path: str | Path, entry: dict):
        self.path, self.entry = Path(path), entry
        self._gpu = None
        self._logger = self._runtime = self._engine = self._context = None
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor name -> (device pointer, bytes)

    def _activate(self) -> None:
        trt = import_tensorrt()
        self._gpu = gpu = open_gpu()  # MissingDependencyError without cuda-python/pycuda or a GPU
        file = self.path.name
        why = engine_mismatch(file, self.entry.get("tensorrt_version"), self.entry.get("compute_capability"),
                              trt.__version__, gpu.compute_capability)
        if why:
            raise BundleError(why)
        self._logger = trt.Logger(trt.Logger.ERROR)
        self._runtime = trt.Runtime(self._logger)  # must outlive the engine
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise BundleError(f"{file} could not be deserialized by TensorRT {trt.__version__} (corrupt or not an engine)")
        self._context = self._engine.create_execution_context()
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        ins = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) != 1:
            raise BundleError(f"{file} has {len(ins)} inputs and {len(outs)} outputs; expected 1 and 1")
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_shape = list(engine.get_tensor_shape(self.input_name))
        self.output_shape = list(engine.get_tensor_shape(self.output_name))
        self._in_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self._out_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.output_name)))
        # Profile 0 is the one edgekd export builds: (min, opt, max) input shapes.
        self.max_batch = int(engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.providers = [f"TensorRT {trt.__version__} on {gpu.device_name} (sm {gpu.compute_capability})"]

    def _deactivate(self) -> None:
        # TensorRT's objects go first (context, then engine, then runtime and its logger: each was
        # made from the next), then the device buffers they pointed at, then the stream (and a
        # pycuda context).
        self._context = None
        self._engine = None
        self._runtime = self._logger = None
        gpu, self._gpu = self._gpu, None
        if gpu is None:
            return
        try:
            for ptr, _ in self._buffers.values():
                gpu.free(ptr)
        finally:
            self._buffers.clear()
            gpu.close()

    def _device_buffer(self, tensor: str, nbytes: int) -> int:
        """One device buffer per tensor, grown when a larger batch comes (allocation is not timed twice)."""
        ptr, size = self._buffers.get(tensor, (0, 0))
        if size < nbytes:
            if ptr:
                self._gpu.free(ptr)
                del self._buffers[tensor]
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
