"""scikit-learn's handwritten digits: 1,797 images, 8 x 8, one channel, bundled with scikit-learn (no download).

A tiny dataset for tests and smoke runs. Pixel values 0..16 are scaled to 0..255.
"""

from __future__ import annotations

import torch

from cnnzip.data._types import Dataset, Split, channel_stats
from cnnzip.data.split import resolve_size, stratified_mask
from cnnzip.errors import DataError

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """The digits as a Dataset: a stratified, seeded `test_fraction` of the images is the test split."""
    # Imported here: scikit-learn takes a second to import and only this loader needs it.
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    pixels = torch.from_numpy(bunch.images).reshape(-1, 1, 8, 8)
    images = (pixels * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, float):
        raise DataError(f"test_fraction must be a float in (0, 1), got {test_fraction!r}")
    n_test = resolve_size(test_fraction, len(labels), what="test_fraction")
    test_mask = stratified_mask(labels, n_test, seed)
    train = Split(images[~test_mask], labels[~test_mask])
    test = Split(images[test_mask], labels[test_mask])
    mean, std = channel_stats(train.images)
    return Dataset("digits", train, test, tuple(str(d) for d in range(10)), mean, std)
