"""Batching, normalisation and the standard CIFAR augmentation, all on whole uint8 batches (no per-image PIL).

Augmentation is torchvision's `RandomCrop(size, padding=4)` + `RandomHorizontalFlip()` followed by `Normalize`:
the padding is zero *pixels*, added before normalisation, so a padded pixel ends up as (0 - mean) / std.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from cnnzip.data._types import Split, check_stats
from cnnzip.errors import DataError

__all__ = ["Loader", "crop_flip", "normalize", "random_crop_flip", "sample_crop_flip"]


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images (... x C x H x W) to float32 `(x / 255 - mean) / std`, per channel, on the images' device."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() < 3:
        raise DataError(
            f"normalize expects uint8 images of shape N x C x H x W or C x H x W, got "
            f"{getattr(images, 'dtype', type(images).__name__)} {tuple(getattr(images, 'shape', ()))}"
        )
    check_stats(mean, std, images.shape[-3], what="normalize")
    m, s = _stat_tensors(mean, std, images.device)
    return _normalize(images, m, s)


def _stat_tensors(mean: Sequence[float], std: Sequence[float], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    m = torch.tensor([float(v) for v in mean], dtype=torch.float32, device=device).view(-1, 1, 1)
    s = torch.tensor([float(v) for v in std], dtype=torch.float32, device=device).view(-1, 1, 1)
    return m, s


def _normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float32).div_(255.0).sub_(mean).div_(std)


def sample_crop_flip(
    n: int, generator: torch.Generator, padding: int = 4
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw the random choices of `random_crop_flip` for `n` images: (top, left, flip).

    `top` and `left` (int64, in [0, 2 * padding]) are the crop's corner in the padded image; `flip` (bool) says
    which images are mirrored. Drawn from `generator` in this order: offsets, then flips.
    """
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    return offsets[0], offsets[1], flip


