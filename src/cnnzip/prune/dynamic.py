"""Dynamic pruning (Electronics 2023, 12, 1208): remove the channels that are mostly zero, with the threshold
set by a binary search on fine-tuned accuracy.

A channel whose zero fraction (`channel_sparsity`) exceeds the threshold P is removed. A low P removes much and
may not recover; a high P removes little. The search starts with P_l = 0.5, P_u = 1.0, P_c = 0.75. Each trial
prunes the iteration's starting model at P_c, fine-tunes it and evaluates it on the validation split (a short
fine-tune can lower accuracy before it raises it; the better of the weights before and after it are kept):
  - meets the target: P_u = P_c, then P_c is lowered by a quarter of the interval [P_l, P_u];
  - misses it:        P_l = P_c, then P_c is raised by half of the interval.
The loop ends when P_u - P_l < 0.03; the iteration's result is its passing trial with the fewest MACs. The
whole procedure is repeated (3 times in the paper), each iteration starting from the previous result.

The paper fine-tunes every trial for tens of epochs. Where that is too dear (a CPU), give the trials a short
fine-tune and `recover`: a longer fine-tune of each iteration's winner only, before the next iteration starts.

Only groups read through a plain channel path are pruned; with `residual_stream=False` (the paper's choice for
ResNets) a group tied to a residual addition is left alone, so only the blocks' inner widths shrink. Every
trial and its model are written to the run directory before the next starts: a killed run resumes.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..measure import Evaluator, count_macs, run_digest
from ..modelfile import ModelMeta, load_model, save_model
from ..train import atomic_write_bytes, resume_state
from .channel_sparsity import channel_sparsity
from .channels import _apply
from .graph import ChannelGraph, analyze

__all__ = ["DynamicPruning", "ThresholdSearch", "sparsity_plan", "dynamic_prune", "DynamicResult"]


@dataclass(frozen=True)
class DynamicPruning:
    """Settings of the dynamic pruning. Pure data; a resumed run must match it. Give `target` (an accuracy) or
    `drop` (points below the starting model's validation accuracy; the paper sets the target slightly below)."""

    target: float | None = None
    drop: float | None = None
    lower: float = 0.5
    upper: float = 1.0
    tolerance: float = 0.03
    iterations: int = 3
    min_channels: int = 1
    residual_stream: bool = False
    skip: tuple[str, ...] = ()
    max_images: int | None = None  # images for the sparsity measurement (default: the whole split)

    def __post_init__(self) -> None:
        if (self.target is None) == (self.drop is None):
            raise ConfigError("give exactly one of target (an accuracy) and drop (points below the baseline)")
        if not 0 <= self.lower < self.upper <= 1:
            raise ConfigError(f"need 0 <= lower < upper <= 1 for the threshold interval; got {self.lower}, "
                              f"{self.upper}")
        if self.tolerance <= 0 or self.iterations < 1 or self.min_channels < 1:
            raise ConfigError("tolerance must be > 0, iterations and min_channels >= 1")
        object.__setattr__(self, "skip", tuple(self.skip))


@dataclass
class ThresholdSearch:
    """The paper's update rule for the pruning threshold, as a small state machine."""

    lower: float
    upper: float
    current: float | None = None
    tolerance: float = 0.03

    def __post_init__(self) -> None:
        if self.current is None:
            self.current = (self.lower + self.upper) / 2

    @property
    def done(self) -> bool:
        return self.upper - self.lower < self.tolerance

    def feedback(self, passed: bool) -> None:
        if passed:
            self.upper = self.current
            self.current -= (self.upper - self.lower) / 4
        else:
            self.lower = self.current
            self.current += (self.upper - self.lower) / 2


def _residual_groups(graph: ChannelGraph) -> set[str]:
    """Groups whose channels several layers write (a residual addition joins them)."""
    out = set()
    for g in graph.groups:
        writers = [m for m in g.members if m.kind == "out" and m.layer in ("Conv2d", "Conv1d", "Linear")]
        if len(writers) > 1:
            out.add(g.name)
    return out


def sparsity_plan(sparsity: dict[str, torch.Tensor], threshold: float, min_channels: int = 1,
                  groups: Iterable[str] | None = None) -> dict[str, list[int]]:
    """Channels whose zero fraction is above `threshold` (root name -> indices); each group keeps at least
    `min_channels`, its least sparse ones."""
    plan = {}
    for name in groups if groups is not None else sparsity:
        s = sparsity[name]
        over = [int(i) for i in torch.nonzero(s > threshold).flatten()]
        room = len(s) - min(min_channels, len(s))
        if len(over) > room:
            over = sorted(over, key=lambda i: float(s[i]), reverse=True)[:room]
        if over:
            plan[name] = sorted(over)
    return plan


@dataclass
class DynamicResult:
    model: nn.Module
    baseline_accuracy: float
    target: float
    accuracy: float  # validation accuracy of `model`
    macs: tuple[int, int]  # before, after
    trials: list[dict]
    path: Path
    recovered: dict[str, dict] = field(default_factory=dict)  # iteration -> the winner's longer fine-tune


Finetune = Callable[[str, nn.Module], None]


def dynamic_prune(model: nn.Module, evaluator: Evaluator, finetune: Finetune, config: DynamicPruning,
                  meta: ModelMeta, run_dir: str | Path, *, recover: Finetune | None = None,
                  training: dict[str, Any] | None = None, device: torch.device | str = "cpu") -> DynamicResult:
    """Run the dynamic pruning; the caller's model is not changed.

    `evaluator` holds the validation split: it measures channel sparsity and judges every trial. `finetune(tag,
    model)` trains a pruned model in place (tag names the trial, for its checkpoint); `recover(tag, model)`, if
    given, trains each iteration's winner further (the better of its weights before and after are kept). Writes
    `run_dir/state.json`, one model file per trial (and per recovered winner), and `run_dir/pruned.pt`.
    `training` describes what the fine-tunes do (epochs, images, learning rate...): a run resumed with other
    training is refused rather than mixed. More `iterations` extend a run; fewer are refused.
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    state_path = run / "state.json"
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    settings["subject"] = run_digest(model, evaluator)
    if recover is not None:
        settings["recover"] = True  # (absent otherwise: runs from before this option still resume)
    if training:
        settings["training"] = dict(training)
    # More iterations extend a finished run: its first iterations are resumed, not redone.
    state: dict[str, Any] = resume_state(state_path, {"config": settings, "trials": [], "recovered": {}},
                                         "dynamic pruning", free=("iterations",))
    state.setdefault("recovered", {})
    done = max((t["iteration"] + 1 for t in state["trials"]), default=0)
    if done > config.iterations:
        raise ConfigError(f"{run} already holds {done} iterations; ask for at least {done} to resume it (its "
                          f"earlier results are in state.json), or use another directory")
    shape = tuple(meta.input_shape)
    example = torch.zeros(1, *shape)
    current = model.cpu().eval()
    baseline = evaluator.evaluate(current).accuracy
    target = config.target if config.target is not None else baseline - config.drop
    if target > baseline:
        raise ConfigError(f"the target accuracy {target:.2%} is above the model's own validation accuracy "
                          f"{baseline:.2%}; lower it, or give a drop (--drop)")
    macs0 = count_macs(current, shape)
    accuracy = baseline
    for it in range(config.iterations):
        graph = analyze(current, example, skip=config.skip)
        groups = [g.name for g in graph.groups]
        if not config.residual_stream:
            residual = _residual_groups(graph)
            groups = [g for g in groups if g not in residual]
        sparsity = channel_sparsity(graph, evaluator.batches, device, config.max_images)
        search = ThresholdSearch(config.lower, config.upper, tolerance=config.tolerance)
        best: dict | None = None
        while not search.done:
            threshold = round(search.current, 6)
            rec = next((t for t in state["trials"] if t["iteration"] == it and t["threshold"] == threshold), None)
            if rec is None:
                plan = sparsity_plan(sparsity, threshold, config.min_channels, [g for g in groups if g in sparsity])
                removed = sum(len(v) for v in plan.values())
                if removed == 0:
                    rec = {"iteration": it, "threshold": threshold, "removed": 0, "passed": True,
                           "accuracy": accuracy, "macs": count_macs(current, shape), "model": None}
                else:
                    pruned = _apply(graph, plan).model
                    unfinetuned = evaluator.evaluate(pruned).accuracy
                    kept = copy.deepcopy(pruned.state_dict())
                    finetune(f"it{it}-p{threshold:.4f}", pruned)
                    pruned.cpu().eval()
                    acc = evaluator.evaluate(pruned).accuracy
                    if unfinetuned > acc:  # a short fine-tune can hurt before it helps: keep the better weights
                        pruned.load_state_dict(kept)
                    path = run / f"it{it}-p{threshold:.4f}.pt"
                    save_model(path, pruned, meta)
                    best_acc = max(acc, unfinetuned)
                    rec = {"iteration": it, "threshold": threshold, "removed": removed, "passed": best_acc >= target,
                           "accuracy": best_acc, "before_finetune": unfinetuned, "after_finetune": acc,
                           "macs": count_macs(pruned, shape), "model": path.name}
                state["trials"].append(rec)
                atomic_write_bytes(state_path, json.dumps(state, indent=2).encode())
            if rec["passed"] and rec["removed"] and (best is None or rec["macs"] < best["macs"]):
                best = rec
            search.feedback(rec["passed"])
        if best is None:
            break  # nothing more could be removed at the target: later iterations would start from the same model
        current, _ = load_model(run / best["model"], model=copy.deepcopy(model))  # the caller's class, any model
        accuracy = best["accuracy"]
        if recover is not None:
            rec = state["recovered"].get(str(it))
            if rec is None:
                kept = copy.deepcopy(current.state_dict())
                recover(f"it{it}-recover", current)
                current.cpu().eval()
                after = evaluator.evaluate(current).accuracy
                if after < accuracy:
                    current.load_state_dict(kept)
                rec = {"from": best["model"], "before": accuracy, "after": after, "accuracy": max(after, accuracy),
                       "model": f"it{it}-recovered.pt"}
                save_model(run / rec["model"], current, meta)
                state["recovered"][str(it)] = rec
                atomic_write_bytes(state_path, json.dumps(state, indent=2).encode())
            current, _ = load_model(run / rec["model"], model=copy.deepcopy(model))
            accuracy = rec["accuracy"]
    path = run / "pruned.pt"
    save_model(path, current, meta)
    return DynamicResult(model=current, baseline_accuracy=baseline, target=target, accuracy=accuracy,
                         macs=(macs0, count_macs(current, shape)), trials=state["trials"], path=path,
                         recovered=state["recovered"])
