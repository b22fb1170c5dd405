"""The one fine-tune contract: every method that trains takes a `Finetune` and calls it by stage.

    finetune(stage, model, hooks=(), *, tag=None, parameters=None)

trains `model` in place for the named stage ("pruned" and "shared" in deep compression, "trial" and
"recover" in dynamic pruning, "short" and "long" in block removal, "structured", "final" and "shared" in the
search), adding the method's `hooks` (fixed masks, shared centroids, distillation); `tag` names one call of
a stage that runs many times (a trial), `parameters` restricts what trains (one block). A stage the caller
does not want trained returns at once. Methods never build a training loop of their own, so the CLI, the
benchmarks and a notebook pass the same thing: a `Finetuner`, or any function with this signature.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from .errors import ConfigError
from .measure import Evaluator, run_digest
from .train import TrainConfig, TrainHook, fit

__all__ = ["Finetune", "Finetuner"]


class Finetune(Protocol):
    def __call__(self, stage: str, model: nn.Module, hooks: Sequence[TrainHook] = (), *, tag: str | None = None,
                 parameters: Sequence[nn.Parameter] | None = None) -> None: ...


@dataclass
class Finetuner:
    """A `Finetune` over `fit`: per-stage epochs and data, and a resumable checkpoint for every call.

    - `epochs`: stage -> epochs; a stage missing or at 0 is not trained.
    - `batches`: the training batches, or stage -> batches where stages train on different data.
    - `config`: the optimiser settings (its `epochs` is replaced by the stage's).
    - `hooks`: added to every call's own hooks (e.g. distillation from the starting model).
    - `run_dir`: where checkpoints go, one per call, `<tag or stage>-<hash>.pt`. The hash covers `fingerprint`
      (what the config does not say: the data, the batch size), the stage, the tag and the starting weights,
      so a killed run resumes its fine-tune and a changed one starts afresh.
    - `on_start(stage, model)`, `on_end(stage, model)`: called before and after a stage trains (e.g. to
      measure the model).
    """

    batches: Any
    epochs: Mapping[str, int]
    config: TrainConfig = field(default_factory=TrainConfig)
    hooks: Sequence[TrainHook] = ()
    run_dir: str | Path | None = None
    fingerprint: Mapping[str, Any] = field(default_factory=dict)
    device: torch.device | str | None = None
    evaluator: Evaluator | None = None
    progress: bool = False
    on_start: Callable[[str, nn.Module], None] | None = None
    on_end: Callable[[str, nn.Module], None] | None = None

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.epochs.items() if v < 0}
        if bad:
            raise ConfigError("fine-tuning epochs must be 0 (none) or more; got "
                              + ", ".join(f"{k}: {v}" for k, v in bad.items()))

    def runs(self, stage: str) -> bool:
        return self.epochs.get(stage, 0) > 0

    def __call__(self, stage: str, model: nn.Module, hooks: Sequence[TrainHook] = (), *, tag: str | None = None,
                 parameters: Sequence[nn.Parameter] | None = None) -> None:
        if not self.runs(stage):
            return
        if self.on_start is not None:
            self.on_start(stage, model)
        checkpoint = None
        # The starting weights are part of the key: another model reaching this stage never resumes this one.
        fingerprint = {**self.fingerprint, "stage": stage, "tag": tag, "start": run_digest(model)}
        if self.run_dir is not None:
            key = hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode()).hexdigest()[:12]
            checkpoint = Path(self.run_dir) / f"{tag or stage}-{key}.pt"
        batches = self.batches[stage] if isinstance(self.batches, Mapping) else self.batches
        fit(model, batches, replace(self.config, epochs=self.epochs[stage]), hooks=[*self.hooks, *hooks],
            evaluator=self.evaluator, checkpoint=checkpoint, device=self.device, parameters=parameters,
            progress=self.progress, fingerprint=fingerprint)
        model.cpu()
        if self.on_end is not None:
            self.on_end(stage, model)
