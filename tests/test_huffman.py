import itertools
import time

import numpy as np
import pytest

from cnnzip.deep.huffman import (
    MAX_CODE_LENGTH,
    HuffmanStream,
    _package_merge,
    canonical_codes,
    code_lengths,
    decode,
    encode,
    entropy_bits,
)
from cnnzip.deep.sparse_index import decode_positions, encode_positions, filler_count
from cnnzip.errors import ConfigError, ModelError


def _kraft(lengths) -> float:
    lengths = np.asarray(lengths, dtype=np.int64)
    return float(np.sum(2.0 ** -lengths[lengths > 0]))


def _cost(counts, lengths) -> int:
    return int(np.sum(np.asarray(counts, dtype=np.int64) * np.asarray(lengths, dtype=np.int64)))


def _samples(kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """(symbols, alphabet size) for a named distribution."""
    if kind == "uniform":
        return rng.integers(0, 16, n), 16
    if kind == "geometric":
        return np.minimum(rng.geometric(0.2, n) - 1, 255), 256
    if kind == "single":
        return np.full(n, 7), 12
    if kind == "two":
        return np.where(rng.random(n) < 0.9, 3, 250), 257
    if kind == "sparse257":  # alphabet of 257 with most symbols unused
        used = rng.choice(257, 9, replace=False)
        return used[np.minimum(rng.geometric(0.4, n) - 1, 8)], 257
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["uniform", "geometric", "single", "two", "sparse257"])
@pytest.mark.parametrize("n", [0, 1, 2, 7, 1000, 50_000])
def test_round_trip(kind, n):
    rng = np.random.default_rng(n)
    symbols, alphabet = _samples(kind, n, rng)
    stream = HuffmanStream.from_symbols(symbols, alphabet)
    assert stream.count == n
    assert stream.table_bytes == alphabet
    assert stream.stream_bytes == (stream.nbits + 7) // 8
    out = stream.decode()
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, symbols)
    counts = np.bincount(symbols, minlength=alphabet)
    assert stream.nbits == _cost(counts, stream.lengths)
    assert _kraft(stream.lengths) <= 1
    assert np.all((stream.lengths > 0) == (counts > 0)) or (counts > 0).sum() == 0


def test_single_symbol_costs_one_bit_each():
    lengths = code_lengths(np.array([0, 0, 5, 0]))
    np.testing.assert_array_equal(lengths, [0, 0, 1, 0])
    data, nbits = encode(np.full(13, 2), lengths)
    assert (nbits, data) == (13, b"\x00\x00")
    np.testing.assert_array_equal(decode(data, nbits, lengths, 13), np.full(13, 2))
    np.testing.assert_array_equal(code_lengths(np.zeros(5, dtype=np.int64)), np.zeros(5))
    assert code_lengths(np.zeros(0, dtype=np.int64)).size == 0


def test_known_example_lengths_and_codes():
    counts = np.array([5, 9, 12, 13, 16, 45])
    lengths = code_lengths(counts)
    assert lengths.dtype == np.uint8
    np.testing.assert_array_equal(lengths, [4, 4, 3, 3, 3, 1])
    # canonical: 45 -> 0; then 100, 101, 110 for the 3-bit codes; 1110, 1111 for the 4-bit ones
    np.testing.assert_array_equal(canonical_codes(lengths), [0b1110, 0b1111, 0b100, 0b101, 0b110, 0b0])
    data, nbits = encode(np.array([5, 0, 2]), lengths)
    assert nbits == 8 and data == bytes([0b01110100])


def test_deflate_canonical_example():
    # RFC 1951 section 3.2.2: lengths (3, 3, 3, 3, 3, 2, 4, 4) -> 010 011 100 101 110 00 1110 1111
    codes = canonical_codes(np.array([3, 3, 3, 3, 3, 2, 4, 4]))
    np.testing.assert_array_equal(codes, [0b010, 0b011, 0b100, 0b101, 0b110, 0b00, 0b1110, 0b1111])


def _assert_prefix_free(lengths):
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths).astype(np.int64)
    used = np.flatnonzero(lengths)
    for i, j in itertools.permutations(used, 2):
        if lengths[i] <= lengths[j]:
            assert codes[j] >> (lengths[j] - lengths[i]) != codes[i], (i, j)


