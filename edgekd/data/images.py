"""ImageSet: decoded images in memory (uint8 NHWC) with their labels and class names. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ImageSet:
    images: np.ndarray  # uint8 [N, H, W, C], C = 1 or 3
    labels: np.ndarray  # int64 [N]
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> "ImageSet":
        return ImageSet(self.images[index], self.labels[index], list(self.class_names))