def crop_flip(
    images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, flip: torch.Tensor, padding: int = 4
) -> torch.Tensor:
    """Zero-pad each image by `padding` pixels, crop it back to H x W at (top, left), mirror where `flip`.

    One gather over the padded batch; equal to doing it image by image. Works on any dtype and device.
    """
    if images.dim() != 4:
        raise DataError(f"crop_flip expects a batch N x C x H x W, got shape {tuple(images.shape)}")
    n, c, h, w = images.shape
    if not (top.shape == left.shape == flip.shape == (n,)):
        raise DataError(f"crop_flip needs one top, left and flip per image ({n}), got shapes "
                        f"{tuple(top.shape)}, {tuple(left.shape)}, {tuple(flip.shape)}")
    if n and (int(torch.minimum(top, left).min()) < 0 or int(torch.maximum(top, left).max()) > 2 * padding):
        raise DataError(f"crop offsets must lie in [0, {2 * padding}] for padding={padding}")
    device = images.device
    pw = w + 2 * padding
    padded = images.new_zeros((n, c, h + 2 * padding, pw))
    padded[:, :, padding : padding + h, padding : padding + w] = images
    rows = top.to(device)[:, None] + torch.arange(h, device=device)  # n x h
    cols = left.to(device)[:, None] + torch.arange(w, device=device)  # n x w
    cols = torch.where(flip.to(device)[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * pw + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return torch.gather(padded.view(n, c, -1), 2, index).view(n, c, h, w)


def random_crop_flip(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop with `padding` zero pixels, then a random horizontal flip (p = 0.5), per image.

    Same as `crop_flip(images, *sample_crop_flip(len(images), generator, padding), padding)`.
    """
    top, left, flip = sample_crop_flip(images.shape[0], generator, padding)
    return crop_flip(images, top, left, flip, padding)


class Loader:
    """Iterate over a `Split` in batches of (normalised float32 images, int64 labels) on `device`.

    The shuffle order and the augmentation are drawn from the loader's own generator, seeded from
    (`seed`, epoch): call `set_epoch(e)` before each epoch. Iterating twice at the same epoch gives the same
    batches, so a run resumed at epoch e sees exactly what the original run saw. The global RNG is never used.
    Pixels stay uint8 until a batch is formed; only the batch is converted to float.
    """

    def __init__(
        self,
        split: Split,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: bool = False,
        mean: Sequence[float],
        std: Sequence[float],
        seed: int = 0,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        padding: int = 4,
    ) -> None:
        if not isinstance(split, Split):
            raise DataError(f"Loader needs a Split (e.g. dataset.train), got {type(split).__name__}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise DataError(f"batch_size must be a positive int, got {batch_size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DataError(f"seed must be a non-negative int, got {seed!r}")
        if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
            raise DataError(f"padding must be a non-negative int, got {padding!r}")
        check_stats(mean, std, split.images.shape[1], what="Loader")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = bool(shuffle)
        self.augment = bool(augment)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        self.seed = seed
        self.drop_last = bool(drop_last)
        self.device = torch.device(device)
        self.padding = padding
        self._epoch = 0
        self._mean, self._std = _stat_tensors(self.mean, self.std, self.device)
        self.rank, self.world = 0, 1

    def shard(self, rank: int, world: int) -> Loader:
        """This loader as rank `rank` of `world` data-parallel processes sees it: the same global batches (same
        order, same augmentation), of which this rank takes images rank, rank + world, ... . The shards of a batch
        never overlap and together are the whole batch, so `world` processes see what one process sees.
        A final batch with fewer images than processes is skipped, by every rank."""
        if not (isinstance(world, int) and world >= 1 and isinstance(rank, int) and 0 <= rank < world):
            raise DataError(f"a shard needs 0 <= rank < world, got rank {rank!r} of {world!r}")
        if self.batch_size < world:
            raise DataError(f"batch size {self.batch_size} is smaller than the {world} processes that split it; "
                            "use a batch size of at least one image per process")
        shard = copy.copy(self)
        shard.rank, shard.world = rank, world
        return shard

    @property
    def epoch(self) -> int:
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation the next iteration uses."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise DataError(f"epoch must be a non-negative int, got {epoch!r}")
        self._epoch = epoch

    def generator(self, epoch: int | None = None) -> torch.Generator:
        """A fresh CPU generator for `epoch` (default: the current one), seeded from (seed, epoch)."""
        epoch = self._epoch if epoch is None else epoch
        state = np.random.SeedSequence([self.seed, epoch]).generate_state(1, dtype=np.uint64)[0]
        return torch.Generator().manual_seed(int(state))

    def __len__(self) -> int:
        n = len(self.split)
        full, rest = divmod(n, self.batch_size)
        return full + (0 < rest and not self.drop_last and rest >= self.world)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        generator = self.generator()
        order = torch.randperm(len(self.split), generator=generator) if self.shuffle else None
        return self._batches(generator, order)

    def _batches(
        self, generator: torch.Generator, order: torch.Tensor | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.split.images, self.split.labels
        n = len(self.split)
        for start in range(0, n, self.batch_size):
            size = min(self.batch_size, n - start)
            if size < self.batch_size and (self.drop_last or size < self.world):
                break
            if order is None:
                x, y = images[start : start + size], labels[start : start + size]
            else:
                idx = order[start : start + size]
                x, y = images.index_select(0, idx), labels.index_select(0, idx)
            crops = sample_crop_flip(size, generator, self.padding) if self.augment else None
            if self.world > 1:  # this rank's share; the augmentation was drawn for the whole batch, as in one process
                mine = torch.arange(self.rank, size, self.world)
                x, y = x.index_select(0, mine), y.index_select(0, mine)
                crops = tuple(c[mine] for c in crops) if crops is not None else None
            x = x.to(self.device, non_blocking=True)
            if crops is not None:
                x = crop_flip(x, *crops, self.padding)
            yield _normalize(x, self._mean, self._std), y.to(self.device, non_blocking=True)

    def __repr__(self) -> str:
        return (
            f"Loader(n={len(self.split)}, batch_size={self.batch_size}, batches={len(self)}, shuffle={self.shuffle}, "
            f"augment={self.augment}, seed={self.seed}, epoch={self._epoch}, device={self.device})"
        )
