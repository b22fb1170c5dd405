"""VGG-11/13/16/19 with BatchNorm and the CIFAR head of network slimming (Liu et al. 2017).

Follows the authors' code (Eric-mingjie/network-slimming, models/vgg.py): 3x3 conv-BN-ReLU layers without
conv bias, max pools between stages but none after the last stage, a 2x2 average pool and one Linear layer.
Module names (`feature`, `classifier`) and initialisation match that code, so its checkpoints load and
sparsity training starts from the same BN scales (0.5). VGG-19 at 10 classes has 20.04M parameters.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["VGG", "VGG_CONFIGS"]

# Layer widths; "M" is a 2x2 max pool. As in network slimming's `defaultcfg`.
VGG_CONFIGS: dict[int, tuple[int | str, ...]] = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512),
}


class VGG(nn.Module):
    """`feature` (conv3x3-BN-ReLU and max pools from `cfg`), global average pool, `classifier` Linear.

    The global pool replaces network slimming's fixed AvgPool2d(2): identical at 32x32 input, and other
    input sizes still work.
    """

    def __init__(
        self,
        cfg: tuple[int | str, ...],
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        layers: list[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = scaled(int(v), width)
                layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.feature = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.feature(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _layers(depth: int, cfg: Sequence[int | str] | None) -> tuple[int | str, ...]:
    """The standard layer list, or `cfg`: other widths and depth (a PCA-designed VGG keeps the name it came from)."""
    if cfg is None:
        return VGG_CONFIGS[depth]
    convs = [v for v in cfg if v != "M"]
    if not convs or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in convs):
        raise ModelError(f"cfg lists conv widths (positive integers, at least one) and \"M\" for a max pool; "
                          f"got {cfg!r}")
    return tuple(cfg)


@register_model
def vgg11(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0,
          cfg: Sequence[int | str] | None = None) -> VGG:
    """VGG-11 with BatchNorm, CIFAR head (9.23M parameters at 10 classes)."""
    return VGG(_layers(11, cfg), num_classes, in_channels=in_channels, width=width)


@register_model
def vgg13(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0,
          cfg: Sequence[int | str] | None = None) -> VGG:
    """VGG-13 with BatchNorm, CIFAR head (9.41M parameters at 10 classes)."""
    return VGG(_layers(13, cfg), num_classes, in_channels=in_channels, width=width)


@register_model
def vgg16(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0,
          cfg: Sequence[int | str] | None = None) -> VGG:
    """VGG-16 with BatchNorm, CIFAR head (14.73M parameters at 10 classes)."""
    return VGG(_layers(16, cfg), num_classes, in_channels=in_channels, width=width)


@register_model
def vgg19(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0,
          cfg: Sequence[int | str] | None = None) -> VGG:
    """VGG-19 with BatchNorm, CIFAR head (20.04M parameters at 10 classes), the network-slimming baseline."""
    return VGG(_layers(19, cfg), num_classes, in_channels=in_channels, width=width)
