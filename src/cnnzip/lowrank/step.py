"""Low-rank decomposition as a recipe step and a search axis (`cnnzip compress`, `search --order lr`)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..methods import Method, register_method
from .decompose import Decomposition, decompose

__all__ = ["DecomposeStep"]


@dataclass(frozen=True)
class DecomposeStep:
    """Tucker-2 factors for k x k convolutions, SVD for 1x1 and linear layers; the search sets the share of the
    MACs they remove."""


def _apply(model: nn.Module, ratio: float, context) -> nn.Module:
    if ratio <= 0:
        return model
    return decompose(model, Decomposition(macs_reduction=ratio, skip=tuple(context.skip)), context.example).model


# After channel pruning only: a .cnnz file does not record factored layers, and channel surgery does not reach
# inside factors.
register_method(Method("decompose", DecomposeStep, axis="lr", after=("ns",), writes=".pt", apply=_apply,
                       summary="low-rank factors removing a share of the MACs (share searched)"))
