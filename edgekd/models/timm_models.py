"""timm models by name: `arch: timm/<name>`, any model timm creates (timm is an optional extra).

The model is created with fresh weights, its classifier sized to the data's classes and its stem to
the data's channels (timm's own `num_classes` / `in_chans`), and, for the models whose layout
depends on it (ViTs and other patch models), built for the data's image size (`img_size`). A
recipe's `options` go to `timm.create_model` as they are: timm, not edgekd, knows what each model
takes, and a wrong one is one line naming the model and the option.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

from torch import nn

from edgekd.errors import EdgeKDError, ModelError, first_line

PREFIX = "timm/"
SOURCE = "timm"


def is_timm(arch: Any) -> bool:
    return isinstance(arch, str) and arch.startswith(PREFIX)


def _timm():
    from edgekd import optional

    return optional.load("timm", "a timm model (arch: timm/<name>) needs")


def timm_version() -> str:
    return getattr(_timm(), "__version__", "?")


def model_names(pattern: str | None = None) -> list[str]:
    """timm's model names (fnmatch `pattern`, timm's own matching), each as `timm/<name>`."""
    timm = _timm()
    return [PREFIX + n for n in timm.list_models(pattern or "")]


def check_name(arch: str) -> str:
    """The timm model name of `arch`, or one ModelError naming a close match."""
    name = arch[len(PREFIX):]
    timm = _timm()
    if not name or not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" (did you mean '{PREFIX}{close[0]}'?)" if close else ""
        raise ModelError(f"unknown timm model {name!r}{hint}; list them with: edgekd models --source timm 'PATTERN'")
    return name


def build_timm(arch: str, num_classes: int, in_channels: int, image_size: int, options: dict) -> nn.Module:
    name = check_name(arch)
    timm = _timm()
    kwargs = {**options, "pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    try:
        try:
            return timm.create_model(name, img_size=image_size, **kwargs)
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            # Convolutional nets take any input size: img_size is not theirs to take.
            return timm.create_model(name, **kwargs)
    except EdgeKDError:
        raise
    except TypeError as e:
        bad = re.search(r"unexpected keyword argument '(\w+)'", str(e))
        if bad:
            raise ModelError(f"timm's {name} does not take the option {bad.group(1)!r} "
                             f"(student/teacher.options go to timm.create_model)") from e
        raise ModelError(f"timm could not build {name}: {first_line(e)}") from e
    except Exception as e:  # noqa: BLE001 - whatever timm raises for a bad option value
        raise ModelError(f"timm could not build {name}: {type(e).__name__}: {first_line(e)}") from e


def pretrained_input(arch: str) -> dict[str, Any]:
    """What timm's pretrained_cfg of `arch` says its input is: image_size (the side of input_size),
    mean, std, crop_pct and interpolation; timm's ImageNet defaults where the model has no cfg."""
    name = check_name(arch)
    timm = _timm()
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    cfg = timm.models.get_pretrained_cfg(name)
    get = (lambda k, default: getattr(cfg, k, None) or default) if cfg is not None else (lambda k, default: default)
    return {
        "image_size": int(get("input_size", (3, 224, 224))[-1]),
        "mean": tuple(float(v) for v in get("mean", IMAGENET_DEFAULT_MEAN)),
        "std": tuple(float(v) for v in get("std", IMAGENET_DEFAULT_STD)),
        "crop_pct": float(get("crop_pct", 0.875)),
        "interpolation": str(get("interpolation", "bilinear")),
    }
