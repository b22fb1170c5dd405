"""Layers replaced by low-rank factors (`cnnzip.lowrank`): the modules themselves, so that a decomposed model saves,
reloads and exports like any other. The model file lists each factored layer with its kind and ranks, and the
rebuilt architecture replaces the original layers again before the weights load.

- "svd": a conv (or linear) layer W = U (S V^T) becomes `reduce` (the original kernel, stride and padding, to r
  channels) then `expand` (1x1, r to the original outputs, with the original bias);
- "tucker2": a k x k conv becomes `reduce` (1x1, to r_in channels), `core` (the original kernel, stride and
  padding, r_in to r_out) and `expand` (1x1, r_out to the outputs, with the bias).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FactoredConv2d", "FactoredLinear", "factored_layers", "factor_layers", "factored"]


class FactoredConv2d(nn.Module):
    """A Conv2d as a product of smaller convs (see the module docstring); `ranks` has one entry (svd) or two
    (tucker2: input rank, output rank)."""

    def __init__(self, conv: nn.Conv2d, ranks: tuple[int, ...]) -> None:
        super().__init__()
        if conv.groups != 1:
            raise ValueError("grouped convolutions are not factored")
        self.ranks = tuple(int(r) for r in ranks)
        bias = conv.bias is not None
        spatial = {"kernel_size": conv.kernel_size, "stride": conv.stride, "padding": conv.padding,
                   "dilation": conv.dilation, "padding_mode": conv.padding_mode}
        device, dtype = conv.weight.device, conv.weight.dtype
        if len(self.ranks) == 1:
            (r,) = self.ranks
            self.reduce = nn.Conv2d(conv.in_channels, r, bias=False, device=device, dtype=dtype, **spatial)
            self.core = None
            self.expand = nn.Conv2d(r, conv.out_channels, 1, bias=bias, device=device, dtype=dtype)
        else:
            r_in, r_out = self.ranks
            self.reduce = nn.Conv2d(conv.in_channels, r_in, 1, bias=False, device=device, dtype=dtype)
            self.core = nn.Conv2d(r_in, r_out, bias=False, device=device, dtype=dtype, **spatial)
            self.expand = nn.Conv2d(r_out, conv.out_channels, 1, bias=bias, device=device, dtype=dtype)

    @property
    def kind(self) -> str:
        return "svd" if self.core is None else "tucker2"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.reduce(x)
        if self.core is not None:
            x = self.core(x)
        return self.expand(x)


class FactoredLinear(nn.Module):
    """A Linear layer W = U (S V^T) as `reduce` (to `rank` features) then `expand` (with the original bias)."""

    def __init__(self, linear: nn.Linear, ranks: tuple[int, ...]) -> None:
        super().__init__()
        (r,) = ranks
        self.ranks = (int(r),)
        device, dtype = linear.weight.device, linear.weight.dtype
        self.reduce = nn.Linear(linear.in_features, r, bias=False, device=device, dtype=dtype)
        self.expand = nn.Linear(r, linear.out_features, bias=linear.bias is not None, device=device, dtype=dtype)

    kind = "svd"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(self.reduce(x))


factored = (FactoredConv2d, FactoredLinear)


def factored_layers(model: nn.Module) -> dict[str, list[int]]:
    """name -> ranks of every factored layer (what a model file records)."""
    return {name: list(m.ranks) for name, m in model.named_modules() if isinstance(m, factored)}


def factor_layers(model: nn.Module, ranks: dict[str, list[int]]) -> nn.Module:
    """Replace the named layers of `model` by factored ones of these ranks (weights still to be set), in place."""
    for name, r in ranks.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = getattr(parent, child)
        if isinstance(layer, nn.Conv2d):
            setattr(parent, child, FactoredConv2d(layer, tuple(r)))
        elif isinstance(layer, nn.Linear):
            setattr(parent, child, FactoredLinear(layer, tuple(r)))
        else:
            raise TypeError(f"{name} is a {type(layer).__name__}, not a conv or linear layer")
    return model
