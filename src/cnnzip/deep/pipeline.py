"""Deep compression end to end: prune by magnitude, fine-tune with fixed masks, share weights, fine-tune
centroids. The caller supplies the fine-tuning (a `Finetune`), so the same pipeline runs from the CLI, a search
trial, or a notebook.
"""

from __future__ import annotations

from torch import nn

from ..finetune import Finetune
from .magnitude import MagnitudePruning, MaskHook, prune_magnitude
from .sharing import Codebook, SharedWeightsHook, WeightSharing, codebooks_of, share_weights

__all__ = ["deep_compress", "STAGES"]

STAGES = ("pruned", "shared")
"""The fine-tune stages: after magnitude pruning (masks held), and after weight sharing (centroids trained)."""


def deep_compress(
    model: nn.Module,
    pruning: MagnitudePruning | None,
    sharing: WeightSharing,
    *,
    finetune: Finetune | None = None,
) -> tuple[nn.Module, dict[str, Codebook]]:
    """Return a weight-shared copy of `model` and its codebooks, ready for `save_compressed`.

    `finetune` is called with stage "pruned" after pruning (with the mask hook) and with stage "shared" after
    weight sharing (with the centroid hook); it returns at once for a stage it does not train.
    """
    if pruning is not None:
        model, masks = prune_magnitude(model, pruning)
        if finetune is not None:
            finetune("pruned", model, [MaskHook(masks)])
    shared, books = share_weights(model, sharing)
    if finetune is not None:
        finetune("shared", shared, [SharedWeightsHook(books)])
        books = codebooks_of(shared, books)
    return shared, books
