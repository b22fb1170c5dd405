"""Deep Compression's relative sparse index: each kept weight stores the gap since the previous one, in few bits.

Convention. Entries are the kept positions (flat indices), in increasing order. An entry's gap is the number of
positions skipped since the previous entry, `position - previous - 1`, the first entry counting from -1 (so
its gap is its position). Gaps are stored in `gap_bits` bits, 0 .. 2^gap_bits - 1, so one entry can follow
the previous at a distance of up to 2^gap_bits (as in the paper's Figure 2: 3 bits, distances up to 8). A
longer run of skipped positions is bridged by *filler* entries with the largest gap, 2^gap_bits - 1; a filler
stands on a position whose weight is zero and carries a reserved value (the paper's padding zero). A run of
z skipped positions therefore needs z // 2^gap_bits fillers, and the real entry's gap is z % 2^gap_bits.

Worked example, positions [3, 4, 300] with gap_bits=8 (gaps of 0..255, distances up to 256):

    position 3:   3 skipped (0, 1, 2)                   -> gap 3
    position 4:   0 skipped                             -> gap 0
    position 300: 295 skipped: one filler at 4 + 256    -> gap 255 (filler, position 260)
                  then 39 skipped (261 .. 299)          -> gap 39

    gaps = [3, 0, 255, 39], is_filler = [False, False, True, False]

The value stream runs alongside the gaps: a filler symbol where `is_filler`, the weight's index elsewhere,

    values = np.full(gaps.size, FILLER); values[~is_filler] = indices

and each stream is Huffman-coded on its own.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, ModelError

__all__ = ["encode_positions", "decode_positions", "filler_count"]


def _skips(positions: np.ndarray, gap_bits: int, size: int | None) -> np.ndarray:
    """Positions skipped before each entry, checking the arguments on the way."""
    if isinstance(gap_bits, bool) or not isinstance(gap_bits, int | np.integer) or not 1 <= gap_bits <= 32:
        raise ConfigError(f"gap_bits must be an integer in [1, 32], got {gap_bits!r}")
    pos = np.asarray(positions)
    if pos.ndim != 1 or not (pos.dtype.kind in "iu" or pos.size == 0):
        raise ConfigError(f"positions must be a 1-D integer array, got shape {pos.shape} dtype {pos.dtype}")
    pos = pos.astype(np.int64)
    skips = np.diff(pos, prepend=-1) - 1
    if pos.size and (pos[0] < 0 or skips.min() < 0):
        raise ConfigError("positions must be non-negative, sorted and unique")
    if size is not None and pos.size and pos[-1] >= size:
        raise ConfigError(f"position {int(pos[-1])} is outside a tensor of {size} elements")
    return skips


def encode_positions(positions: np.ndarray, gap_bits: int,
                     size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(gaps int64 in [0, 2^gap_bits - 1], is_filler bool) for sorted unique flat `positions`.

    Fillers come right before the entry whose run they bridge. `size`, when given, is the number of elements
    of the tensor, checked against the last position.
    """
    skips = _skips(positions, gap_bits, size)
    span = 1 << int(gap_bits)
    fillers = skips // span
    real = np.arange(skips.size) + np.cumsum(fillers)  # where each real entry lands among all entries
    total = skips.size + int(fillers.sum())
    gaps = np.full(total, span - 1, dtype=np.int64)
    gaps[real] = skips % span
    is_filler = np.ones(total, dtype=bool)
    is_filler[real] = False
    return gaps, is_filler


def decode_positions(gaps: np.ndarray, is_filler: np.ndarray) -> np.ndarray:
    """The flat positions (int64) of the real entries: the inverse of `encode_positions`.

    Negative gaps or arrays of different lengths mean a corrupt stream: ModelError.
    """
    g = np.asarray(gaps)
    f = np.asarray(is_filler, dtype=bool)
    if g.ndim != 1 or f.shape != g.shape or not (g.dtype.kind in "iu" or g.size == 0):
        raise ModelError(f"sparse index is corrupt: {g.shape} gaps (dtype {g.dtype}) but {f.shape} filler flags")
    g = g.astype(np.int64)
    if g.size and g.min() < 0:
        raise ModelError("sparse index is corrupt: negative gap")
    return (np.cumsum(g + 1) - 1)[~f]


def filler_count(positions: np.ndarray, gap_bits: int) -> int:
    """Number of filler entries `encode_positions` inserts: the sum of skipped // 2^gap_bits over the runs."""
    return int((_skips(positions, gap_bits, None) >> int(gap_bits)).sum())
