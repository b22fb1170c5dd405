"""Argument checks and channel arithmetic shared by every model family.

Checks raise `ModelError` (never `assert`) so a bad setting from the CLI or a recipe file is reported as a
message the user can act on.
"""

from __future__ import annotations

import math

from ..errors import ModelError


def check_positive_int(value: object, what: str) -> int:
    """Return `value` if it is a positive int (bools are rejected), else raise ModelError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelError(f"{what} must be a positive integer, got {value!r}")
    return value


def check_width(width: object) -> float:
    """Return `width` as a float if it is a finite number > 0, else raise ModelError."""
    if (
        isinstance(width, bool)
        or not isinstance(width, (int, float))
        or not math.isfinite(width)
        or width <= 0
    ):
        raise ModelError(f"width must be a number greater than 0 (1.0 is the published size), got {width!r}")
    return float(width)


def scaled(channels: int, width: float) -> int:
    """`channels * width` rounded half up, at least 1: one rule for every family so widths compare."""
    return max(1, int(channels * width + 0.5))
