"""DenseNets for 32x32 inputs: DenseNet-40 and DenseNet-BC-100 (Huang et al. 2017), DenseNet-121/201.

DenseNet-40 is the network-slimming baseline (growth 12, 3 blocks of 12 BN-ReLU-conv3x3 layers, no
bottleneck, no compression, 24-channel stem). DenseNet-121/201 use the ImageNet block layouts with a 3x3 stem
and no stem max pool, as in kuangliu/pytorch-cifar; module names (`conv1`, `dense1`, `trans1`, ..., `bn`,
`linear`) match that code. Each layer's forward returns `torch.cat([x, new_features], 1)`, so the channels a
layer reads are visible to tools that trace concatenations.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ModelError
from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["DenseLayer", "BottleneckLayer", "Transition", "DenseNetCifar"]


class DenseLayer(nn.Module):
    """BN-ReLU-conv3x3 producing `growth` new channels, appended to the input."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv1(self.relu1(self.bn1(x)))], 1)


class BottleneckLayer(nn.Module):
    """BN-ReLU-conv1x1 (4*growth) then BN-ReLU-conv3x3 (growth), appended to the input (DenseNet-B)."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        inner = 4 * growth
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(in_planes, inner, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(inner, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.relu1(self.bn1(x)))
        out = self.conv2(self.relu2(self.bn2(out)))
        return torch.cat([x, out], 1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1-avgpool2 between dense blocks; halves resolution and (with compression) channels."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)
        self.pool = nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.conv(self.relu(self.bn(x))))


class DenseNetCifar(nn.Module):
    """3x3 stem conv, dense blocks of `block_layers[i]` layers with transitions between them, then
    BN-ReLU, global average pool and `linear`.

    `width` scales the growth rate and the stem; every other width follows from them.
    """

    def __init__(
        self,
        block_layers: tuple[int, ...],
        growth: int,
        num_classes: int = 10,
        *,
        bottleneck: bool = True,
        compression: float = 0.5,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        check_positive_int(growth, "growth")
        width = check_width(width)
        if not 0 < compression <= 1:
            raise ModelError(f"compression must be in (0, 1], got {compression!r}")
        growth = scaled(growth, width)
        layer_cls = BottleneckLayer if bottleneck else DenseLayer
        channels = 2 * growth
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        names = ["conv1"]
        for i, n_layers in enumerate(block_layers, start=1):
            layers = []
            for _ in range(n_layers):
                layers.append(layer_cls(channels, growth))
                channels += growth
            self.add_module(f"dense{i}", nn.Sequential(*layers))
            names.append(f"dense{i}")
            if i < len(block_layers):
                out = max(1, int(math.floor(channels * compression)))
                self.add_module(f"trans{i}", Transition(channels, out))
                names.append(f"trans{i}")
                channels = out
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(channels, num_classes)
        self._stages = tuple(names)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._stages:
            x = getattr(self, name)(x)
        return self.relu(self.bn(x))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def densenet40(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> DenseNetCifar:
    """DenseNet-40, growth 12, no bottleneck or compression (1.06M parameters): the slimming baseline."""
    return DenseNetCifar(
        (12, 12, 12), 12, num_classes, bottleneck=False, compression=1.0, in_channels=in_channels, width=width
    )


@register_model
def densenet_bc_100(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> DenseNetCifar:
    """DenseNet-BC-100, growth 12, 3 blocks of 16 bottleneck layers, compression 0.5 (0.77M parameters)."""
    return DenseNetCifar(
        (16, 16, 16), 12, num_classes, bottleneck=True, compression=0.5, in_channels=in_channels, width=width
    )


@register_model
def densenet121(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> DenseNetCifar:
    """DenseNet-121 layout (6, 12, 24, 16), growth 32, for 32x32 input (6.96M parameters)."""
    return _imagenet_layout((6, 12, 24, 16), num_classes, in_channels, width)


@register_model
def densenet201(num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0) -> DenseNetCifar:
    """DenseNet-201 layout (6, 12, 48, 32), growth 32, for 32x32 input (18.1M parameters)."""
    return _imagenet_layout((6, 12, 48, 32), num_classes, in_channels, width)


def _imagenet_layout(blocks: tuple[int, ...], num_classes: int, in_channels: int, width: float) -> DenseNetCifar:
    """The ImageNet DenseNets' blocks: growth 32, bottlenecks, compression 0.5."""
    return DenseNetCifar(blocks, 32, num_classes, bottleneck=True, compression=0.5, in_channels=in_channels,
                         width=width)
