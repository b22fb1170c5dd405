"""The one training loop: fine-tuning, sparsity training, distillation and QAT all run through `fit`.

Methods change training through hooks (an extra loss term, a gradient edit, a post-step projection) instead of
writing loops of their own. The loop is seeded per epoch and checkpoints atomically after every epoch, so a run
killed at any moment resumes from its last finished epoch and ends with the same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .errors import ConfigError
from .io import atomic_save, differences
from .layout import InputLayout
from .measure import Evaluator

__all__ = ["TrainConfig", "TrainHook", "TrainResult", "fit", "select_device", "cosine_lr", "capture_features",
           "recalibrate_batchnorm"]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Pure data: it goes into the checkpoint and a resumed run must use the same values."""

    epochs: int = 1
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    warmup_epochs: float = 0.0
    min_lr: float = 0.0
    label_smoothing: float = 0.0
    seed: int = 0
    amp: bool = True  # mixed precision; only takes effect on CUDA

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ConfigError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.warmup_epochs <= max(self.epochs, 0):
            raise ConfigError(f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")


class TrainHook:
    """Extension points of `fit`. Override only what a method needs; every default does nothing.

    - `loss`: an extra term added to the cross-entropy (sparsity penalty, distillation). A hook that lists
      layer names in `features` also gets those layers' outputs of this batch, `features={name: tensor}`
      (feature and relation distillation, activation statistics).
    - `parameters`: tensors the hook itself learns (an adapter, a learned quantization scale); `fit` trains
      them beside the model's and keeps their values and optimizer state in its checkpoint.
    - `after_backward`: edit gradients before the optimizer step (slimming's subgradient, fixed masks).
    - `after_step`: edit weights after the step (re-apply masks, clamp).
    - `epoch_end`: observe metrics; return True to stop training early.
    Other state that must survive a resume: implement `state_dict` / `load_state_dict` (plain data and tensors).
    On the CPU, `inputs` and `features` may be channels_last (`cnnzip.layout`): reshape or flatten them rather
    than `.view`, and pass inputs to another model through its own `InputLayout`.
    """

    features: tuple[str, ...] = ()

    def loss(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor | None:
        return None

    def parameters(self) -> Iterable[nn.Parameter]:
        return ()

    def after_backward(self, model: nn.Module) -> None:
        return None

    def after_step(self, model: nn.Module) -> None:
        return None

    def epoch_end(self, model: nn.Module, epoch: int, metrics: dict[str, float]) -> bool | None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


@contextlib.contextmanager
def capture_features(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, the dict holds the latest output of each named layer of `model` (forward hooks)."""
    captured: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name in dict.fromkeys(names):
            handles.append(_layer(model, name).register_forward_hook(
                lambda _m, _inputs, output, name=name: captured.__setitem__(name, output)))
        yield captured
    finally:
        for h in handles:
            h.remove()


def _layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as exc:
        raise ConfigError(f"the model has no layer {name!r} to read features from") from exc


class _Batches(Protocol):
    def __iter__(self): ...
    def __len__(self) -> int: ...


@dataclass
class TrainResult:
    """Per-epoch metrics of a run (including the epochs done before a resume)."""

    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_epoch: int = 0

    @property
    def last(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable, images: int = 512,
                          device: torch.device | str | None = None) -> int:
    """Re-estimate every BatchNorm's running mean and variance on up to `images` training images; returns how many
    were used (0 when the model has no BatchNorm, which is then untouched).

    After a surgery the statistics a BatchNorm kept describe channels that are gone or inputs that changed, and a
    pruned model's raw accuracy mostly measures that mismatch; a few hundred images fix it without gradients
    ("adaptive BatchNorm", Li et al., EagleEye, ECCV 2020). The statistics are plain averages over the images
    (momentum None), in the order `batches` gives them, so a seeded loader gives the same model every time.
    Only the BatchNorms run in training mode; dropout and the rest stay in eval mode. Weights do not change.

    Give images augmented as in training: the statistics a model learned with describe augmented images, and
    clean ones move them (on the shared ResNet-56, recalibrating the unpruned model on 512 clean images costs 2.6
    points of accuracy; on augmented ones, 0.1).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms or images <= 0:
        return 0
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    was_training = {m: m.training for m in model.modules()}
    momentum = {m: m.momentum for m in norms}
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = torch.as_tensor(x)[: images - seen].to(device)
            if len(x) < 2:  # a BatchNorm after pooling to 1x1 needs two images
                break
            model(x)
            seen += len(x)
            if seen >= images:
                break
    finally:
        for m, mom in momentum.items():
            m.momentum = mom
        for m, training in was_training.items():
            m.train(training)
    if seen == 0:
        raise ConfigError("BatchNorm recalibration needs at least 2 images; the batches held none")
    return seen


def select_device(preference: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; anything else is passed to torch.device and checked.
    Under torchrun, `cuda` means this process's GPU, cuda:LOCAL_RANK."""
    if preference == "auto":
        if torch.cuda.is_available():
            return _this_ranks_gpu(torch.device("cuda"))
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(preference)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {preference!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for but CUDA is not available here; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"there is no {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError("device 'mps' was asked for but Apple's MPS is not available here; use cpu or auto")
    return _this_ranks_gpu(device)


def _this_ranks_gpu(device: torch.device) -> torch.device:
    """Under torchrun each process trains on its own GPU, cuda:LOCAL_RANK, unless the user named one."""
    w = distributed.world()
    if device.type == "cuda" and w.distributed:
        if device.index is not None and device.index != w.local_rank:
            raise ConfigError(f"under torchrun each process trains on its own GPU, cuda:LOCAL_RANK; {device} would "
                              "put them all on one: use --device cuda (or auto)")
        return torch.device("cuda", w.local_rank)
    return device


def cosine_lr(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate at a global step: linear warm-up, then cosine decay to `min_lr` at the last step."""
    total = max(config.epochs * steps_per_epoch, 1)
    warmup = int(round(config.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def fit(
    model: nn.Module,
    batches: _Batches,
    config: TrainConfig = TrainConfig(),  # noqa: B008 - frozen dataclass, safe as a default
    *,
    hooks: Sequence[TrainHook] = (),
    evaluator: Evaluator | None = None,
    checkpoint: str | Path | None = None,
    device: torch.device | str | None = None,
    parameters: Iterable[nn.Parameter] | None = None,
    progress: bool = True,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` in place with SGD + momentum and a cosine schedule; return the per-epoch history.

    `batches` yields (inputs, targets); if it has `set_epoch(e)` it is called first every epoch so that data
    order and augmentation are a function of (seed, epoch). `parameters` restricts what is trained (e.g. one
    block during a short fine-tune); by default, all of the model's parameters that require gradients.
    With `checkpoint`, state is written atomically after every epoch and an existing checkpoint is resumed;
    `fingerprint` describes what the config does not (data, batch size, starting weights) and must match too.
    On the CPU, batches of images go in channels_last layout (`cnnzip.layout`: faster convolutions). On the CPU
    a resumed run ends with the same weights as an uninterrupted one; on CUDA only if
    torch.use_deterministic_algorithms(True) is set, since some GPU kernels are not deterministic.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.to(device)
    params = [p for p in (parameters if parameters is not None else model.parameters()) if p.requires_grad]
    hook_params = [p for h in hooks for p in h.parameters()]
    for p in hook_params:
        p.data = p.data.to(device)
    if not params and not hook_params:
        raise ConfigError("nothing to train: no parameter requires gradients")
    groups = [{"params": params}] + ([{"params": hook_params}] if hook_params else [])
    optimizer = torch.optim.SGD([g for g in groups if g["params"]], lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.nesterov)
    features = [n for h in hooks for n in h.features]
    for name in features:  # checked before any work
        _layer(model, name)
    use_amp = config.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    batches, net = _data_parallel(model, batches, device, hook_params)
    steps_per_epoch = len(batches)
    if steps_per_epoch == 0:
        raise ConfigError("the training data yields no batch (is the batch size larger than the split?)")

    result = TrainResult()
    start_epoch = 0
    identity = {"fingerprint": fingerprint or {}, "hooks": [type(h).__name__ for h in hooks],
                "trained": [n for n, p in model.named_parameters() if any(p is q for q in params)]}
    if hook_params:  # (only then: checkpoints of runs without hook parameters keep their identity)
        identity["hook_parameters"] = [list(p.shape) for p in hook_params]
    if checkpoint is not None and Path(checkpoint).exists():
        start_epoch, stopped = _resume(Path(checkpoint), model, optimizer, scaler, hooks, config, identity, result)
        if stopped:
            return result

    layout = InputLayout(model)  # channels_last batches on the CPU: faster convolutions
    with distributed.synced_batchnorm(model):  # (under torchrun: statistics of the whole global batch)
        for epoch in range(start_epoch, config.epochs):
            torch.manual_seed(_epoch_seed(config.seed, epoch))  # dropout and any other global-RNG use
            if hasattr(batches, "set_epoch"):
                batches.set_epoch(epoch)
            try:
                metrics = _train_epoch(model, net, batches, config, optimizer, scaler, hooks, device, epoch,
                                       steps_per_epoch, use_amp, progress and distributed.is_main(), features,
                                       hook_params, layout)
            except RuntimeError as exc:
                if net is not model and "find_unused_parameters" in str(exc):
                    raise ConfigError("distributed training needs every trainable parameter to take part in the "
                                      "forward pass; this model has parameters that get no gradient. Freeze them "
                                      "(requires_grad=False) or train in one process") from exc
                raise
            distributed.broadcast_buffers(model)
            if evaluator is not None:
                metrics["val_acc"] = evaluator.evaluate(model).accuracy
            result.history.append(metrics)
            stop = any(bool(h.epoch_end(model, epoch, metrics)) for h in hooks)
            # Every rank writes (the state is the same on all; under the CLI each rank has its own run directory,
            # and a shared path is replaced atomically): a later fit that resumes from it resumes on every rank.
            if checkpoint is not None:
                atomic_save({
                    "format": "cnnzip.train-checkpoint", "version": 1, "identity": identity, "stopped": stop,
                    "epoch": epoch + 1, "config": asdict(config), "history": result.history,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "hooks": [h.state_dict() for h in hooks],
                    "hook_parameters": [p.detach().cpu() for p in hook_params],
                }, checkpoint)
            distributed.barrier()
            if stop:
                break
    return result


def _data_parallel(model: nn.Module, batches, device: torch.device, hook_params) -> tuple[Any, nn.Module]:
    """Under torchrun: this rank's shard of the batches and the model wrapped in DistributedDataParallel (which
    averages gradients during the backward pass). In a single process: the batches and the model unchanged."""
    w = distributed.world()
    if not w.distributed:
        return batches, model
    if not hasattr(batches, "shard"):
        raise ConfigError(f"distributed training needs batches that can be split between processes (a cnnzip "
                          f"Loader); got {type(batches).__name__}")
    from torch.nn.parallel import DistributedDataParallel

    distributed.initialize(device)
    if torch.distributed.get_backend() == "nccl" and device.type != "cuda":
        raise ConfigError(f"this job's processes talk over NCCL (GPUs), but this training runs on {device}; run "
                          "it on the GPU, or start the job without GPUs visible")
    net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return batches.shard(w.rank, w.size), net


def _train_epoch(model, net, batches, config, optimizer, scaler, hooks, device, epoch, steps_per_epoch,
                 use_amp, progress, features, hook_params, layout) -> dict[str, float]:
    model.train()
    total_loss = 0.0
    correct = seen = 0
    started = time.perf_counter()
    bar = _progress(batches, epoch, config.epochs, steps_per_epoch, progress)
    for i, (x, y) in enumerate(bar):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(config, epoch * steps_per_epoch + i, steps_per_epoch)
        x = layout(x.to(device, non_blocking=True))
        y = y.to(device, non_blocking=True)
        with (torch.autocast(device_type="cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext(),
              capture_features(model, features) as captured):
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            for hook in hooks:
                if hook.features:
                    extra = hook.loss(model, x, logits, y, features={n: captured[n] for n in hook.features})
                else:
                    extra = hook.loss(model, x, logits, y)
                if extra is not None:
                    loss = loss + extra
            if net is not model:  # DDP averages the ranks' gradients: weight each by its share of the whole batch
                loss = loss * (len(y) * distributed.world().size / distributed.all_reduce_sum([len(y)])[0])
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        distributed.average_gradients(hook_params)  # the model's own are averaged by DDP during backward
        scaler.unscale_(optimizer)
        for hook in hooks:
            hook.after_backward(model)
        scaler.step(optimizer)
        scaler.update()
        for hook in hooks:
            hook.after_step(model)
        n = len(y)
        total_loss += float(loss.detach()) * n
        correct += int((logits.detach().argmax(1) == y).sum())
        seen += n
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total_loss / seen:.3f}", acc=f"{correct / seen:.3f}", refresh=False)
    elapsed = time.perf_counter() - started
    total_loss, correct, seen = distributed.all_reduce_sum([total_loss, correct, seen])
    correct, seen = int(correct), int(seen)
    return {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "train_acc": correct / max(seen, 1),
            "seconds": elapsed, "images_per_second": seen / elapsed if elapsed > 0 else 0.0,
            "lr": optimizer.param_groups[0]["lr"]}


def _progress(batches, epoch, epochs, total, enabled):
    if not enabled:
        return batches
    from tqdm.auto import tqdm

    return tqdm(batches, total=total, desc=f"epoch {epoch + 1}/{epochs}", leave=True, dynamic_ncols=True)


def _resume(path: Path, model, optimizer, scaler, hooks, config, identity, result) -> tuple[int, bool]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same advice
        raise ConfigError(f"cannot read the training checkpoint {path}: it is damaged, or not a checkpoint cnnzip "
                          "wrote (files that would run code are refused). Delete it to start over.") from exc
    if not isinstance(state, dict) or state.get("format") != "cnnzip.train-checkpoint":
        raise ConfigError(f"{path} is not a cnnzip training checkpoint; delete it or choose another run directory")
    # Any change (even of `epochs`, which shapes the schedule) would make the resumed run a different run.
    diff = differences(state["config"], asdict(config))
    if diff:
        names = ", ".join(f"{k}: {state['config'].get(k)} -> {asdict(config).get(k)}" for k in diff)
        raise ConfigError(f"the checkpoint {path} was made with other settings ({names}); use the same settings "
                          "to resume, or a fresh run directory")
    saved_id = state.get("identity", identity)  # checkpoints from before run identities have none
    what = differences(saved_id, identity)
    if what:
        detail = what[0]
        if detail == "fingerprint":
            detail = ", ".join(differences(saved_id.get("fingerprint", {}), identity["fingerprint"]))
        raise ConfigError(f"the checkpoint {path} belongs to another run (it differs in: {detail}); resume with the "
                          "same model, data and options, or use a fresh run directory")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ConfigError(f"the checkpoint {path} belongs to a different model ({str(exc).splitlines()[0]}); "
                          "use a fresh run directory") from exc
    for hook, hook_state in zip(hooks, state.get("hooks", []), strict=True):
        hook.load_state_dict(hook_state)
    with torch.no_grad():
        for p, saved in zip((p for h in hooks for p in h.parameters()), state.get("hook_parameters", []),
                            strict=True):
            p.copy_(saved)
    result.history.extend(state["history"])
    result.resumed_from_epoch = int(state["epoch"])
    return result.resumed_from_epoch, bool(state.get("stopped", False))


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)
