"""CIFAR-10 / CIFAR-100 in the official python-pickle layout (the one most PyTorch code reads).

    <root>/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    <root>/cifar-100-python/{train, test, meta}          (fine labels)

Each batch file is a pickled dict: b"data" is a uint8 array N x 3072 (the red plane, then green, then blue,
each 32 x 32 row-major), b"labels" (CIFAR-10) or b"fine_labels" (CIFAR-100) a list of ints. The files are
read with a restricted unpickler that only rebuilds numpy arrays, so a tampered file cannot run code.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import pickle
import shutil
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnzip.data._types import Dataset, Split
from cnnzip.errors import DataError

__all__ = ["load_cifar"]


@dataclass(frozen=True)
class _Layout:
    name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str
    url: str
    md5: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def files(self) -> tuple[str, ...]:
        return (*self.train_files, self.test_file, self.meta_file)


_LAYOUTS = {
    10: _Layout(
        name="cifar10",
        folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_file="test_batch",
        meta_file="batches.meta",
        label_key="labels",
        names_key="label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a",
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
    ),
    100: _Layout(
        name="cifar100",
        folder="cifar-100-python",
        train_files=("train",),
        test_file="test",
        meta_file="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85",
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
    ),
}


def load_cifar(root: str | os.PathLike[str], num_classes: int = 10, download: bool = False) -> Dataset:
    """Load CIFAR-10 or CIFAR-100 from the official python-pickle files.

    `root` is the folder that contains `cifar-10-batches-py/` (or `cifar-100-python/`), or that folder itself.
    With `download=True`, missing files are fetched from the official site (md5-checked) and extracted into root.
    """
    if num_classes not in _LAYOUTS:
        raise DataError(f"load_cifar: num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes!r}")
    layout = _LAYOUTS[num_classes]
    root = Path(root).expanduser()
    folder = _find_folder(root, layout)
    if folder is None and download:
        _download(root, layout)
        folder = _find_folder(root, layout)
    if folder is None:
        raise DataError(_missing_message(root, layout))

    train_parts = [_read_batch(folder / f, layout) for f in layout.train_files]
    train = Split(
        torch.cat([images for images, _ in train_parts]),
        torch.cat([labels for _, labels in train_parts]),
    )
    test = Split(*_read_batch(folder / layout.test_file, layout))
    classes = _read_names(folder / layout.meta_file, layout)
    return Dataset(layout.name, train, test, classes, layout.mean, layout.std)


def _find_folder(root: Path, layout: _Layout) -> Path | None:
    for candidate in (root / layout.folder, root):
        if all((candidate / f).is_file() for f in layout.files):
            return candidate
    return None


def _missing_message(root: Path, layout: _Layout) -> str:
    expected = ", ".join(layout.files)
    if not root.exists():
        where = f"{root} does not exist"
    else:
        folder = root / layout.folder if (root / layout.folder).is_dir() else root
        missing = [f for f in layout.files if not (folder / f).is_file()]
        if folder == root and len(missing) == len(layout.files):
            where = f"{root} holds neither {layout.folder}/ nor its files"
        else:
            where = f"{folder} lacks {', '.join(missing)}"
    return (
        f"no {layout.name} data found: {where}. Expected {root}/{layout.folder}/ (or root itself) to hold "
        f"{expected}. Download {layout.url} and extract it into {root}, or pass download=True"
    )


# Only what a pickled numpy array needs: the official files (Python 2 era) and arrays pickled by numpy 1.x or 2.x.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"): ("numeric", "_frombuffer"),
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in (("numpy", "ndarray"), ("numpy", "dtype")):
            return getattr(np, name)
        if (module, name) == ("_codecs", "encode"):
            return super().find_class(module, name)
        if (module, name) in _SAFE_GLOBALS:
            submodule, attr = _SAFE_GLOBALS[(module, name)]
            for package in ("numpy._core", "numpy.core"):
                try:
                    return getattr(importlib.import_module(f"{package}.{submodule}"), attr)
                except (ImportError, AttributeError):
                    continue
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR file only holds arrays and lists")


def _unpickle(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="latin1").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as e:
        raise DataError(
            f"{path} is not a readable CIFAR pickle file ({e}); replace it with the file from the official archive"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict as in the official CIFAR files")
    # Official files give bytes keys (b"data"); latin1 decoding of Python 2 strings gives str keys. Accept both.
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(path: Path, layout: _Layout) -> tuple[torch.Tensor, torch.Tensor]:
    entry = _unpickle(path)
    for key in ("data", layout.label_key):
        if key not in entry:
            raise DataError(
                f"{path} has no {key!r} entry (found {sorted(entry)}); it is not a {layout.name} batch file"
            )
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.size % 3072:
        raise DataError(
            f"{path}: 'data' must be a uint8 array of N x 3072 pixels, got "
            f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        )
    n = data.size // 3072
    labels = np.asarray(entry[layout.label_key], dtype=np.int64).reshape(-1)
    if labels.shape[0] != n:
        raise DataError(f"{path} holds {n} images but {labels.shape[0]} labels; the file is damaged")
    # Each 3072-row is the R plane, then G, then B, each 32 x 32 row-major: exactly C x H x W.
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(n, 3, 32, 32)))
    return images, torch.from_numpy(labels)


def _read_names(path: Path, layout: _Layout) -> tuple[str, ...]:
    entry = _unpickle(path)
    if layout.names_key not in entry:
        raise DataError(f"{path} has no {layout.names_key!r} entry (found {sorted(entry)}); it is not a {layout.name} meta file")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in entry[layout.names_key])


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(root: Path, layout: _Layout) -> None:
    """Fetch and extract the official archive into root. Untested here: these machines have no internet."""
    archive = root / layout.url.rsplit("/", 1)[1]
    manual = (
        f"download {layout.url} by hand and extract it into {root}, so that {root / layout.folder} "
        f"holds {', '.join(layout.files)}"
    )
    try:
        root.mkdir(parents=True, exist_ok=True)
        if not archive.is_file() or _md5(archive) != layout.md5:
            partial = archive.with_name(archive.name + ".part")
            with urllib.request.urlopen(layout.url, timeout=60) as response, open(partial, "wb") as f:
                shutil.copyfileobj(response, f)
            os.replace(partial, archive)
    except OSError as e:  # URLError, timeouts and disk errors are all OSErrors
        raise DataError(f"could not download {layout.name} ({e}); {manual}") from e
    if _md5(archive) != layout.md5:
        raise DataError(f"{archive} does not match the published md5 {layout.md5}; delete it and {manual}")
    try:
        with tarfile.open(archive, "r:gz") as tf:
            if hasattr(tarfile, "data_filter"):
                tf.extractall(root, filter="data")
            else:  # Python without extraction filters (< 3.10.12): the md5 check above vouches for the archive
                tf.extractall(root)
    except (OSError, tarfile.TarError) as e:
        raise DataError(f"could not extract {archive} ({e}); {manual}") from e
