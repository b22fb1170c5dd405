"""Channel sparsity: how often each channel's activation is exactly zero, measured on real data.

After a ReLU, a channel that is zero for most images and positions carries little; the dynamic pruning of
Electronics 2023, 12, 1208 removes the channels whose zero fraction is above a threshold. Each prunable group
is measured where its channels are read: at the input of every conv or linear layer that consumes them
(through a BN-ReLU, a concatenation or a flatten), averaged over those readers, all images and all positions.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from .graph import ChannelGraph

__all__ = ["channel_sparsity"]


@torch.no_grad()
def channel_sparsity(graph: ChannelGraph, batches: Iterable, device: torch.device | str = "cpu",
                     max_images: int | None = None) -> dict[str, torch.Tensor]:
    """Zero fraction of every channel of every prunable group of `graph` (root name -> tensor of its size).

    `batches` yields (inputs, targets) already normalised, as an `Evaluator`'s loader does; `max_images` stops
    early. Groups that no conv or linear layer reads (none in a classifier) are left out.
    """
    model = graph.model
    readers: dict[str, list[tuple[str, list[int]]]] = {}
    layers: dict[str, nn.Module] = {}
    for g in graph.groups:
        for layer, module, kind, mapped in graph.items(g.name, range(g.size)):
            if kind == "in" and isinstance(module, (nn.Conv2d, nn.Conv1d, nn.Linear)) and \
                    getattr(module, "groups", 1) == 1:
                readers.setdefault(g.name, []).append((layer, mapped))
                layers[layer] = module
    zeros: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def count(module, inputs):
            x = inputs[0]
            dims = [d for d in range(x.dim()) if d != 1]
            z = (x == 0).sum(dim=dims).double().cpu()
            zeros[name] = zeros[name] + z if name in zeros else z
            counts[name] = counts.get(name, 0) + x.numel() // x.shape[1]
        return count

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in layers.items()]
    was_training = model.training
    model.eval().to(device)
    seen = 0
    try:
        for x, _ in batches:
            model(x.to(device))
            seen += len(x)
            if max_images is not None and seen >= max_images:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training).cpu()
    if seen == 0:
        raise ConfigError("no images to measure channel sparsity on")
    out = {}
    for g in graph.groups:
        per_reader = []
        for layer, mapped in readers.get(g.name, []):
            frac = zeros[layer] / counts[layer]
            picked = frac[torch.tensor(mapped)]
            if len(mapped) % g.size:
                continue
            per_reader.append(picked.view(g.size, -1).mean(1))  # a flatten maps one channel to k features
        if per_reader:
            out[g.name] = torch.stack(per_reader).mean(0).float()
    return out
