"""ShuffleNetV2 for CIFAR (Ma et al., ECCV 2018), as in kuangliu/pytorch-cifar: a lightweight baseline.

The ImageNet design with the stem cut for 32x32 input (a 3x3 conv to 24 channels, stride 1, no max pool), so the
three stages run at 32, 16 and 8 pixels and the final map is 4x4. A stage opens with a down-sampling unit (both
branches strided, concatenated: twice the channels) and goes on with basic units that split the channels in half,
transform one half (1x1, 3x3 depthwise, 1x1) and concatenate; a channel shuffle after every unit mixes the halves.
Stage widths 116, 232, 464 and a 1024-channel last conv at width 1.0; 4, 8 and 4 units. `width` scales every
channel count (kept even, so the halves split). 1.26M parameters at 10 classes.
"""

from __future__ import annotations

import torch
from torch import nn

from ._common import check_positive_int, check_width
from ._registry import register_model

__all__ = ["ShuffleNetV2Cifar", "channel_shuffle"]

_STAGES = (116, 232, 464)
_UNITS = (4, 8, 4)


def channel_shuffle(x: torch.Tensor, groups: int = 2) -> torch.Tensor:
    """Interleave the channels of `groups` equal groups: (g, c/g) -> (c/g, g)."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _even(channels: int, width: float) -> int:
    return max(2, 2 * int(channels * width / 2 + 0.5))


def _conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True) -> list:
    layers = [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
              nn.BatchNorm2d(cout)]
    return layers + [nn.ReLU()] if relu else layers


class BasicUnit(nn.Module):
    """Split the channels in half; 1x1, 3x3 depthwise, 1x1 on one half; concatenate; shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.branch = nn.Sequential(*_conv_bn(half, half), *_conv_bn(half, half, 3, groups=half, relu=False),
                                    *_conv_bn(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = x.shape[1] // 2
        kept, changed = x[:, :half], x[:, half:]  # slices, as kuangliu's code (a tracer follows them)
        return channel_shuffle(torch.cat([kept, self.branch(changed)], 1))


class DownUnit(nn.Module):
    """Both branches strided (3x3 depthwise and 1x1 on the left; 1x1, 3x3 depthwise, 1x1 on the right); the
    concatenation has `out` channels at half the resolution; shuffle."""

    def __init__(self, cin: int, out: int) -> None:
        super().__init__()
        half = out // 2
        self.left = nn.Sequential(*_conv_bn(cin, cin, 3, stride=2, groups=cin, relu=False), *_conv_bn(cin, half))
        self.right = nn.Sequential(*_conv_bn(cin, half), *_conv_bn(half, half, 3, stride=2, groups=half, relu=False),
                                   *_conv_bn(half, half))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1))


class ShuffleNetV2Cifar(nn.Module):
    """Stem conv3x3 (24), three stages of shuffle units, conv1x1 (1024), global average pool, `linear`."""

    def __init__(self, num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        stem = _even(24, width)
        self.stem = nn.Sequential(*_conv_bn(in_channels, stem, 3))
        stages, channels = [], stem
        for out, units in zip(_STAGES, _UNITS, strict=True):
            out = _even(out, width)
            stages.append(nn.Sequential(DownUnit(channels, out), *(BasicUnit(out) for _ in range(units - 1))))
            channels = out
        self.stages = nn.Sequential(*stages)
        last = _even(1024, width)
        self.head_conv = nn.Sequential(*_conv_bn(channels, last))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(last, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_conv(self.stages(self.stem(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def shufflenetv2(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> ShuffleNetV2Cifar:
    """ShuffleNetV2 1.0x for 32x32 input, kuangliu/pytorch-cifar layout (1.26M parameters at 10 classes)."""
    return ShuffleNetV2Cifar(num_classes, in_channels=in_channels, width=width)
