"""Model registry: architecture name -> factory, plus strict checkpoint loading.

A factory has the signature ``fn(num_classes, in_channels, image_size, *, opt=default, ...)``.
Its keyword-only parameters are the model's options; ``build_model`` reads them from the
signature so the allowed option names are never listed twice. Other installed packages
add factories through the ``edgekd.models`` entry point group (plugins.py).
"""

from __future__ import annotations

import difflib
import re
import inspect
from typing import Any, Callable, Mapping

import torch
from torch import nn

from edgekd.errors import CheckpointError, ModelError, first_line
from edgekd.models.plugins import Plugin, discover

_FIXED_PARAMS = ("num_classes", "in_channels", "image_size")

BUILT_IN = "built in"

# Filled by @register_model when the model modules are imported (see models/__init__.py),
# and with a plugin's factory the first time its model is looked up.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_SOURCES: dict[str, str] = {}  # name -> BUILT_IN or a plugin's '<package> <version>'
_PLUGINS: dict[str, Plugin] | None = None  # installed plugins by name, read on the first lookup


def register_model(name: str, source: str = BUILT_IN):
    """Decorator: register ``factory`` under ``name``."""

    def decorator(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} registered twice")
        if not callable(factory):
            raise TypeError(f"factory for {name!r} is a {type(factory).__name__}, not a callable")
        signature = inspect.signature(factory)
        params = list(signature.parameters.values())
        fixed = tuple(p.name for p in params[: len(_FIXED_PARAMS)])
        options = params[len(_FIXED_PARAMS) :]
        # Checked at registration (a built-in at import, so a malformed one fails in the test
        # suite, not in a user's run; a plugin when first looked up).
        if fixed != _FIXED_PARAMS or any(
            p.kind is not p.KEYWORD_ONLY or p.default is p.empty for p in options
        ):
            raise TypeError(
                f"factory for {name!r} must be fn(num_classes, in_channels, image_size, *, option=default, ...), "
                f"not fn{signature}"
            )
        _REGISTRY[name] = factory
        _SOURCES[name] = source
        return factory

    return decorator


def _plugins() -> dict[str, Plugin]:
    """Installed plugins by name (read once; a clash with a registered name is a ModelError)."""
    global _PLUGINS
    if _PLUGINS is None:
        _PLUGINS = discover(_SOURCES)
    return _PLUGINS


def _load_plugin(plugin: Plugin) -> None:
    """Import a plugin's factory and register it with the built-ins' checks."""
    factory = plugin.load()
    try:
        register_model(plugin.name, source=plugin.package)(factory)
    except (TypeError, ValueError) as e:  # a signature inspect cannot read is a ValueError
        raise ModelError(f"{plugin.describe()}: {first_line(e)}") from e


def available_models() -> list[str]:
    """Built-in and installed plugin models (plugins are not imported for this)."""
    return sorted({*_REGISTRY, *_plugins()})


def model_source(arch: str) -> str:
    """'built in', or the '<package> <version>' of the plugin that provides ``arch``."""
    _lookup(arch)
    return _SOURCES[arch]


def model_options(arch: str) -> dict[str, Any]:
    """Option names of ``arch`` with their defaults."""
    params = list(inspect.signature(_lookup(arch)).parameters.values())
    return {p.name: p.default for p in params[len(_FIXED_PARAMS) :]}


def _lookup(arch: str) -> Callable[..., nn.Module]:
    plugins = _plugins()
    if isinstance(arch, str) and arch not in _REGISTRY and arch in plugins:
        _load_plugin(plugins[arch])
    if isinstance(arch, str) and arch in _REGISTRY:
        return _REGISTRY[arch]
    names = available_models()
    hint = ""
    if isinstance(arch, str):
        close = difflib.get_close_matches(arch.lower(), names, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise ModelError(f"unknown model {arch!r}{hint}; available: {_compact(names)}")


def _compact(names: list[str]) -> str:
    """'resnet{8,14,20}' for a family of numbered names, so the error stays one short line."""
    families: dict[str, list[str]] = {}
    for n in names:
        m = re.fullmatch(r"(resnet|wrn_)(\d.*)", n)
        families.setdefault(m.group(1) if m else n, []).append(m.group(2) if m else "")
    parts = []
    for stem, tails in families.items():
        parts.append(stem if tails == [""] else f"{stem}{{{','.join(sorted(tails, key=_num))}}}")
    return ", ".join(parts)


def _num(tail: str) -> tuple[int, str]:
    m = re.match(r"\d+", tail)
    return (int(m.group()) if m else 0, tail)


def _check_size(what: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")


def build_model(
    arch: str,
    num_classes: int,
    in_channels: int = 3,
    image_size: int = 32,
    options: dict | None = None,
) -> nn.Module:
    """Build ``arch`` with fresh (non-pretrained) weights; deterministic for a fixed torch seed."""
    factory = _lookup(arch)
    _check_size("num_classes", num_classes)
    _check_size("in_channels", in_channels)
    _check_size("image_size", image_size)
    options = dict(options or {})
    allowed = model_options(arch)
    for key in options:
        if key not in allowed:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise ModelError(f"model '{arch}' has no option {key!r}; allowed: {allowed_text}")
    model = factory(num_classes, in_channels, image_size, **options)
    if not isinstance(model, nn.Module):  # a plugin's factory may return anything
        raise ModelError(f"model '{arch}' ({_SOURCES[arch]}): its factory returned a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    # Plain instance attribute (not a buffer) so error messages can name the architecture.
    model.edgekd_arch = arch
    return model


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(str(d) for d in t.shape) + "]"


def load_weights(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Strictly load ``state_dict`` into ``model``; any misfit is one CheckpointError line."""
    arch = getattr(model, "edgekd_arch", type(model).__name__)
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"checkpoint {source} holds a {type(state_dict).__name__}, expected a state_dict (name -> tensor)"
        )
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {source} entry {key!r} is a {type(value).__name__}, expected a tensor"
            )
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"{_plural(len(missing), 'missing key')} (e.g. '{missing[0]}')")
    if unexpected:
        problems.append(f"{_plural(len(unexpected), 'unexpected key')} (e.g. '{unexpected[0]}')")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{_plural(len(mismatched), 'shape mismatch', 'shape mismatches')}"
            f" (e.g. {k}: checkpoint {_shape(state_dict[k])} vs model {_shape(expected[k])})"
        )
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {arch}: {', '.join(problems)}")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:  # torch's message spans many lines; keep the first
        raise CheckpointError(f"checkpoint {source} does not fit {arch}: {first_line(exc)}") from None


# Option value checks shared by the factories, so a bad recipe value is a ModelError
# naming the model and option instead of a torch error deep inside a constructor.


def require_positive_int(arch: str, option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{arch} option {option} must be a positive integer, got {value!r}")
    return value


def require_positive_float(arch: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ModelError(f"{arch} option {option} must be a number > 0, got {value!r}")
    return float(value)


def require_dropout(arch: str, option: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ModelError(f"{arch} option {option} must be a probability in [0, 1), got {value!r}")
    return float(value)


def init_conv_bn(model: nn.Module) -> None:
    """He (fan_out) init for convs, unit-scale BN: the usual init of the CIFAR ResNet family."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
