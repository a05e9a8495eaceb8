"""train.deterministic: the process-wide settings it applies on each device kind.

CUDA's flags can be set and read back without a GPU, so this runs on the CPU."""

import pytest
import torch

from edgekd.distill.setup import apply_determinism

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
