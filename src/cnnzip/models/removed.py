"""What is left of a residual block after layer fusion removed its residual path: relu(x + 0) = relu(x).

A module of its own, so a fused model saves, reloads and exports like any other: the model file lists the
blocks replaced by it, and the rebuilt architecture replaces them again before the weights load.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RemovedBlock", "removed_blocks", "remove_blocks"]


class RemovedBlock(nn.Module):
    """A residual block without its residual path: only the identity shortcut and the block's final ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x)


def removed_blocks(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, RemovedBlock)]


def remove_blocks(model: nn.Module, names: list[str]) -> nn.Module:
    """Replace the named submodules of `model` by RemovedBlock, in place."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, RemovedBlock())
    return model
