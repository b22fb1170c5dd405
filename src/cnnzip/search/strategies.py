"""Strategies that find the smallest candidate meeting the target: brute force, the paper's margin heuristic,
and bisection.

All work on grid indices: axis k has ratios 0, step, 2*step, ... Each returns the smallest passing trial it saw
(or None). They differ only in which trials they ask for, so their costs compare directly.

Reading of the paper's heuristic (Sensors 2022, 22, 5874; its figures and tables leave details open):
  1. raise the first method's ratio, the second at 0, until the check fails; p1 = the last ratio that passed;
  2. step back `margin` grid steps from p1;
  3. for every first ratio in [p1 - margin, p1], raise the second ratio from 0 until the check fails; the last
     passing point of each scan is a candidate; keep the smallest file.
"""

from __future__ import annotations

from .trials import BudgetExhausted, Trial, Trials

__all__ = ["grid_search", "margin_search", "bisect_search", "STRATEGIES"]


def grid_search(trials: Trials, n: int) -> Trial | None:
    """Every point of the grid (n values per axis)."""
    axes = len(trials.axes)
    try:
        if axes == 1:
            for i in range(n):
                trials.check((i,))
        else:
            for i in range(n):
                for j in range(n):
                    trials.check((i, j))
    except BudgetExhausted:
        pass
    return trials.best()


def _scan(trials: Trials, make, start: int, n: int) -> int | None:
    """Raise the index from `start` until the check fails; the last passing index, or None."""
    last = None
    for k in range(start, n):
        if not trials.check(make(k)).passed:
            break
        last = k
    return last


def margin_search(trials: Trials, n: int, margin: int) -> Trial | None:
    """The paper's three steps (module docstring)."""
    axes = len(trials.axes)
    try:
        if axes == 1:
            _scan(trials, lambda k: (k,), 0, n)
            return trials.best()
        p1 = _scan(trials, lambda k: (k, 0), 0, n)
        if p1 is None:
            return None
        for i in range(max(0, p1 - margin), p1 + 1):
            _scan(trials, lambda k, i=i: (i, k), 0, n)
    except BudgetExhausted:
        pass
    return trials.best()


def _last_pass(trials: Trials, make, lo: int, hi: int, guard: int = 2) -> int | None:
    """The largest passing index in [lo, hi), assuming pass-then-fail, by bisection.

    Accuracy is only roughly monotone in a pruning ratio, so after the boundary b is found, the next `guard`
    indices are checked too; if one of them passes, the trend broke there and the search resumes above it.
    """
    if lo >= hi:
        return None
    if not trials.check(make(lo)).passed:
        return None
    good, bad = lo, hi  # invariant: good passes; bad fails or is past the end
    while True:
        while bad - good > 1:
            mid = (good + bad) // 2
            if trials.check(make(mid)).passed:
                good = mid
            else:
                bad = mid
        above = [k for k in range(bad + 1, min(bad + 1 + guard, hi)) if trials.check(make(k)).passed]
        if not above:
            return good
        good, bad = max(above), hi


def bisect_search(trials: Trials, n: int, margin: int) -> Trial | None:
    """Ours: the margin heuristic's shape, with every linear scan replaced by a guarded bisection.

    The first method's limit p1 is bisected; then, from p1 down to p1 - margin, the second method's limit is
    bisected, starting each time from the limit found for the next higher first ratio (a lower first ratio
    leaves at least as much room for the second method).
    """
    axes = len(trials.axes)
    try:
        if axes == 1:
            _last_pass(trials, lambda k: (k,), 0, n)
            return trials.best()
        p1 = _last_pass(trials, lambda k: (k, 0), 0, n)
        if p1 is None:
            return None
        floor = 0
        for i in range(p1, max(0, p1 - margin) - 1, -1):
            limit = _last_pass(trials, lambda k, i=i: (i, k), floor, n)
            if limit is None:  # the trend broke: this first ratio passes nowhere above the floor; search from 0
                limit = _last_pass(trials, lambda k, i=i: (i, k), 0, n)
            floor = limit if limit is not None else floor
    except BudgetExhausted:
        pass
    return trials.best()


STRATEGIES = {"grid": grid_search, "margin": margin_search, "bisect": bisect_search}
