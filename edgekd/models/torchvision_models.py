"""torchvision ImageNet classifiers, always built with ``weights=None`` (never downloads).

Small-input adaptation, applied when ``image_size <= 64`` (ImageNet stems downsample 4x
before the first stage, which leaves almost nothing of a 32x32 image):

* resnet18/34/50: ``conv1`` becomes a 3x3 stride-1 conv (64 ch, padding 1) and
  ``maxpool`` becomes ``nn.Identity``. Total downsampling 8x: 32x32 -> 4x4 before pooling.
* mobilenet_v2: the stem conv (``features[0][0]``) gets stride 1, and so does the
  depthwise conv of the first 24-channel block (``features[2].conv[1][0]``), the usual
  CIFAR variant. Total downsampling 8x: 32x32 -> 4x4.
* mobilenet_v3_small/large, efficientnet_b0: the stem conv (``features[0][0]``) gets
  stride 1. Total downsampling 16x: 32x32 -> 2x2.
* shufflenet_v2_x0_5/x1_0: the stem conv (``conv1[0]``) gets stride 1 and ``maxpool``
  becomes ``nn.Identity``, as for ResNets. Total downsampling 8x: 32x32 -> 4x4.

Above 64 pixels the torchvision stem is kept unchanged. ``in_channels != 3`` replaces the
first conv with one of the same geometry taking ``in_channels`` inputs. Stride-only changes
keep the conv's original initial weights; a changed conv shape gets torchvision's
kaiming-normal (fan_out) init. Modules are replaced on the built instance; classes are untouched.
"""

from __future__ import annotations

from types import ModuleType

from torch import nn

from .registry import register_model, require_dropout, require_positive_float

SMALL_INPUT_MAX = 64


def _tvm() -> ModuleType:
    """torchvision.models, imported when one of its models is first built: importing it takes 2 s,
    which every `edgekd distill` of another model (and every test process) would pay at start."""
    from torchvision import models

    return models


def _replace_conv(
    old: nn.Conv2d,
    *,
    in_channels: int | None = None,
    kernel_size: int | None = None,
    stride: int | None = None,
    padding: int | None = None,
) -> nn.Conv2d:
    new = nn.Conv2d(
        in_channels if in_channels is not None else old.in_channels,
        old.out_channels,
        kernel_size=kernel_size if kernel_size is not None else old.kernel_size,
        stride=stride if stride is not None else old.stride,
        padding=padding if padding is not None else old.padding,
        groups=old.groups,
        bias=old.bias is not None,
    )
    if new.weight.shape == old.weight.shape:
        new.weight.data.copy_(old.weight.data)
    else:
        nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    return new


def _adapt_stem(stem: nn.Sequential, in_channels: int, small: bool) -> None:
    """Replace the stem's first conv ``stem[0]`` for ``in_channels`` and, if small, stride 1."""
    old = stem[0]
    if small or in_channels != old.in_channels:
        stem[0] = _replace_conv(old, in_channels=in_channels, stride=1 if small else None)


def _resnet(ctor, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    model = ctor(weights=None, num_classes=num_classes)
    if image_size <= SMALL_INPUT_MAX:
        model.conv1 = _replace_conv(model.conv1, in_channels=in_channels, kernel_size=3, stride=1, padding=1)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = _replace_conv(model.conv1, in_channels=in_channels)
    return model


@register_model("resnet18")
def resnet18(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet(_tvm().resnet18, num_classes, in_channels, image_size)


@register_model("resnet34")
def resnet34(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet(_tvm().resnet34, num_classes, in_channels, image_size)


@register_model("resnet50")
def resnet50(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _resnet(_tvm().resnet50, num_classes, in_channels, image_size)


@register_model("mobilenet_v2")
def mobilenet_v2(
    num_classes: int, in_channels: int, image_size: int, *, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    model = _tvm().mobilenet_v2(
        weights=None,
        num_classes=num_classes,
        width_mult=require_positive_float("mobilenet_v2", "width_mult", width_mult),
        dropout=require_dropout("mobilenet_v2", "dropout", dropout),
    )
    small = image_size <= SMALL_INPUT_MAX
    _adapt_stem(model.features[0], in_channels, small)
    if small:
        # features[2] is the first block of the 24-channel stage; conv[1][0] its stride-2 depthwise conv.
        depthwise = model.features[2].conv[1]
        depthwise[0] = _replace_conv(depthwise[0], stride=1)
    return model


def _mobilenet_v3(ctor, name: str, num_classes: int, in_channels: int, image_size: int, width_mult, dropout):
    model = ctor(
        weights=None,
        num_classes=num_classes,
        width_mult=require_positive_float(name, "width_mult", width_mult),
        dropout=require_dropout(name, "dropout", dropout),
    )
    _adapt_stem(model.features[0], in_channels, image_size <= SMALL_INPUT_MAX)
    return model


@register_model("mobilenet_v3_small")
def mobilenet_v3_small(
    num_classes: int, in_channels: int, image_size: int, *, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    return _mobilenet_v3(
        _tvm().mobilenet_v3_small, "mobilenet_v3_small", num_classes, in_channels, image_size, width_mult, dropout
    )


@register_model("mobilenet_v3_large")
def mobilenet_v3_large(
    num_classes: int, in_channels: int, image_size: int, *, width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    return _mobilenet_v3(
        _tvm().mobilenet_v3_large, "mobilenet_v3_large", num_classes, in_channels, image_size, width_mult, dropout
    )


def _shufflenet_v2(ctor, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    model = ctor(weights=None, num_classes=num_classes)
    small = image_size <= SMALL_INPUT_MAX
    _adapt_stem(model.conv1, in_channels, small)
    if small:
        model.maxpool = nn.Identity()
    return model


@register_model("shufflenet_v2_x0_5")
def shufflenet_v2_x0_5(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _shufflenet_v2(_tvm().shufflenet_v2_x0_5, num_classes, in_channels, image_size)


@register_model("shufflenet_v2_x1_0")
def shufflenet_v2_x1_0(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    return _shufflenet_v2(_tvm().shufflenet_v2_x1_0, num_classes, in_channels, image_size)


@register_model("efficientnet_b0")
def efficientnet_b0(num_classes: int, in_channels: int, image_size: int, *, dropout: float = 0.2) -> nn.Module:
    model = _tvm().efficientnet_b0(
        weights=None, num_classes=num_classes, dropout=require_dropout("efficientnet_b0", "dropout", dropout)
    )
    _adapt_stem(model.features[0], in_channels, image_size <= SMALL_INPUT_MAX)
    return model
