"""The checks a compressed file's header passes before anything is allocated from it.

A file's maker can recompute its checksum, so the checksum proves nothing against a crafted file. Every field
the reader uses is checked here against limits derived from the file's own size: the header may expand only so
far, every section must lie inside the payload, a raw tensor must hold exactly its bytes, and a coded layer may
claim only as many weights as its coded bytes can stand for. What fails is a ModelError naming the field.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ModelError

__all__ = ["read_header", "check_header", "MAX_HEADER_EXPANSION", "WEIGHTS_PER_FILE_BYTE"]

MAX_HEADER_EXPANSION = 64  # decompressed header bytes per stored byte (a real header: under 10)
WEIGHTS_PER_FILE_BYTE = 1024  # zero runs of 64 at one bit each stand for 512 weights a byte; twice that is refused
_SMALL = 1 << 20  # weights any file may hold whatever its size (a layer of zeros codes to no bits at all)
RAW_DTYPES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int64": 8, "int32": 4, "int16": 2,
              "int8": 1, "uint8": 1, "bool": 1}


class _Corrupt:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, ok: bool, what: str) -> None:
        if not ok:
            raise ModelError(f"{self.path} is corrupt: {what}")


def read_header(data: bytes, path: Path) -> dict[str, Any]:
    """Decompress and parse the header, refusing one that expands past MAX_HEADER_EXPANSION times its size."""
    check = _Corrupt(path)
    limit = MAX_HEADER_EXPANSION * len(data) + (1 << 16)
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(data, limit)
    except zlib.error as exc:
        raise ModelError(f"{path} is corrupt: its header cannot be decompressed") from exc
    check(not inflater.unconsumed_tail, f"its header expands past {limit:,} bytes")
    check(inflater.eof, "its header is cut short")
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ModelError(f"{path} is corrupt: its header cannot be read ({type(exc).__name__})") from exc
    check(isinstance(header, dict), "its header is not a table of fields")
    return header


def _is_int(v: Any, lo: int = 0, hi: int = 2**62) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _shape(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 8 and all(_is_int(d, 0, 2**40) for d in v)


def check_header(header: Mapping[str, Any], payload: int, path: Path) -> dict[str, tuple[int, ...]]:
    """Check every field the reader uses; return the shape of every tensor the file holds (name -> shape).

    `payload` is the byte count of the file's payload: sections must lie inside it, and the file may hold at
    most WEIGHTS_PER_FILE_BYTE weights per byte (plus a small allowance).
    """
    check = _Corrupt(path)

    def section(v: Any, what: str) -> int:
        check(isinstance(v, list) and len(v) == 2 and all(_is_int(x) for x in v), f"{what} is not a section")
        check(v[0] + v[1] <= payload, f"{what} runs past the end of the file")
        return v[1]

    check(header.get("format") == "cnnzip.deep", "its header does not name the compressed format")
    spec = header.get("spec")
    check(spec is None or (isinstance(spec, dict) and isinstance(spec.get("name"), str)), "its spec")
    widths = header.get("widths")
    check(isinstance(widths, dict) and all(isinstance(w, list) and 1 <= len(w) <= 3 and all(_is_int(x, 1, 2**20)
                                                                                              for x in w)
                                           for w in widths.values()), "its layer widths")
    removed = header.get("removed", [])
    check(isinstance(removed, list) and all(isinstance(n, str) for n in removed), "its removed blocks")
    meta = header.get("meta")
    check(isinstance(meta, dict) and _shape(meta.get("input_shape")) and 1 <= len(meta["input_shape"]) <= 4
          and all(1 <= d <= 4096 for d in meta["input_shape"]), "its input shape")
    channels = meta["input_shape"][0]
    for key in ("mean", "std"):
        check(isinstance(meta.get(key), list) and len(meta[key]) == channels
              and all(isinstance(x, int | float) and math.isfinite(x) for x in meta[key]), f"its {key}")
    check(isinstance(meta.get("classes", []), list) and isinstance(meta.get("notes", {}), dict), "its meta")
    probe = header.get("probe")
    check(isinstance(probe, dict) and _shape(probe.get("shape")) and isinstance(probe.get("values"), list)
          and math.prod(probe["shape"]) == len(probe["values"])
          and all(isinstance(x, int | float) for x in probe["values"]), "its probe outputs")

    shapes: dict[str, tuple[int, ...]] = {}
    layers, raw = header.get("layers"), header.get("raw")
    check(isinstance(layers, list) and isinstance(raw, list), "its list of tensors")
    for entry in layers:
        check(isinstance(entry, dict) and isinstance(entry.get("name"), str) and _shape(entry.get("shape")),
              "a coded layer's name or shape")
        name = entry["name"]
        check(name not in shapes, f"{name} is stored twice")
        check(_is_int(entry.get("bits"), 1, 16) and _is_int(entry.get("gap_bits"), 1, 16)
              and _is_int(entry.get("run"), 0, 64), f"{name}'s bit widths")
        check(entry.get("layout") in ("sparse", "runs"), f"{name}'s layout")
        centroids = section(entry.get("codebook"), f"{name}'s codebook")
        check(centroids % 4 == 0 and centroids // 4 <= 2 ** entry["bits"], f"{name}'s codebook size")
        streams = entry.get("streams")
        wanted = {"index", "gap"} if entry["layout"] == "sparse" else {"index"}
        check(isinstance(streams, dict) and set(streams) == wanted, f"{name}'s streams")
        numel = math.prod(entry["shape"])
        for sname, s in streams.items():
            check(isinstance(s, dict), f"{name}'s {sname} stream")
            section(s.get("lengths"), f"{name}'s {sname} code lengths")
            nbytes = section(s.get("data"), f"{name}'s {sname} stream")
            # Symbols: one per nonzero weight or zero run, plus gap fillers: never twice the weights.
            check(_is_int(s.get("nbits"), 0, 8 * nbytes) and _is_int(s.get("count"), 0, 2 * numel + 2),
                  f"{name}'s {sname} stream length")
        shapes[name] = tuple(entry["shape"])
    for entry in raw:
        check(isinstance(entry, dict) and isinstance(entry.get("name"), str) and _shape(entry.get("shape"))
              and entry.get("dtype") in RAW_DTYPES, "a raw tensor's name, shape or type")
        name = entry["name"]
        check(name not in shapes, f"{name} is stored twice")
        nbytes = section(entry.get("data"), f"{name}'s data")
        check(nbytes == math.prod(entry["shape"]) * RAW_DTYPES[entry["dtype"]], f"{name}'s size")
        shapes[name] = tuple(entry["shape"])
    total = sum(math.prod(shape) for shape in shapes.values())
    check(total <= WEIGHTS_PER_FILE_BYTE * payload + _SMALL,
          f"it claims {total:,} weights, more than its {payload:,} bytes can hold")
    return shapes
