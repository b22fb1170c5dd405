"""Rebuilding a saved architecture without pickled code: a zoo spec, every layer's width, the removed blocks.

A saved file stores data only. A pruned model reloads by building the original architecture (from the zoo, or
the caller's fresh instance of its own class), replacing the blocks that block removal took out, and narrowing
every conv, linear and BatchNorm to its saved width. The file also records the model's outputs on a fixed probe
input, and loading compares them, so an architecture whose code changed is an error, not a different model.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from ..models import FactoredConv2d, FactoredLinear, RemovedBlock, create_model, factor_layers, remove_blocks
from ..models.resnet_cifar import PadShortcut

__all__ = ["layer_widths", "apply_widths", "rebuild", "probe_output", "check_probe"]

FACTORED = (FactoredConv2d, FactoredLinear)
_WIDTH_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm, PadShortcut)


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """The channel counts of every conv ([in, out, groups]), linear ([in, out]), BatchNorm ([features]) and
    pruned zero-padding shortcut ([in, out])."""
    widths = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            widths[name] = [m.in_channels, m.out_channels, m.groups]
        elif isinstance(m, nn.Linear):
            widths[name] = [m.in_features, m.out_features]
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            widths[name] = [m.num_features]
        elif isinstance(m, PadShortcut) and m.index is not None:
            widths[name] = [m.in_planes, m.out_planes]
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
        if isinstance(m, PadShortcut):
            m.set_channel_map(torch.full((w[1],), -1), w[0])  # the map itself comes with the weights
        elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
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


def rebuild(spec: dict | None, widths: dict[str, list[int]], model: nn.Module | None,
            path: str | Path, removed: Sequence[str] = (),
            shapes: Mapping[str, Sequence[int]] | None = None,
            factored: Mapping[str, Sequence[int]] | None = None, user: str | None = None) -> nn.Module:
    """The saved architecture, weights still to load: the zoo model from `spec` (or the caller's fresh `model`
    for architectures outside the zoo), without the removed blocks, its `factored` layers (name -> ranks)
    replaced by low-rank factors, narrowed to the saved widths.

    With `shapes` (the tensors the file holds, name -> shape), the architecture is built on the meta device,
    which allocates nothing, and must have exactly those tensors; only then is memory taken, for the narrowed
    tensors alone. A file whose header asks for more than its own tensors justify is refused first. `user` names
    the factory (`--model-py`) that built a model from outside the zoo, for the error that asks for it: it is
    text, never imported.
    """
    factored = dict(factored or {})
    if shapes is None:
        return _build(spec, widths, model, path, removed, factored, user)
    with torch.device("meta"):
        skeleton = _build(spec, widths, copy.deepcopy(model).to("meta") if model is not None else None, path,
                          removed, factored, user)
    built = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    held = {k: tuple(v) for k, v in shapes.items()}
    wrong = sorted(k for k in built.keys() | held.keys()
                   if built.get(k) != held.get(k) and not k.endswith("num_batches_tracked"))
    if wrong:
        raise ModelError(f"{path} is corrupt: its tensors do not fit the architecture it describes (first: "
                         f"{wrong[0]} is {held.get(wrong[0])} in the file, {built.get(wrong[0])} in the "
                         "architecture)")
    if any(m._non_persistent_buffers_set for m in skeleton.modules()):
        return _build(spec, widths, model, path, removed, factored, user)  # buffers no file holds: build them for real
    real = skeleton.to_empty(device="cpu")  # every tensor comes from the file
    for name, buf in real.named_buffers():
        if name.endswith("num_batches_tracked"):
            buf.zero_()
    return real


def _build(spec: dict | None, widths: dict[str, list[int]], model: nn.Module | None, path: str | Path,
           removed: Sequence[str], factored: Mapping[str, Sequence[int]], user: str | None = None) -> nn.Module:
    if model is None:
        if spec is None and user:
            raise ModelError(f"{path} holds a model that your own code built ({user}): pass --model-py "
                             f"PATH/{user} (the same factory) on the command line, or load(path, model=YourNet()) "
                             "in Python; cnnzip never imports code that a file names")
        if spec is None:
            raise ModelError(f"{path} holds a model from outside the zoo: pass --model-py FILE.py:FACTORY on the "
                             "command line, or load(path, model=YourNet()) in Python, with a fresh instance of its "
                             "class")
        try:
            spec = dict(spec)
            model = create_model(spec.pop("name"), **spec)
        except (TypeError, ValueError, KeyError) as exc:
            raise ModelError(f"{path} describes an architecture cnnzip cannot build ({exc})") from exc
    try:
        remove_blocks(model, [n for n in removed if not isinstance(model.get_submodule(n), RemovedBlock)])
    except AttributeError as e:
        raise ModelError(f"{path} removed a block this architecture lacks ({e}); is it the same model class?") from e
    try:
        factor_layers(model, {n: list(r) for n, r in factored.items() if not isinstance(model.get_submodule(n),
                                                                                         FACTORED)})
    except (AttributeError, TypeError, ValueError) as e:
        raise ModelError(f"{path} factored a layer this architecture lacks or cannot factor ({e}); is it the same "
                         "model class?") from e
    return apply_widths(model, widths)


@torch.no_grad()
def probe_output(model: nn.Module, input_shape: tuple[int, ...]) -> torch.Tensor:
    """The model's outputs on a fixed random input, computed on a CPU fp32 copy so that a model saved from a GPU
    (TF32 convolutions, AMP) records the same numbers a CPU load computes."""
    x = torch.randn((2, *input_shape), generator=torch.Generator().manual_seed(0))
    return copy.deepcopy(model).cpu().float().eval()(x).detach()


def check_probe(model: nn.Module, input_shape: tuple[int, ...], probe: torch.Tensor, path: str | Path) -> None:
    """Raise if the rebuilt model's probe outputs differ from those recorded at save time."""
    out = probe_output(model, input_shape)
    if out.shape != probe.shape or not torch.allclose(out, probe, rtol=1e-4, atol=1e-5 * float(probe.abs().max())):
        raise ModelError(f"{path} loaded, but the model's outputs differ from those recorded when it was saved: "
                         "the architecture's code has changed since. Use the cnnzip version that wrote it, or "
                         "the same model class.")
