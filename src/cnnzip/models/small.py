"""A tiny CNN for small inputs such as scikit-learn's 8x8 grayscale digits.

Three conv-BN-ReLU layers (16, 32, 64 channels) with one 2x2 max pool and a global average pool, so any
input of at least 2x2 works (1x8x8 digits, 3x32x32 CIFAR). It trains in seconds on a CPU, which makes it the
model for end-to-end tests and examples. 24.1k parameters for 1 input channel and 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """conv3x3(16)-BN-ReLU, conv3x3(32)-BN-ReLU, maxpool2, conv3x3(64)-BN-ReLU, global avg pool, Linear."""

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        c1, c2, c3 = (scaled(c, width) for c in (16, 32, 64))
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False),
            nn.BatchNorm2d(c1),
            nn.ReLU(),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False),
            nn.BatchNorm2d(c2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False),
            nn.BatchNorm2d(c3),
            nn.ReLU(),
        )
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(c3, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def small_cnn(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> SmallCNN:
    """Tiny CNN for 8x8 digits or any small input (pass in_channels=1 for grayscale)."""
    return SmallCNN(num_classes, in_channels=in_channels, width=width)
