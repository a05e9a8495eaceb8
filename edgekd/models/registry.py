"""Model registry: architecture name -> factory, plus strict checkpoint loading.

A factory has the signature ``fn(num_classes, in_channels, image_size, *, opt=default, ...)``.
Its keyword-only parameters are the model's options; ``build_model`` reads them from the
signature so the allowed option names are never listed twice. Other installed packages
add factories through the ``edgekd.models`` entry point group (plugins.py).
"""

from __future__ import annotations

import difflib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import torch
from torch import nn

from edgekd.errors import CheckpointError, EdgeKDError, ModelError, first_line
from edgekd.models import timm_models
from edgekd.models.plugins import Discovered, Plugin, discover

_FIXED_PARAMS = ("num_classes", "in_channels", "image_size")

BUILT_IN = "built in"

# Filled by @register_model when the model modules are imported (see models/__init__.py),
# and with a plugin's factory the first time its model is looked up.
_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_SOURCES: dict[str, str] = {}  # name -> BUILT_IN or a plugin's '<package> <version>'
_PLUGINS: Discovered | None = None  # installed plugins (and clashing names), read on the first lookup


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


def _plugins() -> Discovered:
    """Installed plugins by name and the ambiguous names (read once)."""
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
    """Built-in and installed plugin models a recipe can name (plugins are not imported for
    this); an ambiguous name is not one of them (ambiguous_models)."""
    found = _plugins()
    return sorted({*_REGISTRY, *found.plugins} - set(found.clashes))


def builtin_models() -> set[str]:
    """The models edgekd itself registers (no plugin is looked at)."""
    return {n for n, source in _SOURCES.items() if source == BUILT_IN}


def ambiguous_models() -> dict[str, str]:
    """Names claimed by two sources (two plugins, or a plugin and edgekd), each with the
    line that looking it up raises. Only these names are refused; the others work."""
    return dict(sorted(_plugins().clashes.items()))


def model_source(arch: str) -> str:
    """'built in', the '<package> <version>' of the plugin that provides ``arch``, or 'timm <version>'."""
    if timm_models.is_timm(arch):
        timm_models.check_name(arch)
        return f"{timm_models.SOURCE} {timm_models.timm_version()}"
    _lookup(arch)
    return _SOURCES[arch]


def model_options(arch: str) -> dict[str, Any]:
    """Option names of ``arch`` with their defaults ({} for a timm model: its options are
    timm.create_model's, which timm checks)."""
    if timm_models.is_timm(arch):
        return {}
    params = list(inspect.signature(_lookup(arch)).parameters.values())
    return {p.name: p.default for p in params[len(_FIXED_PARAMS) :]}


def _lookup(arch: str) -> Callable[..., nn.Module]:
    found = _plugins()
    if isinstance(arch, str) and arch in found.clashes:
        raise ModelError(found.clashes[arch])
    if isinstance(arch, str) and arch not in _REGISTRY and arch in found.plugins:
        _load_plugin(found.plugins[arch])
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
    _check_size("num_classes", num_classes)
    _check_size("in_channels", in_channels)
    _check_size("image_size", image_size)
    options = dict(options or {})
    if timm_models.is_timm(arch):
        model = timm_models.build_timm(arch, num_classes, in_channels, image_size, options)
        model.edgekd_arch = arch
        return model
    factory = _lookup(arch)
    allowed = model_options(arch)
    for key in options:
        if key not in allowed:
            allowed_text = ", ".join(sorted(allowed)) or "none"
            raise ModelError(f"model '{arch}' has no option {key!r}; allowed: {allowed_text}")
    if _SOURCES[arch] == BUILT_IN:
        model = factory(num_classes, in_channels, image_size, **options)
    else:
        model = _build_plugin_model(arch, factory, num_classes, in_channels, image_size, options)
    if not isinstance(model, nn.Module):  # a plugin's factory may return anything
        raise ModelError(f"model '{arch}' ({_SOURCES[arch]}): its factory returned a "
                         f"{type(model).__name__}, not a torch.nn.Module")
    # Plain instance attribute (not a buffer) so error messages can name the architecture.
    model.edgekd_arch = arch
    return model


