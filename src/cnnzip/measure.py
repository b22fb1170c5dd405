"""What a model costs and how well it does: parameters, FLOPs, bytes, latency, and a counting Evaluator.

Every compression method reports through these functions, so that "smaller" and "faster" mean the same thing
everywhere. Sizes come from bytes actually serialised, never from a formula.
"""

from __future__ import annotations

import io
import math
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .errors import ConfigError
from .layout import InputLayout

__all__ = [
    "Evaluator",
    "EvalResult",
    "Footprint",
    "Latency",
    "count_parameters",
    "count_nonzero",
    "count_macs",
    "dense_bytes",
    "saved_bytes",
    "footprint",
    "measure_latency",
    "required_correct",
    "target_accuracy",
    "time_calls",
    "run_digest",
]


def count_parameters(model: nn.Module) -> int:
    """Number of learnable parameters (shared tensors counted once)."""
    return sum(p.numel() for p in _unique(model.parameters()))


def count_nonzero(model: nn.Module) -> int:
    """Number of learnable parameters that are not exactly zero: what unstructured pruning reduces."""
    return sum(int(torch.count_nonzero(p.detach())) for p in _unique(model.parameters()))


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass on one input of `input_shape` (C, H, W).

    Counted by torch.utils.flop_counter, which reports FLOPs = 2 x MACs for convolutions and matmuls.
    """
    device = _device_of(model)
    x = torch.zeros((1, *input_shape), device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2


def dense_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer as stored in memory (fp32 = 4 bytes per value)."""
    tensors = _unique(list(model.parameters()) + list(model.buffers()))
    return sum(t.numel() * t.element_size() for t in tensors)


def saved_bytes(model: nn.Module) -> int:
    """Length of the file `torch.save(model.state_dict())` writes: the fp32 size a user would ship."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes


@dataclass(frozen=True)
class Footprint:
    """The static cost of a model."""

    parameters: int
    nonzero: int
    macs: int
    dense_bytes: int
    saved_bytes: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def footprint(model: nn.Module, input_shape: tuple[int, ...]) -> Footprint:
    return Footprint(
        parameters=count_parameters(model),
        nonzero=count_nonzero(model),
        macs=count_macs(model, input_shape),
        dense_bytes=dense_bytes(model),
        saved_bytes=saved_bytes(model),
    )


@dataclass(frozen=True)
class Latency:
    """Wall-clock time of one forward pass: median over repeats, after warm-up."""

    batch_size: int
    median_ms: float
    min_ms: float
    repeats: int

    @property
    def images_per_second(self) -> float:
        return self.batch_size / (self.median_ms / 1000.0)

    @classmethod
    def from_times(cls, batch_size: int, times: list[float]) -> Latency:
        return cls(batch_size=batch_size, median_ms=statistics.median(times) * 1000.0,
                   min_ms=min(times) * 1000.0, repeats=len(times))


@torch.no_grad()
def measure_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_seconds: float = 0.0,
) -> Latency:
    """Time `model` in eval mode on a random batch on the model's device.

    Runs `warmup` passes first (allocator, caches, lazy init), then at least `repeats` timed passes and, if
    `min_seconds` > 0, keeps going until that much time has passed. The median resists noise from other
    processes on shared machines.
    """
    if repeats < 1 or batch_size < 1:
        raise ConfigError("measure_latency needs repeats >= 1 and batch_size >= 1")
    device = _device_of(model)
    x = torch.randn((batch_size, *input_shape), device=device)
    was_training = model.training
    model.eval()

    def run() -> None:
        model(x)
        _sync(device)

    try:
        times = time_calls(run, warmup, repeats, min_seconds)
    finally:
        model.train(was_training)
    return Latency.from_times(batch_size, times)


def time_calls(fn, warmup: int, repeats: int, min_seconds: float = 0.0) -> list[float]:
    """`warmup` untimed calls, then timed calls (seconds) until `repeats` are done and `min_seconds` passed."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start_all = time.perf_counter()
    while len(times) < repeats or time.perf_counter() - start_all < min_seconds:
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def target_accuracy(target: float | None, drop: float | None, baseline: float) -> float:
    """The absolute accuracy to meet: `target`, or `drop` below the baseline; above the baseline is refused."""
    accuracy = target if target is not None else baseline - drop
    if accuracy > baseline:
        raise ConfigError(f"the target accuracy {accuracy:.2%} is above the model's own validation accuracy "
                          f"{baseline:.2%}: no compressed model can meet it. Lower the target, or give it as a "
                          "drop from the baseline (--drop)")
    return accuracy


