"""Data-parallel training under `torchrun`: which process this is, and the few collective steps `fit` needs.

cnnzip runs the same program on every rank (SPMD). Every rank does the same deterministic work (surgery,
verification, evaluation), so every decision is the same everywhere; only training is split, by data: each rank
takes its share of every global batch, and DistributedDataParallel averages the gradients, so the weights stay
identical on every rank and every hook that edits weights or gradients (masks, shared centroids, slimming's
subgradient) sees the same values everywhere. Rank 0 alone writes the run directory (`cli.main` gives the other
ranks a private copy of it), so a run resumes exactly as a single-process one does.

The environment says whether this is a distributed run: `torchrun --nproc-per-node N` sets RANK, WORLD_SIZE and
LOCAL_RANK. Without them (or with WORLD_SIZE=1) every function here is a no-op and nothing changes.
"""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import ConfigError

__all__ = ["World", "world", "initialize", "is_main", "barrier", "all_reduce_sum", "average_gradients",
           "broadcast_buffers", "synced_batchnorm", "shutdown"]


@dataclass(frozen=True)
class World:
    """This process's place in the run: `rank` of `size` processes, `local_rank` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world() -> World:
    """The run as the environment (torchrun) describes it; a single process when it says nothing."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    try:
        size = int(os.environ.get("WORLD_SIZE", 1))
        rank = int(os.environ.get("RANK", 0))
        local = int(os.environ.get("LOCAL_RANK", 0))
    except ValueError as exc:
        raise ConfigError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them): {exc}") from exc
    if size < 1 or not 0 <= rank < size:
        raise ConfigError(f"RANK={rank} and WORLD_SIZE={size} do not describe a run; start it with torchrun")
    return World(rank, size, local)


def initialize(device: torch.device, timeout_minutes: float = 60.0) -> torch.device:
    """Join the process group when torchrun started several processes: NCCL on CUDA, gloo on the CPU.

    Returns the device this rank trains on: on CUDA, `cuda:LOCAL_RANK` (one GPU per process); elsewhere `device`.
    The timeout bounds how long a rank waits for the others at a collective (a surgery or an evaluation that
    every rank repeats can take minutes on a large model, hence the generous default).
    """
    w = world()
    if not w.distributed:
        return device
    if device.type == "cuda":
        if w.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {w.local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                              "start no more processes per node than it has GPUs")
        device = torch.device("cuda", w.local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ConfigError(f"distributed training runs on CUDA (NCCL) or the CPU (gloo), not on {device.type}")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(minutes=timeout_minutes))
    return device


def is_main() -> bool:
    """True on rank 0, and in every single-process run: the process that writes files and prints."""
    return world().main


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(values: Iterable[float]) -> list[float]:
    """Sum plain numbers (a loss total, a count) over the ranks; returns them unchanged in a single process."""
    values = [float(v) for v in values]
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return t.cpu().tolist()


def average_gradients(parameters: Iterable[torch.nn.Parameter]) -> None:
    """Average the gradients of tensors that DistributedDataParallel does not manage (a hook's adapter)."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    size = dist.get_world_size()
    for p in parameters:
        if p.grad is None:  # every rank computes the same loss terms, so a missing gradient is missing everywhere
            continue
        dist.all_reduce(p.grad)
        p.grad.div_(size)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, which each rank updated on its own shard
    in the last step), so that evaluations, and the decisions taken on them, are the same on every rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    for b in module.buffers():
        dist.broadcast(b, 0)


SYNC_BATCHNORM = os.environ.get("CNNZIP_SYNC_BN", "0") == "1"  # `--sync-bn` (every training command) sets it


@contextlib.contextmanager
def synced_batchnorm(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, every BatchNorm of `model` in training mode normalises with the statistics of the whole
    global batch (sums all-reduced over the ranks, gradients through them too), on CPUs as on GPUs: so N
    processes train exactly as one process with the whole batch. (PyTorch's SyncBatchNorm runs on GPUs only, and
    converting modules would change the saved model's layer types.) A no-op in a single process, and unless
    SYNC_BATCHNORM is set: the all-reduce per BatchNorm layer per step costs time (ResNet-20 on 2 CPU processes:
    an epoch 1.6x as long), where each process's own statistics cost a little accuracy at most."""
    if not (SYNC_BATCHNORM and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        yield
        return
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    before = [m.__dict__.get("forward") for m in norms]  # (an instance's own forward, if it had one)
    for m in norms:
        m.forward = types.MethodType(_synced_forward, m)
    try:
        yield
    finally:
        for m, forward in zip(norms, before, strict=True):
            del m.forward
            if forward is not None:
                m.forward = forward


def _synced_forward(self, x: torch.Tensor) -> torch.Tensor:
    if not self.training:
        return type(self).forward(self, x)
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]
    xf = x.float()
    count = torch.full((1,), xf.numel() / xf.shape[1], dtype=torch.float32, device=x.device)
    stats = all_reduce(torch.cat([xf.sum(dims), (xf * xf).sum(dims), count]))
    c, n = x.shape[1], stats[-1]
    mean = stats[:c] / n
    var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
    if self.track_running_stats and self.running_mean is not None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
            self.running_var.mul_(1 - factor).add_(var.detach() * (n / (n - 1).clamp_min(1)), alpha=factor)
    shape = [1, c] + [1] * (x.dim() - 2)
    y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
    if self.affine:
        y = y * self.weight.view(shape) + self.bias.view(shape)
    return y.to(x.dtype)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
