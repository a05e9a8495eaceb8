"""Fixtures that train: declared with @training_fixture, so that every test using one is slow.

`make test-fast` leaves out the tests marked slow; a test that uses a fixture which trains
(directly or through another fixture) is slow by construction: conftest.py marks it from
TRAINING, which this decorator fills, instead of a list of names kept by hand.
"""

from __future__ import annotations

from typing import Callable

import pytest

TRAINING: set[str] = set()  # names of the fixtures that train
# Where a test trains on the digits for its own sake (not to check the shipped recipe): 16 px. The
# digits are 8x8, so nothing is lost, and an epoch costs a quarter of the recipe's 32 px.
IMAGE_SIZE = 16


def training_fixture(scope: str = "module") -> Callable[[Callable], Callable]:
    """@pytest.fixture(scope=scope) for a fixture that trains (or builds on one that does)."""

    def wrap(fn: Callable) -> Callable:
        TRAINING.add(fn.__name__)
        return pytest.fixture(scope=scope)(fn)

    return wrap

