"""Block removal, the paper's "layer fusion" (Electronics 2023, 12, 1208): remove whole thin residual blocks, and
let the block before each one learn to do its work. (Named apart from operator fusion, which `deploy` does.)

After channel pruning many residual blocks keep only a few inner channels. Repeatedly:
  1. the *material* block is the removable block with the fewest inner channels; a block is removable when
     its shortcut is the identity, so without its residual path it is just relu(x) (`RemovedBlock`);
  2. the *carrier* is the residual block before it with the same output shape (else the one after);
  3. the material block is removed, and the carrier alone is fine-tuned briefly ("short"), by default with
     knowledge distillation (T = 4) from the pruned model it all started from;
  4. every `long_every` removals the whole network is fine-tuned ("long") and evaluated; if it is still within
     `max_drop` of the pruned model, it is kept as a snapshot; otherwise fusion stops at the last snapshot.
Ablations: `loss="ce"` (no distillation), `short=False` (no short fine-tune); `fresh_copy` gives the fused
architecture with new weights, to train from scratch. During the short fine-tune only the carrier's weights
change, but every BatchNorm's running statistics follow the training data, as in any training-mode pass. With
`recalibrate`, those statistics are first re-estimated after each removal (`train.recalibrate_batchnorm`): the
layers after a removed block see other inputs, and without a short fine-tune nothing else would update them.

State is written after every step; a killed run resumes from its last completed step.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..distill import Distillation
from ..errors import ConfigError
from ..finetune import Finetune
from ..io import ModelMeta, atomic_write_bytes, load_model, resume_state, save_model
from ..measure import Evaluator, count_macs, run_digest
from ..models import RemovedBlock, remove_blocks
from ..train import TrainHook, recalibrate_batchnorm

__all__ = ["Block", "BlockRemoval", "BlockRemovalResult", "residual_blocks", "choose_blocks", "remove_thin_blocks",
           "fresh_copy", "depth", "STAGES"]


@dataclass(frozen=True)
class Block:
    name: str
    width: int  # the fewest output channels of its inner convs (not the one feeding the addition)
    out_shape: tuple[int, ...]
    removable: bool


def _is_residual_block(m: nn.Module) -> bool:
    """Ours and the CIFAR ResNets' (`shortcut`), torchvision's (`downsample`)."""
    return isinstance(getattr(m, "conv1", None), nn.Conv2d) and (hasattr(m, "shortcut") or hasattr(m, "downsample"))


def _identity_shortcut(m: nn.Module) -> bool:
    if hasattr(m, "shortcut"):
        s = m.shortcut
        return isinstance(s, nn.Identity) or (isinstance(s, nn.Sequential) and len(s) == 0)
    return m.downsample is None


@torch.no_grad()
def residual_blocks(model: nn.Module, input_shape: tuple[int, ...]) -> list[Block]:
    """The model's residual blocks (not yet removed) in forward order, with widths and output shapes."""
    found = {n: m for n, m in model.named_modules() if _is_residual_block(m)}
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    order: list[str] = []

    def hook(name):
        def record(module, inputs, output):
            shapes[name] = (tuple(inputs[0].shape[1:]), tuple(output.shape[1:]))
            order.append(name)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in found.items()]
    was_training = model.training
    try:
        device = next(model.parameters()).device
        model.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    blocks = []
    for name in order:
        m = found[name]
        convs = _inner_convs(m)
        width = min(c.out_channels for c in convs[:-1]) if len(convs) > 1 else convs[0].out_channels
        in_shape, out_shape = shapes[name]
        blocks.append(Block(name, width, out_shape, _identity_shortcut(m) and in_shape == out_shape))
    return blocks


def _inner_convs(block: nn.Module) -> list[nn.Conv2d]:
    return [c for n, c in block.named_modules()
            if isinstance(c, nn.Conv2d) and not n.startswith(("shortcut", "downsample"))]


def depth(model: nn.Module) -> int:
    """Weight layers on the main path: convs and linears, not counting projection shortcuts (ResNet-56: 56)."""
    return sum(1 for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))
               and ".shortcut" not in f".{n}" and ".downsample" not in f".{n}")


def choose_blocks(blocks: Sequence[Block], max_width: int | None = None) -> tuple[Block, Block | None] | None:
    """(material, carrier): the thinnest removable block (the first of equals; at most `max_width` wide) and its
    neighbour of the same output shape, the one before it if there is one. None when no block can be removed."""
    removable = [b for b in blocks if b.removable and (max_width is None or b.width <= max_width)]
    if not removable:
        return None
    material = min(removable, key=lambda b: b.width)
    k = blocks.index(material)
    before = [b for b in blocks[:k] if b.out_shape == material.out_shape]
    after = [b for b in blocks[k + 1:] if b.out_shape == material.out_shape]
    carrier = before[-1] if before else (after[0] if after else None)
    return material, carrier


@dataclass(frozen=True)
class BlockRemoval:
    """Settings. Pure data; a resumed run must match it."""

    loss: str = "kd"  # or "ce": the ablation without distillation
    temperature: float = 4.0
    alpha: float = 0.9
    short: bool = True  # the short fine-tune of the carrier after each removal
    long_every: int = 4
    max_drop: float = 0.03  # stop when accuracy falls more than this below the pruned model's
    max_width: int | None = None  # only blocks at most this wide are candidates (None: any)
    max_removals: int | None = None
    recalibrate: int = 0  # training images that re-estimate BatchNorm statistics after each removal (0: none)

    def __post_init__(self) -> None:
        if self.loss not in ("kd", "ce"):
            raise ConfigError(f"loss must be kd or ce; got {self.loss!r}")
        if self.long_every < 1 or not 0 <= self.max_drop < 1:
            raise ConfigError("long_every must be >= 1 and max_drop in [0, 1)")
        if not isinstance(self.recalibrate, int) or self.recalibrate < 0:
            raise ConfigError(f"recalibrate is a number of training images (0: none); got {self.recalibrate!r}")


