"""The compressed file a user ships: weight-shared, Huffman-coded layers, read back bit-exact.

Layout (integers little-endian; raw tensors in the machine's byte order, little-endian on x86 and ARM):

    b"CNNZDC" | version: uint16 | header length: uint32 | header (zlib-compressed UTF-8 JSON) | payload |
    SHA-256 of all before

The header holds the architecture (zoo spec and every layer's width, so pruned models rebuild), the input
normalisation, and for every section of the payload its offset and length. Each weight-shared layer is stored
in the cheaper of two layouts, chosen per layer by the actual coded size:

- `sparse` (the paper's): Huffman-coded centroid indices of the nonzero weights, plus Huffman-coded relative
  position gaps of `gap_bits` bits, with filler entries (a reserved index) where a gap overflows;
- `runs`: one Huffman code over centroid indices and zero-run tokens (`runs.py`): the dense layout, without
  Huffman's weakness on a frequent zero symbol. It is often the smaller one at moderate sparsity.

Everything else (BatchNorm, biases, layers left unshared) is stored raw. Loading checks the checksum first, so a
corrupt or truncated file is an error, never a wrong model; the file also records the model's outputs on a
probe input, and loading compares them.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ModelError
from ..io import (
    ModelMeta,
    atomic_write_bytes,
    check_probe,
    layer_widths,
    probe_output,
    rebuild,
    register_format,
)
from ..models import USER_ATTRIBUTE, load_weights, removed_blocks
from .header import check_header, read_header
from .huffman import HuffmanStream, entropy_bits
from .runs import decode_runs, encode_runs
from .sharing import Codebook
from .sparse_index import decode_positions, encode_positions

__all__ = ["MAGIC", "LayerSize", "SizeReport", "save_compressed", "load_compressed", "encode_layer", "decode_layer"]

MAGIC = b"CNNZDC"
VERSION = 1
_PREFIX = struct.Struct("<6sHI")


@dataclass
class LayerSize:
    """Bytes of one layer at each stage of deep compression."""

    name: str
    numel: int
    nonzero: int
    bits: int
    layout: str
    dense_fp32: int  # the original weights
    pruned_sparse: int  # nonzeros as fp32 values + gap_bits relative indices (fillers included)
    shared: int  # indices of `bits` + gaps of `gap_bits`, plus the fp32 codebook, no entropy coding
    huffman: int  # what the file holds for this layer: streams + code tables + codebook
    entropy: float  # Shannon bound of the coded streams, plus the same tables and codebook
    streams: dict[str, dict[str, float]] = field(default_factory=dict)  # per stream: coded and entropy bytes


@dataclass
class SizeReport:
    layers: list[LayerSize]
    raw_bytes: int  # tensors stored uncompressed
    header_bytes: int
    file_bytes: int
    dense_state_dict_bytes: int  # what torch.save of the fp32 state dict takes

    def totals(self) -> dict[str, float]:
        keys = ("dense_fp32", "pruned_sparse", "shared", "huffman", "entropy")
        out = {k: float(sum(getattr(layer, k) for layer in self.layers)) for k in keys}
        out.update(raw=self.raw_bytes, header=self.header_bytes, file=self.file_bytes,
                   dense_state_dict=self.dense_state_dict_bytes,
                   ratio=self.dense_state_dict_bytes / self.file_bytes if self.file_bytes else 0.0)
        return out

    def as_dict(self) -> dict[str, Any]:
        return {"layers": [layer.__dict__ for layer in self.layers], "totals": self.totals()}


RUN_LENGTHS = (4, 16, 64)  # longest zero run of one token, tried per layer


def encode_layer(book: Codebook, numel: int, gap_bits: int
                 ) -> tuple[str, int, dict[str, HuffmanStream], LayerSize]:
    """Huffman-code one layer in the smallest layout: sparse, or zero runs with one of RUN_LENGTHS."""
    k = len(book.centroids)
    positions = book.positions.numpy().astype(np.int64)
    labels = book.labels.numpy().astype(np.int64)

    gaps, filler = encode_positions(positions, gap_bits)
    symbols = np.full(len(gaps), k, dtype=np.int64)  # k = the filler index
    symbols[~filler] = labels
    sparse = {"index": HuffmanStream.from_symbols(symbols, k + 1),
              "gap": HuffmanStream.from_symbols(gaps, 2 ** gap_bits)}

    def coded(streams):
        return sum(s.stream_bytes + s.table_bytes for s in streams.values())

    layout, run, streams, symbol_arrays = "sparse", 0, sparse, {"index": symbols, "gap": gaps}
    for r in RUN_LENGTHS:
        run_symbols = encode_runs(positions, labels, numel, k, r)
        option = {"index": HuffmanStream.from_symbols(run_symbols, k + r)}
        if coded(option) < coded(streams):
            layout, run, streams, symbol_arrays = "runs", r, option, {"index": run_symbols}
    codebook_bytes = 4 * k
    stream_sizes = {}
    for name, s in streams.items():
        counts = np.bincount(symbol_arrays[name], minlength=len(s.lengths))
        stream_sizes[name] = {"coded": float(s.stream_bytes), "entropy": entropy_bits(counts) / 8,
                              "table": float(s.table_bytes)}
    size = LayerSize(
        name="", numel=numel, nonzero=len(positions), bits=book.bits, layout=layout,
        dense_fp32=4 * numel,
        pruned_sparse=int(np.ceil(len(gaps) * (32 + gap_bits) / 8)),
        shared=int(np.ceil(len(gaps) * (book.bits + gap_bits) / 8)) + codebook_bytes,
        huffman=coded(streams) + codebook_bytes,
        entropy=sum(v["entropy"] + v["table"] for v in stream_sizes.values()) + codebook_bytes,
        streams=stream_sizes,
    )
    return layout, run, streams, size


def decode_layer(layout: str, streams: dict[str, HuffmanStream], centroids: torch.Tensor,
                 shape: tuple[int, ...]) -> torch.Tensor:
    """The fp32 weight tensor, exactly as the weight-shared model had it."""
    k = len(centroids)
    numel = int(np.prod(shape)) if shape else 1
    table = np.concatenate([centroids.numpy().astype(np.float32), np.zeros(1, np.float32)])
    if layout == "runs":
        positions, labels = decode_runs(streams["index"].decode(), numel, k)
        out = np.zeros(numel, dtype=np.float32)
        out[positions] = table[labels]
        return torch.from_numpy(out.reshape(shape))
    if layout != "sparse":
        raise ModelError(f"unknown layer layout {layout!r}: the file is corrupt or from a newer cnnzip")
    symbols = streams["index"].decode()
    gaps = streams["gap"].decode()
    filler = symbols == k
    positions = decode_positions(gaps, filler)
    if positions.size and (positions[-1] >= numel or positions[0] < 0):
        raise ModelError("a layer's positions run past its size: the file is corrupt")
    out = np.zeros(numel, dtype=np.float32)
    out[positions] = table[symbols[~filler]]
    return torch.from_numpy(out.reshape(shape))


def save_compressed(path: str | Path, model: nn.Module, books: dict[str, Codebook], meta,
                    *, gap_bits_conv: int = 8, gap_bits_fc: int = 5) -> SizeReport:
    """Write the weight-shared `model` (its `books` from `share_weights`) as a compressed file; return sizes."""
    modules = dict(model.named_modules())
    state = model.state_dict()
    payload = io.BytesIO()

    def section(data: bytes) -> list[int]:
        start = payload.tell()
        payload.write(data)
        return [start, len(data)]

    layers, sizes = [], []
    for name, book in books.items():
        module = modules[name.rsplit(".", 1)[0] if "." in name else ""]
        gap_bits = gap_bits_fc if isinstance(module, nn.Linear) else gap_bits_conv
        shape = tuple(state[name].shape)
        if not torch.equal(book.weights(shape), state[name].detach().cpu().float()):
            raise ModelError(f"{name}: the model's weights are not those of its codebook; pass the codebooks "
                             "returned with this model (codebooks_of(model, books) after centroid fine-tuning)")
        layout, run, streams, size = encode_layer(book, int(np.prod(shape)), gap_bits)
        size.name = name
        sizes.append(size)
        entry = {"name": name, "shape": list(shape), "bits": book.bits, "gap_bits": gap_bits, "layout": layout,
                 "run": run,
                 "codebook": section(book.centroids.numpy().astype("<f4").tobytes()), "streams": {}}
        for sname, s in streams.items():
            entry["streams"][sname] = {"lengths": section(s.lengths.astype(np.uint8).tobytes()),
                                       "data": section(s.data), "nbits": s.nbits, "count": s.count}
        layers.append(entry)

    raw, raw_bytes = [], 0
    for key, tensor in state.items():
        if key in books:
            continue
        t = tensor.detach().cpu().contiguous()
        data = t.numpy().tobytes() if t.numel() else b""
        raw.append({"name": key, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape),
                    "data": section(data)})
        raw_bytes += len(data)

    spec = getattr(model, "cnnzip_spec", None)
    probe = probe_output(model, tuple(meta.input_shape))
    header = {"format": "cnnzip.deep", "version": VERSION, "spec": dict(spec) if spec else None,
              "widths": layer_widths(model), "meta": meta.as_dict(), "layers": layers, "raw": raw,
              "probe": {"shape": list(probe.shape), "values": probe.flatten().tolist()}}
    if removed_blocks(model):  # only fused models carry the key: other files keep their exact size
        header["removed"] = removed_blocks(model)
    if not spec and getattr(model, USER_ATTRIBUTE, None):  # a user's own model: which factory (text) built it
        header["user"] = getattr(model, USER_ATTRIBUTE)
    header_bytes = zlib.compress(json.dumps(header, separators=(",", ":")).encode(), 9)
    blob = _PREFIX.pack(MAGIC, VERSION, len(header_bytes)) + header_bytes + payload.getvalue()
    blob += hashlib.sha256(blob).digest()
    atomic_write_bytes(path, blob)

    buf = io.BytesIO()
    torch.save(state, buf)
    return SizeReport(layers=sizes, raw_bytes=raw_bytes, header_bytes=len(header_bytes) + _PREFIX.size + 32,
                      file_bytes=len(blob), dense_state_dict_bytes=buf.getbuffer().nbytes)


def load_compressed(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild the model from a compressed file: (model in eval mode, ModelMeta).

    `model` is needed only for architectures outside the zoo: a fresh, unpruned instance of the saved class.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such compressed model file: {path}")
    blob = path.read_bytes()
    if len(blob) < _PREFIX.size + 32 or blob[:len(MAGIC)] != MAGIC:
        raise ModelError(f"{path} is not a cnnzip compressed model (it does not start with {MAGIC!r})")
    if hashlib.sha256(blob[:-32]).digest() != blob[-32:]:
        raise ModelError(f"{path} is corrupt or truncated (checksum mismatch); copy or write it again")
    _, version, header_len = _PREFIX.unpack_from(blob)
    if version > VERSION:
        raise ModelError(f"{path} was written by a newer cnnzip (format {version}); upgrade cnnzip")
    if header_len > len(blob) - _PREFIX.size - 32:
        raise ModelError(f"{path} is corrupt: its header runs past the end of the file")
    header = read_header(blob[_PREFIX.size:_PREFIX.size + header_len], path)
    payload = memoryview(blob)[_PREFIX.size + header_len:-32]
    shapes = check_header(header, len(payload), path)
    try:
        return _decode(header, payload, shapes, model, path)
    except ModelError as exc:
        if str(path) in str(exc):
            raise
        raise ModelError(f"{path} is corrupt: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - whatever else a crafted file trips is still a bad file
        raise ModelError(f"{path} is corrupt: {type(exc).__name__} while decoding it") from exc


def _decode(header: dict, payload: memoryview, shapes: dict[str, tuple[int, ...]], model: nn.Module | None,
            path: Path) -> tuple[nn.Module, ModelMeta]:
    """The model from a checked header: the architecture is checked against `shapes` before it is built."""
    def read(sec: list[int]) -> bytes:
        start, length = sec
        return bytes(payload[start:start + length])

    user = header.get("user") if isinstance(header.get("user"), str) else None
    model = rebuild(header["spec"], header["widths"], model, path, header.get("removed", ()), shapes=shapes,
                    user=user)
    state: dict[str, torch.Tensor] = {}
    for entry in header["layers"]:
        streams = {
            name: HuffmanStream(lengths=np.frombuffer(read(s["lengths"]), dtype=np.uint8), data=read(s["data"]),
                                nbits=s["nbits"], count=s["count"])
            for name, s in entry["streams"].items()
        }
        centroids = torch.from_numpy(np.frombuffer(read(entry["codebook"]), dtype="<f4").copy())
        state[entry["name"]] = decode_layer(entry["layout"], streams, centroids, tuple(entry["shape"]))
    for entry in header["raw"]:
        dtype = getattr(torch, entry["dtype"])
        data = read(entry["data"])
        t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
        state[entry["name"]] = t.reshape(entry["shape"]).clone()
    load_weights(model, state)
    meta = ModelMeta.from_dict(header["meta"])
    probe = torch.tensor(header["probe"]["values"]).view(header["probe"]["shape"])
    check_probe(model, tuple(meta.input_shape), probe, path)
    return model.eval(), meta


COMPRESSED_FILE = register_format("compressed model", MAGIC, load_compressed, ".cnnz")
