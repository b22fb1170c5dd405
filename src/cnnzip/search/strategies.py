"""Strategies that find the smallest candidate meeting the target: brute force, the paper's margin heuristic,
and bisection.

All work on grid indices: axis k has ratios 0, step, 2*step, ... Each returns the smallest passing trial it saw
(or None). They differ only in which trials they ask for, so their costs compare directly.

With workers (`Trials.width` > 1) each strategy also says which checks it is likely to ask for next
(`Trials.prefetch`): the grid all at once, a scan the next `width` steps, a bisection the midpoints of the next
levels. The workers check those at once; the strategy still asks one at a time and decides exactly as it would
alone, so the winner is the same and only the wall time changes.

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
            trials.prefetch([(i,) for i in range(n)])
            for i in range(n):
                trials.check((i,))
        else:
            trials.prefetch([(i, j) for i in range(n) for j in range(n)])
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
        if (k - start) % trials.width == 0:
            trials.prefetch([make(j) for j in range(k, min(k + trials.width, n))])
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


def _last_pass(trials: Trials, make, lo: int, hi: int, guard: int = 1, gallop: bool = False) -> int | None:
    """The largest passing index in [lo, hi), assuming pass-then-fail, by bisection.

    With `gallop`, the boundary is first bracketed by probing lo+1, lo+2, lo+4, ... : cheaper when it is
    expected near lo. Accuracy is only roughly monotone in a pruning ratio, so after the boundary b is found,
    the next `guard` indices are checked too; if one of them passes, the trend broke there and the search
    resumes above it.
    """
    if lo >= hi:
        return None
    trials.prefetch([make(k) for k in [lo, *_ahead(trials, make, lo, hi, trials.width - 1)]])
    if not trials.check(make(lo)).passed:
        return None
    good, bad = lo, hi  # invariant: good passes; bad fails or is past the end
    if gallop:
        step = 1
        while good + step < hi:
            probes, g, s = [], good, step  # the next probes if each passes
            while g + s < hi and len(probes) < trials.width:
                probes, g, s = probes + [g + s], g + s, s * 2
            trials.prefetch([make(k) for k in probes])
            if not trials.check(make(good + step)).passed:
                bad = good + step
                break
            good, step = good + step, step * 2
    while True:
        while bad - good > 1:
            trials.prefetch([make(k) for k in _ahead(trials, make, good, bad, trials.width)])
            mid = (good + bad) // 2
            if trials.check(make(mid)).passed:
                good = mid
            else:
                bad = mid
        trials.prefetch([make(k) for k in range(bad + 1, min(bad + 1 + guard, hi))])
        above = [k for k in range(bad + 1, min(bad + 1 + guard, hi)) if trials.check(make(k)).passed]
        if not above:
            return good
        good, bad = max(above), hi


def _ahead(trials: Trials, make, good: int, bad: int, width: int) -> list[int]:
    """Up to `width` unrecorded indices that the bisection of (good, bad) asks for next: where a midpoint is
    recorded, the half its verdict selects; where it is not, that midpoint, then the midpoints of both halves
    (the upper first: it is next if the midpoint passes)."""
    out, intervals = [], [(good, bad)]
    while intervals and len(out) < width:
        g, b = intervals.pop(0)
        if b - g <= 1:
            continue
        mid = (g + b) // 2
        verdict = trials.outcome(make(mid))
        if verdict is None:
            out.append(mid)
            intervals += [(mid, b), (g, mid)]
        else:
            intervals.insert(0, (mid, b) if verdict else (g, mid))
    return out


def _first_below(trials: Trials, i: int, lo: int, n: int, bound: int) -> int | None:
    """The smallest second index in [lo, n) whose candidate is smaller than `bound` bytes, by bisection on
    sizes (they fall as a ratio rises); builds candidates but checks none."""
    if trials.size_at((i, n - 1)) >= bound:
        return None
    good, bad = n - 1, lo - 1  # good: below the bound; bad: not (or before the range)
    while good - bad > 1:
        mid = (good + bad) // 2
        if trials.size_at((i, mid)) < bound:
            good = mid
        else:
            bad = mid
    return good


def bisect_search(trials: Trials, n: int, margin: int) -> Trial | None:
    """Ours: the margin heuristic's shape, with every linear scan replaced by a guarded bisection, and
    branch and bound on size.

    The first method's limit p1 is bisected. Then, for each first ratio from p1 down to p1 - margin, only the
    candidates smaller than the best so far can matter; their sizes are known from a build, without an
    accuracy check. The first of them is checked: if it fails, nothing larger in that row passes (the trend)
    and the row is done in one check; if it passes, the row's limit is bisected from there. A lower first
    ratio leaves at least as much room for the second method, so each row starts at the limit of the one above,
and its own limit is expected close by: it is bracketed by galloping before bisecting.
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
            start = _first_below(trials, i, floor, n, trials.best().size)
            if start is None:
                continue  # every candidate in this row is at least as large as the best
            limit = _last_pass(trials, lambda k, i=i: (i, k), start, n, gallop=True)
            floor = limit if limit is not None else floor
    except BudgetExhausted:
        pass
    return trials.best()


STRATEGIES = {"grid": grid_search, "margin": margin_search, "bisect": bisect_search}
