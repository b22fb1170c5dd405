"""cnnzip's own model file: architecture + weights + how to feed the model, in one file that loads anywhere.

A model file stores data only (a registry spec, a state dict of tensors, plain numbers and strings) and loads with
`torch.load(weights_only=True)`: no pickled code, so it loads in a fresh process that never saw the code that made
it, and loading an untrusted file cannot run code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .models import create_model, load_weights
from .train import atomic_save

__all__ = ["ModelMeta", "save_model", "load_model", "load_any"]

FORMAT = "cnnzip.model"
VERSION = 1
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


def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write `model` (built by `cnnzip.models.create_model`) and its meta atomically; return the path."""
    spec = getattr(model, "cnnzip_spec", None)
    if spec is None:
        raise ModelError("this model was not built by cnnzip.models.create_model, so its architecture cannot be "
                         "recorded; save its state_dict with torch.save and rebuild it with your own code")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": VERSION, "spec": dict(spec), "meta": meta.as_dict(),
                 "state_dict": state}, path)
    return Path(path)


def load_model(path: str | Path) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model saved by `save_model`, in eval mode on the CPU."""
    blob = _read(path)
    if blob.get("format") != FORMAT:
        raise ModelError(f"{path} is not a cnnzip model file; for raw weights pass the model name "
                         "(e.g. --model resnet56) so they can be loaded into it")
    if blob.get("version", 0) > VERSION:
        raise ModelError(f"{path} was written by a newer cnnzip (format version {blob['version']}); upgrade cnnzip")
    spec = dict(blob["spec"])
    model = create_model(spec.pop("name"), **spec)
    load_weights(model, blob["state_dict"])
    return model.eval(), ModelMeta.from_dict(blob["meta"])


def load_any(path: str | Path, model_name: str | None = None, num_classes: int = 10,
             meta: ModelMeta | None = None, **model_kwargs: Any) -> tuple[nn.Module, ModelMeta | None]:
    """A cnnzip model file, or raw weights (a state dict or a checkpoint dict) loaded into `model_name`."""
    blob = _read(path)
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return load_model(path)
    if model_name is None:
        raise ModelError(f"{path} holds raw weights, not a cnnzip model file: say which architecture they belong "
                         "to with --model NAME (see `cnnzip models`)")
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    load_weights(model, blob)
    return model.eval(), meta


def _read(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no such model file: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - every unreadable file gets the same advice
        raise ModelError(f"cannot read {path} as a PyTorch file ({type(exc).__name__}: {exc}); "
                         "is it a model file or checkpoint, and is it complete?") from exc
