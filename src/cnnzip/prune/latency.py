"""Prune to a latency target, NetAdapt-style: each step cuts the one layer that loses least per millisecond saved.

Fewer MACs are not less time. A CPU kernel's time depends on its channel counts, and a layer's share of the
MACs is not its share of the time, so uniform ratios or `prune_to_macs` spend the cut where it saves little.
NetAdapt (Yang et al., ECCV 2018) instead shrinks the network in steps: at each step, every prunable layer
proposes the smallest cut that lowers the predicted latency by a set amount; each proposal is scored, and the
best one is kept. A layer too small to save the whole step alone proposes its smallest cut that saves anything
(one `round_to` block), not its narrowest (on a ResNet-56, whose 27 blocks each hold 1-4% of the time, offering
the narrowest cut emptied whole blocks to 8 channels one after another), and the step then takes the best-scored
proposals, from the better half of those scored, one after another until their cuts together save the step: as
many evaluations per step as NetAdapt's, without a step per block. Here a proposal's score is the accuracy it loses per millisecond it saves, measured by
`evaluate` (after the caller's BatchNorm recalibration, so a few hundred images rank candidates well) on the
`candidates` most promising proposals, which are first ranked by the importance of the channels they remove per
millisecond (the only score without `evaluate`). A proposal is credited with at most the step's milliseconds:
saving more than asked is not worth more accuracy, so the last step does not overshoot the goal for nothing. Latency comes from `latency(model) -> ms`, in practice
`cnnzip.deploy.LatencyTable.predict`, so proposals are priced without timing each one; the result's measured
time says how good that prediction was.

With `remove_blocks`, removing a whole residual block (identity shortcut, `RemovedBlock`) is a proposal too, scored
on measured accuracy per millisecond beside the width cuts: in ONNX Runtime's int8 kernels a conv's time follows
its pixels more than its MACs (profiled on ResNet-56 at batch 256: a 16-channel 32 x 32 conv takes 5.4 ms, a
64-channel 8 x 8 one of the same MACs 2.9 ms, and halving every inner width saved 17% of the int8 time), so a
thin early block costs little accuracy per millisecond only when it goes whole. Block proposals are ranked
among themselves by width per millisecond (the thinnest first, as layer fusion does) and the best `candidates`
of them are scored with the width cuts' best `candidates`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from ..models import remove_blocks as _remove
from .block_removal import residual_blocks
from .channels import ChannelPruning, PruneResult, apply_plan, position_scores
from .graph import ChannelGroup, analyze

__all__ = ["prune_to_latency"]


@dataclass
class _Group:
    """A prunable group: the widths it may keep, and its channels from least to most important."""

    group: ChannelGroup
    options: list[int]  # channel counts it may keep, ascending; the last is its full size
    order: list[int]  # positions (within a block), least important first
    scores: torch.Tensor  # per position, divided by the group's mean

    def removed(self, keep: int) -> list[int]:
        """The channel indices removed when the group keeps `keep` channels (the same positions in each block)."""
        units, n = self.group.size // self.group.blocks, (self.group.size - keep) // self.group.blocks
        return sorted(b * units + p for b in range(self.group.blocks) for p in self.order[:n])

    def cost(self, keep: int, fewer: int) -> float:
        """The importance of the positions removed when going from `keep` to `fewer` channels."""
        blocks = self.group.blocks
        return float(self.scores[self.order[(self.group.size - keep) // blocks:(self.group.size - fewer) // blocks]]
                     .sum())


def _groups(graph, config: ChannelPruning) -> list[_Group]:
    out = []
    groups, scores = position_scores(graph, config)
    for g in groups:
        s = scores[g.name]
        step = math.lcm(config.round_to, g.blocks)
        least = max(step, -(-config.min_channels // step) * step)
        options = [k for k in range(least, g.size, step)] + [g.size]
        if len(options) < 2:
            continue  # too small to cut at this rounding
        out.append(_Group(g, options, torch.argsort(s, stable=True).tolist(), s / (s.mean() + 1e-12)))
    return out


def prune_to_latency(
    model: nn.Module,
    config: ChannelPruning,
    example_input: torch.Tensor,
    latency_reduction: float,
    latency: Callable[[nn.Module], float],
    *,
    evaluate: Callable[[nn.Module], float] | None = None,
    step: float = 0.05,
    candidates: int = 8,
    remove_blocks: bool = False,
    say: Callable[[str], None] | None = None,
) -> PruneResult:
    """Remove channels until `latency(model)` falls by `latency_reduction` (0.4 = 40% less time).

    Each step asks for `step` of the original time more (the last step for what is left). `evaluate(model)`
    returns an accuracy for a candidate (a deep copy the caller may change, e.g. recalibrate); without it,
    candidates are ranked by the importance they remove per millisecond. `config` gives the importance method,
    `round_to`, `min_channels`, `skip` and `residual_stream`; its ratio, threshold and widths are not used.
    The result is verified against the masked original like every other pruning; its `notes` hold the
    predicted times and the number of steps and evaluations, and `removed_blocks` the blocks `remove_blocks` took
    out (after the verified channel surgery: a removed block changes what the network computes, so fine-tune);
    the groups inside a removed block have width 0 in `widths` (their channels are not in `removed`).
    """
    if not 0 < latency_reduction < 1:
        raise ConfigError(f"latency_reduction must be in (0, 1); got {latency_reduction}")
    if not 0 < step <= latency_reduction:
        raise ConfigError(f"step must be in (0, latency_reduction]; got {step}")
    if candidates < 1:
        raise ConfigError(f"candidates must be at least 1; got {candidates}")
    if remove_blocks and evaluate is None:
        raise ConfigError("removing blocks needs `evaluate`: nothing else compares a block with a width cut")
    graph = analyze(model, example_input, skip=config.skip)
    groups = _groups(graph, config)
    blocks = ([b for b in residual_blocks(model, tuple(example_input.shape[1:])) if b.removable]
              if remove_blocks else [])
    if not groups and not blocks:
        raise ModelError("this model has no channel that cnnzip can prune safely"
                         + (f" at --round-to {config.round_to}" if config.round_to > 1 else ""))
    keep = {g.group.name: g.group.size for g in groups}
    # the groups whose every layer lies inside a block: they go with it
    inside = {b.name: {g.group.name for g in groups
                       if all(n.startswith(b.name + ".") for n in [g.group.name, *g.group.layer_names()])}
              for b in blocks}
    gone: set[str] = set()  # removed blocks
    block_width = {b.name: b.width for b in blocks}

    def plan(widths: dict[str, int], out: frozenset[str] | set[str] = frozenset()) -> dict[str, list[int]]:
        dropped = set().union(*(inside[b] for b in out)) if out else set()
        return {g.group.name: g.removed(widths[g.group.name]) for g in groups
                if widths[g.group.name] < g.group.size and g.group.name not in dropped}

    def build(widths: dict[str, int], out=frozenset(), share: bool = True) -> nn.Module:
        return _remove(graph.pruned_copy(plan(widths, out), share=share), sorted(out))

    def predict(widths: dict[str, int], out=None) -> float:
        return latency(build(widths, gone if out is None else out))

    base = latency(model)
    goal = base * (1 - latency_reduction)
    now, accuracy = base, (evaluate(graph.pruned_copy({})) if evaluate is not None else None)
    steps = evaluations = 0
    log = []
    while now > goal:
        want = max(goal, now - step * base)
        dropped = set().union(*(inside[b] for b in gone)) if gone else set()
        proposals = []  # (proxy score, group, new keep, predicted ms)
        for g in groups:
            name = g.group.name
            smaller = [k for k in g.options if k < keep[name]]
            if not smaller or name in dropped:
                continue
            # the largest width that reaches `want` (latency falls as the width does): bisection over the options
            ms_lo = predict({**keep, name: smaller[0]})
            if ms_lo >= now:
                continue  # cutting this group saves nothing measurable
            if ms_lo > want:  # not even the narrowest reaches the step: offer the smallest cut that saves time
                hi_k = next(k for k in reversed(smaller) if k == smaller[0] or predict({**keep, name: k}) < now)
                hi_ms = ms_lo if hi_k == smaller[0] else predict({**keep, name: hi_k})
            else:
                lo, hi = 0, len(smaller) - 1
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if predict({**keep, name: smaller[mid]}) <= want:
                        lo = mid
                    else:
                        hi = mid - 1
                hi_k = smaller[lo]
                hi_ms = ms_lo if lo == 0 else predict({**keep, name: hi_k})
            saved = now - hi_ms
            proposals.append((g.cost(keep[name], hi_k) / min(saved, now - want), g, hi_k, hi_ms))
        proposals.sort(key=lambda p: (p[0], p[1].group.name))
        removals = []  # (width per ms, block name, None, predicted ms)
        for b in blocks:
            if b.name not in gone and (ms := predict(keep, gone | {b.name})) < now:
                narrow = min((keep[n] for n in inside[b.name]), default=block_width[b.name])
                removals.append((narrow / min(now - ms, now - want), b.name, None, ms))
        removals.sort(key=lambda p: (p[0], p[1]))
        if not proposals and not removals:
            break
        if evaluate is None:
            ranked = [(g, width, ms, None) for _, g, width, ms in proposals]
            n_scored = min(candidates, len(ranked))
        else:
            n_scored = min(candidates, len(proposals)) + min(candidates, len(removals))
            scored = []
            for _, g, width, ms in proposals[:candidates] + removals[:candidates]:
                trial = (build({**keep, g.group.name: width}, gone, share=False) if width is not None
                         else build(keep, gone | {g}, share=False))
                acc = evaluate(trial)
                evaluations += 1
                scored.append(((accuracy - acc) / min(now - ms, now - want), _label(g), g, width, ms, acc))
            ranked = [(g, width, ms, acc) for *_, g, width, ms, acc in sorted(scored, key=lambda s: (s[0], s[1]))]
        # Take the best proposal, and the next ones while the step is not yet saved (small layers each save
        # less than a step: this is NetAdapt's step made of several layers' cuts, each chosen on its own score),
        # from the better half of those scored: the rest only ranked them.
        chosen, trial, out = [], dict(keep), set(gone)
        for g, width, ms, acc in ranked[:max(1, -(-n_scored // 2))]:
            if width is None:  # a cut of its own layers taken earlier in this step goes with it
                out.add(g)
                chosen = [c for c in chosen if c[1] is None or c[0].group.name not in inside[g]]
                trial.update({n: keep[n] for n in inside[g]})
            elif any(g.group.name in inside[b] for b in out):
                continue  # its block goes in this step
            else:
                trial[g.group.name] = width
            chosen.append((g, width, acc))
            ms_all = ms if len(chosen) == 1 else predict(trial, out)
            if ms_all <= want:
                break
        keep, gone, now, steps = trial, out, ms_all, steps + 1
        if evaluate is not None:
            accuracy = chosen[0][2] if len(chosen) == 1 else evaluate(build(keep, gone, share=False))
            evaluations += len(chosen) > 1
        cuts = ", ".join(f"{g} removed" if w is None else f"{g.group.name} keeps {w} of {g.group.size}"
                         for g, w, _ in chosen)
        log.append({"cuts": {_label(g): w for g, w, _ in chosen}, "predicted_ms": now, "accuracy": accuracy})
        if say is not None:
            say(f"step {steps}: {cuts}; predicted {now:.3f} ms ({1 - now / base:.1%} less)"
                + ("" if accuracy is None else f", accuracy {accuracy:.2%}"))
    if now > goal:
        raise ConfigError(f"cannot remove {latency_reduction:.0%} of the predicted time by pruning the prunable "
                          f"channels: the most it reaches is {1 - now / base:.1%} (excluded: "
                          f"{', '.join(graph.excluded) or 'none'})")
    result = apply_plan(graph, plan(keep, gone))
    _remove(result.model, sorted(gone))
    for b in gone:  # the groups inside a removed block keep no channel
        for name in inside[b]:
            result.widths[name] = (result.widths[name][0], 0)
    result.notes.update(base_ms=base, predicted_ms=now, latency_reduction=1 - now / base, steps=steps,
                        evaluations=evaluations, log=log, removed_blocks=sorted(gone))
    return result


def _label(g) -> str:
    """A proposal's name: its group's root, or the block it removes."""
    return g if isinstance(g, str) else g.group.name
