"""One place where every method family says what it is to recipes and to the search: `register_method`.

A family (prune, deep, lowrank, quantize, and any new one) registers a `Method` when its package is imported: the
name a recipe gives it, its settings (a frozen dataclass that checks itself), the search axis whose ratio sets its
strength (None: it has none), after which axes it may run, the file a recipe ships when it comes last, and, for a
searched step with no special needs, `apply(model, ratio, context)`. `cnnzip compress`, the search's candidate
builder and the CLI read this registry; a new family registers itself and touches none of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Method", "METHODS", "register_method", "by_axis", "orders"]


@dataclass(frozen=True)
class Method:
    """- `name`: the recipe's step name; `settings`: its settings class (all fields defaulted).
    - `axis`: the key of the search axis its strength is (a ratio in [0, 1)), or None.
    - `after`: the axes of steps it may follow in a searched pair (its own axis alone is always searchable).
    - `float_weights`: it changes float weights, so it cannot follow a step that writes a quantized file.
    - `writes`: the suffix of the file a recipe ships when this step comes last.
    - `apply(model, ratio, context)`: a new model with the step applied at `ratio` (context: `example`, an input
      batch of one, and `skip`, layer patterns to leave alone). None for steps the candidate builder handles
      itself (channel pruning caches its analysis, deep compression carries masks and a file of its own).
    """

    name: str
    settings: type
    axis: str | None
    summary: str
    writes: str = ".pt"
    after: tuple[str, ...] = ()
    float_weights: bool = True
    apply: Callable[[nn.Module, float, Any], nn.Module] | None = None


METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    if method.name in METHODS and METHODS[method.name] != method:
        raise ValueError(f"a method named {method.name!r} is registered already")
    if method.axis is not None and any(m.axis == method.axis and m.name != method.name for m in METHODS.values()):
        raise ValueError(f"the search axis {method.axis!r} belongs to another method")
    METHODS[method.name] = method
    return method


def by_axis(axis: str) -> Method:
    for method in METHODS.values():
        if method.axis == axis:
            return method
    raise KeyError(axis)


def orders() -> tuple[str, ...]:
    """Every order the search can run: each axis alone, and each declared pair ('first-second')."""
    axes = [m.axis for m in METHODS.values() if m.axis is not None]
    pairs = [f"{a}-{m.axis}" for m in METHODS.values() if m.axis is not None for a in m.after if a in axes]
    return tuple(pairs + axes)