def test_codes_are_prefix_free_and_satisfy_kraft():
    rng = np.random.default_rng(1)
    for alphabet in [2, 3, 17, 64]:
        counts = rng.geometric(0.1, alphabet) * rng.integers(0, 2, alphabet)
        lengths = code_lengths(counts)
        assert _kraft(lengths) <= 1
        _assert_prefix_free(lengths)
        if (counts > 0).sum() >= 2:
            assert _kraft(lengths) == 1  # Huffman codes are complete


def _fibonacci(n):
    f = [1, 1]
    while len(f) < n:
        f.append(f[-1] + f[-2])
    return np.array(f[:n], dtype=np.int64)


def test_max_length_is_respected_on_fibonacci_counts():
    counts = _fibonacci(40)  # unlimited Huffman: lengths 1 .. 39
    free = code_lengths(counts, max_length=32)
    assert free.max() == 32  # the unlimited code would need 39
    for limit in [6, 12, MAX_CODE_LENGTH]:
        lengths = code_lengths(counts, max_length=limit)
        assert lengths.max() == limit
        assert _kraft(lengths) <= 1
        _assert_prefix_free(lengths)
        assert _cost(counts, lengths) >= _cost(counts, free)
    # lengths above the decoder's 16-bit table round-trip through its slow path
    lengths = code_lengths(counts)
    rng = np.random.default_rng(0)
    symbols = rng.integers(0, 40, 20_000)
    data, nbits = encode(symbols, lengths)
    np.testing.assert_array_equal(decode(data, nbits, lengths, symbols.size), symbols)
    with pytest.raises(ConfigError, match="at most 5 bits"):
        code_lengths(counts, max_length=5)


def test_package_merge_is_optimal():
    rng = np.random.default_rng(2)
    for _ in range(20):
        weights = np.sort(rng.integers(1, 100, 6))
        best = min(_cost(weights, ls) for ls in itertools.product(range(1, 4), repeat=6) if _kraft(ls) <= 1)
        lengths = _package_merge(weights, 3)
        assert lengths.max() <= 3 and _kraft(lengths) <= 1
        assert _cost(weights, lengths) == best
        # without a binding limit it finds the Huffman cost
        assert _cost(weights, _package_merge(weights, 5)) == _cost(weights, code_lengths(weights))


def test_coded_size_between_entropy_and_entropy_plus_one_bit_per_symbol():
    rng = np.random.default_rng(3)
    for n in [10, 1000, 30_000]:
        for kind in ["uniform", "geometric", "two", "sparse257"]:
            symbols, alphabet = _samples(kind, n, rng)
            counts = np.bincount(symbols, minlength=alphabet)
            _, nbits = encode(symbols, code_lengths(counts))
            h = entropy_bits(counts)
            assert h - 1e-6 <= nbits < h + n


def test_coded_size_is_close_to_entropy_for_smooth_distributions():
    rng = np.random.default_rng(4)
    geometric = np.minimum(rng.geometric(0.15, 100_000) - 1, 255)
    # weight-sharing indices of real weights: a discretised Gaussian over 256 bins
    gaussian = np.clip(np.round(rng.normal(128, 30, 200_000)), 0, 255).astype(np.int64)
    for symbols in [geometric, gaussian]:
        counts = np.bincount(symbols, minlength=256)
        _, nbits = encode(symbols, code_lengths(counts))
        assert nbits <= 1.01 * entropy_bits(counts)


def test_entropy_bits():
    assert entropy_bits(np.array([0, 4, 0])) == 0.0
    assert entropy_bits(np.array([], dtype=np.int64)) == 0.0
    assert entropy_bits(np.array([1, 1, 1, 1])) == pytest.approx(8.0)
    assert entropy_bits(np.array([3, 1])) == pytest.approx(-3 * np.log2(0.75) - np.log2(0.25))


