"""Optional dependencies, imported on first use, failing in one line whatever goes wrong.

A package can be missing, too old, or installed but broken: its shared library does not
load (OSError), a symbol is missing (ImportError from inside it, AttributeError), its import
raises anything at all, or calls sys.exit. Each case is one MissingDependencyError naming
the package, its version when known, what needed it and the extra to install, never a
traceback. Torch-free (torch itself is one of the packages).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from dataclasses import dataclass
from types import ModuleType

from edgekd.errors import MissingDependencyError, first_line


@dataclass(frozen=True)
class Dependency:
    module: str  # what `import` names
    package: str  # what pip installs
    name: str  # what messages call it
    extra: str  # edgekd's extra that brings it
    minimum: str | None = None  # the oldest version edgekd works with (pyproject.toml's bound)
    hint: str | None = None  # how to install it, when edgekd's extra is not the whole story

    def install(self) -> str:
        return self.hint or f"pip install 'edgekd[{self.extra}]'"


# The bounds are pyproject.toml's; tests/test_optional.py checks that they agree.
DEPENDENCIES = {d.module: d for d in (
    Dependency("torch", "torch", "PyTorch", "train", "2.6"),
    Dependency("torchvision", "torchvision", "torchvision", "train", "0.21"),
    Dependency("onnx", "onnx", "onnx", "onnx", "1.16"),
    Dependency("onnxruntime", "onnxruntime", "ONNX Runtime", "onnx", "1.18",
               "pip install onnxruntime (or onnxruntime-gpu)"),
    Dependency("onnxscript", "onnxscript", "onnxscript", "onnx", "0.2"),
    Dependency("openvino", "openvino", "OpenVINO", "openvino", "2024.0"),
    Dependency("tensorrt", "tensorrt", "TensorRT", "trt", "10.3",
               "pip install 'edgekd[trt]' on a machine with an NVIDIA GPU"),
    Dependency("tensorboard", "tensorboard", "the tensorboard package", "tensorboard", "2.14"),
    Dependency("torchao", "torchao", "torchao", "quantize", "0.18"),
    Dependency("timm", "timm", "timm", "timm", "1.0"),
    Dependency("sklearn", "scikit-learn", "scikit-learn", "dev", "1.3", "pip install scikit-learn"),
)}


def version_tuple(text: str) -> tuple[int, ...]:
    """'2024.4.0-16579-c3152d32c9c' -> (2024, 4, 0); '2.14.1+cu130' -> (2, 14, 1)."""
    parts = []
    for part in re.split(r"[+-]", text, maxsplit=1)[0].split("."):  # the release, without build or local tags
        digits = re.match(r"\d+", part)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def installed_version(dep: Dependency) -> str | None:
    """The installed distribution's version, from its metadata (no import), or None."""
    try:
        return importlib.metadata.version(dep.package)
    except Exception:  # noqa: BLE001 - no metadata, or unreadable metadata: unknown
        return None


def load(module: str, needs: str, missing: str | None = None) -> ModuleType:
    """Import one of DEPENDENCIES. `needs`: who needs it, with the verb ("--runtime openvino needs");
    `missing`: the whole line when it is not installed (default: '<needs> <name>, which is not
    installed: <how to install>')."""
    dep = DEPENDENCIES[module]
    version = installed_version(dep)
    named = f"{dep.name} ({dep.package} {version})" if version else dep.name
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name == module:
            raise MissingDependencyError(missing or f"{needs} {dep.name}, which is not installed: {dep.install()}") from e
        # A module it imports is missing: installed, but incomplete.
        raise MissingDependencyError(f"{needs} {named}, which is installed but cannot be imported (no module "
                                     f"{e.name!r}); reinstall it: {dep.install()}") from e
    except (Exception, SystemExit) as e:  # noqa: BLE001 - a broken shared library, a missing symbol, anything
        raise MissingDependencyError(f"{needs} {named}, which is installed but fails to load ({type(e).__name__}: "
                                     f"{first_line(e, 160)}); reinstall it: {dep.install()}") from e
    have = getattr(loaded, "__version__", None) or version
    if dep.minimum and isinstance(have, str) and version_tuple(have) < version_tuple(dep.minimum):
        raise MissingDependencyError(f"{needs} {dep.name} >= {dep.minimum}, but {have} is installed: "
                                     f"pip install -U {dep.package} (or {dep.install()})")
    return loaded


def version_of(module: str) -> str | None:
    """The version of `module` if it loads, else None (missing, broken or too old)."""
    try:
        loaded = load(module, "edgekd needs")
    except MissingDependencyError:
        return None
    return getattr(loaded, "__version__", None) or installed_version(DEPENDENCIES[module])
