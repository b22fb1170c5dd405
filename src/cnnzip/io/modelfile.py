"""cnnzip's own model file: architecture + weights + how to feed the model, in one file that loads anywhere.

A model file stores data only (a registry spec, the width of every conv, BatchNorm and linear layer, a state dict
of tensors, plain numbers and strings) and loads with `torch.load(weights_only=True)`: no pickled code, so it
loads in a fresh process that never saw the code that pruned it, and loading an untrusted file cannot run code.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError
from ..models import (
    USER_ATTRIBUTE,
    create_model,
    factored_layers,
    load_weights,
    read_checkpoint,
    removed_blocks,
)
from .architecture import check_probe, layer_widths, probe_output, rebuild
from .atomic import atomic_save
from .meta import ModelMeta
from .registry import register_format, sniff

__all__ = ["save_model", "load_model", "load_any", "is_model_file", "needs_architecture", "skeleton", "FORMAT"]

FORMAT = "cnnzip.model"
VERSION = 1
def save_model(path: str | Path, model: nn.Module, meta: ModelMeta) -> Path:
    """Write `model`, pruned or not, and its meta atomically; return the path.

    A model from `cnnzip.models.create_model` reloads by itself; any other model reloads with
    `load_model(path, model=YourNet())`, an unpruned instance of its class.
    """
    spec = getattr(model, "cnnzip_spec", None)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {"format": FORMAT, "version": VERSION, "spec": dict(spec) if spec is not None else None,
            "widths": layer_widths(model), "removed": removed_blocks(model), "factored": factored_layers(model),
            "meta": meta.as_dict(), "state_dict": state, "probe": probe_output(model, meta.input_shape)}
    if spec is None and getattr(model, USER_ATTRIBUTE, None):  # a user's own model: which factory built it (text)
        blob["user"] = getattr(model, USER_ATTRIBUTE)
    atomic_save(blob, path)
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
    state = blob.get("state_dict")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} is corrupt: its state dict is not a dict of tensors")
    model = rebuild(blob.get("spec"), blob.get("widths", {}), model, path, blob.get("removed", ()),
                    shapes={k: v.shape for k, v in state.items()}, factored=blob.get("factored", {}),
                    user=blob.get("user") if isinstance(blob.get("user"), str) else None)
    load_weights(model, state)
    meta = ModelMeta.from_dict(blob["meta"])
    if blob.get("probe") is not None:
        check_probe(model, meta.input_shape, blob["probe"], path)
    return model.eval(), meta


# torch.save writes a zip archive; before torch 1.6 it wrote a pickle (protocol byte 0x80).
MODEL_FILE = register_format("model file", (b"PK\x03\x04", b"\x80"), load_model, ".pt")


def skeleton(model: nn.Module) -> nn.Module | None:
    """What loading a file saved from `model` (or a pruned copy) needs beside the file: nothing (None) for a zoo
    model, whose file says how to build it; for the user's own class, a copy of `model` to rebuild from."""
    return None if getattr(model, "cnnzip_spec", None) else copy.deepcopy(model).cpu()


def is_model_file(blob: Any) -> bool:
    """Whether a torch file's contents (from `read_checkpoint`) are a cnnzip model file, not raw weights."""
    return isinstance(blob, dict) and blob.get("format") == FORMAT


def needs_architecture(path: str | Path) -> ModelError:
    return ModelError(f"{path} holds raw weights, not a cnnzip model file: say which architecture they belong to "
                      "with --model NAME (see `cnnzip models`), or --model-py FILE.py:FACTORY for your own")


def load_any(path: str | Path, model_name: str | None = None, num_classes: int = 10,
             meta: ModelMeta | None = None, model: nn.Module | None = None,
             **model_kwargs: Any) -> tuple[nn.Module, ModelMeta | None]:
    """Any file cnnzip wrote (see `registry.load`), or raw weights (a state dict or checkpoint) put in `model_name`
    or in `model`, a fresh instance of the user's own class (which files of models outside the zoo need too)."""
    fmt = sniff(path)
    if fmt is not None and fmt is not MODEL_FILE:
        return fmt.read(Path(path), model)
    blob = read_checkpoint(path)
    if is_model_file(blob):
        return load_model(path, model)
    if model is not None:
        load_weights(model, blob, source=str(path))
        return model.eval(), meta
    if model_name is None:
        raise needs_architecture(path)
    model = create_model(model_name, num_classes=num_classes, **model_kwargs)
    load_weights(model, blob, source=str(path))
    return model.eval(), meta
