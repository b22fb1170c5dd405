"""Accuracy checks of candidates, recorded in a JSON-lines file so that a killed search resumes where it stopped.

A trial is one accuracy check of one candidate (grid indices into the ratio axes). Every trial is appended to
`trials.jsonl` as soon as it finishes; a rerun of the same search replays recorded trials instead of computing
them again, and the cost of the search (checks, images evaluated, seconds) is read from the records, so it is
the same whether or not the search was interrupted.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from ..measure import Evaluator
from .candidates import Compressor, Finetune
from .workers import CheckJob, RayWorkers, Trial, build, run_check

__all__ = ["Trial", "Trials", "BudgetExhausted"]


class BudgetExhausted(Exception):
    """Raised inside a strategy when --max-checks or --time-budget is reached; the search returns its best."""


class Trials:
    """Answers "does the candidate at these grid indices meet the target?", recording every answer."""

    def __init__(self, compressor: Compressor, evaluator: Evaluator, target: float, grid: list[float],
                 log: str | Path, *, strategy: str, early_exit: bool, max_checks: int | None = None,
                 time_budget: float | None = None, say: Callable[[str], None] | None = None,
                 objective: str = "size", latency_batch: int | None = None, recovery: Finetune | None = None,
                 recovery_key: dict | None = None, workers: int = 1, ray_address: str | None = None,
                 worker_threads: int = 1) -> None:
        """`workers` > 1 (or a `ray_address`) runs checks the strategy is about to ask for on Ray workers ahead of
        time (`prefetch`); the strategy's decisions, and so its winner, are those of a sequential search."""
        self.compressor, self.evaluator, self.target, self.grid = compressor, evaluator, target, grid
        self.say = say or (lambda text: None)
        self.strategy, self.early_exit = strategy, early_exit
        self.max_checks, self.time_budget = max_checks, time_budget
        self.log = Path(log)
        if (objective == "size") != (latency_batch is None):
            raise ValueError("a latency objective needs its batch size, and only it")
        self.objective, self.latency_batch = objective, latency_batch
        self._key = {"strategy": strategy, "order": compressor.pipeline.order, "target": target,
                     "early_exit": early_exit} | ({} if objective == "size" else {"objective": objective})
        if compressor.pipeline.recalibrate:  # recalibrated trials are other trials: never mixed in a replay,
            self._key["recalibrate"] = compressor.pipeline.recalibrate  # nor with trials on other images
            self._key["recalibration_images"] = _digest(compressor.recalibration)
        if compressor.pipeline.structured == "pca" and "ns" in compressor.pipeline.axes:
            self._key["pca_images"] = _digest(compressor.recalibration)  # PCA widths come from these images
        if (recovery is None) != (recovery_key is None):
            raise ValueError("a recovery fine-tune needs its key for the records, and only it")
        if recovery_key is not None:  # and so are recovered ones, recovered the same way
            self._key["recovery"] = recovery_key
        self.recovery = recovery
        self.job = CheckJob(compressor, evaluator, target, early_exit, latency_batch, recovery)
        self.width = workers  # how many checks the strategies ask for at once
        self.pool = RayWorkers(self.job, workers, ray_address, worker_threads) if workers > 1 or ray_address else None
        self.speculative: set[tuple[int, ...]] = set()  # prefetched by this run, not yet asked for
        self.done: dict[tuple[int, ...], Trial] = {}  # recorded, by this run or the one it resumes
        self.asked: dict[tuple[int, ...], Trial] = {}  # asked for by this run's strategy, replayed or computed
        self.sizes: dict[tuple[int, ...], tuple[int, float]] = {}  # size-only builds: bytes, seconds
        self._built = None  # the last candidate built for its size, reused (its build time counted there)
        self.new_checks = 0
        self.exhausted = False  # set when a budget stopped the search
        self.started = time.perf_counter()
        if self.log.exists():
            for line in self.log.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:  # a line cut short by a kill: that trial runs again
                    continue
                if not (isinstance(rec, dict) and all(rec.get(k) == v for k, v in self._key.items())):
                    continue
                if rec.get("kind") == "size":  # a candidate built only for its size (no accuracy check)
                    self.sizes[tuple(rec["index"])] = (rec["size"], rec["seconds"])
                else:
                    t = Trial(index=tuple(rec["index"]), ratios=tuple(rec["ratios"]), passed=rec["passed"],
                              accuracy=rec["accuracy"], complete=rec["complete"], images=rec["images"],
                              size=rec["size"], seconds=rec["seconds"], latency=rec.get("latency"),
                              recovery_seconds=rec.get("recovery_seconds"))
                    self.done[t.index] = t

    @property
    def axes(self) -> tuple[str, ...]:
        return self.compressor.pipeline.axes

    def ratios(self, index: tuple[int, ...]) -> tuple[float, ...]:
        return tuple(self.grid[i] for i in index)

    def size_at(self, index: tuple[int, ...]) -> int:
        """Bytes of the candidate at `index`, built but not evaluated: a size bound costs a build, not a check."""
        if index in self.asked:
            return self.asked[index].size
        if index not in self.sizes:
            if index in self.done:  # recorded by the run this one resumes: count it as the build it would be
                self.sizes[index] = (self.done[index].size, 0.0)
            else:
                started = time.perf_counter()
                candidate, recovering = build(self.job, self.ratios(index))
                self._built = (index, candidate, recovering)
                self.sizes[index] = (candidate.size, time.perf_counter() - started)
            self._write({**self._key, "kind": "size", "index": list(index), "size": self.sizes[index][0],
                         "seconds": self.sizes[index][1]})
        return self.sizes[index][0]

    def outcome(self, index: tuple[int, ...]) -> bool | None:
        """The recorded verdict at `index` (asking for it costs nothing), or None if it is not recorded."""
        return self.done[index].passed if index in self.done else None

    def check(self, index: tuple[int, ...]) -> Trial:
        if index in self.done:
            if index in self.speculative:  # computed ahead: the budget applies as if it were computed now
                self._within_budget()
                self.speculative.discard(index)
            self.asked[index] = self.done[index]
            return self.done[index]
        self._within_budget()
        built = None
        if self._built is not None and self._built[0] == index:
            built = self._built[1:]
        self._built = None
        trial = run_check(self.job, index, self.ratios(index), built)
        self._record(trial)
        self.asked[index] = trial
        return trial

    def prefetch(self, indices) -> None:
        """With workers: check at once those of `indices` not yet recorded (as many as the budget allows), so
        that the strategy finds them recorded when it asks. Without workers: nothing (each is checked when asked).
        A prefetched check the strategy never asks for costs time but changes no decision."""
        if self.pool is None:
            return
        n = len(self.grid)
        todo = [i for i in dict.fromkeys(tuple(i) for i in indices)
                if i not in self.done and all(0 <= k < n for k in i)]
        if self.max_checks is not None:
            todo = todo[:max(0, self.max_checks - self._counted())]
        if not todo or self._out_of_time():
            return
        self._built = None

        def record(trial: Trial) -> None:
            self._record(trial)
            self.speculative.add(trial.index)

        self.pool.run([(i, self.ratios(i)) for i in todo], record, stop=self._out_of_time)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def _counted(self) -> int:
        """Checks the budget counts: every recorded one, except those computed ahead and not asked for yet."""
        return len(self.done) - len(self.speculative)

    def _out_of_time(self) -> bool:
        return self.time_budget is not None and time.perf_counter() - self.started > self.time_budget

    def _within_budget(self) -> None:
        if self.max_checks is not None and self._counted() >= self.max_checks:
            self.exhausted = True
            raise BudgetExhausted(f"reached --max-checks {self.max_checks}")
        if self._out_of_time():
            self.exhausted = True
            raise BudgetExhausted(f"reached --time-budget {self.time_budget} s")

    def _record(self, trial: Trial) -> None:
        self.done[trial.index] = trial
        self.new_checks += 1
        self._append(trial)
        ratios = ", ".join(f"{a} {r:.2f}" for a, r in zip(self.axes, trial.ratios, strict=True))
        speed = "" if trial.latency is None else f", {trial.latency:.2f}x the original's time"
        self.say(f"check {len(self.done)}: {ratios}: {trial.size:,} bytes{speed}, accuracy {trial.accuracy:.2%}"
                 f"{'' if trial.complete else ' (early exit)'}: {'meets' if trial.passed else 'misses'} the target")

    def _append(self, trial: Trial) -> None:
        self._write({**self._key, **trial.__dict__, "index": list(trial.index), "ratios": list(trial.ratios)})

    def _write(self, rec: dict) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:  # one line per trial, flushed at once: a kill loses at most the current one
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def cost(self) -> dict[str, float]:
        """Accuracy checks, images evaluated, candidates built only for their size, and seconds for all of it."""
        cost = {"checks": len(self.done), "images": sum(t.images for t in self.done.values()),
                "size_builds": len(self.sizes),
                "seconds": sum(t.seconds for t in self.done.values()) + sum(sec for _, sec in self.sizes.values())}
        if self.pool is not None:  # checked ahead of time on a worker, then never asked for by the strategy
            cost["unused_checks"] = len(self.speculative)
        if self.recovery is not None:  # (size-only builds recover too; their seconds are in the total)
            cost["recovery_seconds"] = sum(t.recovery_seconds or 0.0 for t in self.done.values())
        return cost

    def best(self) -> Trial | None:
        """The smallest (or fastest, with a latency objective) passing trial the strategy has asked for so far.
        Only those: a resumed run's records may hold trials this point of the strategy has not reached, and bounds
        taken from them would change its path."""
        passing = [t for t in self.asked.values() if t.passed]
        if self.latency_batch is not None:
            return min(passing, key=lambda t: (t.latency, t.size, t.index)) if passing else None
        return min(passing, key=lambda t: (t.size, t.index)) if passing else None


def _digest(batches) -> str:
    """A short hash of a list of image batches (their first bytes), to tell the records of other images apart."""
    h = hashlib.sha256()
    for x in batches:
        h.update(x.detach().cpu().float().contiguous().numpy().tobytes()[:4096])
    return h.hexdigest()[:16]
