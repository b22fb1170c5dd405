"""Deterministic, stratified hold-out splits (e.g. a validation set carved from the training data)."""

from __future__ import annotations

import torch

from cnnzip.data._types import Split
from cnnzip.errors import DataError

__all__ = ["train_val_split"]


def train_val_split(split: Split, val_size: int | float = 5000, seed: int = 0) -> tuple[Split, Split]:
    """Split `split` into (train, val), keeping each class's share of the images in both parts.

    `val_size` is a count (int >= 1) or a fraction of the split (float in (0, 1)). The result depends only on
    the labels, `val_size` and `seed`: the same inputs give the same split on every run. Both parts keep the
    original order of the images.
    """
    n_val = resolve_size(val_size, len(split), what="val_size")
    val_mask = stratified_mask(split.labels, n_val, seed)
    return split.subset(torch.nonzero(~val_mask).flatten()), split.subset(torch.nonzero(val_mask).flatten())


def resolve_size(size: int | float, total: int, *, what: str) -> int:
    """Turn a count or a fraction into a count that leaves at least one image on each side."""
    if isinstance(size, bool) or not isinstance(size, (int, float)):
        raise DataError(f"{what} must be an int (a count) or a float in (0, 1) (a fraction), got {size!r}")
    if isinstance(size, float):
        if not 0.0 < size < 1.0:
            raise DataError(f"{what}={size} as a fraction must lie strictly between 0 and 1; pass an int for a count")
        count = round(size * total)
    else:
        count = size
    if not 1 <= count < total:
        raise DataError(
            f"{what}={size!r} gives {count} images, but the split has {total}; it must hold at least 1 image and "
            f"leave at least 1 (so 1 <= {what} <= {total - 1})"
        )
    return count


def stratified_mask(labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A boolean mask choosing `count` of `labels`' positions, each class in proportion to its size.

    Class quotas use the largest-remainder method (they add up to `count` exactly); within a class the chosen
    images are the first ones of a seeded random permutation.
    """
    labels = labels.reshape(-1)
    total = labels.numel()
    classes, sizes = torch.unique(labels, return_counts=True)
    exact = sizes.to(torch.float64) * count / total
    quotas = exact.floor().to(torch.int64)
    short = count - int(quotas.sum())
    if short:
        # Give the remaining images to the classes with the largest fractional parts (ties: smaller label first).
        order = torch.argsort(-(exact - quotas), stable=True)
        quotas[order[:short]] += 1
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(total, generator=generator)
    permuted = labels[perm]
    mask = torch.zeros(total, dtype=torch.bool)
    for cls, quota in zip(classes.tolist(), quotas.tolist(), strict=True):
        if quota:
            mask[perm[permuted == cls][:quota]] = True
    return mask
