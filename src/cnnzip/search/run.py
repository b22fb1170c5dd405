"""`search`: the smallest file that still meets the user's accuracy target, found on the validation split.

A search is a run directory: `config.json` (what was asked), `trials.jsonl` (every accuracy check), and at the
end `best.cnnz` (or `best.pt` without deep compression) and `result.json`. Rerunning the same search in the same
directory resumes it: recorded trials are replayed, not recomputed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..finetune import Finetuner
from ..io import ModelMeta, atomic_write_text, load, refuse_changes, skeleton
from ..measure import Evaluator, run_digest, target_accuracy
from .candidates import Compressor, Finetune, Pipeline
from .plots import can_plot, plot_margin_sweep, plot_trajectory
from .replay import margin_sweep
from .strategies import STRATEGIES
from .trials import Trial, Trials

__all__ = ["SearchConfig", "SearchResult", "search", "resolve_target", "OBJECTIVES"]

OBJECTIVES = ("size", "latency-b1", "latency-b256")


@dataclass(frozen=True)
class SearchConfig:
    """What to search. Pure data; it is written to the run directory and a resumed run must match it.

    The target is an absolute accuracy (`target=0.9`) or a drop from the baseline's validation accuracy
    (`drop=0.01` = one point below). `step` is the grid spacing of every ratio axis, from 0 to `max_ratio`.
    `objective`: what the winner minimises among the passing candidates: 'size' (file bytes) or 'latency-b1' /
    'latency-b256' (ONNX Runtime time at that batch size, relative to the original model's fp32 file, measured
    for every candidate that passes; structured pruning only, as deep compression's zeros run no faster).
    `recovery_images`: every candidate is first fine-tuned for one pass over this many training images (the
    `recovery` given to `search`, stage "final", pruned weights held at zero), so that the search decides on
    what a candidate becomes after a short recovery rather than on its state right after pruning; 0 = never.
    `recovery_distill` records that the recovery distils from the starting model.
    """

    pipeline: Pipeline = field(default_factory=Pipeline)
    strategy: str = "bisect"
    target: float | None = None
    drop: float | None = None
    step: float = 0.05
    max_ratio: float = 0.95
    margin: int = 5
    early_exit: bool | None = None  # default: on for bisect, off for grid and margin (as the paper)
    max_checks: int | None = None
    time_budget: float | None = None
    objective: str = "size"
    recovery_images: int = 0
    recovery_distill: bool = False

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}; got {self.strategy!r}")
        if (self.target is None) == (self.drop is None):
            raise ConfigError("give exactly one of target (an accuracy) and drop (points below the baseline)")
        if self.target is not None and not 0 < self.target <= 1:
            raise ConfigError(f"the target accuracy must be in (0, 1]; got {self.target}")
        if self.drop is not None and not 0 <= self.drop < 1:
            raise ConfigError(f"the drop must be in [0, 1); got {self.drop}")
        if not 0 < self.step <= self.max_ratio < 1:
            raise ConfigError("need 0 < step <= max_ratio < 1")
        if self.margin < 0:
            raise ConfigError("margin must be >= 0")
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}; got {self.objective!r}")
        if not isinstance(self.recovery_images, int) or isinstance(self.recovery_images, bool) \
                or self.recovery_images < 0:
            raise ConfigError(f"recovery_images is a number of training images (0: none); got "
                              f"{self.recovery_images!r}")
        if self.recovery_distill and not self.recovery_images:
            raise ConfigError("recovery_distill distils during the trials' recovery: give recovery_images too")
        if self.objective != "size" and "dc" in self.pipeline.axes:
            raise ConfigError("deep compression's zeros and shared values do not make ONNX Runtime faster: a latency "
                              "objective searches structured pruning (--order ns) or low-rank factors (lr, ns-lr), "
                              "with or without int8")

    @property
    def grid(self) -> list[float]:
        n = int(round(self.max_ratio / self.step)) + 1
        return [round(i * self.step, 10) for i in range(n) if i * self.step <= self.max_ratio + 1e-9]

    @property
    def latency_batch(self) -> int | None:
        """The batch size a latency objective times at; None for the size objective."""
        return None if self.objective == "size" else int(self.objective.removeprefix("latency-b"))

    @property
    def uses_early_exit(self) -> bool:
        return self.strategy == "bisect" if self.early_exit is None else self.early_exit

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pipeline"]["skip"] = list(self.pipeline.skip)
        return d


@dataclass
class SearchResult:
    best: Trial | None
    target: float
    baseline_accuracy: float
    cost: dict[str, float]
    trials: list[Trial]
    path: Path | None  # the winner's file
    complete: bool  # False if a budget stopped the search
    final_accuracy: float | None = None  # validation accuracy of the file as written (after any fine-tuning)
    final_size: int | None = None  # its bytes
    finetuned: bool = False
    sweep: list[dict] | None = None  # margin strategy: the winner at every margin 0..margin (replayed)

    def as_dict(self) -> dict[str, Any]:
        return {"best": self.best.__dict__ if self.best else None, "target": self.target,
                "baseline_accuracy": self.baseline_accuracy, "cost": self.cost, "complete": self.complete,
                "path": str(self.path) if self.path else None, "final_accuracy": self.final_accuracy,
                "final_size": self.final_size, "finetuned": self.finetuned, "margin_sweep": self.sweep}


def _recovery_key(config: SearchConfig, recovery: Finetune | None) -> dict | None:
    """What the trials' recovery does, for their records: a resumed search replays only trials recovered the same
    way (a `Finetuner`'s settings and data fingerprint; another callable by name)."""
    if recovery is None:
        return None
    if isinstance(recovery, Finetuner):
        how = {"epochs": dict(recovery.epochs), "train": asdict(recovery.config),
               "fingerprint": dict(recovery.fingerprint)}
    else:
        how = {"callable": getattr(recovery, "__qualname__", type(recovery).__qualname__)}
    key = {"images": config.recovery_images, "distill": config.recovery_distill, **how}
    return json.loads(json.dumps(key, sort_keys=True, default=str))  # as the records will read it back


def resolve_target(config: SearchConfig, baseline_accuracy: float) -> float:
    """The absolute accuracy to meet; a target above the baseline is refused with advice."""
    return target_accuracy(config.target, config.drop, baseline_accuracy)


def search(model: nn.Module, evaluator: Evaluator, meta: ModelMeta, config: SearchConfig,
           run_dir: str | Path, finetune: Finetune | None = None,
           say: Callable[[str], None] | None = None, calibration: Sequence | None = None,
           recovery: Finetune | None = None, recalibration: Sequence | None = None, workers: int = 1,
           ray_address: str | None = None) -> SearchResult:
    """Search for the smallest candidate whose accuracy on `evaluator` (a validation split) meets the target.

    The caller's model is not changed. The winner is written to `run_dir` and its trials to trials.jsonl.
    Trials are never fine-tuned (that would multiply the cost by the epochs); the winner is rebuilt with
    `finetune` if given (see `candidates.STAGES`). The written file is reloaded and evaluated in full.
    `say(text)` hears one line per stage and per accuracy check. `calibration` (training batches) is needed when
    the pipeline quantizes; `recalibration` (training batches augmented as in training; `calibration` if not
    given) when it recalibrates. `recovery` (with `config.recovery_images`) fine-tunes every candidate before its
    check: a `Finetune` that trains the stage "final" for one pass over that many training images; its
    checkpoints make a killed search resume mid-recovery.
    """
    if bool(config.recovery_images) != (recovery is not None):
        raise ConfigError("a search with recovery_images needs the recovery fine-tune, and only it takes one")
    say = say or (lambda text: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    config_path = run / "config.json"
    budgets = ("max_checks", "time_budget")  # a search stopped by a budget resumes with another one, or none
    settings = {**config.as_dict(), "subject": run_digest(model, evaluator)}

    if config_path.exists():
        refuse_changes(json.loads(config_path.read_text()), settings, run, "search", free=budgets)
    atomic_write_text(config_path, json.dumps(settings, indent=2))
    say("evaluating the baseline on the validation split")
    baseline = evaluator.evaluate(model).accuracy
    target = resolve_target(config, baseline)
    compressor = Compressor(model, config.pipeline, meta, workdir=run / "tmp", calibration=calibration,
                            recalibration=recalibration)
    trials = Trials(compressor, evaluator, target, config.grid, run / "trials.jsonl", strategy=config.strategy,
                    early_exit=config.uses_early_exit, max_checks=config.max_checks, time_budget=config.time_budget,
                    say=say, objective=config.objective, latency_batch=config.latency_batch,
                    recovery=recovery, recovery_key=_recovery_key(config, recovery), workers=workers,
                    ray_address=ray_address, worker_threads=max(1, torch.get_num_threads() // workers))
    if trials.done:
        say(f"resuming: {len(trials.done)} accuracy checks already recorded in {trials.log}")
    goal = "smallest file" if config.objective == "size" else f"fastest model at batch {config.latency_batch}"
    say(f"searching ({config.strategy}, {config.pipeline.order}) for the {goal} at validation accuracy >= "
        f"{target:.2%} (baseline {baseline:.2%})")
    strategy = STRATEGIES[config.strategy]
    n = len(config.grid)
    try:
        best = strategy(trials, n) if config.strategy == "grid" else strategy(trials, n, config.margin)
    finally:
        trials.close()
    path = final_accuracy = final_size = None
    if best is not None:
        suffix = ".int8.onnx" if config.pipeline.quantize else ".cnnz" if "dc" in config.pipeline.axes else ".pt"
        path = run / f"best{suffix}"
        say(f"writing the winner to {path}" + (" (fine-tuned)" if finetune is not None else
                                                 " (recovered as in its trial)" if recovery is not None else ""))
        compressor.build(best.ratios, keep_file=path, finetune=finetune if finetune is not None else recovery)
        final_accuracy = evaluator.evaluate(load(path, skeleton(model))[0]).accuracy
        final_size = path.stat().st_size
    result = SearchResult(best=best, target=target, baseline_accuracy=baseline, cost=trials.cost(),
                          trials=list(trials.done.values()), path=path, complete=not trials.exhausted,
                          final_accuracy=final_accuracy, final_size=final_size, finetuned=finetune is not None)
    if config.strategy == "margin" and result.complete and len(config.pipeline.axes) == 2:
        result.sweep = margin_sweep(result.trials, config.pipeline.axes, n, range(config.margin + 1))
    if can_plot():
        title = f"{config.strategy} search, {config.pipeline.order}, target {target:.2%}"
        plot_trajectory(result.trials, target, config.pipeline.axes, run / "trajectory.png", title)
        if result.sweep:
            plot_margin_sweep(result.sweep, run / "margin_sweep.png", f"margin sweep, target {target:.2%}")
    (run / "result.json").write_text(json.dumps(result.as_dict(), indent=2))
    shutil.rmtree(run / "tmp", ignore_errors=True)  # the scratch file of the last candidate
    return result
