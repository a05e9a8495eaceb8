"""Device memory, copies and one stream for TensorRT: cuda-python if installed, else pycuda.

Only what TensorRTEngine needs: alloc/free, host<->device copies on the stream,
synchronize, and the GPU's name and compute capability (an engine runs only on
the compute capability that built it). `open_gpu()` returns a device that must be
closed: `with open_gpu() as gpu:` (or `gpu.close()`) destroys its stream and, with
pycuda, the context it created.
"""

from __future__ import annotations

import numpy as np

from edgekd.errors import MissingDependencyError
from edgekd.runtime.base import TRT_MISSING


class _Gpu:
    device_name: str
    compute_capability: str  # "8.7"
    stream_handle: int  # the CUDA stream, as TensorRT's execute_async_v3 takes it

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _CudaPython(_Gpu):
    """NVIDIA's cuda-python (`cuda.bindings.runtime`, or `cuda.cudart` before 12.8)."""

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # raises ImportError too when cuda-python is absent
        self._rt = cudart
        self._stream = None
        count = self._call(cudart.cudaGetDeviceCount(), missing_ok=True)
        if not count:
            raise MissingDependencyError(f"{TRT_MISSING}: CUDA sees no GPU")
        device = self._call(cudart.cudaGetDevice())
        props = self._call(cudart.cudaGetDeviceProperties(device))
        name = props.name
        self.device_name = (name.decode(errors="replace") if isinstance(name, bytes) else str(name)).rstrip("\x00")
        self.compute_capability = f"{props.major}.{props.minor}"
        self._stream = self._call(cudart.cudaStreamCreate())  # created last: nothing can fail after it
        self.stream_handle = int(self._stream)

    def _call(self, result, missing_ok: bool = False):
        """cuda-python returns (error, *values): raise on error, return the value."""
        err, *values = result
        if err != self._rt.cudaError_t.cudaSuccess:
            if missing_ok:
                return None  # no driver / no device: reported by the caller as a missing GPU
            _, text = self._rt.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA error: {text.decode() if isinstance(text, bytes) else text}")
        return values[0] if len(values) == 1 else None

    def alloc(self, nbytes: int) -> int:
        return int(self._call(self._rt.cudaMalloc(nbytes)))

    def free(self, ptr: int) -> None:
        self._call(self._rt.cudaFree(ptr))

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self._rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, self._stream))

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self._rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, self._stream))

    def synchronize(self) -> None:
        self._call(self._rt.cudaStreamSynchronize(self._stream))

    def close(self) -> None:
        """Destroy the stream (work queued on it finishes first); a second call does nothing."""
        stream, self._stream = self._stream, None
        if stream is not None:
            self._call(self._rt.cudaStreamDestroy(stream))


class _PyCuda(_Gpu):
    """pycuda, which some JetPack images ship instead of cuda-python."""

    def __init__(self):
        import pycuda.driver as drv

        try:
            drv.init()
            count = drv.Device.count()
        except drv.Error:  # no driver
            count = 0
        if count == 0:
            raise MissingDependencyError(f"{TRT_MISSING}: CUDA sees no GPU")
        device = drv.Device(0)
        self._drv = drv
        self._allocations: dict[int, object] = {}  # keep DeviceAllocation objects alive
        self.device_name = device.name()
        self.compute_capability = "{}.{}".format(*device.compute_capability())
        # TensorRT runs in the current context: this one, made current here, destroyed by close().
        self._context = device.make_context()
        try:
            self._stream = drv.Stream()
        except BaseException:
            self._context.detach()
            raise
        self.stream_handle = self._stream.handle

    def alloc(self, nbytes: int) -> int:
        allocation = self._drv.mem_alloc(nbytes)
        self._allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        self._allocations.pop(ptr).free()

    def to_device(self, ptr: int, host: np.ndarray) -> None:
        self._drv.memcpy_htod_async(ptr, host, self._stream)

    def to_host(self, host: np.ndarray, ptr: int) -> None:
        self._drv.memcpy_dtoh_async(host, ptr, self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()

    def close(self) -> None:
        """Free what is left, drop the stream, then destroy the context (pycuda's detach() pops it
        from this thread's stack); a second call does nothing."""
        context, self._context = self._context, None
        if context is None:
            return
        for allocation in self._allocations.values():
            allocation.free()
        self._allocations.clear()
        self._stream = None  # pycuda destroys a stream when its last reference goes, in its context
        context.detach()


def open_gpu() -> _Gpu:
    """The first CUDA device through whichever CUDA binding is installed; close it when done."""
    for backend in (_CudaPython, _PyCuda):
        try:
            return backend()
        except ImportError:
            continue
    raise MissingDependencyError(f"{TRT_MISSING}: neither cuda-python nor pycuda is installed (pip install cuda-python)")
