"""Distillation as a setting of any fine-tune: which loss, from which teacher, on which layers.

A method calls its `Finetune` with the model it is training (a pruned trial, a PCA network, a fused model...),
whose widths are known only then; feature distillation's adapters depend on them. `distilling(finetune, ...)`
therefore wraps a `Finetune` and builds the hooks for each call's own model, so every method that fine-tunes
can distill without knowing it.

    finetune = distilling(finetuner, DistillSpec("relation", layers=("layer3",)), teacher, example_input)
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from ..finetune import Finetune
from ..train import TrainHook
from .feature import FeatureDistillation
from .relation import KINDS, RelationDistillation
from .response import Distillation

__all__ = ["DistillSpec", "distillation_hooks", "distilling", "DISTILL_KINDS"]

DISTILL_KINDS = ("response", "feature", "relation")


@dataclass(frozen=True)
class DistillSpec:
    """Pure data. `kind`: response (soft targets, `temperature` and `alpha`), feature (FitNets on `layers`) or
    relation (`relation`: rkd or sp, on `layers`); `weight` scales the feature or relation term (None: the
    kind's default). A layer is named "student:teacher" where the two architectures differ, else by one name
    both have."""

    kind: str = "response"
    layers: tuple[str, ...] = ()
    relation: str = "rkd"
    temperature: float = 4.0
    alpha: float = 0.9
    weight: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DISTILL_KINDS:
            raise ConfigError(f"distillation is one of {', '.join(DISTILL_KINDS)}; got {self.kind!r}")
        if self.relation not in KINDS:
            raise ConfigError(f"the relation loss is one of {', '.join(KINDS)}; got {self.relation!r}")
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.kind != "response" and not self.layers:
            raise ConfigError(f"{self.kind} distillation needs the layers to match (e.g. layer3, the output of a "
                              "network's last stage)")
        if self.weight is not None and self.weight <= 0:
            raise ConfigError(f"the distillation weight must be > 0; got {self.weight}")

    def as_dict(self) -> dict:
        """What a run records (response alone keeps the shape earlier runs recorded)."""
        if self.kind == "response":
            return {"temperature": self.temperature, "alpha": self.alpha}
        return {"kind": self.kind, "layers": list(self.layers), "weight": self.weight,
                **({"relation": self.relation} if self.kind == "relation" else {})}


def distillation_hooks(spec: DistillSpec, teacher: nn.Module, student: nn.Module,
                       example_input: torch.Tensor) -> list[TrainHook]:
    """The hooks that make `student` learn from `teacher` as `spec` says."""
    if spec.kind == "response":
        return [Distillation(teacher, spec.temperature, spec.alpha)]
    pairs = dict(name.split(":", 1) if ":" in name else (name, name) for name in spec.layers)
    if spec.kind == "feature":
        return [FeatureDistillation(teacher, student, pairs, example_input, spec.weight or 1.0)]
    return [RelationDistillation(teacher, student, pairs, example_input, spec.relation, spec.weight)]


def distilling(finetune: Finetune, spec: DistillSpec, teacher: nn.Module, example_input: torch.Tensor) -> Finetune:
    """`finetune`, with each call's model also learning from `teacher` (hooks built for that model)."""
    teacher = copy.deepcopy(teacher).cpu().eval()
    if all(":" not in name for name in spec.layers):  # the student is the teacher's architecture, narrowed
        distillation_hooks(spec, teacher, teacher, example_input)  # bad layer names fail now, not mid-run

    def run(stage: str, model: nn.Module, hooks: Sequence[TrainHook] = (), *, tag: str | None = None,
            parameters: Sequence[nn.Parameter] | None = None) -> None:
        if hasattr(finetune, "runs") and not finetune.runs(stage):
            return
        extra = distillation_hooks(spec, teacher, model, example_input.to(next(model.parameters()).device))
        finetune(stage, model, [*hooks, *extra], tag=tag, parameters=parameters)

    run.runs = getattr(finetune, "runs", lambda stage: True)
    run.epochs = getattr(finetune, "epochs", {})
    return run
