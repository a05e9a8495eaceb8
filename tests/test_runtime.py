"""edgekd.runtime: the lifecycle of runners, without a GPU. Torch-free.

ONNX Runtime and OpenVINO run for real on a tiny model built here. TensorRT and CUDA are not on
this machine: what TensorRTEngine does when activation fails part-way (the GPU it
opened is closed again) is checked with a stand-in TensorRT module and GPU.
"""

import ast
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgekd.errors import BundleError, MissingDependencyError
from edgekd.runtime import OnnxRuntimeSession, OpenVinoCpu, TensorRTEngine
from edgekd.runtime import tensorrt_engine

RUNTIME = Path(__file__).resolve().parents[1] / "edgekd" / "runtime"


@pytest.fixture
def tiny_model(tmp_path):
    """float32 [batch, 3] -> [batch, 2] logits: y = x @ W."""
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1, 0, 0, 1, 1, 1])
    graph = helper.make_graph([helper.make_node("MatMul", ["input", "w"], ["logits"])], "tiny",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])], [w])
    path = tmp_path / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_onnxruntime_session_is_loaded_inside_with_and_released_after(tiny_model):
    runner = OnnxRuntimeSession(tiny_model, ["CPUExecutionProvider"])
    assert not runner.is_active  # constructing loads nothing
    with runner as session:
        assert session is runner and session.is_active
        assert (session.input_name, session.input_shape, session.output_name) == ("input", ["batch", 3], "logits")
        assert session.providers == ["CPUExecutionProvider"]
        logits = session.run(np.array([[1, 2, 3]], np.float32))
    np.testing.assert_array_equal(logits, [[4, 5]])
    assert not runner.is_active and runner._session is None
    with runner as again:  # a deactivated runner can be activated again
        assert again.run(np.zeros((2, 3), np.float32)).shape == (2, 2)


def test_activating_twice_is_a_programming_error(tiny_model):
    with OnnxRuntimeSession(tiny_model, ["CPUExecutionProvider"]) as session:
        with pytest.raises(RuntimeError, match="already active"):
            session.activate()


def test_a_file_that_does_not_load_leaves_the_runner_inactive(tmp_path):
    bad = tmp_path / "model_fp32.onnx"
    bad.write_bytes(b"not a model")
    runner = OnnxRuntimeSession(bad, ["CPUExecutionProvider"])
    with pytest.raises(BundleError, match="model_fp32.onnx is not a loadable ONNX model"):
        with runner:
            pytest.fail("the body must not run")
    assert not runner.is_active and runner._session is None


def test_openvino_runner_is_loaded_inside_with_and_released_after(tiny_model):
    runner = OpenVinoCpu(tiny_model)
    assert not runner.is_active
    with runner as compiled:
        assert compiled is runner and compiled.is_active
        assert (compiled.input_name, compiled.input_shape) == ("input", [None, 3])  # None: the dynamic batch axis
        assert (compiled.output_name, compiled.output_shape) == ("logits", [None, 2])
        # What validate prints and writes: FP32 is computed in f32 (OpenVINO's CPU default is bf16 where the
        # CPU has AMX or AVX512_BF16), read back from the compiled model, not from our own settings.
        assert compiled.providers[0].startswith("OpenVINO ") and "f32 inference precision" in compiled.providers[0]
        x = np.array([[1, 2, 3], [0.5, 0, 1]], np.float32)
        first = compiled.run(x)
        np.testing.assert_array_equal(first, [[4, 5], [1.5, 1]])
        compiled.run(np.zeros((5, 3), np.float32))  # another batch size; earlier outputs are copies, not reused
        np.testing.assert_array_equal(first, [[4, 5], [1.5, 1]])
    # Every OpenVINO handle is dropped (the output port alone keeps the compiled model alive).
    assert not runner.is_active and runner._compiled is None and runner._request is None and runner._output is None
    with runner as again:
        assert again.run(np.ones((1, 3), np.float32)).shape == (1, 2)
    assert runner._compiled is None and runner._request is None and runner._output is None