def _build_plugin_model(arch: str, factory: Callable[..., nn.Module], num_classes: int, in_channels: int,
                        image_size: int, options: dict) -> Any:
    """A plugin's factory call: its own EdgeKDError (e.g. require_positive_int) goes through as
    it is; anything else it raises is a bug in that package, so the one line names the package."""
    try:
        return factory(num_classes, in_channels, image_size, **options)
    except EdgeKDError:
        raise
    except (Exception, SystemExit) as e:  # noqa: BLE001 - whatever a third-party factory raises, or exits with
        raise ModelError(f"{_plugins().plugins[arch].describe()}: building '{arch}' failed: "
                         f"{type(e).__name__}: {first_line(e)}") from e


def count_parameters(model: nn.Module) -> int:
    """All parameters, trainable or frozen (buffers such as BN running stats excluded)."""
    return sum(p.numel() for p in model.parameters())


def _plural(n: int, word: str, plural: str | None = None) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {plural or word + 's'}"


def arch_name(model: nn.Module) -> str:
    """The name error messages give a model: its registry name (build_model sets it), else its class."""
    return getattr(model, "edgekd_arch", type(model).__name__)


def shape_text(shape: torch.Size) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def check_state_dict(state_dict: Any, source: str) -> None:
    """A state_dict is a mapping of names to tensors; anything else is one CheckpointError line."""
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"checkpoint {source} holds a {type(state_dict).__name__}, expected a state_dict (name -> tensor)"
        )
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"checkpoint {source} entry {key!r} is a {type(value).__name__}, expected a tensor"
            )


def _batch_counter(name: str) -> bool:
    """BatchNorm's num_batches_tracked: a count of training steps, no weight. Files saved before
    PyTorch 0.4.1 lack it (torchvision's older ImageNet files among them) and torch's own loading
    then keeps the model's value, so a file without it still fits."""
    return name.rsplit(".", 1)[-1] == "num_batches_tracked"


NOT_IN_FILE = "not in the file"


@dataclass(frozen=True)
class StateFit:
    """A state_dict against a model, name by name: what load_weights (all must fit) and
    pretrained.init_weights (backbone: what fits loads) both decide on."""

    fits: dict[str, torch.Tensor]  # the model's name -> the file's tensor of that name and shape
    fresh: list[tuple[str, str]]  # the model's names the file cannot fill, in model order, with why
    mismatched: list[tuple[str, torch.Size, torch.Size]]  # (name, file shape, model shape)
    unused: list[str]  # the file's names the model has no place for

    @property
    def missing(self) -> list[str]:
        return [name for name, why in self.fresh if why == NOT_IN_FILE]


def fit_state(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> StateFit:
    """Match a state_dict (checked by check_state_dict) to the model's tensors. A BatchNorm counter
    the file lacks fits as the model's own value (_batch_counter)."""
    expected = model.state_dict()
    fits: dict[str, torch.Tensor] = {}
    fresh: list[tuple[str, str]] = []
    mismatched: list[tuple[str, torch.Size, torch.Size]] = []
    for name, tensor in expected.items():
        got = state_dict.get(name)
        if got is None and _batch_counter(name):
            fits[name] = tensor
        elif got is None:
            fresh.append((name, NOT_IN_FILE))
        elif got.shape != tensor.shape:
            fresh.append((name, f"file {shape_text(got.shape)}, model {shape_text(tensor.shape)}"))
            mismatched.append((name, got.shape, tensor.shape))
        else:
            fits[name] = got
    return StateFit(fits, fresh, mismatched, [k for k in state_dict if k not in expected])


def load_weights(model: nn.Module, state_dict: Mapping[str, Any], source: str) -> None:
    """Strictly load ``state_dict`` into ``model``; any misfit is one CheckpointError line."""
    check_state_dict(state_dict, source)
    fit = fit_state(model, state_dict)
    problems = []
    if fit.missing:
        problems.append(f"{_plural(len(fit.missing), 'missing key')} (e.g. '{fit.missing[0]}')")
    if fit.unused:
        problems.append(f"{_plural(len(fit.unused), 'unexpected key')} (e.g. '{fit.unused[0]}')")
    if fit.mismatched:
        k, file_shape, model_shape = fit.mismatched[0]
        problems.append(
            f"{_plural(len(fit.mismatched), 'shape mismatch', 'shape mismatches')}"
            f" (e.g. {k}: checkpoint {shape_text(file_shape)} vs model {shape_text(model_shape)})"
        )
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit {arch_name(model)}: {', '.join(problems)}")
    try:
        model.load_state_dict(fit.fits, strict=True)
    except RuntimeError as exc:  # torch's message spans many lines; keep the first
        raise CheckpointError(f"checkpoint {source} does not fit {arch_name(model)}: {first_line(exc)}") from None


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