def test_corrupt_or_truncated_streams_raise_model_error():
    rng = np.random.default_rng(5)
    symbols = np.minimum(rng.geometric(0.3, 5000) - 1, 20)
    stream = HuffmanStream.from_symbols(symbols, 21)
    data, nbits, lengths, count = stream.data, stream.nbits, stream.lengths, stream.count
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(data[: len(data) // 2], nbits, lengths, count)  # bytes missing
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(data, nbits - 1, lengths, count)  # the last code runs past the end
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(data, nbits, lengths, count + 1)  # more symbols than the stream holds
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(data, nbits, lengths, count - 1)  # bits left over
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(b"", 3, lengths, 0)
    with pytest.raises(ModelError, match="count"):
        decode(data, nbits, lengths, -1)
    bad = lengths.copy()
    bad[np.flatnonzero(bad)[0]] = 1
    bad[np.flatnonzero(bad)[1]] = 1
    bad[np.flatnonzero(bad)[2]] = 1
    with pytest.raises(ModelError, match="Kraft"):
        decode(data, nbits, bad, count)
    with pytest.raises(ModelError, match="no symbol has a code"):
        decode(data, nbits, np.zeros(21, dtype=np.uint8), count)
    # an incomplete code: one symbol, code "0"; a 1 bit starts no code
    one = code_lengths(np.array([0, 3]))
    with pytest.raises(ModelError, match="corrupt or truncated"):
        decode(bytes([0b00100000]), 3, one, 3)
    # flipped bits decode to other symbols or fail cleanly, never with another exception
    for i in range(0, len(data), max(1, len(data) // 50)):
        flipped = bytearray(data)
        flipped[i] ^= 0x5A
        try:
            out = decode(bytes(flipped), nbits, lengths, count)
        except ModelError:
            continue
        assert out.shape == (count,) and out.min() >= 0 and out.max() < 21


def test_bad_arguments_raise_config_error():
    lengths = code_lengths(np.array([3, 0, 5]))
    with pytest.raises(ConfigError, match="no code"):
        encode(np.array([0, 1, 2]), lengths)
    with pytest.raises(ConfigError, match=r"\[0, 3\)"):
        encode(np.array([0, 3]), lengths)
    with pytest.raises(ConfigError, match="integers"):
        encode(np.array([0.0, 2.0]), lengths)
    with pytest.raises(ConfigError, match="non-negative"):
        code_lengths(np.array([1, -1]))
    with pytest.raises(ConfigError, match="max_length"):
        code_lengths(np.array([1, 2]), max_length=0)
    with pytest.raises(ConfigError, match="max_length"):
        code_lengths(np.array([1, 2]), max_length=40)
    with pytest.raises(ConfigError, match="alphabet_size"):
        HuffmanStream.from_symbols(np.array([0]), 0)
    with pytest.raises(ConfigError, match=r"\[0, 4\)"):
        HuffmanStream.from_symbols(np.array([0, 4]), 4)


def test_stream_rebuilt_from_stored_fields_decodes_and_compares_equal():
    rng = np.random.default_rng(6)
    symbols = rng.integers(0, 5, 300)
    stream = HuffmanStream.from_symbols(symbols, 9)
    stored = stream.lengths.astype(np.uint8).tobytes()
    again = HuffmanStream(lengths=np.frombuffer(stored, dtype=np.uint8), data=bytes(stream.data),
                          nbits=stream.nbits, count=stream.count)
    assert again == stream
    np.testing.assert_array_equal(again.decode(), symbols)
    assert again != HuffmanStream.from_symbols(symbols[:-1], 9)


def test_decode_speed():
    rng = np.random.default_rng(7)
    n = 1_000_000
    symbols = np.minimum(rng.geometric(0.05, n) - 1, 255)  # skewed over a 256-symbol alphabet
    t0 = time.perf_counter()
    stream = HuffmanStream.from_symbols(symbols, 256)
    t1 = time.perf_counter()
    out = stream.decode()
    t2 = time.perf_counter()
    print(f"\n{n} symbols, {stream.nbits / n:.2f} bits each: encode {t1 - t0:.3f} s, decode {t2 - t1:.3f} s")
    np.testing.assert_array_equal(out, symbols)
    assert t2 - t1 < 1.0


# sparse_index


def test_sparse_index_docstring_example():
    gaps, filler = encode_positions(np.array([3, 4, 300]), 8)
    np.testing.assert_array_equal(gaps, [3, 0, 255, 39])
    np.testing.assert_array_equal(filler, [False, False, True, False])
    assert filler_count(np.array([3, 4, 300]), 8) == 1
    np.testing.assert_array_equal(decode_positions(gaps, filler), [3, 4, 300])


def test_sparse_index_edges():
    for bits in [1, 3, 5, 8]:
        span = 2 ** bits
        cases = [
            [], [0], [span - 1], [span], [0, 1, 2], [0, span], [0, span + 1], [5 * span + 3],
            [0, 2 * span, 2 * span + 1, 100 * span - 1],
        ]
        for positions in cases:
            pos = np.array(positions, dtype=np.int64)
            gaps, filler = encode_positions(pos, bits, size=100 * span)
            assert gaps.dtype == np.int64 and filler.dtype == bool
            assert gaps.size == filler.size == pos.size + filler_count(pos, bits)
            assert filler.sum() == filler_count(pos, bits)
            assert gaps.size == 0 or (gaps.min() >= 0 and gaps.max() <= span - 1)
            assert np.all(gaps[filler] == span - 1)
            np.testing.assert_array_equal(decode_positions(gaps, filler), pos)
    # one entry right at the largest gap needs no filler, one further needs one
    assert filler_count(np.array([255]), 8) == 0 and filler_count(np.array([256]), 8) == 1
    assert filler_count(np.array([511]), 8) == 1 and filler_count(np.array([512]), 8) == 2


def test_sparse_index_random_round_trips():
    rng = np.random.default_rng(8)
    for size, density in [(10_000, 0.5), (50_000, 0.05), (200_000, 0.001), (1000, 1.0)]:
        mask = rng.random(size) < density
        mask[rng.integers(0, size, 3)] = False
        mask[: rng.integers(0, 3)] = True
        mask[size // 2: size // 2 + 1500] = False  # a run longer than 5 * 2^8
        pos = np.flatnonzero(mask)
        for bits in [5, 8]:
            gaps, filler = encode_positions(pos, bits, size=size)
            np.testing.assert_array_equal(decode_positions(gaps, filler), pos)
            skips = np.diff(pos, prepend=-1) - 1
            assert filler.sum() == filler_count(pos, bits) == np.sum(skips // 2 ** bits)
            # and through the Huffman coder, as the file writer does it
            stream = HuffmanStream.from_symbols(gaps, 2 ** bits)
            np.testing.assert_array_equal(decode_positions(stream.decode(), filler), pos)


def test_sparse_index_bad_input():
    with pytest.raises(ConfigError, match="sorted and unique"):
        encode_positions(np.array([3, 3]), 8)
    with pytest.raises(ConfigError, match="sorted and unique"):
        encode_positions(np.array([4, 3]), 8)
    with pytest.raises(ConfigError, match="sorted and unique"):
        encode_positions(np.array([-1, 3]), 8)
    with pytest.raises(ConfigError, match="gap_bits"):
        encode_positions(np.array([1]), 0)
    with pytest.raises(ConfigError, match="outside"):
        encode_positions(np.array([1, 10]), 8, size=10)
    with pytest.raises(ConfigError, match="integer"):
        filler_count(np.array([1.5]), 8)
    with pytest.raises(ModelError, match="corrupt"):
        decode_positions(np.array([1, 2]), np.array([False]))
    with pytest.raises(ModelError, match="corrupt"):
        decode_positions(np.array([1, -2]), np.array([False, False]))


def test_zero_run_tokens_round_trip_and_docstring_example():
    from cnnzip.deep.runs import decode_runs, encode_runs

    assert encode_runs(np.array([5, 6]), np.array([2, 1]), 9, 4, 4).tolist() == [7, 4, 2, 1, 5]
    rng = np.random.default_rng(0)
    for _ in range(200):
        n, k, run = int(rng.integers(0, 300)), int(rng.integers(1, 20)), int(rng.integers(1, 40))
        positions = np.nonzero(rng.random(n) < rng.random())[0]
        labels = rng.integers(0, k, len(positions))
        symbols = encode_runs(positions, labels, n, k, run)
        assert symbols.max(initial=0) < k + run
        got_positions, got_labels = decode_runs(symbols, n, k)
        assert np.array_equal(got_positions, positions) and np.array_equal(got_labels, labels)
    with pytest.raises(ModelError):
        decode_runs(encode_runs(np.array([1]), np.array([0]), 5, 2, 4), 6, 2)
