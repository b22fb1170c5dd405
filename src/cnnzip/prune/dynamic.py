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
from ..finetune import Finetune
from ..io import ModelMeta, atomic_write_bytes, load_model, resume_state, save_model
from ..measure import Evaluator, count_macs, run_digest, target_accuracy
from ..train import recalibrate_batchnorm
from .channel_sparsity import channel_sparsity
from .channels import apply_plan
from .graph import ChannelGraph, analyze

__all__ = ["DynamicPruning", "ThresholdSearch", "sparsity_plan", "dynamic_prune", "DynamicResult", "TrialRecord",
           "Recovery", "STAGES"]


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
    recalibrate: int = 0  # training images that re-estimate BatchNorm statistics after each surgery (0: none)

    def __post_init__(self) -> None:
        if (self.target is None) == (self.drop is None):
            raise ConfigError("give exactly one of target (an accuracy) and drop (points below the baseline)")
        if self.target is not None and not 0 < self.target <= 1:
            raise ConfigError(f"the target is an accuracy in (0, 1], e.g. 0.9; got {self.target}")
        if self.drop is not None and not 0 <= self.drop < 1:
            raise ConfigError(f"the drop is an accuracy difference in [0, 1), e.g. 0.01 for one point; got {self.drop}")
        if not 0 <= self.lower < self.upper <= 1:
            raise ConfigError(f"need 0 <= lower < upper <= 1 for the threshold interval; got {self.lower}, "
                              f"{self.upper}")
        if self.tolerance <= 0 or self.iterations < 1 or self.min_channels < 1:
            raise ConfigError("tolerance must be > 0, iterations and min_channels >= 1")
        if self.recalibrate < 0:
            raise ConfigError(f"recalibrate is a number of training images (0: none); got {self.recalibrate}")
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
class TrialRecord:
    """One threshold tried in one iteration: what it removed and how the fine-tuned model did."""

    iteration: int
    threshold: float
    removed: int  # channels
    passed: bool
    accuracy: float  # validation accuracy of the kept weights (the better of before and after the fine-tune)
    macs: int
    model: str | None  # the model file in the run directory (None when nothing was removed)
    before_finetune: float | None = None
    after_finetune: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrialRecord:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


@dataclass
class Recovery:
    """The longer fine-tune of one iteration's winner (the better weights of before and after are kept)."""

    source: str  # the winner's model file
    before: float
    after: float
    accuracy: float
    model: str

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["from"] = d.pop("source")
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Recovery:
        return cls(source=d["from"], before=d["before"], after=d["after"], accuracy=d["accuracy"], model=d["model"])


@dataclass
class DynamicResult:
    model: nn.Module
    baseline_accuracy: float
    target: float
    accuracy: float  # validation accuracy of `model`
    macs: tuple[int, int]  # before, after
    trials: list[TrialRecord]
    path: Path
    recovered: dict[str, Recovery] = field(default_factory=dict)  # iteration -> the winner's longer fine-tune


STAGES = ("trial", "recover")
"""The fine-tune stages: every trial, and each iteration's winner when `recover` is on."""


