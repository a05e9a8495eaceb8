"""Wide ResNets (Zagoruyko & Komodakis 2016) for small inputs: WRN-depth-k.

depth = 6n+4: a 3x3 stem (16 ch), three stages of n pre-activation blocks with widths
16k, 32k, 64k at strides 1, 2, 2, then BN-ReLU, global average pool and a linear layer.
Where a block changes shape its shortcut is a 1x1 conv on the pre-activated input,
as in the reference code (and RepDistiller's wrn_16_2 / wrn_40_2).
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import init_conv_bn, register_model, require_dropout


class WideBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.project = cin != cout or stride != 1
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if self.project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.dropout(self.relu(self.bn2(self.conv1(pre)))))
        # self.project is fixed at build time, so this branch is static for export.
        return out + (self.shortcut(pre) if self.project else x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int, dropout: float) -> None:
        super().__init__()
        n = (depth - 4) // 6
        widths = (16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, stride=1, padding=1, bias=False)
        cin = 16
        stages = []
        for width, stride in zip(widths, (1, 2, 2)):
            blocks = []
            for i in range(n):
                blocks.append(WideBlock(cin, width, stride if i == 0 else 1, dropout))
                cin = width
            stages.append(nn.Sequential(*blocks))
        self.block1, self.block2, self.block3 = stages
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_conv_bn(self)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        x = self.relu(self.bn(x))
        return self.fc(self.avgpool(x).flatten(1))


@register_model("wrn_16_2")
def wrn_16_2(num_classes: int, in_channels: int, image_size: int, *, dropout: float = 0.0) -> nn.Module:
    return WideResNet(16, 2, num_classes, in_channels, require_dropout("wrn_16_2", "dropout", dropout))


@register_model("wrn_40_2")
def wrn_40_2(num_classes: int, in_channels: int, image_size: int, *, dropout: float = 0.0) -> nn.Module:
    return WideResNet(40, 2, num_classes, in_channels, require_dropout("wrn_40_2", "dropout", dropout))
