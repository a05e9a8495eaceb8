"""Shared by every test file: which tests are slow.

`make test-fast` runs `pytest -m "not slow"`, the in-process unit tests. A test that
trains, exports, starts processes (`python -m edgekd`, torchrun, DataLoader workers)
or takes more than about a second of CPU carries @pytest.mark.slow. So does, without
a decorator, every test that uses one of the fixtures below: each trains a quickstart
run (and most export it) once per module, so any test that needs one is slow.
"""

import pytest

SLOW_FIXTURES = {
    "made",            # test_bad_input: a 1-epoch run and its bundle
    "run_dir",         # test_export: a 3-epoch run (its `bundle` and `manifest` build on it)
    "bundle",          # test_validate: a 3-epoch run and its bundle
    "quickstart_run",  # test_distill: the full 25-epoch quickstart
    "torchrun_ref",    # test_distributed: a 2-process run
    "reference",       # test_reliability: a 4-epoch run
    "user_run",        # test_api: a 2-epoch run of user modules and its bundle
    "trained",         # test_int8_search: a 4-epoch run with a tune split (searched, exported, broken copies)
}


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(item.fixturenames):  # fixturenames includes what its fixtures use
            item.add_marker(pytest.mark.slow)
