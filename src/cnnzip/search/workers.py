"""One accuracy check of one candidate, as a function that can run anywhere, and Ray workers that run many.

A search's trials do not depend on each other, so checks a strategy is about to ask for can run at once on Ray
workers (this machine's cores, or a cluster's). The strategy still asks for them one at a time, in its own order,
and takes its decisions from the same answers, so a search with workers finds the same winner as one without;
the workers only answer some questions before they are asked (`Trials.prefetch`). Ray is optional
(`pip install 'cnnzip[ray]'`); nothing here imports it unless workers are asked for.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..measure import Evaluator
from ..models import USER_MODULE_PREFIX
from .candidates import Candidate, Compressor, Finetune

__all__ = ["CheckJob", "Trial", "run_check", "RayWorkers"]


@dataclass(frozen=True)
class Trial:
    index: tuple[int, ...]
    ratios: tuple[float, ...]
    passed: bool
    accuracy: float  # exact if `complete`, else accuracy on the images seen before the early exit
    complete: bool
    images: int
    size: int
    seconds: float
    latency: float | None = None  # with a latency objective: ONNX Runtime time / the original's (passing only)
    recovery_seconds: float | None = None  # the part of `seconds` spent fine-tuning the candidate (with recovery)


@dataclass
class CheckJob:
    """Everything a check needs, and nothing of the search around it: what a worker receives once."""

    compressor: Compressor
    evaluator: Evaluator
    target: float
    early_exit: bool
    latency_batch: int | None = None
    recovery: Finetune | None = None


def build(job: CheckJob, ratios: tuple[float, ...]) -> tuple[Candidate, float]:
    """The candidate at `ratios`, recovered first if the search recovers; and the seconds the recovery took."""
    if job.recovery is None:
        return job.compressor.build(ratios), 0.0
    spent = [0.0]

    def timed(stage, model, hooks=(), **kwargs):
        started = time.perf_counter()
        job.recovery(stage, model, hooks, **kwargs)
        spent[0] += time.perf_counter() - started

    return job.compressor.build(ratios, finetune=timed), spent[0]


def run_check(job: CheckJob, index: tuple[int, ...], ratios: tuple[float, ...],
              built: tuple[Candidate, float] | None = None) -> Trial:
    """Build (unless `built` gives the candidate and its recovery seconds) and check one candidate."""
    started = time.perf_counter()
    candidate, recovering = built if built is not None else build(job, ratios)
    r = job.evaluator.check(candidate.model, job.target) if job.early_exit else job.evaluator.evaluate(candidate.model)
    passed = r.accuracy >= job.target if r.complete else bool(r.passed)
    latency = None
    if passed and job.latency_batch is not None:  # only a passing candidate can win: time only those
        latency = job.compressor.latency(candidate, job.latency_batch)
    return Trial(index=index, ratios=ratios, passed=passed, accuracy=r.accuracy, complete=r.complete,
                 images=r.evaluated, size=candidate.size, seconds=time.perf_counter() - started, latency=latency,
                 recovery_seconds=recovering if job.recovery is not None else None)


class _Checker:
    """One Ray worker (an actor): it receives the job once, keeps what the job caches between checks (the channel
    graph), and checks candidates in a scratch folder of its own."""

    def __init__(self, job: CheckJob, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.job = job
        self.scratch = Path(tempfile.mkdtemp(prefix="cnnzip-worker-"))
        job.compressor.workdir = self.scratch

    def check(self, index: tuple[int, ...], ratios: tuple[float, ...]) -> Trial:
        return run_check(self.job, index, ratios)

    def close(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)


class RayWorkers:
    """Runs checks on `workers` Ray actors: local processes, or processes of the cluster at `address`.

    The job (model, data, evaluator) is put in Ray's object store once; each actor loads it once and uses
    `threads` CPU threads. Ray places the actors where CPUs are free.
    """

    def __init__(self, job: CheckJob, workers: int, address: str | None = None, threads: int = 1) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be 1 or more; got {workers}")
        try:
            import ray
        except ImportError as exc:
            raise ConfigError("parallel search trials run on Ray, which is not installed: pip install "
                              "'cnnzip[ray]' (or search with --workers 1)") from exc
        self.ray, self.workers, self.threads = ray, workers, threads
        self._started_ray = not ray.is_initialized()  # a Ray the caller started is the caller's to stop
        if self._started_ray:
            # Ray runs its workers at nice 15; checks are the search's main work, run as the search itself would.
            os.environ.setdefault("RAY_worker_niceness", "0")
            try:
                ray.init(address=address, num_cpus=None if address else workers * threads, include_dashboard=False,
                         log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from exc
        job.compressor.prepare()  # what can be shared (PCA spectra) is measured once, before it is copied
        for name, module in list(sys.modules.items()):  # a --model-py architecture: workers cannot import it
            if name.startswith(USER_MODULE_PREFIX):
                ray.cloudpickle.register_pickle_by_value(module)
        ref = ray.put(job)
        actor = ray.remote(num_cpus=threads, max_restarts=0)(_Checker)
        self._actors = [actor.remote(ref, threads) for _ in range(workers)]

    def run(self, items: Sequence[tuple[tuple[int, ...], tuple[float, ...]]], done: Callable[[Trial], None],
            stop: Callable[[], bool] | None = None) -> None:
        """Check every (index, ratios) item, calling `done(trial)` as each one finishes (in finishing order); once
        `stop()` is true (a time budget), start no more."""
        queue, idle, pending = list(items), list(self._actors), {}
        while queue or pending:
            if stop is not None and stop():
                queue = []
            while queue and idle:
                actor = idle.pop()
                pending[actor.check.remote(*queue.pop(0))] = actor
            ready, _ = self.ray.wait(list(pending), num_returns=1)
            idle.append(pending.pop(ready[0]))
            done(self.ray.get(ready[0]))

    def close(self) -> None:
        self.ray.get([a.close.remote() for a in self._actors])
        if self._started_ray and self.ray.is_initialized():
            self.ray.shutdown()
