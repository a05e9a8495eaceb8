"""Shared by every test file: which tests are slow, and the trained runs several files share.

`make test-fast` runs `pytest -m "not slow"`, the in-process unit tests. A test that
trains, exports, starts processes (`python -m edgekd`, torchrun, DataLoader workers)
or takes more than about a second of CPU carries @pytest.mark.slow. So does, without
a decorator, every test that uses a fixture declared with @training_fixture
(tests/_training.py), here or in its own file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from _cli import edgekd
from _training import IMAGE_SIZE, TRAINING, training_fixture

REPO = Path(__file__).resolve().parents[1]


@training_fixture(scope="session")
def quickstart_3ep(tmp_path_factory) -> Path:
    """recipes/quickstart.yaml for 3 epochs at IMAGE_SIZE: the run test_export and test_validate take
    apart (shared, so trained once; a test that changes it works on a copy)."""
    run = tmp_path_factory.mktemp("quickstart-3ep") / "run"
    res = edgekd("distill", REPO / "recipes/quickstart.yaml", "--set", "train.epochs=3", "--set",
                 f"data.image_size={IMAGE_SIZE}", "--out", run, "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    return run


@training_fixture(scope="session")
def quickstart_3ep_bundle(quickstart_3ep) -> Path:
    """That run exported with every ONNX format (the defaults)."""
    out = quickstart_3ep.parent / "bundle"
    res = edgekd("export", quickstart_3ep, "--out", out)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"bundle {out}" in res.stdout
    return out


def pytest_collection_modifyitems(items):
    for item in items:
        if TRAINING & set(item.fixturenames):  # fixturenames includes what its fixtures use
            item.add_marker(pytest.mark.slow)
