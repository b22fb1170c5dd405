"""Structured pruning: choose channels with an importance function, remove them, and prove the result right.

`prune_channels(model, ChannelPruning(method="fpgm", ratio=0.3), example_input)` returns a new, physically
smaller model; the caller's model is never changed. Every result is checked against the original with the same
channels zeroed, and a surgery that does not match is never returned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, ModelError, layer_patterns
from ..measure import count_macs
from .graph import ChannelGraph, analyze, attempt, find_failing, holding_reference, probe_input
from .importance import IMPORTANCE, get_importance, random_scores
from .layers import SURGERY_ERRORS

__all__ = ["ChannelPruning", "PruneResult", "apply_plan", "plan_channels", "prune_channels", "prune_to_macs"]


@dataclass(frozen=True)
class ChannelPruning:
    """What to remove. Pure data: it round-trips through JSON and the command line.

    - `method`: the importance (slimming = |BN gamma|, l1, l2, fpgm, random).
    - How much, one of: `ratio`, the fraction of the prunable channels to remove; `threshold`, remove channels
      scoring below it (for slimming, |gamma| < threshold); `widths`, how many channels each named layer keeps
      ({layer name or regex: channels}, e.g. from PCA; other layers keep all). `prune_to_macs` chooses the
      ratio itself.
    - `scope`: 'global' ranks all channels together (scores divided by their group's mean, except for
      slimming, whose |gamma| are comparable as they are); 'layer' removes `ratio` of each group. 'auto' is
      global for slimming and threshold pruning, per layer otherwise.
    - `rounding`: how a `ratio` becomes a channel count. 'down' removes floor(ratio x channels) of each layer,
      never more than asked (the FPGM and soft-filter-pruning papers' convention; a global ranking removes the
      nearest count); 'up' keeps floor((1 - ratio) x channels), at least the ratio (Torch-Pruning's). They differ
      most where a grouped convolution prunes the same count from every block: 0.3 of a block of 8 is 2 down, 3 up.
    - `min_channels`: each group keeps at least this many channels.
    - `skip`: layer names or regular expressions whose groups are left alone.
    - `round_to`: every pruned group keeps a multiple of this many channels (rounded up, as Torch-Pruning's
      `round_to`): CPU kernels work on blocks of 8 or 16 channels, and a width between two blocks costs the time
      of the larger one. A group smaller than `round_to` is left whole.
    - `residual_stream`: also prune channels that a residual addition joins (a ResNet stage's stream, on both
      sides of its shortcut); False narrows only what no addition ties, such as the blocks' inner widths.
    """

    method: str = "l1"
    ratio: float | None = None
    threshold: float | None = None
    widths: dict[str, int] | None = None
    scope: str = "auto"
    min_channels: int = 1
    skip: tuple[str, ...] = ()
    seed: int = 0
    round_to: int = 1
    residual_stream: bool = True
    rounding: str = "down"

    def __post_init__(self) -> None:
        if self.method not in IMPORTANCE:
            raise ConfigError(f"unknown method {self.method!r}; choose one of {', '.join(IMPORTANCE)}")
        if sum(v is not None for v in (self.ratio, self.threshold, self.widths)) > 1:
            raise ConfigError("say how much to prune in one way: a ratio, a threshold or widths")
        if self.widths is not None:
            bad = {k: v for k, v in self.widths.items() if not isinstance(v, int) or v < 1}
            if bad:
                raise ConfigError(f"widths are the channels each layer keeps, at least 1; got {bad}")
            object.__setattr__(self, "widths", dict(self.widths))
        if self.ratio is not None and not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio is the fraction of channels to remove, in [0, 1); got {self.ratio}")
        if self.scope not in ("auto", "global", "layer"):
            raise ConfigError(f"scope must be auto, global or layer; got {self.scope!r}")
        if self.threshold is not None and self.scope == "layer":
            raise ConfigError("a threshold applies to all layers alike; use scope global or auto")
        if self.rounding not in ("down", "up"):
            raise ConfigError(f"rounding must be down or up; got {self.rounding!r}")
        if self.min_channels < 1:
            raise ConfigError(f"min_channels must be >= 1; got {self.min_channels}")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1; got {self.round_to!r}")
        object.__setattr__(self, "skip", tuple(self.skip))
        layer_patterns(self.skip, "--skip")

    @property
    def resolved_scope(self) -> str:
        if self.scope != "auto":
            return self.scope
        return "global" if self.method in ("slimming", "bn") or self.threshold is not None else "layer"


@dataclass
class PruneResult:
    """The pruned model, what was removed, and how well the surgery was verified."""

    model: nn.Module
    removed: dict[str, list[int]]
    widths: dict[str, tuple[int, int]]  # group root -> (channels before, after)
    excluded: dict[str, str]
    max_error: float
    notes: dict[str, Any] = field(default_factory=dict)  # how the amount was reached (ratio, times, steps)

    @property
    def channels_removed(self) -> int:
        return sum(len(v) for v in self.removed.values())


def plan_channels(graph: ChannelGraph, config: ChannelPruning) -> dict[str, list[int]]:
    """Which channels of each prunable group to remove (root name -> sorted indices).

    A group read or written by a grouped convolution (`ChannelGroup.blocks` > 1) loses the same positions in
    every block of channels, as the grouping requires; a position's importance is its channels' mean.
    """
    if config.ratio is None and config.threshold is None and config.widths is None:
        raise ConfigError("say how much to prune: a ratio, a threshold or widths")
    groups, scores = position_scores(graph, config)
    removed = _plan(graph, groups, scores, config)  # positions
    plan = {}
    for g in groups:
        units = g.size // g.blocks
        n = len(removed.get(g.name, ()))
        if config.round_to > 1 and n:  # keep a multiple of round_to channels (and of the blocks), rounded up
            step = math.lcm(config.round_to, g.blocks)
            n = units - min(units, -(-(g.size - n * g.blocks) // step) * step // g.blocks)
        order = torch.argsort(scores[g.name], stable=True)[:n].tolist()
        plan[g.name] = sorted(b * units + p for b in range(g.blocks) for p in order)
    return plan


def position_scores(graph: ChannelGraph, config: ChannelPruning) -> tuple[list, dict[str, torch.Tensor]]:
    """The groups `config` may prune (scored, and not residual streams unless it says so) and each one's
    importance per position: channel scores averaged over the group's blocks."""
    importance = get_importance(config.method)
    generator = torch.Generator().manual_seed(config.seed)
    scores: dict[str, torch.Tensor] = {}
    for g in graph.groups:
        s = random_scores(graph, g, generator) if importance is random_scores else importance(graph, g)
        if s is not None:
            scores[g.name] = s.reshape(g.blocks, -1).mean(0)
    residual = set() if config.residual_stream else graph.residual_groups()
    return [g for g in graph.groups if g.name in scores and g.name not in residual], scores


def _plan(graph: ChannelGraph, groups: list, scores: dict[str, torch.Tensor], config: ChannelPruning) -> dict:
    """Positions (channels, or channel positions of every block) to remove, before rounding."""
    units = {g.name: g.size // g.blocks for g in groups}
    keep_min = {g.name: min(-(-config.min_channels // g.blocks), units[g.name]) for g in groups}

    if config.widths is not None:
        return {g.name: torch.argsort(scores[g.name], stable=True)[:units[g.name] - -(-keep // g.blocks)].tolist()
                for g, keep in _named_widths(graph, groups, config.widths).items()}

    if config.resolved_scope == "layer":
        plan = {}
        for g in groups:
            n = min(_ratio_count(config.ratio, units[g.name], config.rounding), units[g.name] - keep_min[g.name])
            plan[g.name] = torch.argsort(scores[g.name], stable=True)[:n].tolist()
        return plan

    # Global: rank every position together; each group's best `keep_min` positions are never candidates.
    normalise = config.method not in ("slimming", "bn") and config.threshold is None
    candidates: list[tuple[float, str, int]] = []
    for g in groups:
        s = scores[g.name]
        if normalise:
            s = s / (s.mean() + 1e-12)
        order = torch.argsort(s, stable=True).tolist()
        for i in order[: units[g.name] - keep_min[g.name]]:
            candidates.append((float(s[i]), g.name, i))
    candidates.sort(key=lambda c: c[0])
    if config.threshold is not None:
        chosen = [c for c in candidates if c[0] < config.threshold]
    else:
        blocks = {g.name: g.blocks for g in groups}
        total = sum(g.size for g in groups)
        up = config.rounding == "up"
        budget = _ratio_count(config.ratio, total, "up") if up else int(round(config.ratio * total))
        chosen = []
        for c in candidates:  # a position of a blocked group removes a channel from every block
            if budget < blocks[c[1]]:
                continue
            chosen.append(c)
            budget -= blocks[c[1]]
    plan: dict[str, list[int]] = {g.name: [] for g in groups}
    for _, name, i in chosen:
        plan[name].append(i)
    return plan


def _ratio_count(ratio: float, n: int, rounding: str) -> int:
    """Channels of `n` that `ratio` removes: floor(ratio n), or n - floor((1 - ratio) n) when rounding up."""
    if rounding == "up":
        return n - int(math.floor((1 - ratio) * n + 1e-9))
    return int(math.floor(ratio * n))


def prune_channels(
    model: nn.Module,
    config: ChannelPruning,
    example_input: torch.Tensor,
    *,
    graph: ChannelGraph | None = None,
) -> PruneResult:
    """Remove channels from a copy of `model` as `config` says; verify the copy against the masked original."""
    graph = graph if graph is not None else analyze(model, example_input, skip=config.skip)
    if not graph.groups:
        reasons = "; ".join(f"{k}: {v}" for k, v in list(graph.excluded.items())[:5])
        raise ModelError(f"this model has no channel that cnnzip can prune safely ({reasons})")
    return apply_plan(graph, plan_channels(graph, config))


def _named_widths(graph: ChannelGraph, groups, widths: dict[str, int]) -> dict:
    """group -> channels it keeps, for every group whose root (or a layer whose outputs it holds) is named."""
    out = {}
    for key, keep in widths.items():
        pattern = layer_patterns([key], "widths")[0]
        hit = [g for g in groups if pattern.fullmatch(g.name)
               or any(m.kind == "out" and pattern.fullmatch(m.name) for m in g.members)]
        if not hit:
            why = graph.excluded.get(key)
            raise ConfigError(f"widths: {key!r} names no prunable layer" + (f" ({why})" if why else "; prunable: "
                              + ", ".join(g.name for g in groups)))
        for g in hit:
            if keep > g.size:
                raise ConfigError(f"widths: {g.name} has {g.size} channels, fewer than the {keep} asked to keep")
            out[g] = keep
    return out


def apply_plan(graph: ChannelGraph, plan: dict[str, list[int]]) -> PruneResult:
    """Remove the channels of `plan` (group root name -> channel indices) from a copy of the graph's model.

    The copy is verified against the masked original; groups whose surgery does not match are left untouched
    and listed in `excluded`, and a plan that cannot be verified at all is an error, never a broken model.
    """
    plan = {k: sorted(int(i) for i in v) for k, v in plan.items() if len(v)}
    x = graph.probe if graph.probe is not None else probe_input(graph.example_input)
    excluded = dict(graph.excluded)
    surgery = attempt(graph, plan, x)
    while not surgery.exact and plan:
        # Each group passed its own trial on probe channels; these channels, or groups together, fail.
        with holding_reference(graph):
            bad = find_failing(list(plan), lambda names, p=plan: attempt(graph, {k: p[k] for k in names}, x,
                                                                         keep=False).problem, known=surgery.problem)
        for name in bad:
            excluded[name] = "its surgery on these channels did not match the masked model; left untouched"
        plan = {k: v for k, v in plan.items() if k not in bad}
        surgery = attempt(graph, plan, x)
    if not surgery.exact:
        raise ModelError("channel surgery could not be verified on this model; nothing was pruned. "
                         "Please report this model's structure.")
    widths = {g.name: (g.size, g.size - len(plan.get(g.name, []))) for g in graph.groups}
    return PruneResult(model=surgery.model, removed=plan, widths=widths, excluded=excluded, max_error=surgery.error)


def prune_to_macs(
    model: nn.Module,
    config: ChannelPruning,
    example_input: torch.Tensor,
    macs_reduction: float,
    *,
    tolerance: float = 0.005,
    max_steps: int = 20,
) -> PruneResult:
    """Prune until MACs fall by `macs_reduction` (e.g. 0.4 = 40% fewer): bisection on `config.ratio`.

    Stops at the smallest ratio whose reduction is within `tolerance` of the goal or above it.
    """
    if not 0 < macs_reduction < 1:
        raise ConfigError(f"macs_reduction must be in (0, 1); got {macs_reduction}")
    graph = analyze(model, example_input, skip=config.skip)
    shape = tuple(example_input.shape[1:])
    base = count_macs(model, shape)

    def plan_at(ratio: float) -> dict[str, list[int]]:
        cfg = ChannelPruning(**{**config.__dict__, "ratio": ratio, "threshold": None, "widths": None})
        return {k: v for k, v in plan_channels(graph, cfg).items() if v}

    lo, hi = 0.0, 0.99
    found: tuple[float, float] | None = None
    for _ in range(max_steps):
        mid = (lo + hi) / 2
        try:
            reduction = 1 - count_macs(graph.pruned_copy(plan_at(mid), share=True), shape) / base
        except ConfigError:
            raise
        except SURGERY_ERRORS:  # a surgery that fails here is not a usable ratio; prune less
            reduction = -1.0
        if reduction >= macs_reduction:
            hi, found = mid, (mid, reduction)
            if reduction - macs_reduction <= tolerance:
                break
        else:
            lo = mid
    if found is None:
        raise ConfigError(f"cannot remove {macs_reduction:.0%} of the MACs by pruning the prunable channels "
                          f"(excluded: {', '.join(graph.excluded) or 'none'})")
    ratio, reduction = found
    result = apply_plan(graph, plan_at(ratio))
    result.notes.update(ratio=ratio, macs_reduction=reduction, base_macs=float(base))
    return result
