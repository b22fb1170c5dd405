"""What cnnzip knows about a layer's channels: how to zero them (the masked model every surgery must equal) and,
for layers Torch-Pruning does not know, how to cut them.

Layers are recognised by what they are (`isinstance`), so a subclass works as its base does: timm's
`BatchNormAct2d` is a BatchNorm with an activation inside, and its channels are a BatchNorm's. A layer of the
user's own (a custom op with per-channel parameters) is declared once with `register_layer`, much as
Torch-Pruning's `register_customized_layer`:

    register_layer(MyScale, zero=lambda m, kind, idxs: m.gamma.data.index_fill_(0, torch.tensor(idxs), 0),
                   pruner=MyScalePruner())   # a torch_pruning BasePruningFunc; omit if Torch-Pruning knows it
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..models.resnet_cifar import PadShortcut

__all__ = ["LayerRule", "register_layer", "rule_for", "cannot_zero", "custom_pruners", "SURGERY_ERRORS"]

Zero = Callable[[nn.Module, str, list[int]], None]
"""zero(module, kind, channels): set to zero what makes `channels` of its outputs (kind 'out') vanish, or
what reads `channels` of its inputs (kind 'in')."""

# What a surgery that went wrong raises (Torch-Pruning's index and shape errors, a forward pass that no longer
# fits). Never KeyboardInterrupt, SystemExit or TimeoutError: a caller's time limit must get through.
SURGERY_ERRORS = (RuntimeError, ValueError, IndexError, KeyError, TypeError, AttributeError, AssertionError,
                  ZeroDivisionError, NotImplementedError)


@dataclass(frozen=True)
class LayerRule:
    """How to zero a layer's channels; `pruner` (a torch_pruning BasePruningFunc) cuts them when Torch-Pruning
    does not know the layer."""

    zero: Zero
    pruner: object | None = None
    in_place: bool = False  # zero only writes into the layer's own tensors: copying them back undoes it


def _zero_conv(module: nn.Module, kind: str, idxs: list[int]) -> None:
    idx = torch.as_tensor(idxs, dtype=torch.long)
    out_dim = 1 if isinstance(module, nn.modules.conv._ConvTransposeNd) else 0
    w = module.weight
    if kind == "out" or module.groups == module.in_channels == module.out_channels:  # depthwise: in = out
        if out_dim == 0:
            w[idx] = 0
        else:  # transposed: weight is (in, out / groups, ...); output channel o is column o % per_out of its group
            per_out = module.out_channels // module.groups
            per_in = module.in_channels // module.groups
            for o in idxs:
                g = o // per_out
                w[g * per_in:(g + 1) * per_in, o % per_out] = 0
        if module.bias is not None:
            module.bias[idx] = 0
    elif module.groups == 1:
        if out_dim == 0:
            w[:, idx] = 0
        else:
            w[idx] = 0
    else:  # grouped: input channel i feeds the outputs of group i // per_in, at column i % per_in
        per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
        for i in idxs:
            g = i // per_in
            if out_dim == 0:
                w[g * per_out:(g + 1) * per_out, i % per_in] = 0
            else:
                w[i] = 0


def _zero_linear(module: nn.Module, kind: str, idxs: list[int]) -> None:
    idx = torch.as_tensor(idxs, dtype=torch.long)
    if kind == "out":
        module.weight[idx] = 0
        if module.bias is not None:
            module.bias[idx] = 0
    else:
        module.weight[:, idx] = 0


def _zero_norm(module: nn.Module, kind: str, idxs: list[int]) -> None:
    idx = torch.as_tensor(idxs, dtype=torch.long)
    module.weight[idx] = 0
    module.bias[idx] = 0


def _zero_pad_shortcut(module: PadShortcut, kind: str, idxs: list[int]) -> None:
    """Output channels `idxs` become zeros; or every output that copies an input channel in `idxs` does."""
    m = module.channel_map()
    if kind == "out":
        m[torch.as_tensor(idxs, dtype=torch.long)] = -1
    else:
        m[torch.isin(m, torch.as_tensor(idxs, dtype=torch.long))] = -1
    module.set_channel_map(m, module.in_planes)


def _pad_shortcut_pruner():
    """The option-A shortcut's two sides narrow independently: Torch-Pruning's tracer would map its padding
    channel to channel (wrong by the padding), so it is a layer of its own with a channel map."""
    import torch_pruning as tp

    class PadShortcutPruner(tp.pruner.function.BasePruningFunc):
        TARGET_MODULES = (PadShortcut,)

        def prune_out_channels(self, layer: PadShortcut, idxs):
            keep = torch.ones(layer.out_planes, dtype=torch.bool)
            keep[torch.as_tensor(list(idxs), dtype=torch.long)] = False
            layer.set_channel_map(layer.channel_map()[keep], layer.in_planes)
            return layer

        def prune_in_channels(self, layer: PadShortcut, idxs):
            gone = torch.zeros(layer.in_planes, dtype=torch.bool)
            gone[torch.as_tensor(list(idxs), dtype=torch.long)] = True
            new_number = torch.cumsum(~gone, 0) - 1  # an input channel's position among those kept
            m = layer.channel_map()
            valid = m >= 0
            m[valid] = torch.where(gone[m[valid]], -1, new_number[m[valid]])
            layer.set_channel_map(m, layer.in_planes - int(gone.sum()))
            return layer

        def get_out_channels(self, layer: PadShortcut) -> int:
            return layer.out_planes

        def get_in_channels(self, layer: PadShortcut) -> int:
            return layer.in_planes

    return PadShortcutPruner()


_RULES: dict[type, LayerRule] = {
    nn.modules.conv._ConvNd: LayerRule(_zero_conv, in_place=True),
    nn.Linear: LayerRule(_zero_linear, in_place=True),
    nn.modules.batchnorm._BatchNorm: LayerRule(_zero_norm, in_place=True),
    PadShortcut: LayerRule(_zero_pad_shortcut, _pad_shortcut_pruner),  # pruner: a factory (Torch-Pruning is lazy)
}
_USER: dict[type, LayerRule] = {}


def register_layer(cls: type, zero: Zero, pruner: object | None = None) -> None:
    """Declare how a layer class of your own loses channels (see the module docstring). Registered classes take
    precedence over the built-in rules, subclasses included."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"register_layer takes an nn.Module class; got {cls!r}")
    if not callable(zero):
        raise ConfigError("register_layer needs zero(module, kind, channels), a function")
    _USER[cls] = LayerRule(zero, pruner)


def rule_for(module: nn.Module) -> LayerRule | None:
    """The rule of the most specific registered or built-in class `module` is an instance of; None if none."""
    for table in (_USER, _RULES):
        for cls in type(module).__mro__:
            if cls in table:
                return table[cls]
    return None


def cannot_zero(module: nn.Module) -> str | None:
    """Why `module`'s channels cannot be verified by zeroing, or None when they can."""
    if type(module) not in _USER and isinstance(module, nn.modules.batchnorm._BatchNorm) and not module.affine:
        return "a BatchNorm without affine parameters (its shift of a zeroed channel cannot be zeroed)"
    if rule_for(module) is None:
        return (f"{type(module).__name__} is a layer cnnzip does not know; declare it with "
                "cnnzip.prune.register_layer")
    return None


def custom_pruners() -> dict[type, object]:
    """The Torch-Pruning pruners of cnnzip's own and registered layers, for `DependencyGraph.build_dependency`."""
    pruners = {cls: rule.pruner() for cls, rule in _RULES.items() if rule.pruner is not None}
    pruners.update({cls: rule.pruner for cls, rule in _USER.items() if rule.pruner is not None})
    return pruners
