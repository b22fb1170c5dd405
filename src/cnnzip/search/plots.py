"""Pictures of a search: its trajectory (the paper's Figure 5) and the margin sweep (Figures 6-10).

Matplotlib is optional (`pip install cnnzip[plot]`); without it these functions say so and draw nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..report.plots import can_plot
from ..report.plots import pyplot as _pyplot
from .trials import Trial

__all__ = ["can_plot", "plot_trajectory", "plot_margin_sweep"]


def phases(trials: Sequence[Trial]) -> list[int]:
    """1 while the first method is searched alone (second ratio 0, before any other check), then 2."""
    out, second_started = [], False
    for t in trials:
        second_started = second_started or any(i > 0 for i in t.index[1:])
        out.append(2 if second_started else 1)
    return out


def plot_trajectory(trials: Sequence[Trial], target: float, axes: Sequence[str], path: str | Path,
                    title: str = "") -> Path:
    """Accuracy and ratios at every check, in the order the search made them. Early exits show the accuracy on
    the images seen before the verdict was certain (hollow markers)."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, height_ratios=(2, 1))
    xs = range(1, len(trials) + 1)
    phase = phases(trials)
    names = {"ns": "structured ratio", "dc": "unstructured ratio"}
    labels = {1: f"step 1: {names.get(axes[0], axes[0])} alone",
              2: "steps 2-3: " + (names.get(axes[1], axes[1]) if len(axes) > 1 else "")}
    for p, color in ((1, "tab:blue"), (2, "tab:orange")):
        for complete, face in ((True, color), (False, "none")):
            pts = [(x, t.accuracy) for x, t, q in zip(xs, trials, phase, strict=True)
                   if q == p and t.complete == complete]
            if pts:
                top.scatter(*zip(*pts, strict=True), facecolors=face, edgecolors=color, s=22,
                            label=labels[p] + ("" if complete else " (early exit)"))
    best = [x for x, t in zip(xs, trials, strict=True) if t.passed]
    if best:
        winner = min((t.size, x) for x, t in zip(xs, trials, strict=True) if t.passed)[1]
        top.scatter([winner], [trials[winner - 1].accuracy], marker="*", s=160, color="tab:green", zorder=3,
                    label=f"smallest passing: {trials[winner - 1].size:,} B")
    top.axhline(target, color="tab:red", ls="--", lw=1, label=f"target {target:.2%}")
    top.set_ylabel("validation accuracy")
    top.legend(fontsize=8, loc="lower left")
    top.set_title(title)
    for k, (axis, style) in enumerate(zip(axes, ("-o", "-s"), strict=False)):
        bottom.plot(list(xs), [t.ratios[k] for t in trials], style, ms=3, lw=1, label=names.get(axis, axis))
    bottom.set_xlabel("accuracy check")
    bottom.set_ylabel("ratio")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_margin_sweep(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Smallest size found against the initial margin, with the checks each margin cost."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    rows = [r for r in rows if r["size"] is not None]
    ax.plot([r["margin"] for r in rows], [r["size"] / 1e3 for r in rows], "-o", ms=4, color="tab:blue")
    ax.set_xlabel("initial margin (grid steps)")
    ax.set_ylabel("smallest passing file (kB)", color="tab:blue")
    twin = ax.twinx()
    twin.plot([r["margin"] for r in rows], [r["checks"] for r in rows], "--", color="tab:gray")
    twin.set_ylabel("accuracy checks", color="tab:gray")
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