@dataclass
class BlockRemovalResult:
    model: nn.Module  # the last snapshot within max_drop
    reference_accuracy: float  # the pruned model's
    rows: list[dict]  # one per snapshot: removed, depth, fused layers, MACs, accuracy, file
    path: Path


STAGES = ("short", "long")
"""The fine-tune stages: the carrier alone after each removal, and the whole network every `long_every`."""


def remove_thin_blocks(model: nn.Module, evaluator: Evaluator, finetune: Finetune, config: BlockRemoval,
                       meta: ModelMeta, run_dir: str | Path, *, training: dict[str, Any] | None = None,
                       say: Callable[[str], None] | None = None,
                       recalibration: Iterable | None = None) -> BlockRemovalResult:
    """Remove blocks of the (pruned) `model`, which is also the teacher; the caller's model is not changed.

    `finetune` is called with stage "short" (with `parameters`: the carrier's only) after each removal, and
    with stage "long" (everything) every `long_every` removals. Writes `run_dir/state.json`, `run_dir/current.pt` and one `fused-<k>.pt` per snapshot.
    `training` describes what the fine-tunes do (epochs, images...): a run resumed with other training is refused.
    `say(text)` hears one line per removal and per snapshot. With `config.recalibrate`, `recalibration` gives
    the training batches (augmented as in training, in a fixed order) that BatchNorm statistics are re-estimated
    on after each removal.
    """
    if config.recalibrate and recalibration is None:
        raise ConfigError("recalibrating BatchNorm after each removal needs training batches (recalibration=...)")
    say = say or (lambda text: None)
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    shape = tuple(meta.input_shape)
    teacher = copy.deepcopy(model).cpu().eval()
    settings = {**asdict(config), "subject": run_digest(model, evaluator)}
    if not config.recalibrate:
        del settings["recalibrate"]  # (absent when off: runs from before this option still resume)
    if training:
        settings["training"] = dict(training)
    state_path = run / "state.json"
    reference = evaluator.evaluate(teacher).accuracy
    floor = reference - config.max_drop
    state = resume_state(state_path, {"config": settings, "removed": [], "steps": [], "rows": [
        {"removed": 0, "depth": depth(teacher), "fused_layers": 0, "macs": count_macs(teacher, shape),
         "accuracy": reference, "file": None}], "stopped": False}, "layer fusion")
    current = copy.deepcopy(teacher)
    if state["removed"]:
        current, _ = load_model(run / "current.pt", model=copy.deepcopy(model))

    def hooks() -> list[TrainHook]:
        return [Distillation(teacher, config.temperature, config.alpha)] if config.loss == "kd" else []

    def commit() -> None:
        save_model(run / "current.pt", current, meta)
        atomic_write_bytes(state_path, json.dumps(state, indent=2).encode())

    while not state["stopped"]:
        k = len(state["removed"])
        pick = choose_blocks(residual_blocks(current, shape), config.max_width)
        done = pick is None or (config.max_removals is not None and k >= config.max_removals)
        if not done:
            material, carrier = pick
            say(f"removing {material.name} ({material.width} channels wide)"
                + (f", carried by {carrier.name}" if carrier else ""))
            remove_blocks(current, [material.name])
            recalibrate_batchnorm(current, recalibration or (), config.recalibrate)
            if config.short and carrier is not None:
                finetune("short", current, hooks(), tag=f"short-{k + 1}",
                         parameters=list(current.get_submodule(carrier.name).parameters()))
                current.cpu().eval()
            state["removed"].append(material.name)
            state["steps"].append({"removed": material.name, "width": material.width,
                                   "carrier": carrier.name if carrier else None})
            k += 1
        if k > 0 and (k % config.long_every == 0 or done) and k != state["rows"][-1]["removed"]:
            finetune("long", current, hooks(), tag=f"long-{k}")
            current.cpu().eval()
            acc = evaluator.evaluate(current).accuracy
            say(f"{k} blocks removed, after the long fine-tune: accuracy {acc:.2%} (floor {floor:.2%})")
            if acc >= floor:
                path = run / f"fused-{k}.pt"
                save_model(path, current, meta)
                state["rows"].append({"removed": k, "depth": depth(current), "fused_layers":
                                      state["rows"][0]["depth"] - depth(current), "macs": count_macs(current, shape),
                                      "accuracy": acc, "file": path.name})
            else:
                state["rows"].append({"removed": k, "depth": depth(current), "fused_layers":
                                      state["rows"][0]["depth"] - depth(current), "macs": count_macs(current, shape),
                                      "accuracy": acc, "file": None, "below_floor": True})
                done = True
        state["stopped"] = done
        commit()
    kept = [r for r in state["rows"] if r["file"]]
    best = load_model(run / kept[-1]["file"], model=copy.deepcopy(model))[0] if kept else teacher
    return BlockRemovalResult(model=best, reference_accuracy=reference, rows=state["rows"],
                        path=run / kept[-1]["file"] if kept else run)


def fresh_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture (widths, removed blocks) with newly initialised weights: the from-scratch ablation."""
    fresh = copy.deepcopy(model)
    torch.manual_seed(seed)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters") and not isinstance(m, RemovedBlock):
            m.reset_parameters()
    return fresh


