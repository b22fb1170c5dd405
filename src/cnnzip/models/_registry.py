"""The model registry: names map to builder functions, filled by explicit imports in `models/__init__.py`.

Builders are registered with `@register_model`; the decorator also stamps `model.cnnzip_spec` on every model
it builds, so a model made by calling the builder directly can be re-created the same way as one made by
`create_model`.
"""

from __future__ import annotations

import difflib
import fnmatch
import functools
import inspect
import re
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from ..errors import ModelError
from ._common import check_positive_int

__all__ = ["register_model", "create_model", "list_models"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

BuilderT = TypeVar("BuilderT", bound=Callable[..., nn.Module])


def register_model(fn: BuilderT) -> BuilderT:
    """Register `fn` under its own name; the returned wrapper records `cnnzip_spec` on each model it builds.

    The builder must take `num_classes` as its first parameter and everything else as keywords.
    """
    name = fn.__name__
    if name in _MODELS:
        raise ModelError(f"a model named {name!r} is already registered")
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> nn.Module:
        bound = signature.bind(*args, **kwargs)
        given = dict(bound.arguments)
        num_classes = given.pop("num_classes", signature.parameters["num_classes"].default)
        model = fn(*args, **kwargs)
        # Only the arguments the caller gave, so `create_model(**spec)` replays the call exactly.
        model.cnnzip_spec = {"name": name, "num_classes": num_classes, **given}
        return model

    _MODELS[name] = build
    return build  # type: ignore[return-value]


def list_models(pattern: str | None = None) -> list[str]:
    """Registered model names, sorted by family then size (`resnet20` before `resnet110`).

    `pattern` is an fnmatch pattern such as `'resnet*'`.
    """
    names = _MODELS if pattern is None else fnmatch.filter(_MODELS, pattern)
    return sorted(names, key=_natural_key)


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the registered model `name` with `num_classes` outputs; `kwargs` go to its builder.

    Unknown names and arguments the builder does not take raise ModelError with the valid choices, rather
    than a TypeError from deep inside a constructor.
    """
    builder = _MODELS.get(name)
    if builder is None:
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ModelError(f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}")
    check_positive_int(num_classes, "num_classes")
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p != "num_classes"]
    for key in kwargs:
        if key not in accepted:
            raise ModelError(
                f"model {name!r} does not take argument {key!r}; it takes: {', '.join(accepted) or 'nothing'}"
            )
    return builder(num_classes=num_classes, **kwargs)


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    """Split digits out so numbers sort by value: resnet20 < resnet110 (tags keep ints and strs apart)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name) if part]
