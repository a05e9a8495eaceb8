"""Small plain CNNs for the offline demo (sklearn digits upscaled to 32x32, 1 channel).

Both are three stages of 3x3 conv-BN-ReLU with widths w, 2w, 4w; a 2x2 max-pool follows
the first two stages, then global average pooling and a linear layer. BN is kept because
it makes these nets reach >95% on digits within a few CPU epochs.

cnn_small (teacher): two convs per stage, w=32  -> ~0.29M parameters.
cnn_tiny (student):  one conv per stage,  w=16  -> ~0.024M parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from .registry import register_model, require_positive_int


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, in_channels: int, width: int, convs_per_stage: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for stage, cout in enumerate((width, 2 * width, 4 * width)):
            for _ in range(convs_per_stage):
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.avgpool(self.features(x)).flatten(1))


@register_model("cnn_small")
def cnn_small(num_classes: int, in_channels: int, image_size: int, *, width: int = 32) -> nn.Module:
    return SmallCNN(num_classes, in_channels, require_positive_int("cnn_small", "width", width), 2)


@register_model("cnn_tiny")
def cnn_tiny(num_classes: int, in_channels: int, image_size: int, *, width: int = 16) -> nn.Module:
    return SmallCNN(num_classes, in_channels, require_positive_int("cnn_tiny", "width", width), 1)
