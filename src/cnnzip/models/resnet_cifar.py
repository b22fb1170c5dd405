"""ResNet-20/32/44/56/110 for CIFAR (He et al. 2016, section 4.2): 3 stages of n basic blocks, depth 6n+2.

Module names follow akamaster/pytorch_resnet_cifar10 exactly (`conv1`, `bn1`, `layer1..3`, `linear`, and
`conv1/bn1/conv2/bn2/shortcut` in each block), so its pretrained checkpoints load with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ._common import check_positive_int, check_width, scaled
from ._registry import register_model

__all__ = ["BasicBlock", "PadShortcut", "ResNetCifar"]

_SHORTCUTS = ("A", "B")


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by striding and zero-pad the new channels (no parameters).

    A module rather than a lambda so models can be deep-copied and pickled. The padding is split evenly
    before and after the existing channels; for the published widths that is planes//4 on each side, as in
    the akamaster checkpoints.

    Channel pruning narrows both sides independently (the residual streams of two stages), after which output
    channel j is input channel `index[j]`, or zero where `index[j]` is -1. The map then lives in the state dict
    (buffer `index`), so a pruned model saves and reloads like any other; an unpruned one keeps the plain
    padding and the checkpoints' keys. A pruned shortcut runs as a strided 1x1 convolution with a 0/1 weight
    (exact: one product by 1 per output): ONNX Runtime keeps a conv in its channels-last int8 layout, where a
    channel gather costs a transpose on each side.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ModelError(f"PadShortcut cannot shrink channels ({in_planes} -> {out_planes})")
        self.in_planes = in_planes
        self.out_planes = out_planes
        self.stride = stride
        self.pad_before = (out_planes - in_planes) // 2
        self.pad_after = out_planes - in_planes - self.pad_before
        self.index: torch.Tensor | None
        self.register_buffer("index", None)  # None (not in the state dict) until pruned
        self.selection: torch.Tensor | None
        self.register_buffer("selection", None, persistent=False)  # the 0/1 conv weight that applies `index`

    def channel_map(self) -> torch.Tensor:
        """Output channel -> input channel, -1 for a channel of zeros."""
        if self.index is not None:
            return self.index.clone()
        m = torch.full((self.out_planes,), -1, dtype=torch.long)
        m[self.pad_before:self.pad_before + self.in_planes] = torch.arange(self.in_planes)
        return m

    def set_channel_map(self, index: torch.Tensor, in_planes: int) -> None:
        """Make output channel j input channel index[j] (-1: zeros), reading `in_planes` input channels."""
        index = torch.as_tensor(index, dtype=torch.long).flatten()
        if len(index) and not index.is_meta and not -1 <= int(index.min()) <= int(index.max()) < in_planes:
            raise ModelError(f"a PadShortcut channel map must hold -1 or input channels below {in_planes}")
        self.in_planes, self.out_planes = int(in_planes), len(index)
        self._buffers["index"] = index
        self._update_selection()

    def _update_selection(self) -> None:
        index = self.index
        dtype = self.selection.dtype if self.selection is not None else torch.get_default_dtype()
        w = torch.zeros(len(index), self.in_planes + 1, dtype=dtype, device=index.device)
        if not index.is_meta:
            w[torch.arange(len(index), device=index.device), torch.where(index < 0, self.in_planes, index)] = 1
        self._buffers["selection"] = w[:, :self.in_planes, None, None].contiguous()  # the extra column: the -1s

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        saved = state_dict.get(prefix + "index")
        if isinstance(saved, torch.Tensor) and self.index is None:  # a pruned map into an unpruned shortcut
            self.set_channel_map(saved.clone(), max([self.in_planes, *(saved + 1).tolist()]))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.index is not None and prefix + "index" in state_dict:
            self._update_selection()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.index is None:
            x = x[:, :, :: self.stride, :: self.stride]
            return F.pad(x, (0, 0, 0, 0, self.pad_before, self.pad_after))
        return F.conv2d(x, self.selection.to(x.dtype), stride=self.stride)

    def extra_repr(self) -> str:
        return f"{self.in_planes}, {self.out_planes}, stride={self.stride}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    `shortcut` is always present (nn.Identity when shape is kept) so tools can treat every block alike.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: str = "A") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_planes, planes, stride)
        else:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """conv-BN-ReLU stem, three stages of `blocks_per_stage` BasicBlocks (16/32/64 channels times `width`,
    stride 2 at the start of stages 2 and 3), global average pool and `linear`."""

    def __init__(
        self,
        blocks_per_stage: int,
        num_classes: int = 10,
        *,
        in_channels: int = 3,
        width: float = 1.0,
        shortcut: str = "A",
    ) -> None:
        super().__init__()
        check_positive_int(blocks_per_stage, "blocks_per_stage")
        check_positive_int(num_classes, "num_classes")
        check_positive_int(in_channels, "in_channels")
        width = check_width(width)
        if shortcut not in _SHORTCUTS:
            raise ModelError(
                f"shortcut must be 'A' (zero-padding, as in the pretrained checkpoints) or 'B' (1x1 conv + BN), "
                f"got {shortcut!r}"
            )
        stem, *stages = (scaled(c, width) for c in (16, 16, 32, 64))
        self.conv1 = nn.Conv2d(in_channels, stem, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU()
        in_planes = stem
        layers = []
        for i, planes in enumerate(stages):
            blocks = []
            for j in range(blocks_per_stage):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(in_planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)  # as in the akamaster training code

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        return self.layer3(self.layer2(self.layer1(x)))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.flatten(self.avgpool(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _resnet(depth: int, num_classes: int, in_channels: int, width: float, shortcut: str) -> ResNetCifar:
    return ResNetCifar((depth - 2) // 6, num_classes, in_channels=in_channels, width=width, shortcut=shortcut)


@register_model
def resnet20(
    num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0, shortcut: str = "A"
) -> ResNetCifar:
    """ResNet-20 (0.27M parameters at 10 classes); pretrained weights: resnet20-12fca82f.th."""
    return _resnet(20, num_classes, in_channels, width, shortcut)


@register_model
def resnet32(
    num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0, shortcut: str = "A"
) -> ResNetCifar:
    """ResNet-32 (0.46M parameters at 10 classes)."""
    return _resnet(32, num_classes, in_channels, width, shortcut)


@register_model
def resnet44(
    num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0, shortcut: str = "A"
) -> ResNetCifar:
    """ResNet-44 (0.66M parameters at 10 classes)."""
    return _resnet(44, num_classes, in_channels, width, shortcut)


@register_model
def resnet56(
    num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0, shortcut: str = "A"
) -> ResNetCifar:
    """ResNet-56 (0.85M parameters, 125M MACs at 32x32); pretrained weights: resnet56-4bfd9763.th."""
    return _resnet(56, num_classes, in_channels, width, shortcut)


@register_model
def resnet110(
    num_classes: int = 10, *, in_channels: int = 3, width: float = 1.0, shortcut: str = "A"
) -> ResNetCifar:
    """ResNet-110 (1.73M parameters at 10 classes)."""
    return _resnet(110, num_classes, in_channels, width, shortcut)
