"""Low-rank decomposition of conv and linear layers (SPEC §4): each layer's weight is replaced by a product of
smaller ones, chosen per layer by the energy their singular values keep, or to remove a share of the MACs.

- A k x k conv (k > 1): Tucker-2 by higher-order SVD (Kim et al., ICLR 2016): a 1x1 conv to r_in channels, a
  k x k core from r_in to r_out, a 1x1 conv to the outputs. r_in and r_out come from the singular values of the
  weight unfolded along its input and its output channels.
- A 1x1 conv or a linear layer: truncated SVD, W = (U S^1/2)(S^1/2 V^T): two layers through r channels.

`energy` keeps, per layer and mode, the fewest singular values whose squares reach that share of the total. A
layer is factored only where that lowers its MACs. `macs_reduction` bisects one energy for all layers until the
model's MACs fall by that share. `ranks` names ranks layer by layer. At full rank a factored layer computes the
original function (up to rounding); the result reports the relative difference of the model's outputs on a probe
input. Decomposed models save and reload like any other (`models.factored`).
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError
from ..measure import count_macs
from ..models import FactoredConv2d, FactoredLinear

__all__ = ["Decomposition", "DecomposeResult", "decompose", "energy_rank", "factor"]


@dataclass(frozen=True)
class Decomposition:
    """Settings. Give exactly one of `energy` (in (0, 1]), `macs_reduction` (in (0, 1)) or `ranks` (layer name ->
    (r,) for an SVD layer, (r_in, r_out) for a Tucker-2 conv). `skip`: layer names or regular expressions left
    alone."""

    energy: float | None = None
    macs_reduction: float | None = None
    ranks: dict[str, tuple[int, ...]] | None = None
    skip: tuple[str, ...] = ()
    round_to: int = 1  # energy ranks rounded up to a multiple: CPU conv kernels work on blocks of 8 or 16 channels

    def __post_init__(self) -> None:
        given = [x is not None for x in (self.energy, self.macs_reduction, self.ranks)]
        if sum(given) != 1:
            raise ConfigError("say how far to decompose: exactly one of energy, macs_reduction or ranks")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise ConfigError(f"energy is the share of each layer's singular-value energy kept, in (0, 1]; got "
                              f"{self.energy}")
        if self.macs_reduction is not None and not 0 < self.macs_reduction < 1:
            raise ConfigError(f"macs_reduction must be in (0, 1), e.g. 0.45; got {self.macs_reduction}")
        if not isinstance(self.round_to, int) or self.round_to < 1:
            raise ConfigError(f"round_to must be a whole number of channels >= 1; got {self.round_to!r}")
        object.__setattr__(self, "skip", tuple(self.skip))


@dataclass
class DecomposeResult:
    model: nn.Module
    ranks: dict[str, list[int]]  # the factored layers and their ranks
    macs: tuple[int, int]  # before, after
    error: float  # max |out - original out| / max |original out| on a probe input
    energy: float | None = None  # the energy used (found by bisection with macs_reduction)
    left: dict[str, str] = field(default_factory=dict)  # layers not factored, with the reason


def energy_rank(singular_values: torch.Tensor, energy: float) -> int:
    """The fewest leading singular values whose squares reach `energy` of the total (at least 1)."""
    power = singular_values.double() ** 2
    total = float(power.sum())
    if total <= 0:
        return 1
    share = torch.cumsum(power, 0) / total
    return min(int((share < energy - 1e-12).sum()) + 1, len(singular_values))


@dataclass
class _Layer:
    """One factorable layer: its unfolding SVDs and the sizes its MACs depend on."""

    name: str
    module: nn.Module
    kind: str  # "svd" or "tucker2"
    svds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]  # (U, S, Vh) per mode
    positions_in: int
    positions_out: int

    def max_ranks(self) -> tuple[int, ...]:
        return tuple(len(s) for _, s, _ in self.svds)

    def ranks_at(self, energy: float, round_to: int = 1) -> tuple[int, ...]:
        return tuple(min(len(s), -(-energy_rank(s, energy) // round_to) * round_to) for _, s, _ in self.svds)

    def macs(self, ranks: tuple[int, ...] | None = None) -> int:
        m = self.module
        if isinstance(m, nn.Linear):
            i, o, kk = m.in_features, m.out_features, 1
        else:
            i, o, kk = m.in_channels, m.out_channels, m.kernel_size[0] * m.kernel_size[1]
        p_in, p_out = self.positions_in, self.positions_out
        if ranks is None:
            return o * i * kk * p_out
        if self.kind == "svd":
            (r,) = ranks
            return (i * kk * r + r * o) * p_out
        r_in, r_out = ranks
        return i * r_in * p_in + r_in * r_out * kk * p_out + r_out * o * p_out


def _layers(model: nn.Module, example_input: torch.Tensor, skip: tuple[str, ...]) -> list[_Layer]:
    """Every conv (not grouped) and linear layer of `model` not skipped, with its SVDs and resolutions."""
    patterns = [re.compile(p) for p in skip]
    candidates = {n: m for n, m in model.named_modules()
                  if (isinstance(m, nn.Conv2d) and m.groups == 1) or isinstance(m, nn.Linear)
                  if not any(p.fullmatch(n) for p in patterns)}
    positions: dict[str, tuple[int, int]] = {}

    def hook(name):
        def record(module, inputs, output):
            positions[name] = (inputs[0][0, 0].numel() if inputs[0].dim() > 2 else 1,
                               output[0, 0].numel() if output.dim() > 2 else 1)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in candidates.items()]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    layers = []
    for name, m in candidates.items():
        if name not in positions:
            continue  # not on the forward path
        w = m.weight.detach().double()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1):
            out_mode = torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)
            in_mode = torch.linalg.svd(w.transpose(0, 1).reshape(w.shape[1], -1), full_matrices=False)
            layers.append(_Layer(name, m, "tucker2", [in_mode, out_mode], *positions[name]))
        else:
            layers.append(_Layer(name, m, "svd", [torch.linalg.svd(w.reshape(w.shape[0], -1), full_matrices=False)],
                                 *positions[name]))
    return layers


def factor(layer: _Layer, ranks: tuple[int, ...]) -> nn.Module:
    """The factored module of `layer` at `ranks`, its weights set from the SVDs."""
    m, dtype = layer.module, layer.module.weight.dtype
    if layer.kind == "svd":
        (r,) = ranks
        u, s, vh = layer.svds[0]
        root = s[:r].sqrt()
        reduce = (root[:, None] * vh[:r]).to(dtype)
        expand = (u[:, :r] * root[None, :]).to(dtype)
        f = FactoredLinear(m, (r,)) if isinstance(m, nn.Linear) else FactoredConv2d(m, (r,))
        with torch.no_grad():
            f.reduce.weight.copy_(reduce.reshape(f.reduce.weight.shape))
            f.expand.weight.copy_(expand.reshape(f.expand.weight.shape))
            if m.bias is not None:
                f.expand.bias.copy_(m.bias)
        return f
    r_in, r_out = ranks
    u_in, u_out = layer.svds[0][0][:, :r_in], layer.svds[1][0][:, :r_out]
    core = torch.einsum("oikl,or,is->rskl", m.weight.detach().double(), u_out, u_in)
    f = FactoredConv2d(m, (r_in, r_out))
    with torch.no_grad():
        f.reduce.weight.copy_(u_in.T.reshape(f.reduce.weight.shape).to(dtype))
        f.core.weight.copy_(core.to(dtype))
        f.expand.weight.copy_(u_out.reshape(f.expand.weight.shape).to(dtype))
        if m.bias is not None:
            f.expand.bias.copy_(m.bias)
    return f


def decompose(model: nn.Module, config: Decomposition, example_input: torch.Tensor) -> DecomposeResult:
    """A copy of `model` with its layers factored as `config` says; the caller's model is not changed."""
    model = copy.deepcopy(model).cpu().eval()
    example_input = example_input.cpu()
    layers = _layers(model, example_input, config.skip)
    if not layers:
        raise ConfigError("this model has no conv or linear layer to decompose (or every one is skipped)")
    by_name = {layer.name: layer for layer in layers}
    left: dict[str, str] = {}
    energy = config.energy
    if config.ranks is not None:
        chosen = {}
        for name, ranks in config.ranks.items():
            if name not in by_name:
                raise ConfigError(f"ranks: {name!r} is no conv or linear layer this model runs (decomposable: "
                                  + ", ".join(list(by_name)[:8]) + ")")
            ranks, top = tuple(int(r) for r in ranks), by_name[name].max_ranks()
            if len(ranks) != len(top) or any(not 1 <= r <= t for r, t in zip(ranks, top, strict=True)):
                raise ConfigError(f"ranks for {name}: its {by_name[name].kind} factors take {len(top)} rank(s) "
                                  f"between 1 and {top}; got {ranks}")
            chosen[name] = ranks
    else:
        if config.macs_reduction is not None:
            energy = _energy_for(layers, count_macs(model, tuple(example_input.shape[1:])), config.macs_reduction,
                                 config.round_to)
        chosen = {}
        for layer in layers:
            ranks = layer.ranks_at(energy, config.round_to)
            if layer.macs(ranks) < layer.macs():
                chosen[layer.name] = ranks
            else:
                left[layer.name] = f"ranks {ranks} at this energy would not lower its MACs"
    shape = tuple(example_input.shape[1:])
    before = count_macs(model, shape)
    with torch.no_grad():
        probe = torch.randn(4, *shape, generator=torch.Generator().manual_seed(0))
        reference = model(probe)
    for name, ranks in chosen.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, factor(by_name[name], ranks))
    with torch.no_grad():
        out = model(probe)
    error = float((out - reference).abs().max() / reference.abs().max().clamp_min(1e-12))
    return DecomposeResult(model, {n: list(r) for n, r in chosen.items()}, (before, count_macs(model, shape)), error,
                           energy, left)


def _energy_for(layers: list[_Layer], total: int, reduction: float, round_to: int = 1) -> float:
    """The largest energy whose factored layers remove at least `reduction` of `total` MACs (bisection)."""
    def saved(energy: float) -> int:
        out = 0
        for layer in layers:
            ranks = layer.ranks_at(energy, round_to)
            out += max(layer.macs() - layer.macs(ranks), 0)
        return out

    goal = reduction * total
    if saved(1e-9) < goal:
        raise ConfigError(f"decomposing every layer to rank 1 removes only {saved(1e-9) / total:.1%} of the MACs; "
                          f"ask for less than {reduction:.0%}")
    lo, hi = 1e-9, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if saved(mid) >= goal else (lo, mid)
    return lo if not math.isclose(lo, 1e-9) else 1e-9
