"""Low-rank decomposition: conv layers as Tucker-2 factors, 1x1 convs and linear layers by truncated SVD.

    result = decompose(model, Decomposition(energy=0.9), torch.zeros(1, 3, 32, 32))
    result.model, result.ranks, result.macs
"""

from .decompose import DecomposeResult, Decomposition, decompose, energy_rank
from .step import DecomposeStep

__all__ = ["Decomposition", "DecomposeResult", "decompose", "energy_rank", "DecomposeStep"]
