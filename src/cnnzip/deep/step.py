"""Deep compression as a recipe step (`cnnzip compress`): its settings and its registration."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..methods import Method, register_method

__all__ = ["DeepCompressStep"]


@dataclass(frozen=True)
class DeepCompressStep:
    """Magnitude pruning (the search sets its ratio), k-means weight sharing at these bits, Huffman coding."""

    conv_bits: int = 8
    fc_bits: int = 5

    def __post_init__(self) -> None:
        for name in ("conv_bits", "fc_bits"):
            bits = getattr(self, name)
            if not isinstance(bits, int) or isinstance(bits, bool) or not 1 <= bits <= 8:
                raise ConfigError(f"deep-compress.{name} must be an integer from 1 to 8; got {bits!r}")


# The candidate builder carries the masks into fine-tuning and writes the .cnnz file itself: no `apply`.
register_method(Method("deep-compress", DeepCompressStep, axis="dc", after=("ns",), writes=".cnnz",
                       summary="magnitude pruning (ratio searched), weight sharing, Huffman coding"))
