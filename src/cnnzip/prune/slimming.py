"""Network slimming (Liu et al., ICCV 2017): train with an L1 penalty on BatchNorm scales, then prune by |gamma|.

Sparsity training is a hook on the one training loop: after backward it adds the subgradient lambda * sign(gamma)
to every BN scale's gradient, which drives unneeded channels' gamma to zero. Pruning then uses
`ChannelPruning(method="slimming", ratio=...)` or `threshold=...`, ranking |gamma| over all layers at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from ..errors import ConfigError
from ..train import TrainHook

__all__ = ["SparsityHook", "bn_scales"]


class SparsityHook(TrainHook):
    """Add `penalty` * sign(gamma) to the gradient of every BatchNorm scale (except layers matching `skip`)."""

    def __init__(self, penalty: float = 1e-4, skip: Iterable[str] = ()) -> None:
        if penalty < 0:
            raise ConfigError(f"the sparsity penalty must be >= 0; got {penalty}")
        self.penalty = penalty
        self.skip = [re.compile(p) for p in skip]

    def after_backward(self, model: nn.Module) -> None:
        for name, module in model.named_modules():
            if (isinstance(module, nn.modules.batchnorm._BatchNorm) and module.weight is not None
                    and module.weight.grad is not None and not any(p.fullmatch(name) for p in self.skip)):
                module.weight.grad.add_(torch.sign(module.weight.detach()), alpha=self.penalty)


def bn_scales(model: nn.Module) -> torch.Tensor:
    """All |gamma| of the model's BatchNorm layers, concatenated: what slimming ranks (for histograms, checks)."""
    values = [m.weight.detach().abs().flatten() for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    return torch.cat(values) if values else torch.empty(0)
