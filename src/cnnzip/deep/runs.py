"""Zero-run tokens: the dense layout of a sparse layer, coded so that Huffman stays close to the entropy bound.

Huffman spends at least one bit on every symbol, so a stream where zero has probability 0.8 costs well above its
entropy if each zero is a symbol. Here a run of z zeros becomes a few run tokens instead: z = q * R + r is
written as q tokens RUN(R) and, if r > 0, one token RUN(r). Nonzero weights are their centroid index
(0..k-1); RUN(j) is symbol k + j - 1. No frequent symbol remains, and one Huffman code covers both.

Example, k = 4 clusters, R = 4: weights [0 0 0 0 0 c2 c1 0 0] -> tokens [RUN4 RUN1 2 1 RUN2]
-> symbols [7 4 2 1 5].
"""

from __future__ import annotations

import numpy as np

from ..errors import ModelError

__all__ = ["encode_runs", "decode_runs"]


def _run_tokens(z: np.ndarray, k: int, run: int) -> tuple[np.ndarray, np.ndarray]:
    """Token counts per run length and the flat token list, in order, for an array of run lengths."""
    full, rest = z // run, z % run
    counts = full + (rest > 0)
    owner = np.repeat(np.arange(len(z)), counts)
    first = np.cumsum(counts) - counts
    offset = np.arange(len(owner)) - first[owner]
    lengths = np.where(offset < full[owner], run, rest[owner])
    return counts, k + lengths - 1


def encode_runs(positions: np.ndarray, labels: np.ndarray, numel: int, k: int, run: int) -> np.ndarray:
    """Symbols for a layer of `numel` weights whose nonzeros sit at sorted `positions` with centroid `labels`."""
    positions = np.asarray(positions, dtype=np.int64)
    gaps = np.diff(np.concatenate([[-1], positions])) - 1  # zeros before each nonzero
    trailing = numel - (positions[-1] + 1 if len(positions) else 0)
    zs = np.concatenate([gaps, [trailing]])
    counts, run_symbols = _run_tokens(zs, k, run)
    # Each nonzero i takes counts[i] run tokens followed by its index; the trailing run closes the stream.
    slots = counts + np.concatenate([np.ones(len(positions), dtype=np.int64), [0]])
    out = np.empty(int(slots.sum()), dtype=np.int64)
    starts = np.cumsum(slots) - slots
    is_index = np.zeros(len(out), dtype=bool)
    is_index[(starts + counts)[:-1]] = True
    out[is_index] = labels
    out[~is_index] = run_symbols
    return out


def decode_runs(symbols: np.ndarray, numel: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions, labels) of the nonzero weights; raises if the runs do not add up to `numel`."""
    symbols = np.asarray(symbols, dtype=np.int64)
    is_run = symbols >= k
    zeros = np.where(is_run, symbols - k + 1, 0)
    consumed = np.cumsum(zeros + ~is_run) - 1  # the position of the last weight each token covers
    if len(symbols) and consumed[-1] != numel - 1 or (not len(symbols) and numel):
        raise ModelError("a layer's zero runs do not add up to its size: the file is corrupt")
    return consumed[~is_run], symbols[~is_run]
