"""Mixed pruning with PCA and the geometric median (SPEC §3): design a smaller network by PCA, train it, then
prune it further by FPGM and fine-tune.

  1. `pca_prune`: each layer's width (and, for the zoo's VGGs, the depth) from PCA of the trained model's
     activations; new weights, as the paper trains the new network, or with `inherit` the original's;
  2. finetune("pca", model): train the PCA network (from new weights this is training from scratch: give the
     stage a from-scratch schedule);
  3. FPGM (filters nearest the geometric median of their layer) at `ratio` per layer on the trained PCA
     network, by the verified channel surgery, then BatchNorm recalibration if asked;
  4. finetune("fpgm", model): fine-tune the pruned network.

Every stage's model is written to the run directory before the next starts (`pca-init.pt`, `pca.pt`,
`pruned.pt`) beside `state.json`; a killed run resumes at the stage it was in, and inside a fine-tune from its
last checkpoint when the `Finetune` keeps them (a `Finetuner` with a run_dir). A rerun with other settings,
another model or other validation data is refused.
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
from ..measure import Evaluator, count_macs, count_parameters, run_digest
from ..train import recalibrate_batchnorm
from .channels import ChannelPruning, prune_channels
from .pca import PcaPruning, pca_prune

__all__ = ["MixedPruning", "MixedResult", "mixed_prune", "STAGES"]

STAGES = ("pca", "fpgm")
"""The fine-tune stages: training the PCA network, and fine-tuning it after FPGM."""


@dataclass(frozen=True)
class MixedPruning:
    """Settings. Pure data; a resumed run must match it."""

    pca: PcaPruning = field(default_factory=PcaPruning)
    ratio: float = 0.3  # FPGM: share of each layer's channels removed from the trained PCA network (0: none)
    inherit: bool = False  # start the PCA network from the original's weights instead of new ones
    recalibrate: int = 0  # training images that re-estimate BatchNorm statistics after the FPGM surgery

    def __post_init__(self) -> None:
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"the FPGM ratio is a share of each layer's channels in [0, 1); got {self.ratio}")
        if self.recalibrate < 0:
            raise ConfigError(f"recalibrate is a number of training images (0: none); got {self.recalibrate}")


@dataclass
class MixedResult:
    model: nn.Module  # the final model: after FPGM and its fine-tune (or the trained PCA network at ratio 0)
    plan: list[dict[str, Any]]  # the PCA table: layer, width, PCA width, variance kept, dropped
    dropped: list[str]  # layers removed by the PCA depth rule
    stages: dict[str, dict[str, Any]]  # original, pca, fpgm -> MACs, parameters, validation accuracy
    path: Path


def mixed_prune(model: nn.Module, config: MixedPruning, batches: Iterable, finetune: Finetune, meta: ModelMeta,
                run_dir: str | Path, *, evaluator: Evaluator | None = None, recalibration: Iterable | None = None,
                training: dict[str, Any] | None = None, seed: int = 0, device: torch.device | str = "cpu",
                say: Callable[[str], None] | None = None) -> MixedResult:
    """Run the mixed pruning on `model` (not changed). `batches`: training images for the PCA (normalised);
    `evaluator`: the validation split each stage's model is measured on (optional); `recalibration`: training
    batches augmented as in training, needed with `config.recalibrate`; `training` describes the fine-tunes,
    so a resume with other ones is refused."""
    if config.recalibrate and recalibration is None:
        raise ConfigError("recalibrating BatchNorm after the FPGM surgery needs training batches (recalibration=...)")
    say = say or (lambda text: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    shape = tuple(meta.input_shape)
    example = torch.zeros(1, *shape)
    settings = {"pca": {**asdict(config.pca), "skip": list(config.pca.skip)}, "ratio": config.ratio,
                "inherit": config.inherit, "recalibrate": config.recalibrate, "seed": seed,
                "subject": run_digest(model, evaluator), **({"training": dict(training)} if training else {})}
    state = resume_state(run / "state.json", {"config": settings, "plan": None, "dropped": [], "stages": {}},
                         "mixed pruning")

    def write() -> None:
        atomic_write_bytes(run / "state.json", json.dumps(state, indent=2).encode())

    def measure(m: nn.Module) -> dict[str, Any]:
        m = m.cpu().eval()
        return {"macs": count_macs(m, shape), "params": count_parameters(m),
                "accuracy": evaluator.evaluate(m).accuracy if evaluator is not None else None}

    def load(name: str) -> nn.Module:
        if not (run / name).exists():
            raise ConfigError(f"{run / name} is missing, though {run / 'state.json'} records its stage as done; "
                              "use another directory, or delete state.json to start afresh")
        return load_model(run / name, model=copy.deepcopy(model) if not _zoo(model) else None)[0]

    if "original" not in state["stages"]:
        state["stages"]["original"] = measure(copy.deepcopy(model))
    if state["plan"] is None:
        say("measuring activations and choosing each layer's width by PCA")
        result = pca_prune(model, config.pca, batches, example, inherit=config.inherit, seed=seed, device=device)
        save_model(run / "pca-init.pt", result.model, meta)
        state["plan"] = [asdict(r) for r in result.plan.layers]
        state["dropped"] = result.dropped
        write()
    if "pca" not in state["stages"]:
        current = load("pca-init.pt")
        say("training the PCA network")
        finetune("pca", current, tag="pca")
        save_model(run / "pca.pt", current.cpu(), meta)
        state["stages"]["pca"] = measure(current)
        write()
    final = "pca.pt"
    if config.ratio > 0:
        final = "pruned.pt"
        if "fpgm" not in state["stages"]:
            current = load("pca.pt")
            say(f"pruning {config.ratio:.0%} of each layer's channels by the geometric median (FPGM)")
            pruned = prune_channels(current, ChannelPruning(method="fpgm", ratio=config.ratio, skip=config.pca.skip,
                                                            residual_stream=config.pca.residual_stream),
                                    example).model
            if config.recalibrate:
                recalibrate_batchnorm(pruned, recalibration, config.recalibrate)
            finetune("fpgm", pruned, tag="fpgm")
            save_model(run / "pruned.pt", pruned.cpu(), meta)
            state["stages"]["fpgm"] = measure(pruned)
            write()
    return MixedResult(model=load(final), plan=state["plan"], dropped=state["dropped"], stages=state["stages"],
                       path=run / final)


def _zoo(model: nn.Module) -> bool:
    """Whether the model file rebuilds it alone (a zoo model), so other depths load too."""
    return bool(getattr(model, "cnnzip_spec", None))
