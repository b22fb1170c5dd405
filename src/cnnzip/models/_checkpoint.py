"""Loading weights into a model, with errors that say which tensor does not fit and what to do about it.

`torch.nn.Module.load_state_dict` reports every mismatch at once, mixed with harmless ones (old checkpoints
have no `num_batches_tracked`). Here the first real mismatch is named with both shapes, and the message
suggests the likely cause: a different architecture, `num_classes`, `width` or shortcut type.
"""

from __future__ import annotations

import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelError

__all__ = ["load_weights", "read_checkpoint"]

# Keys under which common training scripts nest the state dict (akamaster and timm use `state_dict`,
# torchvision recipes use `model`, kuangliu/pytorch-cifar uses `net`).
_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
# Prefixes added by wrappers, not by the architecture: DataParallel/DDP and torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_FIX_HINT = (
    "Check that the checkpoint was saved from the same architecture with the same num_classes, width and "
    "shortcut settings (see model.cnnzip_spec), or pass strict=False to load only the tensors that fit."
)

PathOrStateDict = str | os.PathLike[str] | Mapping[str, Any]


def load_weights(model: nn.Module, path_or_state_dict: PathOrStateDict, strict: bool = True,
                 source: str | None = None) -> nn.Module:
    """Load a checkpoint file or state dict into `model` in place and return `model`.

    Accepts plain state dicts and dicts that nest one under `state_dict`, `model`, `model_state_dict` or
    `net`; strips `module.` (DataParallel) and `_orig_mod.` (torch.compile) prefixes. Files are read with
    `weights_only=True`, so a checkpoint cannot run code. `source` names a state dict's file in messages.

    With `strict=True` any missing, unexpected or wrongly shaped tensor raises ModelError naming the first
    one. With `strict=False` the tensors whose name and shape match are loaded, the rest are skipped with a
    warning, and ModelError is raised only if nothing matches.
    """
    if isinstance(path_or_state_dict, Mapping):
        source = source or "the given state dict"
        state = _unwrap(path_or_state_dict, source)
    elif isinstance(path_or_state_dict, (str, os.PathLike)):
        path = Path(path_or_state_dict)
        source = str(path)
        state = _unwrap(read_checkpoint(path), source)
    else:
        raise ModelError(
            f"load_weights expects a file path or a state dict, got {type(path_or_state_dict).__name__}"
        )
    state = _strip_prefixes(state)

    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    mismatched = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    name = getattr(model, "cnnzip_spec", {}).get("name", type(model).__name__)

    if strict and (missing or unexpected or mismatched):
        summary = (
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} with a different shape "
            f"in total)"
        )
        raise ModelError(
            f"checkpoint {source} does not fit model {name!r}: "
            f"{_first_problem(own, state, missing, unexpected, mismatched)} {summary}. {_FIX_HINT}"
        )

    skip = set(mismatched)
    fitting = {k: v for k, v in state.items() if k in own and k not in skip}
    if not strict:
        if not any(not k.endswith("num_batches_tracked") for k in fitting):
            raise ModelError(
                f"no tensor in checkpoint {source} fits model {name!r} "
                f"({_first_problem(own, state, missing, unexpected, mismatched)}). {_FIX_HINT}"
            )
        skipped = missing + unexpected + mismatched
        if skipped:
            warnings.warn(
                f"load_weights(strict=False) into {name!r} skipped {len(skipped)} tensors: "
                f"{len(missing)} missing (kept as initialised), {len(unexpected)} unexpected, "
                f"{len(mismatched)} with a different shape; first: "
                f"{_first_problem(own, state, missing, unexpected, mismatched)}",
                stacklevel=2,
            )
    # Tensors the checkpoint lacks (num_batches_tracked, or anything under strict=False) keep their values.
    complete = {k: fitting.get(k, v) for k, v in own.items()}
    model.load_state_dict(complete, strict=True)
    return model


def read_checkpoint(path: str | Path) -> Any:
    """Read a torch file safely (weights_only), turning every way it can fail into a ModelError with the path."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"no such model file or checkpoint: {path}")
    if not path.is_file():
        raise ModelError(f"checkpoint path {path} is not a file")
    with path.open("rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (PK..) or, before torch 1.6, a pickle (protocol byte 0x80).
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise ModelError(
            f"{path} is not a PyTorch checkpoint (neither a torch.save zip archive nor a legacy pickle)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        if "global" in reason.lower():
            raise ModelError(
                f"{path} was refused: loading it would run code or build Python objects ({reason}), and cnnzip "
                f"reads only tensors and plain data. If you trust the file, re-save its weights from the code "
                f"that made it: torch.save(model.state_dict(), path)."
            ) from exc
        raise ModelError(
            f"cannot read {path} as a PyTorch checkpoint, the file is damaged ({reason})"
        ) from exc
    except (
        Exception
    ) as exc:  # torch.load raises many unrelated types for damaged files; all mean the same here
        raise ModelError(
            f"cannot read {path} as a PyTorch checkpoint, the file may be truncated or damaged "
            f"({type(exc).__name__}{': ' if str(exc) else ''}{exc})"
        ) from exc


def _unpickler_reason(exc: pickle.UnpicklingError) -> str:
    """The one useful sentence in torch's long weights_only error, without its advice to load unsafely."""
    paragraphs = [p.strip() for p in str(exc).split("\n\n") if p.strip()]
    useful = [p for p in paragraphs if not p.startswith(("Weights only load failed", "Check the documentation"))]
    text = (useful or paragraphs or [type(exc).__name__])[0]
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip() or text
    return text.splitlines()[0].strip().split(". ")[0].rstrip(".")


def _unwrap(obj: Any, source: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside a checkpoint object and check that it holds only tensors."""
    if not isinstance(obj, Mapping):
        raise ModelError(f"{source} holds a {type(obj).__name__}, not a state dict")
    for key in _WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(
                f"{source} is not a state dict: entry {key!r} is a {type(value).__name__}, not a tensor "
                f"(a state dict may also be nested under one of the keys {', '.join(_WRAPPER_KEYS)})"
            )
    return {str(k): v for k, v in obj.items()}


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove wrapper prefixes that every key carries (only when all do, so real names stay intact)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                changed = True
    return state


def _first_problem(
    own: Mapping[str, torch.Tensor],
    state: Mapping[str, torch.Tensor],
    missing: list[str],
    unexpected: list[str],
    mismatched: list[str],
) -> str:
    """Describe the first mismatch in the model's own parameter order."""
    missing_set, mismatched_set = set(missing), set(mismatched)
    for key in own:
        if key in missing_set:
            return f"tensor {key!r} {_shape(own[key])} is missing from the checkpoint"
        if key in mismatched_set:
            return (
                f"tensor {key!r} has shape {_shape(state[key])} in the checkpoint but {_shape(own[key])} "
                f"in the model"
            )
    if unexpected:
        key = unexpected[0]
        return f"checkpoint tensor {key!r} {_shape(state[key])} has no counterpart in the model"
    return "no tensor names in common"


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(d) for d in t.shape) + ")"
