"""The two containers every loader returns: a `Split` (images + labels) and a `Dataset` (train, test, metadata)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from cnnzip.errors import DataError


@dataclass(frozen=True, eq=False)
class Split:
    """Images and their labels, held in memory as uint8 pixels.

    `images` is uint8 with shape N x C x H x W (made contiguous on construction); `labels` is int64 with
    shape N. Pixels stay uint8 so a 50,000-image CIFAR split costs 150 MB; `Loader` converts to float per batch.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
            raise DataError(
                f"Split.images must be a uint8 tensor of shape N x C x H x W, got {_describe(images)}; "
                "convert pixels with .to(torch.uint8) and add a channel axis if needed"
            )
        if not isinstance(labels, torch.Tensor) or labels.dtype != torch.int64 or labels.dim() != 1:
            raise DataError(
                f"Split.labels must be an int64 tensor of shape N, got {_describe(labels)}; "
                "convert with .long() and flatten it"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"Split has {images.shape[0]} images but {labels.shape[0]} labels; give one label per image"
            )
        if not images.is_contiguous():
            object.__setattr__(self, "images", images.contiguous())
        if not labels.is_contiguous():
            object.__setattr__(self, "labels", labels.contiguous())

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, image_shape={tuple(self.images.shape[1:])})"

    def subset(self, indices: torch.Tensor | Sequence[int]) -> Split:
        """The images at `indices` (0 <= i < len(self)), in that order, or where a bool mask of length N is True."""
        idx = torch.as_tensor(indices)
        n = len(self)
        if idx.dtype == torch.bool:
            if idx.shape != (n,):
                raise DataError(f"a boolean subset mask needs one entry per image ({n}), got shape {tuple(idx.shape)}")
            idx = torch.nonzero(idx).flatten()
        elif (idx.is_floating_point() or idx.is_complex()) and idx.numel():  # as_tensor([]) is float: allowed
            raise DataError(f"subset indices must be integers or a boolean mask, got {idx.dtype}")
        idx = idx.to(torch.int64).reshape(-1)
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise DataError(
                f"subset indices must lie in [0, {n}) for a split of {n} images, "
                f"got values from {int(idx.min())} to {int(idx.max())}"
            )
        return Split(self.images.index_select(0, idx), self.labels.index_select(0, idx))

    def take(self, n: int) -> Split:
        """The first `n` images (0 <= n <= len(self)); handy for quick experiments."""
        if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= len(self):
            raise DataError(f"take(n) needs an integer 0 <= n <= {len(self)} (the split's size), got {n!r}")
        return Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train and a test split, the class names, and the per-channel normalisation on [0, 1] pixels."""

    name: str
    train: Split
    test: Split
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.train.images.shape[1:] != self.test.images.shape[1:]:
            raise DataError(
                f"dataset {self.name!r}: train images are {tuple(self.train.images.shape[1:])} but test images "
                f"are {tuple(self.test.images.shape[1:])} (C x H x W); both splits must share one image shape"
            )
        if not self.classes:
            raise DataError(f"dataset {self.name!r} has no classes; give at least one class name")
        check_stats(self.mean, self.std, self.in_channels, what=f"dataset {self.name!r}")
        for split_name, split in (("train", self.train), ("test", self.test)):
            if len(split) and (int(split.labels.min()) < 0 or int(split.labels.max()) >= self.num_classes):
                raise DataError(
                    f"dataset {self.name!r}: {split_name} labels range from {int(split.labels.min())} to "
                    f"{int(split.labels.max())}, but there are {self.num_classes} classes; labels must lie in "
                    f"[0, {self.num_classes})"
                )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return int(self.train.images.shape[2]), int(self.train.images.shape[3])

    def __repr__(self) -> str:
        h, w = self.image_size
        return (
            f"Dataset({self.name!r}, train={len(self.train)}, test={len(self.test)}, "
            f"classes={self.num_classes}, image={self.in_channels}x{h}x{w})"
        )


def check_stats(mean: Sequence[float], std: Sequence[float], channels: int, *, what: str) -> None:
    """Raise DataError unless mean and std hold one finite value per channel and every std is positive."""
    for label, values in (("mean", mean), ("std", std)):
        if len(values) != channels:
            raise DataError(
                f"{what}: {label} has {len(values)} values but the images have {channels} channel(s); "
                f"give one {label} per channel"
            )
        if not all(math.isfinite(float(v)) for v in values):
            raise DataError(f"{what}: {label} {tuple(values)} contains a non-finite value")
    if any(float(s) <= 0 for s in std):
        raise DataError(f"{what}: std {tuple(std)} must be positive in every channel")


def channel_stats(images: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 N x C x H x W images scaled to [0, 1].

    Exact: counts each channel's 256 pixel values in chunks, so it never materialises the split as floats.
    """
    if images.shape[0] == 0:
        raise DataError("cannot compute mean/std of an empty split; pass mean= and std= explicitly")
    channels = images.shape[1]
    counts = torch.zeros(channels, 256, dtype=torch.int64)
    for start in range(0, images.shape[0], chunk):
        block = images[start : start + chunk]
        for c in range(channels):
            counts[c] += torch.bincount(block[:, c].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255
    total = counts.sum(dim=1).to(torch.float64)
    mean = (counts * values).sum(dim=1) / total
    var = ((counts * values.square()).sum(dim=1) / total - mean.square()).clamp_min(0)
    # A constant channel would give std 0 and divide by zero later; fall back to 1 (no scaling) there.
    std = torch.where(var > 0, var.sqrt(), torch.ones_like(var))
    return tuple(mean.tolist()), tuple(std.tolist())


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"
