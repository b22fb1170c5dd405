"""What-if questions answered exactly from recorded trials, without building or evaluating anything.

Candidates are deterministic, so a recorded accuracy is the accuracy a new check would measure. A brute-force
grid's full evaluations therefore answer every strategy at every target, and one margin search at margin M
answers the margin sweep 0..M (a smaller margin checks a subset of the same points). This is how the margin
sweep (the paper's Figures 6-10) costs nothing beyond the widest search.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import ConfigError
from .strategies import STRATEGIES
from .trials import Trial

__all__ = ["RecordedTrials", "replay", "margin_sweep"]


class RecordedTrials:
    """Stands in for `Trials`: answers each check from `records`, counting what a real run would have cost.

    With `target`, verdicts are recomputed from recorded accuracies, which must be full evaluations; without
    it, the recorded verdicts are used as they are (right only for the target they were recorded against).
    """

    def __init__(self, records: Iterable[Trial], axes: tuple[str, ...], target: float | None = None) -> None:
        self.records = {t.index: t for t in records}
        self.axes, self.target = tuple(axes), target
        self.done: dict[tuple[int, ...], Trial] = {}
        self.sized: set[tuple[int, ...]] = set()
        self.width = 1  # a replay asks one check at a time, as the sequential search did

    def prefetch(self, indices) -> None:
        return None

    def outcome(self, index: tuple[int, ...]) -> bool | None:
        return self.done[index].passed if index in self.done else None

    def check(self, index: tuple[int, ...]) -> Trial:
        if index not in self.done:
            if index not in self.records:
                raise ConfigError(f"no recorded trial at grid index {index}: replay a run that checked it")
            t = self.records[index]
            if self.target is not None:
                if not t.complete:
                    raise ConfigError(f"the trial at {index} stopped early; a new target needs full evaluations")
                t = Trial(t.index, t.ratios, t.accuracy >= self.target, t.accuracy, True, t.images, t.size,
                          t.seconds)
            self.done[index] = t
        return self.done[index]

    def size_at(self, index: tuple[int, ...]) -> int:
        if index not in self.records:
            raise ConfigError(f"no recorded trial at grid index {index}: replay a run that checked it")
        self.sized.add(index)
        return self.records[index].size

    def best(self) -> Trial | None:
        passing = [t for t in self.done.values() if t.passed]
        return min(passing, key=lambda t: (t.size, t.index)) if passing else None

    def cost(self) -> dict[str, float]:
        """As `Trials.cost`, except seconds: the records' check times only (size-only builds were not timed)."""
        return {"checks": len(self.done), "images": sum(t.images for t in self.done.values()),
                "size_builds": len(self.sized),
                "seconds": sum(t.seconds for t in self.done.values())}


def replay(strategy: str, records: Iterable[Trial], axes: tuple[str, ...], n: int, *, target: float | None = None,
           margin: int = 0) -> tuple[Trial | None, RecordedTrials]:
    """Run `strategy` over recorded trials; its answer and the trials it asked for (in order, with cost)."""
    trials = RecordedTrials(records, axes, target)
    run = STRATEGIES[strategy]
    best = run(trials, n) if strategy == "grid" else run(trials, n, margin)
    return best, trials


def margin_sweep(records: Iterable[Trial], axes: tuple[str, ...], n: int, margins: Iterable[int], *,
                 target: float | None = None) -> list[dict]:
    """The margin heuristic's answer for every margin: size of the winner, its ratios, and the checks it took."""
    records = list(records)
    rows = []
    for m in margins:
        best, trials = replay("margin", records, axes, n, target=target, margin=m)
        rows.append({"margin": m, "size": best.size if best else None, "ratios": best.ratios if best else None,
                     **trials.cost()})
    return rows