def test_a_file_openvino_cannot_load_is_one_line(tmp_path):
    bad = tmp_path / "model_fp16.onnx"
    bad.write_bytes(b"hello, not a protobuf")
    runner = OpenVinoCpu(bad)
    with pytest.raises(BundleError, match=r"^model_fp16.onnx could not be loaded by OpenVINO .* on the CPU \(") as e:
        runner.activate()
    assert "\n" not in str(e.value) and "Exception from" not in str(e.value)  # what failed, not where in OpenVINO
    assert "--runtime onnxruntime" in str(e.value)
    assert not runner.is_active and runner._compiled is None


def test_openvino_not_installed_is_one_missing_dependency(tiny_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    runner = OpenVinoCpu(tiny_model)
    with pytest.raises(MissingDependencyError, match=r"not installed: pip install 'edgekd\[openvino\]'$"):
        runner.activate()
    assert not runner.is_active


class RecordingGpu:
    """Stands in for edgekd.runtime.gpu_memory's device: records what the runner gives back."""

    device_name, compute_capability, stream_handle = "Test GPU", "8.7", 0

    def __init__(self):
        self.calls = []

    def free(self, ptr):
        self.calls.append(("free", ptr))

    def close(self):
        self.calls.append("close")


@pytest.fixture
def gpu(monkeypatch):
    gpu = RecordingGpu()
    monkeypatch.setattr(tensorrt_engine, "open_gpu", lambda: gpu)
    monkeypatch.setattr(tensorrt_engine, "import_tensorrt", lambda: SimpleNamespace(__version__="10.3.0.26"))
    return gpu


def test_engine_refused_after_the_gpu_is_opened_closes_it(gpu, tmp_path):
    """An engine built for another GPU is refused before it is read, and the stream opened for it is freed."""
    engine = TensorRTEngine(tmp_path / "model_fp16.engine", {"tensorrt_version": "10.3.0", "compute_capability": "9.0"})
    with pytest.raises(BundleError, match="built for TensorRT 10.3.0 on compute capability 9.0"):
        engine.activate()
    assert gpu.calls == ["close"] and not engine.is_active and engine._gpu is None


def test_engine_deactivation_frees_buffers_then_the_stream(gpu, tmp_path):
    engine = TensorRTEngine(tmp_path / "model_fp16.engine", {})
    engine._gpu, engine._active = gpu, True  # as after activate() and two run() calls
    engine._context = engine._engine = engine._runtime = object()
    engine._buffers = {"input": (11, 64), "logits": (22, 8)}
    engine.deactivate()
    assert gpu.calls == [("free", 11), ("free", 22), "close"]
    assert engine._buffers == {} and engine._context is engine._engine is engine._runtime is None
    engine.deactivate()  # a second time does nothing
    assert gpu.calls == [("free", 11), ("free", 22), "close"]


def test_engine_without_tensorrt_is_one_missing_dependency(tmp_path):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here")
    engine = TensorRTEngine(tmp_path / "model_fp16.engine", {})
    with pytest.raises(MissingDependencyError, match="the tensorrt package is not installed"):
        engine.activate()
    assert not engine.is_active


def _edgekd_imports(path: Path) -> set[str]:
    """Every edgekd module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgekd"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("edgekd")}
    return found


def test_runtime_modules_import_each_other_without_a_cycle():
    """Deferred imports count too: gpu_memory once imported runtimes, which imported gpu_memory inside a function."""
    graph = {f"edgekd.runtime.{p.stem}": _edgekd_imports(p) for p in RUNTIME.glob("*.py") if p.stem != "__init__"}

    def visit(module, path):
        assert module not in path, f"import cycle: {' -> '.join(path + [module])}"
        for dep in graph.get(module, ()):
            visit(dep, path + [module])

    for module in graph:
        visit(module, [])


def test_no_cleanup_is_left_to_the_garbage_collector():
    assert [p.name for p in RUNTIME.glob("*.py") if "__del__" in p.read_text()] == []  # not even mentioned
