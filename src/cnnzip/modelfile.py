"""cnnzip's own model file: architecture + weights + how to feed the model, in one file that loads anywhere.

A model file stores data only (a registry spec, the width of every conv, BatchNorm and linear layer, a state dict
of tensors, plain numbers and strings) and loads with `torch.load(weights_only=True)`: no pickled code, so it
loads in a fresh process that never saw the code that pruned it, and loading an untrusted file cannot run code.
Pruned models load by building the original architecture and narrowing its layers to the stored widths. The
file also keeps the model's outputs on a fixed probe input, and loading checks them, so a model that rebuilt
differently (say, the architecture's code changed) is an error rather than a silently different model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .models import RemovedBlock, create_model, load_weights, remove_blocks, removed_blocks
from .models._checkpoint import read_checkpoint
from .train import atomic_save

__all__ = ["ModelMeta", "save_model", "load_model", "load", "load_any", "layer_widths", "apply_widths"]

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
    """Write `model`, pruned or not, and its meta atomically; return the path.

    A model from `cnnzip.models.create_model` reloads by itself; any other model reloads with
    `load_model(path, model=YourNet())`, an unpruned instance of its class.
    """
    spec = getattr(model, "cnnzip_spec", None)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    atomic_save({"format": FORMAT, "version": VERSION, "spec": dict(spec) if spec is not None else None,
                 "widths": layer_widths(model), "removed": removed_blocks(model), "meta": meta.as_dict(),
                 "state_dict": state,
                 "probe": _probe_output(model, meta.input_shape)}, path)
    return Path(path)


def load_model(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, ModelMeta]:
    """Rebuild a model saved by `save_model`, in eval mode on the CPU.

    `model` is needed only for architectures outside the zoo: a fresh, unpruned instance of the saved class.
    """
    blob = read_checkpoint(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise ModelError(f"{path} is not a cnnzip model file; for raw weights pass the model name "
                         "(e.g. --model resnet56) so they can be loaded into it")
    if blob.get("version", 0) > VERSION:
        raise ModelError(f"{path} was written by a newer cnnzip (format version {blob['version']}); upgrade cnnzip")
    model = rebuild(blob["spec"], blob.get("widths", {}), model, path, blob.get("removed", ()))
    load_weights(model, blob["state_dict"])
    meta = ModelMeta.from_dict(blob["meta"])
    if blob.get("probe") is not None:
        check_probe(model, meta.input_shape, blob["probe"], path)
    return model.eval(), meta


def rebuild(spec: dict | None, widths: dict[str, list[int]], model: nn.Module | None,
            path: str | Path, removed: Sequence[str] = ()) -> nn.Module:
    """The saved architecture, weights still to load: the zoo model from `spec` (or the caller's fresh `model`
    for architectures outside the zoo), without the blocks layer fusion removed, narrowed to the saved widths."""
    if model is None:
        if spec is None:
            raise ModelError(f"{path} holds a model from outside the zoo: load it with load(path, "
                             "model=YourNet()), passing a fresh instance of its class")
        spec = dict(spec)
        model = create_model(spec.pop("name"), **spec)
    try:
        remove_blocks(model, [n for n in removed if not isinstance(_submodule(model, n), RemovedBlock)])
    except AttributeError as e:
        raise ModelError(f"{path} removed a block this architecture lacks ({e}); is it the same model class?") from e
    return apply_widths(model, widths)


def _submodule(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


_WIDTH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """The channel counts of every conv ([in, out, groups]), linear ([in, out]) and BatchNorm ([features])."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            widths[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            widths[name] = [m.num_features]
    return widths


def apply_widths(model: nn.Module, widths: dict[str, list[int]]) -> nn.Module:
    """Narrow `model`'s layers in place to `widths` (from `layer_widths` of a pruned copy); weights are left
    uninitialised for a state dict to fill."""
    modules = dict(model.named_modules())
    for name, w in widths.items():
        m = modules.get(name)
        if not isinstance(m, _WIDTH_LAYERS):
            raise ModelError(f"the saved model has a layer {name!r} that this architecture lacks; is it the same "
                             "model class?")
        if layer_widths(m).get("", None) == list(w):
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            m.in_channels, m.out_channels, m.groups = w
            m.weight = nn.Parameter(m.weight.new_empty((w[1], w[0] // w[2], *m.weight.shape[2:])))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(w[1]))
        elif isinstance(m, nn.Linear):
            m.in_features, m.out_features = w
            m.weight = nn.Parameter(m.weight.new_empty((w[1], w[0])))
            if m.bias is not None:
                m.bias = nn.Parameter(m.bias.new_empty(w[1]))
        else:
            m.num_features = w[0]
            for attr in ("weight", "bias"):
                if getattr(m, attr, None) is not None:
                    setattr(m, attr, nn.Parameter(getattr(m, attr).new_empty(w[0])))
            for attr in ("running_mean", "running_var"):
                if getattr(m, attr, None) is not None:
                    setattr(m, attr, getattr(m, attr).new_empty(w[0]))
    return model


@torch.no_grad()
def _probe_output(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The model's outputs on a fixed random input, computed on a CPU fp32 copy so that a model saved from a GPU
    (TF32 convolutions, AMP) records the same numbers a CPU load computes."""
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    return copy.deepcopy(model).cpu().float().eval()(x).detach()


def check_probe(model: nn.Module, input_shape: tuple[int, ...], probe: torch.Tensor, path: str | Path) -> None:
    """Raise if the rebuilt model's probe outputs differ from those recorded at save time."""
    out = _probe_output(model, input_shape)
    if out.shape != probe.shape or not torch.allclose(out, probe, rtol=1e-4, atol=1e-5 * float(probe.abs().max())):
        raise ModelError(f"{path} loaded, but the model's outputs differ from those recorded when it was saved: "
                         "the architecture's code has changed since. Use the cnnzip version that wrote it, or "
                         "the same model class.")


def load(path: str | Path, model: nn.Module | None = None) -> tuple[nn.Module, ModelMeta]:
    """Load what cnnzip saved: a model file (`save_model`) or a compressed file (`save_compressed`).

    `model` is needed only for architectures outside the zoo: a fresh, unpruned instance of the saved class.
    """
    from .deep.fileformat import is_compressed_file, load_compressed

    if is_compressed_file(path):
        return load_compressed(path, model)
    return load_model(path, model)


def load_any(path: str | Path, model_name: str | None = None, num_classes: int = 10,
             meta: ModelMeta | None = None, **model_kwargs: Any) -> tuple[nn.Module, ModelMeta | None]:
    """A cnnzip model file, a compressed file, or raw weights (a state dict or checkpoint) put in `model_name`."""
    from .deep.fileformat import is_compressed_file, load_compressed

    if is_compressed_file(path):
        return load_compressed(path)
    blob = read_checkpoint(path)
    if isinstance(blob, dict) and blob.get("format") == FORMAT:
        return load_model(path)
    if model_name is None:
        raise ModelError(f"{path} holds raw weights, not a cnnzip model file: say which architecture they belong "
                         "to with --model NAME (see `cnnzip models`)")
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    load_weights(model, blob)
    return model.eval(), meta
