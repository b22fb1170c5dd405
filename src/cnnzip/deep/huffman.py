"""Canonical Huffman coding of symbol streams, the last stage of Deep Compression (Han et al., ICLR 2016).

Weight-sharing indices and sparse-index gaps are far from uniform, so coding each symbol with about
-log2(p) bits saves 20-30% over fixed-width storage. Codes are canonical (as in DEFLATE): the code of every
symbol follows from the code lengths alone, so a stream stores one length per alphabet symbol, not a tree.

Bits are packed MSB-first within bytes and the last byte is zero-padded; `nbits` says how many are valid.

Everything is vectorised numpy; the only Python loop runs once per *symbol* while decoding (never per bit):

- encoding places each code, left-justified, into the two 32-bit words it can touch and sums the words with
  `np.bincount` (codes never overlap, so the sum is an OR);
- decoding finds the code length at *every* bit position with one table lookup of the 16-bit window starting
  there (codes longer than 16 bits fall back to a binary search on the canonical limits, only at the positions
  that need it), walks the chain of true code starts p -> p + length(p) over a memoryview, and then reads the
  symbols at those starts in one vectorised step.

Code lengths are limited to `MAX_CODE_LENGTH` (24) by package-merge, which is optimal under the limit. Optimal
Huffman codes over alphabets of a few hundred symbols and streams of a few million rarely come near it, and the
limit keeps the decoder's lookup table at 2^16 entries however long the rare long codes are.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from ..errors import ConfigError, ModelError

__all__ = ["MAX_CODE_LENGTH", "HuffmanStream", "code_lengths", "canonical_codes", "encode", "decode",
           "entropy_bits"]

MAX_CODE_LENGTH = 24
_LIMIT = 32  # longest code encode/decode support: a code then spans at most two 32-bit words
_TABLE_BITS = 16  # decoder lookup table of 2^16 entries: fits in L2 cache
_LONG = 254  # table marker: the code here is longer than _TABLE_BITS bits
_INVALID = 255  # table marker: no code starts with these bits (only possible when Kraft's sum is < 1)


def code_lengths(counts: np.ndarray, max_length: int = MAX_CODE_LENGTH) -> np.ndarray:
    """Optimal prefix-code lengths (uint8) for symbol frequencies `counts`, none longer than `max_length`.

    Unused symbols (count 0) get length 0: no code. A single used symbol gets length 1, since a code needs
    at least one bit to be counted. Ties merge the oldest subtrees first, which keeps codes short.
    """
    c = np.asarray(counts)
    if c.ndim != 1 or not (c.dtype.kind in "biuf" or c.size == 0):
        raise ConfigError(f"counts must be a 1-D array of numbers, got shape {c.shape} dtype {c.dtype}")
    if c.size and (not np.all(np.isfinite(c)) or c.min() < 0):
        raise ConfigError("counts must be finite and non-negative")
    if isinstance(max_length, bool) or not isinstance(max_length, int | np.integer) or \
            not 1 <= max_length <= _LIMIT:
        raise ConfigError(f"max_length must be an integer in [1, {_LIMIT}], got {max_length!r}")
    lengths = np.zeros(c.size, dtype=np.uint8)
    used = np.flatnonzero(c > 0)
    if used.size <= 1:
        lengths[used] = 1
        return lengths
    if used.size > 2 ** max_length:
        raise ConfigError(f"{used.size} used symbols cannot all have codes of at most {max_length} bits")
    weights = c[used].astype(np.float64 if c.dtype.kind == "f" else np.int64)
    depth = _huffman_depths(weights.tolist())
    if depth.max() > max_length:
        order = np.argsort(weights, kind="stable")
        depth = np.empty(used.size, dtype=np.int64)
        depth[order] = _package_merge(weights[order], int(max_length))
    lengths[used] = depth
    return lengths


def _huffman_depths(weights: list) -> np.ndarray:
    """Leaf depths of a Huffman tree; node ids break ties, so leaves and older subtrees merge first."""
    n = len(weights)
    heap = [(w, i) for i, w in enumerate(weights)]
    heapq.heapify(heap)
    parent = [0] * (2 * n - 1)
    node = n
    while len(heap) > 1:
        w1, a = heapq.heappop(heap)
        w2, b = heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (w1 + w2, node))
        node += 1
    depth = [0] * (2 * n - 1)
    for i in range(2 * n - 3, -1, -1):  # parents have larger ids than their children
        depth[i] = depth[parent[i]] + 1
    return np.array(depth[:n], dtype=np.int64)


def _package_merge(weights: np.ndarray, max_length: int) -> np.ndarray:
    """Optimal code lengths of at most `max_length` for ascending `weights` (Larmore & Hirschberg's package-merge).

    Each level merges the leaves with pairs ("packages") of the level below; the cheapest 2n - 2 items of the
    last level are the solution, and a symbol's length is the number of levels in which it is picked. A stable
    merge keeps the leaves in weight order, so the picked leaves of a level are always its lightest ones and
    only their number per level must be remembered.
    """
    n = weights.size
    leaf_flags = [np.ones(n, dtype=bool)]
    items = weights
    for _ in range(max_length - 1):
        half = items.size // 2 * 2
        packages = items[0:half:2] + items[1:half:2]
        merged = np.concatenate([weights, packages])
        order = np.argsort(merged, kind="stable")
        items = merged[order]
        leaf_flags.append(order < n)
    lengths = np.zeros(n, dtype=np.int64)
    take = 2 * n - 2
    for is_leaf in reversed(leaf_flags):
        leaves = int(np.count_nonzero(is_leaf[:take]))
        lengths[:leaves] += 1
        take = 2 * (take - leaves)
    return lengths


def _check_lengths(lengths, error: type[Exception]) -> np.ndarray:
    """`lengths` as int64, or `error` if they are not the lengths of a prefix code."""
    arr = np.asarray(lengths)
    if arr.ndim != 1 or not (arr.dtype.kind in "iu" or arr.size == 0):
        raise error(f"code lengths must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > _LIMIT):
        raise error(f"code lengths must lie in [0, {_LIMIT}]")
    used = arr[arr > 0]
    if int(np.sum(np.left_shift(1, _LIMIT - used, dtype=np.int64))) > 1 << _LIMIT:
        raise error("code lengths break Kraft's inequality: no prefix code has them")
    return arr


def _canonical(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(codes, symbols sorted by (length, symbol), first code of each length, sorted index of that code).

    The last two are indexed by length 0.._LIMIT + 1. Codes of length l are first[l], first[l] + 1, ...
    """
    per_length = np.bincount(lengths, minlength=_LIMIT + 2)
    per_length[0] = 0
    first = np.zeros(_LIMIT + 2, dtype=np.int64)
    for length in range(2, _LIMIT + 2):
        first[length] = (first[length - 1] + per_length[length - 1]) << 1
    offset = np.concatenate([[0], np.cumsum(per_length)[:-1]])  # sorted index of each length's first code
    used = np.flatnonzero(lengths > 0)
    sorted_symbols = used[np.lexsort((used, lengths[used]))]
    codes = np.zeros(lengths.size, dtype=np.uint64)
    ls = lengths[sorted_symbols]
    codes[sorted_symbols] = (first[ls] + np.arange(sorted_symbols.size) - offset[ls]).astype(np.uint64)
    return codes, sorted_symbols, first, offset


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Code value of each symbol (uint64, 0 where length is 0), assigned in (length, symbol) order as in DEFLATE."""
    return _canonical(_check_lengths(lengths, ConfigError))[0]


def encode(symbols: np.ndarray, lengths: np.ndarray) -> tuple[bytes, int]:
    """Pack the canonical codes of `symbols` (flattened) MSB-first: (bytes, number of valid bits)."""
    lens = _check_lengths(lengths, ConfigError)
    sym = np.asarray(symbols)
    if not (sym.dtype.kind in "iu" or sym.size == 0):
        raise ConfigError(f"symbols must be integers, got dtype {sym.dtype}")
    sym = sym.reshape(-1).astype(np.int64)
    if sym.size == 0:
        return b"", 0
    if sym.min() < 0 or sym.max() >= lens.size:
        raise ConfigError(f"symbols must lie in [0, {lens.size}), the alphabet of the code lengths")
    code_len = lens[sym]
    if not code_len.all():
        missing = np.unique(sym[code_len == 0])[:5].tolist()
        raise ConfigError(f"symbols {missing} have no code (length 0); count them when building the lengths")
    codes = _canonical(lens)[0][sym]
    end = np.cumsum(code_len)
    nbits = int(end[-1])
    start = end - code_len
    word = start >> 5
    # Left-justify each code at its bit offset inside the 64 bits of words (word, word + 1).
    shift = (64 - (start & 31) - code_len).astype(np.uint64)
    placed = codes << shift
    nwords = (nbits + 31) // 32 + 1
    # Codes are disjoint bit fields, so summing them is OR-ing; every partial sum is an integer < 2^32,
    # exact in float64.
    words = np.bincount(word, weights=(placed >> np.uint64(32)).astype(np.float64), minlength=nwords)
    words += np.bincount(word + 1, weights=(placed & np.uint64(0xFFFFFFFF)).astype(np.float64),
                         minlength=nwords)
    data = words.astype(np.uint64).astype(">u4").tobytes()
    return data[:(nbits + 7) // 8], nbits


def decode(data: bytes, nbits: int, lengths: np.ndarray, count: int) -> np.ndarray:
    """Exactly `count` symbols (int64) from the first `nbits` bits of `data`, which must all be used.

    A stream that runs out, holds bits no code starts with, or has bits left over is a ModelError, as are
    code lengths that no prefix code has: all of these come from a file.
    """
    lens = _check_lengths(lengths, ModelError)
    for name, value in (("nbits", nbits), ("count", count)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ModelError(f"Huffman stream is corrupt: {name} must be a non-negative integer, got {value!r}")
    nbits, count = int(nbits), int(count)
    buf = np.frombuffer(data, dtype=np.uint8)
    if nbits > 8 * buf.size:
        raise ModelError(f"Huffman stream is corrupt or truncated: {nbits} bits claimed, {buf.size} bytes held")
    if count == 0:
        if nbits:
            raise ModelError("Huffman stream is corrupt or truncated: bits left over after the last symbol")
        return np.zeros(0, dtype=np.int64)
    if not lens.any():
        raise ModelError("Huffman stream is corrupt: symbols to decode but no symbol has a code")
    if nbits < count:
        raise ModelError(f"Huffman stream is corrupt or truncated: {count} symbols cannot fit in {nbits} bits")

    _, sorted_symbols, first, offset = _canonical(lens)
    longest = int(lens.max())
    per_length = np.bincount(lens, minlength=_LIMIT + 2)
    # limit[l - 1]: end of the codes of length <= l, left-justified to `longest` bits. The codes of length l are
    # the window values in [limit[l - 2], limit[l - 1]), so a window's code length is a binary search away.
    lj = np.arange(1, longest + 1)
    limit = (first[lj] + per_length[lj]) << (longest - lj)

    nbytes = (nbits + 7) // 8
    padded = np.zeros(nbytes + 8, dtype=np.uint8)
    padded[:nbytes] = buf[:nbytes]
    # Big-endian words starting at every byte (overlapping, read in place).
    w32 = np.ndarray((nbytes,), dtype=">u4", buffer=padded, strides=(1,)).astype(np.uint32)

    # Code length at every bit position from a table over its first `tbits` bits.
    tbits = min(longest, _TABLE_BITS)
    prefixes = np.arange(1 << tbits, dtype=np.int64) << (longest - tbits)
    table = np.searchsorted(limit, prefixes, side="right") + 1
    table = np.where(table <= tbits, table, np.where(prefixes < limit[-1], _LONG, _INVALID)).astype(np.uint8)
    windows = np.empty((nbytes, 8), dtype=np.uint16)
    for bit in range(8):
        windows[:, bit] = (w32 << np.uint32(bit)) >> np.uint32(32 - tbits)
    code_len = table[windows.reshape(-1)[:nbits]]
    if tbits < longest:
        at = np.flatnonzero(code_len == _LONG)
        found = np.searchsorted(limit, _windows(padded, at, longest), side="right") + 1
        code_len[at] = np.where(found <= longest, found, _INVALID)

    # Follow the chain of code starts, one step per symbol; running past nbits is an IndexError.
    starts = np.empty(count, dtype=np.int64)
    step, out = memoryview(code_len), memoryview(starts)
    pos = 0
    try:
        for i in range(count):
            out[i] = pos
            pos += step[pos]
    except IndexError:
        raise ModelError(f"Huffman stream is corrupt or truncated: it ends before symbol {i + 1} of "
                         f"{count}") from None
    got = code_len[starts].astype(np.int64)
    if (got == _INVALID).any():
        raise ModelError("Huffman stream is corrupt or truncated: it holds bits that start no code")
    if pos != nbits:
        raise ModelError(f"Huffman stream is corrupt or truncated: {count} symbols end at bit {pos}, "
                         f"not at bit {nbits}")
    window = _windows(padded, starts, longest)
    return sorted_symbols[offset[got] + (window >> (longest - got)) - first[got]].astype(np.int64)


def _windows(padded: np.ndarray, at: np.ndarray, width: int) -> np.ndarray:
    """The `width` (<= 32) bits starting at each bit position `at`, as int64."""
    w64 = np.ndarray((padded.size - 7,), dtype=">u8", buffer=padded, strides=(1,))[at >> 3].astype(np.uint64)
    return ((w64 << (at & 7).astype(np.uint64)) >> np.uint64(64 - width)).astype(np.int64)


def entropy_bits(counts: np.ndarray) -> float:
    """Shannon bound sum(-c * log2(c / N)) in bits: no symbol-by-symbol code of this stream is shorter."""
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    c = c[c > 0]
    if c.size == 0:
        return 0.0
    return float(np.sum(c * np.log2(c.sum() / c)))


@dataclass(frozen=True, eq=False)
class HuffmanStream:
    """One coded stream: code lengths (one byte per alphabet symbol) and the packed bits.

    `table_bytes` counts the lengths stored as they are, one byte per symbol of the alphabet (unused symbols
    included): for alphabets of at most a few hundred symbols this is simpler than any compact form and at
    most a few hundred bytes per stream.
    """

    lengths: np.ndarray
    data: bytes
    nbits: int
    count: int

    @classmethod
    def from_symbols(cls, symbols: np.ndarray, alphabet_size: int,
                     max_length: int = MAX_CODE_LENGTH) -> HuffmanStream:
        """Code `symbols` (integers in [0, alphabet_size), flattened) with a code optimal for their counts."""
        if isinstance(alphabet_size, bool) or not isinstance(alphabet_size, int | np.integer) or \
                alphabet_size < 1:
            raise ConfigError(f"alphabet_size must be a positive integer, got {alphabet_size!r}")
        sym = np.asarray(symbols)
        if not (sym.dtype.kind in "iu" or sym.size == 0):
            raise ConfigError(f"symbols must be integers, got dtype {sym.dtype}")
        sym = sym.reshape(-1).astype(np.int64)
        if sym.size and (sym.min() < 0 or sym.max() >= alphabet_size):
            raise ConfigError(f"symbols must lie in [0, {alphabet_size}), got [{sym.min()}, {sym.max()}]")
        lengths = code_lengths(np.bincount(sym, minlength=int(alphabet_size)), max_length)
        data, nbits = encode(sym, lengths)
        return cls(lengths=lengths, data=data, nbits=nbits, count=int(sym.size))

    def decode(self) -> np.ndarray:
        """The symbols, int64; ModelError if the stream is corrupt or truncated."""
        return decode(self.data, self.nbits, self.lengths, self.count)

    @property
    def table_bytes(self) -> int:
        """Bytes of the code-length table: one per alphabet symbol."""
        return int(np.asarray(self.lengths).size)

    @property
    def stream_bytes(self) -> int:
        """Bytes of the packed bits."""
        return len(self.data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HuffmanStream):
            return NotImplemented
        return (self.data == other.data and self.nbits == other.nbits and self.count == other.count
                and np.array_equal(self.lengths, other.lengths))

    __hash__ = None  # type: ignore[assignment]
