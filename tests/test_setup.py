"""train.deterministic: the process-wide settings it applies on each device kind; train.amp on the CPU.

CUDA's flags can be set and read back without a GPU, so this runs on the CPU."""

import pytest
import torch

from edgekd.distill.setup import apply_determinism, cpu_has_bf16, resolve_amp
from edgekd.errors import RecipeError

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def _flags() -> dict:
    return {
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
    }


@pytest.fixture(autouse=True)
def restore_flags(monkeypatch):
    """The settings are global to the process: put them back for the other tests."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    before = _flags()
    yield
    torch.backends.cudnn.deterministic = before["cudnn_deterministic"]
    torch.backends.cudnn.benchmark = before["cudnn_benchmark"]
    torch.use_deterministic_algorithms(before["deterministic_algorithms"], warn_only=before["warn_only"])


def test_deterministic_on_cuda_picks_reproducible_kernels(monkeypatch):
    import os

    torch.backends.cudnn.benchmark = True
    apply_determinism(True, CUDA)
    assert _flags() == {"cudnn_deterministic": True, "cudnn_benchmark": False, "deterministic_algorithms": True,
                        "warn_only": True}
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice is kept
    apply_determinism(True, CUDA)
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_not_deterministic_on_cuda_lets_cudnn_benchmark():
    import os

    apply_determinism(True, CUDA)  # a previous run in this process (edgekd compare) asked for determinism
    os.environ.pop("CUBLAS_WORKSPACE_CONFIG")
    apply_determinism(False, CUDA)
    flags = _flags()
    assert flags["cudnn_benchmark"] is True
    assert flags["cudnn_deterministic"] is False and flags["deterministic_algorithms"] is False
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_cpu_needs_no_settings(deterministic):
    before = _flags()
    apply_determinism(deterministic, CPU)  # CPU kernels are deterministic for a fixed thread count
    assert _flags() == before


_BF16_FEATURES = ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16")


@pytest.mark.parametrize("has_bf16", [True, False])
def test_bf16_on_the_cpu_follows_the_cpu_capability_probe(monkeypatch, has_bf16):
    """train.amp: bf16 trains in bf16 autocast on a CPU with bf16 instructions and is refused
    on one without (only torch's capability probe is replaced); fp16 needs CUDA either way."""
    real = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    caps = {**real, **{name: has_bf16 for name in _BF16_FEATURES}}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps, raising=False)
    assert cpu_has_bf16() is has_bf16
    if has_bf16:
        assert resolve_amp("bf16", CPU) is torch.bfloat16
    else:
        with pytest.raises(RecipeError, match="train.amp: bf16 needs a CUDA device or a CPU with bf16 instructions"):
            resolve_amp("bf16", CPU)
    assert resolve_amp("auto", CPU) is None and resolve_amp("off", CPU) is None
    with pytest.raises(RecipeError, match="train.amp: fp16 needs a CUDA device"):
        resolve_amp("fp16", CPU)
