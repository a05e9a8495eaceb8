"""`python tests/_plain_cnn.py ARGS` is `python -m edgekd ARGS` with one more model,
plain_cnn_test: a small CNN with GroupNorm instead of BatchNorm (test_distributed.py
says why it needs one).

The factory is registered only when this file runs as a program, so importing it
leaves edgekd's model list unchanged. With $PLAIN_CNN_SAVE_INIT set to a folder, each
net built is also saved there as built (init_w<width>.pt), before any training.
"""

import os
from pathlib import Path

import torch
from torch import nn

NAME = "plain_cnn_test"


def _block(cin: int, cout: int, stride: int) -> list[nn.Module]:
    # GroupNorm normalises each image by its own statistics, never the batch's.
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.GroupNorm(4, cout), nn.ReLU()]


def plain_cnn(num_classes: int, in_channels: int, image_size: int, *, width: int = 8) -> nn.Module:
    # Strided convolutions instead of max-pooling: no argmax that a rounding difference could flip.
    net = nn.Sequential(
        *_block(in_channels, width, 1), *_block(width, 2 * width, 2), *_block(2 * width, 2 * width, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
    )
    if os.environ.get("PLAIN_CNN_SAVE_INIT"):
        torch.save(net.state_dict(), Path(os.environ["PLAIN_CNN_SAVE_INIT"]) / f"init_w{width}.pt")
    return net


if __name__ == "__main__":
    from edgekd.cli import main
    from edgekd.models import register_model

    register_model(NAME)(plain_cnn)
    main()