def required_correct(target: float, total: int) -> int:
    """Smallest number of correct predictions c with c / total >= target, exactly as float division decides it.

    The early exit must agree with the full evaluation's `accuracy >= target` bit for bit, so the boundary is
    found with the same float comparison rather than with a formula that rounding could push off by one.
    """
    if total <= 0:
        raise ConfigError("cannot evaluate on an empty split")
    c = min(max(math.ceil(target * total), 0), total + 1)
    while c > 0 and (c - 1) / total >= target:
        c -= 1
    while c <= total and c / total < target:
        c += 1
    return c  # total + 1 means unreachable


@dataclass(frozen=True)
class EvalResult:
    """One accuracy check.

    `accuracy` is exact when `complete`; after an early exit it is the accuracy on the images seen so far, and
    `passed` is still exactly what the full evaluation would say.
    """

    correct: int
    evaluated: int
    total: int
    passed: bool | None = None
    complete: bool = True

    @property
    def accuracy(self) -> float:
        return self.correct / self.evaluated if self.evaluated else 0.0


@dataclass
class Evaluator:
    """Accuracy of models on one fixed set of batches, counting every check and every image it evaluates.

    `check(model, target)` answers whether accuracy >= target and stops as soon as the answer is certain: when
    the errors so far exceed what the target allows, or when enough images are already correct. The verdict is
    always the one the full evaluation would give. Searches pass one Evaluator around so that their cost in
    checks and images is measured rather than estimated.
    """

    batches: Iterable[tuple[torch.Tensor, torch.Tensor]]
    device: torch.device | str | None = None
    checks: int = field(default=0, init=False)
    images: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.batches = list(self.batches)
        self.total = sum(len(y) for _, y in self.batches)
        if self.total == 0:
            raise ConfigError("the evaluation split is empty")

    @torch.no_grad()
    def evaluate(self, model: nn.Module) -> EvalResult:
        """Full evaluation: exact accuracy."""
        return self._run(model, target=None)

    @torch.no_grad()
    def check(self, model: nn.Module, target: float) -> EvalResult:
        """Does `model` reach accuracy >= `target`? Exact verdict, usually on fewer images."""
        return self._run(model, target=target)

    def _run(self, model: nn.Module, target: float | None) -> EvalResult:
        device = torch.device(self.device) if self.device is not None else _device_of(model)
        was_training = model.training
        model.eval()
        need = required_correct(target, self.total) if target is not None else None
        allowed_errors = self.total - need if need is not None else None
        correct = seen = 0
        self.checks += 1
        layout = InputLayout(model)  # channels_last batches on the CPU: faster convolutions
        try:
            for x, y in self.batches:
                if need is not None and (correct >= need or seen - correct > allowed_errors):
                    break
                x = layout(x.to(device, non_blocking=True))
                y = y.to(device, non_blocking=True)
                correct += int((model(x).argmax(dim=1) == y).sum())
                seen += len(y)
        finally:
            model.train(was_training)
        self.images += seen
        passed = None if need is None else correct >= need
        return EvalResult(correct=correct, evaluated=seen, total=self.total, passed=passed,
                          complete=seen == self.total)


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _device_of(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so that a timing covers the computation and not just its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def run_digest(model: nn.Module, evaluator: Evaluator | None = None) -> str:
    """A short hash of a model's weights (and of the evaluation split's images and labels): a resumed run checks
    it, so that a run directory reused for another model or other data starts afresh instead of answering with
    the old results."""
    import hashlib

    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    if evaluator is not None:
        for x, y in evaluator.batches:
            h.update(x.detach().cpu().float().contiguous().numpy().tobytes()[:4096])
            h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
