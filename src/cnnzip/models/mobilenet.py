"""MobileNetV2 for CIFAR (Sandler et al. 2018), as in kuangliu/pytorch-cifar.

The ImageNet layout with strides cut for 32x32 input: stride 1 in the stem and in the 24-channel stage, so
the final feature map is 4x4. Kept from kuangliu's code on purpose, so its checkpoints load and results
compare: ReLU instead of ReLU6, an expansion conv also in the t=1 block, and a 1x1 conv + BN shortcut when a
stride-1 block changes width. 2.30M parameters at 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["InvertedResidual", "MobileNetV2Cifar"]

# (expansion t, output channels c, blocks n, first stride s); stride of the 24-channel stage is 1 for CIFAR.
_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 project, with a residual on stride-1 blocks.

    `shortcut` is nn.Identity when the width is kept, a 1x1 conv + BN when it changes, and None on stride-2
    blocks, which have no residual.
    """

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut: nn.Module | None
        if stride != 1:
            self.shortcut = None
        elif in_planes == out_planes:
            self.shortcut = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut is not None:  # fixed at construction, not data-dependent
            out = out + self.shortcut(x)
        return out


class MobileNetV2Cifar(nn.Module):
    """Stem conv3x3 (32), 17 inverted residual blocks, conv1x1 (1280), global average pool, `linear`.

    `width` scales every channel count, including the final 1280.
    """

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        stem = scaled(32, width)
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu1 = nn.ReLU()
        blocks = []
        channels = stem
        for expansion, out, n, first_stride in _CFG:
            out = scaled(out, width)
            for i in range(n):
                blocks.append(InvertedResidual(channels, out, expansion, first_stride if i == 0 else 1))
                channels = out
        self.layers = nn.Sequential(*blocks)
        last = scaled(1280, width)
        self.conv2 = nn.Conv2d(channels, last, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(last)
        self.relu2 = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(last, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.layers(x)
        return self.relu2(self.bn2(self.conv2(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def mobilenetv2(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> MobileNetV2Cifar:
    """MobileNetV2 for 32x32 input, kuangliu/pytorch-cifar layout (2.30M parameters at 10 classes)."""
    return MobileNetV2Cifar(num_classes, in_channels=in_channels, width=width)
