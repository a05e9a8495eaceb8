"""CIFAR ResNets (He et al. 2016, Sec. 4.2): depth 6n+2, BasicBlocks, three stages.

Stage widths are width, 2*width, 4*width (16/32/64 by default) at strides 1, 2, 2.
Shortcuts use option B (1x1 conv + BN projection where the shape changes, identity
elsewhere), as in RepDistiller/mdistiller's resnet8..resnet110, so parameter counts
and layer names match the numbers usually quoted in KD papers (resnet20: 0.27M).
Pooling is adaptive, so any input size works; it is 8x8 -> 1x1 for 32x32 inputs.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import init_conv_bn, register_model, require_positive_int


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        # Decided at build time, so forward has no data-dependent branch (export-safe).
        if stride != 1 or cin != cout:
            self.downsample: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cout, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
            )
        else:
            self.downsample = nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.downsample(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int, in_channels: int, width: int) -> None:
        super().__init__()
        blocks_per_stage = (depth - 2) // 6
        widths = (width, 2 * width, 4 * width)
        self.conv1 = _conv3x3(in_channels, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        cin = width
        stages = []
        for stage_width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, stage_width, stride if i == 0 else 1))
                cin = stage_width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_conv_bn(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def _build(name: str, depth: int, num_classes: int, in_channels: int, width: int) -> CifarResNet:
    require_positive_int(name, "width", width)
    return CifarResNet(depth, num_classes, in_channels, width)


# image_size is unused: these nets are built for small inputs and pool adaptively.


@register_model("resnet8")
def resnet8(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet8", 8, num_classes, in_channels, width)


@register_model("resnet14")
def resnet14(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet14", 14, num_classes, in_channels, width)


@register_model("resnet20")
def resnet20(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet20", 20, num_classes, in_channels, width)


@register_model("resnet32")
def resnet32(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet32", 32, num_classes, in_channels, width)


@register_model("resnet44")
def resnet44(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet44", 44, num_classes, in_channels, width)


@register_model("resnet56")
def resnet56(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet56", 56, num_classes, in_channels, width)


@register_model("resnet110")
def resnet110(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return _build("resnet110", 110, num_classes, in_channels, width)
