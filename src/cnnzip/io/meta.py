"""What a user needs besides the weights, stored in every file cnnzip writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["ModelMeta", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelMeta:
    """What a user needs besides the weights: input normalisation, input shape, class names, provenance."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_shape: tuple[int, ...] = (3, 32, 32)
    classes: tuple[str, ...] = ()
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "input_shape": list(self.input_shape),
                "classes": list(self.classes), "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        return cls(mean=tuple(d["mean"]), std=tuple(d["std"]), input_shape=tuple(d["input_shape"]),
                   classes=tuple(d.get("classes", ())), notes=dict(d.get("notes", {})))
