"""AlexNet for CIFAR (32x32), the variant most CIFAR compression papers and tutorials use.

Krizhevsky et al.'s five conv layers (64, 192, 384, 256, 256 filters) and three max pools, shrunk to fit
32x32 input: the first conv is 3x3 with stride 2 instead of 11x11 with stride 4, and every kernel is 3x3. The
feature map leaving the convs is 256x2x2, so the classifier is Dropout-Linear(1024, 4096)-ReLU-Dropout-
Linear(4096, 4096)-ReLU-Linear(4096, classes). Plain like the original: no BatchNorm. 23.27M parameters at 10
classes, of which 21.0M are in the classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["AlexNetCifar"]


class AlexNetCifar(nn.Module):
    """`features` (5 convs, 3 max pools), adaptive pool to 2x2, `classifier` (3 Linear layers).

    The adaptive pool is the identity at 32x32 and lets other input sizes reach the same classifier.
    `width` scales every conv and the two hidden Linear layers.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        c1, c2, c3, c4, c5 = (scaled(c, width) for c in (64, 192, 384, 256, 256))
        hidden = scaled(4096, width)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((2, 2))
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Sequential(
            nn.Dropout(0.5),
            nn.Linear(c5 * 2 * 2, hidden),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def alexnet(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> AlexNetCifar:
    """AlexNet, CIFAR variant (23.27M parameters at 10 classes); see the module docstring for the layout."""
    return AlexNetCifar(num_classes, in_channels=in_channels, width=width)
