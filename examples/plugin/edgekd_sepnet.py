"""sepnet: a small depthwise-separable CNN, registered with edgekd as a plugin.

edgekd finds the factory through the entry point in pyproject.toml and calls it as
``sepnet(num_classes, in_channels, image_size, width=...)``: the three sizes come
from the recipe's data, the keyword-only options (with defaults) from
``student.options`` / ``teacher.options``. Any factory with that signature that
returns a torch.nn.Module works; edgekd exports it to ONNX like its own models.
"""

from torch import nn

from edgekd.errors import ModelError


def _separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
    """A 3x3 depthwise conv then a 1x1 pointwise conv, each with BatchNorm and ReLU."""
    return [
        nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
    ]


def sepnet(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    # A bad option value from a recipe becomes edgekd's one-line error, not a torch traceback.
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ModelError(f"sepnet option width must be a positive integer, got {width!r}")
    # image_size is unused: the net pools adaptively, so any input size works.
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
        *_separable(width, 2 * width, 2),
        *_separable(2 * width, 4 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * width, num_classes),
    )
