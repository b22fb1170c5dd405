"""int8 quantization as a recipe step (`cnnzip compress`): its settings and its registration."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ConfigError
from ..methods import Method, register_method

__all__ = ["QuantizeStep"]


@dataclass(frozen=True)
class QuantizeStep:
    """int8 post-training quantization in ONNX Runtime's QDQ format, calibrated on training images."""

    calibration_images: int = 512

    def __post_init__(self) -> None:
        if not isinstance(self.calibration_images, int) or isinstance(self.calibration_images, bool) \
                or self.calibration_images < 1:
            raise ConfigError(f"quantize.calibration_images must be a positive integer; got "
                              f"{self.calibration_images!r}")


# No strength to search; what it writes is a quantized file, so steps that change float weights cannot follow.
register_method(Method("quantize", QuantizeStep, axis=None, float_weights=False, writes=".int8.onnx",
                       summary="int8 in ONNX Runtime (no strength)"))
