"""`load_dataset(spec)`: one string names any dataset the toolkit reads (used by the CLI and recipe files)."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cnnzip.data._types import Dataset
from cnnzip.data.cifar import load_cifar
from cnnzip.data.digits import load_digits
from cnnzip.data.folder import ARCHIVE_SUFFIXES, load_image_folder
from cnnzip.errors import DataError

__all__ = ["load_dataset"]

SPEC_FORMS = (
    "'digits' (scikit-learn's 8x8 digits)",
    "'cifar10:<root>' or 'cifar100:<root>' (official python-pickle files under <root>)",
    f"the path of an image-folder directory or {'/'.join(ARCHIVE_SUFFIXES)} archive holding train/<class>/ and test/<class>/",
)


def load_dataset(spec: str, **kwargs: Any) -> Dataset:
    """Load the dataset named by `spec`; `kwargs` go to the matching loader.

    Forms: "digits" (`load_digits`), "cifar10:<root>" / "cifar100:<root>" (`load_cifar`), or a path to an
    image-folder directory or archive (`load_image_folder`).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"dataset spec must be a non-empty string; accepted forms: {'; '.join(SPEC_FORMS)}")
    spec = spec.strip()
    if spec == "digits":
        return _call(load_digits, spec, **kwargs)
    for prefix, num_classes in (("cifar10:", 10), ("cifar100:", 100)):
        if spec.startswith(prefix):
            root = spec[len(prefix) :]
            if not root:
                raise DataError(f"dataset spec {spec!r} lacks the root folder: write {prefix}<root>")
            return _call(load_cifar, spec, root, num_classes=num_classes, **kwargs)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)):
        return _call(load_image_folder, spec, path, **kwargs)
    reason = f"no such file or directory {path}" if not path.exists() else f"{path} is not a directory or archive"
    raise DataError(f"unknown dataset spec {spec!r} ({reason}); accepted forms: {'; '.join(SPEC_FORMS)}")


def _call(loader: Callable[..., Dataset], spec: str, *args: Any, **kwargs: Any) -> Dataset:
    try:
        inspect.signature(loader).bind(*args, **kwargs)
    except TypeError as e:
        raise DataError(
            f"dataset spec {spec!r} is read by {loader.__name__}, which does not accept these options ({e}); "
            f"its options: {', '.join(inspect.signature(loader).parameters)}"
        ) from e
    return loader(*args, **kwargs)
