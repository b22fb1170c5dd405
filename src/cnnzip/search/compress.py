"""`compress(model, evaluator, recipe)`: the Python twin of `cnnzip compress`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..distill import Distillation
from ..finetune import Finetuner
from ..io import ModelMeta
from ..measure import Evaluator
from ..train import TrainConfig
from .recipe import Recipe, apply_overrides
from .run import SearchResult, search

__all__ = ["compress"]


def compress(model: nn.Module, evaluator: Evaluator, recipe: Recipe | Mapping[str, Any], *, meta: ModelMeta,
             run_dir: str | Path, train: Any = None, calibration: Sequence | None = None,
             recalibration: Sequence | None = None, say: Callable[[str], None] | None = None, workers: int = 1,
             overrides: Sequence[str] = ()) -> SearchResult:
    """Run `recipe` (a `Recipe`, or its mapping as a YAML file spells it) on `model`: search each step's strength
    so that the accuracy on `evaluator` (a validation split) meets the recipe's target, fine-tune the winner on
    `train` (training batches, e.g. a shuffled, augmented `Loader`; needed only if the recipe fine-tunes) and
    write it to `run_dir` with every trial. `calibration` (clean training batches) is needed by a quantize step,
    `recalibration` (augmented training batches) by recalibrated trials (the default) and PCA widths.
    `overrides` are `--set` strings (`search.step=0.1`)."""
    if not isinstance(recipe, Recipe) or overrides:
        data = recipe.as_dict() if isinstance(recipe, Recipe) else dict(recipe)
        recipe = Recipe.from_dict(apply_overrides(data, list(overrides)))
    tune = recipe.finetune
    finetune = None
    if tune.epochs:
        if train is None:
            raise ValueError("the recipe fine-tunes the winner: pass train=<training batches>")
        hooks = [Distillation(model)] if tune.distill else []
        finetune = Finetuner(train, {"structured": tune.structured_epochs, "final": tune.final_epochs,
                                     "shared": tune.centroid_epochs}, TrainConfig(lr=tune.lr), hooks=hooks,
                             run_dir=Path(run_dir) / "finetune", fingerprint={"recipe": recipe.as_dict()})
    return search(model, evaluator, meta, recipe.to_search(), run_dir, finetune=finetune, say=say,
                  calibration=calibration, recalibration=recalibration, workers=workers)
