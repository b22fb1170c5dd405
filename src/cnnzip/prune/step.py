"""Structured channel pruning as a recipe step (`cnnzip compress`): its settings and its registration."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..methods import Method, register_method
from .importance import IMPORTANCE

__all__ = ["PruneStep"]


@dataclass(frozen=True)
class PruneStep:
    """Which channels go (`method`: an importance, or pca), and how the widths are shaped; the search sets the
    ratio (for pca, the variance kept)."""

    method: str = "l1"
    round_to: int = 1
    inner_only: bool = False

    def __post_init__(self) -> None:
        if self.method != "pca" and self.method not in IMPORTANCE:
            raise ConfigError(f"prune.method must be pca or one of {', '.join(IMPORTANCE)}; got {self.method!r}")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise ConfigError(f"prune.round_to must be an integer >= 1; got {self.round_to!r}")
        if not isinstance(self.inner_only, bool):
            raise ConfigError(f"prune.inner_only is true or false; got {self.inner_only!r}")


# The search's candidate builder prunes channels itself (it caches the verified channel analysis): no `apply`.
register_method(Method("prune", PruneStep, axis="ns", after=("dc",), writes=".pt",
                       summary="structured channel pruning (ratio searched)"))
