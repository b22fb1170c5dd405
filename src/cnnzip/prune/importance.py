"""How much each channel of a group matters: plain functions `(graph, group) -> scores`, higher = keep.

They read the analysed model's weights and never touch the surgery, so a new criterion is one function here.
A function returns None for a group it does not apply to (slimming on channels without BatchNorm); such
groups are left alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .graph import ChannelGraph, ChannelGroup

__all__ = ["IMPORTANCE", "bn_scale", "l1_norm", "l2_norm", "fpgm", "random_scores", "get_importance"]

Importance = Callable[[ChannelGraph, ChannelGroup], torch.Tensor | None]


def _producers(graph: ChannelGraph, group: ChannelGroup, types: tuple[type, ...]):
    """(module, mapped indices) of the group's layers that write its channels, aligned with the root's order."""
    all_idxs = list(range(group.size))
    for _, module, kind, mapped in graph.items(group.name, all_idxs):
        if kind == "out" and isinstance(module, types) and len(mapped) == group.size:
            yield module, torch.as_tensor(mapped)


def bn_scale(graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor | None:
    """Network slimming: |gamma| of the BatchNorm after each channel (averaged when a group has several).

    None for channels without a BatchNorm: slimming has no scale factor to rank them by.
    """
    bns = (nn.modules.batchnorm._BatchNorm,)
    scores = [m.weight.detach().abs()[idx] for m, idx in _producers(graph, group, bns) if m.weight is not None]
    return torch.stack(scores).mean(0).float() if scores else None


def _out_filters(module: nn.Module) -> torch.Tensor:
    """One row per output channel of a conv or linear layer: the weights that write it."""
    w = module.weight.detach()
    if not isinstance(module, nn.modules.conv._ConvTransposeNd):
        return w.flatten(1)
    per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups  # w: (in, out/g)
    return torch.stack([w[o // per_out * per_in:(o // per_out + 1) * per_in, o % per_out].flatten()
                        for o in range(module.out_channels)])


def _filters(graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor:
    """One row per channel: the weights of every conv/linear that writes it, concatenated."""
    rows = [_out_filters(m)[idx] for m, idx in _producers(graph, group, (nn.modules.conv._ConvNd, nn.Linear))]
    if not rows:
        raise ConfigError(f"no conv or linear layer writes the channels of {group.name}")
    return torch.cat(rows, dim=1).float()


def l1_norm(graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor:
    """Li et al. 2017: the L1 norm of each channel's filter."""
    return _filters(graph, group).abs().sum(1)


def l2_norm(graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor:
    return _filters(graph, group).norm(dim=1)


def fpgm(graph: ChannelGraph, group: ChannelGroup) -> torch.Tensor:
    """He et al. 2019: a filter near the geometric median of its layer is replaceable by the others.

    The filter with the smallest sum of distances to all other filters is nearest the geometric median, so the
    sum of distances is the score: low means redundant.
    """
    w = _filters(graph, group)
    return torch.cdist(w, w).sum(1)


def random_scores(graph: ChannelGraph, group: ChannelGroup, generator: torch.Generator | None = None) -> torch.Tensor:
    """A baseline: what any criterion must beat."""
    return torch.rand(group.size, generator=generator)


IMPORTANCE: dict[str, Importance] = {
    "slimming": bn_scale, "bn": bn_scale, "l1": l1_norm, "l2": l2_norm, "fpgm": fpgm, "random": random_scores,
}


def get_importance(name: str) -> Importance:
    try:
        return IMPORTANCE[name]
    except KeyError:
        raise ConfigError(f"unknown importance {name!r}; choose one of {', '.join(IMPORTANCE)}") from None
