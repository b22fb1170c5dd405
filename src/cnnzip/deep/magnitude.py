"""Deep compression, step 1: magnitude pruning of single weights, with masks that stay fixed while fine-tuning.

Only conv and linear weights are pruned (as in the paper): BatchNorm parameters and biases are few and stay dense.
The mask is kept by a training hook: pruned weights get no gradient and are re-zeroed after every step, so
momentum and weight decay cannot revive them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, layer_patterns
from ..train import TrainHook

__all__ = ["MagnitudePruning", "MaskHook", "prunable_weights", "magnitude_masks", "prune_magnitude",
           "apply_masks", "iterative_prune", "sparsity"]


@dataclass(frozen=True)
class MagnitudePruning:
    """How many weights to zero. Pure data.

    - `ratio`: fraction of the prunable weights to zero; with `scope='global'` one threshold for all layers,
      with `scope='layer'` the same fraction in each layer.
    - `std_multiplier`: the paper's rule instead of a ratio: zero |w| < k * std(w) in each layer.
    - `skip`: parameter-name regexes left dense (e.g. the first conv, which is small and sensitive).
    """

    ratio: float | None = None
    std_multiplier: float | None = None
    scope: str = "global"
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.ratio is None) == (self.std_multiplier is None):
            raise ConfigError("give exactly one of ratio and std_multiplier")
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio is the fraction of weights to zero, in [0, 1); got {self.ratio}")
        if self.std_multiplier is not None and self.std_multiplier < 0:
            raise ConfigError(f"std_multiplier must be >= 0; got {self.std_multiplier}")
        if self.scope not in ("global", "layer"):
            raise ConfigError(f"scope must be global or layer; got {self.scope!r}")
        object.__setattr__(self, "skip", tuple(self.skip))
        layer_patterns(self.skip, "--skip")


def prunable_weights(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The conv and linear weight tensors, by parameter name (`layer1.0.conv1.weight`)."""
    patterns = layer_patterns(skip, "--skip")
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Linear)):
            pname = f"{name}.weight" if name else "weight"
            if not any(p.fullmatch(pname) or p.fullmatch(name) for p in patterns):
                out[pname] = module.weight
    return out


def magnitude_masks(model: nn.Module, config: MagnitudePruning) -> dict[str, torch.Tensor]:
    """Boolean masks (True = keep) for every prunable weight."""
    weights = {k: w.detach() for k, w in prunable_weights(model, config.skip).items()}
    if not weights:
        raise ConfigError("the model has no conv or linear weight to prune (or all are skipped)")
    if config.std_multiplier is not None:
        return {k: w.abs() >= config.std_multiplier * w.float().std() for k, w in weights.items()}
    if config.scope == "layer":
        return {k: _keep_largest(w.abs().flatten(), config.ratio).view_as(w) for k, w in weights.items()}
    flat = torch.cat([w.abs().flatten() for w in weights.values()])
    keep = _keep_largest(flat, config.ratio)
    masks, start = {}, 0
    for k, w in weights.items():
        masks[k] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


def _keep_largest(values: torch.Tensor, ratio: float) -> torch.Tensor:
    """Mask keeping all but the `ratio` smallest values (exact count; ties broken by position)."""
    n_drop = int(round(ratio * values.numel()))
    keep = torch.ones_like(values, dtype=torch.bool)
    if n_drop > 0:
        keep[torch.argsort(values, stable=True)[:n_drop]] = False
    return keep


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Zero the masked-out weights of `model` in place."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].device, params[name].dtype))
    return model


def prune_magnitude(model: nn.Module, config: MagnitudePruning) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A pruned copy of `model` and its masks; the caller's model is not changed."""
    pruned = copy.deepcopy(model)
    masks = magnitude_masks(pruned, config)
    return apply_masks(pruned, masks), masks


class MaskHook(TrainHook):
    """Keeps pruned weights at zero during training: no gradient before the step, re-zeroed after it."""

    def __init__(self, masks: dict[str, torch.Tensor]) -> None:
        self.masks = masks
        self._params: dict[str, nn.Parameter] | None = None

    def _bind(self, model: nn.Module) -> dict[str, nn.Parameter]:
        if self._params is None:
            params = dict(model.named_parameters())
            missing = [k for k in self.masks if k not in params]
            if missing:
                raise ConfigError(f"masks name parameters the model lacks: {', '.join(missing[:3])}")
            self._params = {k: params[k] for k in self.masks}
            self.masks = {k: m.to(self._params[k].device) for k, m in self.masks.items()}
        return self._params

    def after_backward(self, model: nn.Module) -> None:
        for name, p in self._bind(model).items():
            if p.grad is not None:
                p.grad.mul_(self.masks[name])

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in self._bind(model).items():
                p.mul_(self.masks[name])


def iterative_prune(
    model: nn.Module,
    ratios: Sequence[float],
    finetune: Callable[[nn.Module, MaskHook], None],
    *,
    scope: str = "global",
    skip: Iterable[str] = (),
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Prune to each ratio in turn (e.g. 0.5, 0.7, 0.8), calling `finetune(model, hook)` after each step.

    Each step prunes the already-pruned model further, so earlier zeros stay zero.
    """
    if list(ratios) != sorted(ratios):
        raise ConfigError(f"iterative ratios must increase; got {list(ratios)}")
    masks: dict[str, torch.Tensor] = {}
    for ratio in ratios:
        model, masks = prune_magnitude(model, MagnitudePruning(ratio=ratio, scope=scope, skip=tuple(skip)))
        finetune(model, MaskHook(masks))
    return model, masks


def sparsity(model: nn.Module, skip: Iterable[str] = ()) -> float:
    """Fraction of zeros among the prunable weights."""
    weights = prunable_weights(model, skip).values()
    total = sum(w.numel() for w in weights)
    return 1 - sum(int(torch.count_nonzero(w)) for w in weights) / total if total else 0.0
