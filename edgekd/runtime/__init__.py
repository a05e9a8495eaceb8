"""Run a model file: the one way export's parity check, validate and the benchmarks load and call models.

Torch-free: a device has numpy and ONNX Runtime (or OpenVINO, or TensorRT), nothing more. Each
runtime library is imported only when a runner is activated, so a device needs only
the one it uses.

    base                 Runner: the activate/deactivate lifecycle (`with Runner(...) as r: r.run(batch)`)
    onnxruntime_session  OnnxRuntimeSession and the choice of execution providers
    openvino_cpu         OpenVinoCpu: an ONNX file on OpenVINO's CPU device, inference precision pinned to f32
    tensorrt_engine      TensorRTEngine: a serialized engine on one CUDA stream
    gpu_memory           device memory, copies and the stream, through cuda-python or pycuda
"""

from edgekd.runtime.base import TRT_MISSING, Runner
from edgekd.runtime.onnxruntime_session import OnnxRuntimeSession, choose_providers, onnxruntime_version
from edgekd.runtime.openvino_cpu import OpenVinoCpu, openvino_version
from edgekd.runtime.tensorrt_engine import TensorRTEngine, engine_mismatch

__all__ = ["TRT_MISSING", "Runner", "OnnxRuntimeSession", "OpenVinoCpu", "TensorRTEngine", "choose_providers",
           "engine_mismatch", "onnxruntime_version", "openvino_version"]
