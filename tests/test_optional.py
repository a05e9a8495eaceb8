"""Optional dependencies fail in one line, whatever goes wrong when they load.

Each broken package is a real package folder put first on the path of a real Python process
(what a user with that install has); the edgekd code under test is not replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from edgekd import optional
from edgekd.errors import MissingDependencyError

REPO = Path(__file__).resolve().parents[1]


def test_the_minimum_versions_are_pyprojects():
    """One place says which versions edgekd works with: pyproject.toml; optional.py must agree with it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    bounds = {}
    for spec in [*project["dependencies"], *(s for extra in project["optional-dependencies"].values() for s in extra)]:
        if ">=" in spec:
            name, low = spec.split(">=")
            bounds[name.strip()] = low.strip()
    for dep in optional.DEPENDENCIES.values():
        assert bounds[dep.package] == dep.minimum, dep.package


@pytest.mark.parametrize("text, expected", [("2024.4.0-16579-c3152d32c9c", (2024, 4, 0)), ("2.14.1+cu130", (2, 14, 1)),
                                            ("1.18", (1, 18)), ("10.3.0.post1", (10, 3, 0))])
def test_versions_compare_by_their_numbers(text, expected):
    assert optional.version_tuple(text) == expected


BROKEN = {
    # a wheel for another platform, or a system library it links against is gone
    "shared library": ("raise OSError('libopenvino.so.2440: cannot open shared object file: No such file or directory')",
                       "installed but fails to load (OSError: libopenvino.so.2440: cannot open shared object file"),
    # a compiled module built against another version of a library it uses
    "missing symbol": ("raise ImportError('/usr/lib/libtbb.so.12: undefined symbol: _ZN3tbb6detail2r117deallocate')",
                       "installed but fails to load (ImportError: /usr/lib/libtbb.so.12: undefined symbol"),
    "half installed": ("import openvino._pyopenvino", "installed but cannot be imported (no module 'openvino._pyopenvino')"),
    "anything else": ("raise RuntimeError('CPU plugin: no AVX2 on this machine')",
                      "installed but fails to load (RuntimeError: CPU plugin: no AVX2 on this machine)"),
    "exits": ("import sys; sys.exit('Illegal instruction')", "installed but fails to load (SystemExit: Illegal instruction)"),
    "too old": ("__version__ = '2023.3.0'", "needs OpenVINO >= 2024.0, but 2023.3.0 is installed: pip install -U openvino"),
}


def broken_openvino(tmp_path: Path, init: str) -> dict:
    package = tmp_path / "site" / "openvino"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(init + "\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(REPO)])}


@pytest.mark.slow  # a Python process per case
@pytest.mark.parametrize("case", BROKEN)
def test_a_broken_or_old_package_is_one_line_naming_it(case, tmp_path):
    init, words = BROKEN[case]
    code = ("from edgekd import optional\nfrom edgekd.errors import MissingDependencyError\n"
            "try:\n    optional.load('openvino', '--runtime openvino needs')\n"
            "except MissingDependencyError as e:\n    print(e)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=broken_openvino(tmp_path, init))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = res.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("--runtime openvino needs OpenVINO"), lines
    assert words in lines[0]
    assert lines[0].endswith("pip install 'edgekd[openvino]'" + (")" if case == "too old" else "")), lines[0]


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # what Python does for a package it cannot find
    with pytest.raises(MissingDependencyError, match=r"^--runtime openvino needs OpenVINO, which is not installed: "
                                                     r"pip install 'edgekd\[openvino\]'$"):
        optional.load("openvino", "--runtime openvino needs")
    assert optional.version_of("openvino") is None


def test_a_loaded_package_is_the_module():
    assert optional.load("onnxruntime", "test needs").__name__ == "onnxruntime"
    assert optional.version_of("onnxruntime") == __import__("onnxruntime").__version__
