"""ONNX -> serialized TensorRT engines (`edgekd export --trt`), for TensorRT 10 and 11.

tensorrt is imported only here and only when --trt is given. Precision: in
TensorRT 11 every network is strongly typed, so it comes from the ONNX file
itself (FP16 tensors, or INT8 Q/DQ nodes) and the FP16/INT8 builder flags no
longer exist. TensorRT 10 builds weakly typed networks, where the flags allow
the reduced-precision kernels (Q/DQ nodes are honoured either way: explicit
quantization, no calibrator).

An engine runs only on the TensorRT release and GPU that built it; the manifest
records both, and `edgekd validate` refuses a mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.deploy.onnx_export import INPUT_NAME
from edgekd import optional
from edgekd.errors import ExportError, MissingDependencyError
from edgekd.runtime.gpu_memory import open_gpu

MIN_MAJOR = 10
WORKSPACE_BYTES = 1 << 30
# TensorRT 10 (weakly typed): flags that let the builder pick reduced-precision kernels.
# INT8 also gets FP16 so the layers left outside Q/DQ (the excluded ones, pooling) need not run in FP32.
WEAK_TYPING_FLAGS = {"fp16": ("FP16",), "int8": ("INT8", "FP16")}
INSTALL_HINT = "pip install 'edgekd[trt]' on a machine with an NVIDIA GPU"


@dataclass
class TrtTarget:
    """The TensorRT module and the GPU engines are built for."""

    trt: Any
    version: str
    gpu_name: str
    compute_capability: str


def major_version(version: str) -> int:
    try:
        return int(str(version).split(".")[0])
    except ValueError:
        raise ExportError(f"cannot read TensorRT's version {version!r}") from None


def builder_flags(version: str, precision: str) -> tuple[str, ...]:
    """Names of the trt.BuilderFlag members to set for `precision` under TensorRT `version`."""
    if precision not in WEAK_TYPING_FLAGS:
        raise ExportError(f"no TensorRT engine for precision {precision!r}; allowed: {', '.join(WEAK_TYPING_FLAGS)}")
    major = major_version(version)
    if major < MIN_MAJOR:
        raise MissingDependencyError(f"--trt: TensorRT {version} is too old; edgekd needs TensorRT {MIN_MAJOR} or newer")
    return WEAK_TYPING_FLAGS[precision] if major == MIN_MAJOR else ()


def profile_shapes(max_batch: int, channels: int, image_size: int) -> dict[str, tuple[int, ...]]:
    """min/opt/max input shapes of the one optimization profile: batch 1 .. max_batch, tuned at half of it."""
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ExportError(f"--max-batch must be an integer >= 1, got {max_batch!r}")
    chw = (channels, image_size, image_size)
    return {"min": (1, *chw), "opt": (max(1, max_batch // 2), *chw), "max": (max_batch, *chw)}


def find_target() -> TrtTarget:
    """TensorRT and a GPU, or MissingDependencyError saying which is missing (one line, starts with --trt)."""
    trt = optional.load("tensorrt", "--trt needs", missing=f"--trt: TensorRT is not installed ({INSTALL_HINT})")
    try:
        gpu = open_gpu()
    except MissingDependencyError as e:
        raise MissingDependencyError(f"--trt: {e}") from None
    with gpu:  # only its name and compute capability are needed; the builder makes its own stream
        name, compute_capability = gpu.device_name, gpu.compute_capability
    builder_flags(trt.__version__, "fp16")  # refuses TensorRT older than 10
    return TrtTarget(trt, trt.__version__, name, compute_capability)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())[:240]


def build_engine(target: TrtTarget, onnx_path: Path, engine_path: Path, precision: str, max_batch: int,
                 channels: int, image_size: int) -> dict:
    """Parse `onnx_path`, build, write `engine_path`; return the manifest facts about the engine."""
    trt = target.trt
    logger = trt.Logger(trt.Logger.ERROR)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in 10+; strongly typed is implied in 11
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [_one_line(parser.get_error(i)) for i in range(parser.num_errors)] or ["no detail"]
        raise ExportError(f"TensorRT {target.version} cannot parse {onnx_path.name}: {errors[0]}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    for flag in builder_flags(target.version, precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    shapes = profile_shapes(max_batch, channels, image_size)
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(f"TensorRT {target.version} failed to build an engine from {onnx_path.name} "
                          f"(max batch {max_batch}); rerun with a smaller --max-batch or see TensorRT's log")
    engine_path.write_bytes(bytes(serialized))
    return {
        "from": onnx_path.name,
        "tensorrt_version": target.version,
        "gpu_name": target.gpu_name,
        "compute_capability": target.compute_capability,
        "profile": {k: v[0] for k, v in shapes.items()},
    }
