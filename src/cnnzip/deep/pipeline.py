"""Deep compression end to end: prune by magnitude, fine-tune with fixed masks, share weights, fine-tune
centroids. The caller supplies the fine-tuning (any function that trains a model with extra hooks), so the
same pipeline runs from the CLI, a search trial, or a notebook.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import nn

from ..train import TrainHook
from .magnitude import MagnitudePruning, MaskHook, prune_magnitude
from .sharing import Codebook, SharedWeightsHook, WeightSharing, codebooks_of, share_weights

__all__ = ["deep_compress"]

Finetune = Callable[[nn.Module, Sequence[TrainHook]], None]


def deep_compress(
    model: nn.Module,
    pruning: MagnitudePruning | None,
    sharing: WeightSharing,
    *,
    finetune: Finetune | None = None,
    centroid_finetune: Finetune | None = None,
) -> tuple[nn.Module, dict[str, Codebook]]:
    """Return a weight-shared copy of `model` and its codebooks, ready for `save_compressed`.

    `finetune(model, hooks)` runs after pruning with the mask hook; `centroid_finetune(model, hooks)` after
    weight sharing with the centroid hook. Either may be None to skip it.
    """
    if pruning is not None:
        model, masks = prune_magnitude(model, pruning)
        if finetune is not None:
            finetune(model, [MaskHook(masks)])
    shared, books = share_weights(model, sharing)
    if centroid_finetune is not None:
        centroid_finetune(shared, [SharedWeightsHook(books)])
        books = codebooks_of(shared, books)
    return shared, books