class _RunLog:
    """The run's state.json: the settings, every trial and every recovery, rewritten after each one."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        state = resume_state(path, {"config": settings, "trials": [], "recovered": {}}, "dynamic pruning",
                             free=("iterations",))  # more iterations extend a finished run
        self.config = state["config"]
        self.trials = [TrialRecord.from_dict(t) for t in state["trials"]]
        self.recovered = {k: Recovery.from_dict(v) for k, v in state.get("recovered", {}).items()}

    def trial(self, iteration: int, threshold: float) -> TrialRecord | None:
        return next((t for t in self.trials if t.iteration == iteration and t.threshold == threshold), None)

    def add_trial(self, rec: TrialRecord) -> TrialRecord:
        self.trials.append(rec)
        self._write()
        return rec

    def add_recovery(self, iteration: int, rec: Recovery) -> Recovery:
        self.recovered[str(iteration)] = rec
        self._write()
        return rec

    def _write(self) -> None:
        state = {"config": self.config, "trials": [asdict(t) for t in self.trials],
                 "recovered": {k: r.to_dict() for k, r in self.recovered.items()}}
        atomic_write_bytes(self.path, json.dumps(state, indent=2).encode())


def dynamic_prune(model: nn.Module, evaluator: Evaluator, finetune: Finetune, config: DynamicPruning,
                  meta: ModelMeta, run_dir: str | Path, *, recover: bool = False,
                  training: dict[str, Any] | None = None, device: torch.device | str = "cpu",
                  say: Callable[[str], None] | None = None, recalibration: Iterable | None = None) -> DynamicResult:
    """Run the dynamic pruning; the caller's model is not changed.

    `evaluator` holds the validation split: it measures channel sparsity and judges every trial. `finetune` is
    called with stage "trial" for every trial (tagged by iteration and threshold) and, with `recover`, with
    stage "recover" for each iteration's winner. Writes `run_dir/state.json`, one model file per trial (and per
    recovered winner), and `run_dir/pruned.pt`. `training` describes what the fine-tunes do (epochs, images,
    learning rate...): a run resumed with other training is refused rather than mixed. More `iterations`
    extend a run; fewer are refused. `say(text)` hears one line per trial. With `config.recalibrate`, every
    pruned trial's BatchNorm statistics are re-estimated on that many images of `recalibration` (training
    batches, in a fixed order) before it is judged or fine-tuned, unless the original statistics score better.
    """
    if config.recalibrate and recalibration is None:
        raise ConfigError("recalibrating BatchNorm after each surgery needs training batches (recalibration=...)")
    say = say or (lambda text: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(config).items()}
    settings["subject"] = run_digest(model, evaluator)
    if not config.recalibrate:
        del settings["recalibrate"]  # (absent when off: runs from before this option still resume)
    if recover:
        settings["recover"] = True  # (absent otherwise: runs from before this option still resume)
    if training:
        settings["training"] = dict(training)
    log = _RunLog(run / "state.json", settings)
    done = max((t.iteration + 1 for t in log.trials), default=0)
    if done > config.iterations:
        raise ConfigError(f"{run} already holds {done} iterations; ask for at least {done} to resume it (its "
                          f"earlier results are in state.json), or use another directory")
    shape = tuple(meta.input_shape)
    current = model.cpu().eval()
    baseline = evaluator.evaluate(current).accuracy
    target = target_accuracy(config.target, config.drop, baseline)
    macs0 = count_macs(current, shape)
    accuracy = baseline
    for it in range(config.iterations):
        graph = analyze(current, torch.zeros(1, *shape), skip=config.skip)
        groups = [g.name for g in graph.groups]
        if not config.residual_stream:
            residual = graph.residual_groups()
            groups = [g for g in groups if g not in residual]
        sparsity = channel_sparsity(graph, evaluator.batches, device, config.max_images)
        groups = [g for g in groups if g in sparsity]
        search = ThresholdSearch(config.lower, config.upper, tolerance=config.tolerance)
        best: TrialRecord | None = None
        while not search.done:
            threshold = round(search.current, 6)
            rec = log.trial(it, threshold)
            if rec is None:
                plan = sparsity_plan(sparsity, threshold, config.min_channels, groups)
                rec = log.add_trial(_trial(graph, plan, it, threshold, target, accuracy, evaluator, finetune,
                                           meta, run, (recalibration, config.recalibrate)))
            say(f"iteration {it + 1}, threshold {threshold:.4f}: {rec.removed} channels removed, accuracy "
                f"{rec.accuracy:.2%} {'meets' if rec.passed else 'misses'} {target:.2%}")
            if rec.passed and rec.removed and (best is None or rec.macs < best.macs):
                best = rec
            search.feedback(rec.passed)
        if best is None:
            break  # nothing more could be removed at the target: later iterations would start from the same model
        current, _ = load_model(run / best.model, model=copy.deepcopy(model))  # the caller's class, any model
        accuracy = best.accuracy
        if recover:
            rec = log.recovered.get(str(it)) or log.add_recovery(
                it, _recover(current, best, it, evaluator, finetune, meta, run))
            current, _ = load_model(run / rec.model, model=copy.deepcopy(model))
            accuracy = rec.accuracy
    path = run / "pruned.pt"
    save_model(path, current, meta)
    return DynamicResult(model=current, baseline_accuracy=baseline, target=target, accuracy=accuracy,
                         macs=(macs0, count_macs(current, tuple(meta.input_shape))), trials=log.trials, path=path,
                         recovered=log.recovered)


def _trial(graph: ChannelGraph, plan: dict[str, list[int]], iteration: int, threshold: float, target: float,
           accuracy: float, evaluator: Evaluator, finetune: Finetune, meta: ModelMeta, run: Path,
           recalibration: tuple[Iterable | None, int] = (None, 0)) -> TrialRecord:
    """Prune the graph's model by `plan`, recalibrate its BatchNorms if asked (keeping the statistics that score
    better), fine-tune it, keep the better weights, and save it."""
    shape = tuple(meta.input_shape)
    if not plan:
        return TrialRecord(iteration, threshold, removed=0, passed=True, accuracy=accuracy,
                           macs=count_macs(graph.model, shape), model=None)
    pruned = apply_plan(graph, plan).model
    before = evaluator.evaluate(pruned).accuracy
    batches, images = recalibration
    if images:  # light pruning can leave the original statistics better than a few hundred images' (BENCHMARKS)
        raw = copy.deepcopy(pruned.state_dict())
        recalibrate_batchnorm(pruned, batches, images)
        recalibrated = evaluator.evaluate(pruned).accuracy
        if recalibrated < before:
            pruned.load_state_dict(raw)
        before = max(before, recalibrated)
    kept = copy.deepcopy(pruned.state_dict())
    finetune("trial", pruned, tag=f"it{iteration}-p{threshold:.4f}")
    pruned.cpu().eval()
    after = evaluator.evaluate(pruned).accuracy
    if before > after:  # a short fine-tune can hurt before it helps: keep the better weights
        pruned.load_state_dict(kept)
    path = run / f"it{iteration}-p{threshold:.4f}.pt"
    save_model(path, pruned, meta)
    best = max(before, after)
    return TrialRecord(iteration, threshold, removed=sum(len(v) for v in plan.values()), passed=best >= target,
                       accuracy=best, macs=count_macs(pruned, shape), model=path.name, before_finetune=before,
                       after_finetune=after)


def _recover(current: nn.Module, winner: TrialRecord, iteration: int, evaluator: Evaluator, finetune: Finetune,
             meta: ModelMeta, run: Path) -> Recovery:
    """Fine-tune an iteration's winner longer, keep the better weights, and save them."""
    kept = copy.deepcopy(current.state_dict())
    finetune("recover", current, tag=f"it{iteration}-recover")
    current.cpu().eval()
    after = evaluator.evaluate(current).accuracy
    if after < winner.accuracy:
        current.load_state_dict(kept)
    rec = Recovery(source=winner.model, before=winner.accuracy, after=after, accuracy=max(after, winner.accuracy),
                   model=f"it{iteration}-recovered.pt")
    save_model(run / rec.model, current, meta)
    return rec
