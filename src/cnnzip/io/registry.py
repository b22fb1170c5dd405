"""One door for every file cnnzip writes: `load(path)` picks the reader by the file's first bytes.

Each format registers itself once, where it is defined (`register_format`): the model file here in `io`, the
deep-compression file in `deep`, and each later format beside its writer. This module imports no method family;
`cnnzip/__init__.py` imports every format's module, so the registry is complete whatever a user imports.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from ..errors import ModelError
from .meta import ModelMeta

__all__ = ["FileFormat", "register_format", "formats", "sniff", "load"]

Reader = Callable[[Path, nn.Module | None], tuple[nn.Module, ModelMeta]]


@dataclass(frozen=True)
class FileFormat:
    """A file format cnnzip reads: its name, the bytes it starts with, and its reader.

    `read(path, model)` returns (model in eval mode, ModelMeta); `model` is a fresh instance of the saved class,
    needed only for architectures outside the zoo.
    """

    name: str
    magic: tuple[bytes, ...]
    read: Reader
    suffix: str = ""


_FORMATS: dict[str, FileFormat] = {}


def register_format(name: str, magic: bytes | tuple[bytes, ...], read: Reader, suffix: str = "") -> FileFormat:
    """Add a format to the registry (again under the same name: replace it)."""
    magic = (magic,) if isinstance(magic, bytes) else tuple(magic)
    if not magic or any(len(m) < 1 for m in magic):
        raise ValueError("a file format needs at least one non-empty magic prefix")
    fmt = FileFormat(name, magic, read, suffix)
    _FORMATS[name] = fmt
    return fmt


def formats() -> list[FileFormat]:
    return list(_FORMATS.values())


def sniff(path: str | Path) -> FileFormat | None:
    """The registered format whose magic the file starts with (the longest match), or None."""
    longest = max((len(m) for f in _FORMATS.values() for m in f.magic), default=0)
    try:
        with open(path, "rb") as f:
            head = f.read(longest)
    except OSError:
        return None
    matches = [(len(m), f) for f in _FORMATS.values() for m in f.magic if head.startswith(m)]
    return max(matches, key=lambda t: t[0])[1] if matches else None


def load(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, ModelMeta]:
    """Load any file cnnzip wrote: (model in eval mode on the CPU, ModelMeta).

    `model` is needed only for architectures outside the zoo: a fresh, unpruned instance of the saved class.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no such model file: {path}")
    if not path.is_file():
        raise ModelError(f"{path} is not a file")
    fmt = sniff(path)
    if fmt is None:
        known = ", ".join(f"{f.name} ({f.suffix})" if f.suffix else f.name for f in _FORMATS.values())
        raise ModelError(f"{path} is not a file cnnzip can read; it reads: {known}")
    return fmt.read(path, model)
