"""The plots of a run report, as PNG bytes. Matplotlib is optional (`pip install 'cnnzip[plot]'`): without it
every function returns None and the report has its tables only."""

from __future__ import annotations

import importlib.util
import io
from collections.abc import Mapping, Sequence

__all__ = ["can_plot", "pyplot", "png", "widths_plot", "stage_sizes_plot", "size_accuracy_plot", "history_plot"]


def can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def pyplot():
    if not can_plot():
        raise ModuleNotFoundError("plots need matplotlib: pip install 'cnnzip[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def widths_plot(before: Mapping[str, int], after: Mapping[str, int], title: str = "") -> bytes | None:
    """Channels of every layer before and after pruning."""
    if not can_plot() or not before:
        return None
    plt = pyplot()
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6, 0.28 * len(names)), 3.6))
    x = range(len(names))
    ax.bar(x, [before[n] for n in names], color="#c8d6e5", label="before")
    ax.bar(x, [after.get(n, before[n]) for n in names], color="#2e86de", label="after")
    ax.set_xticks(list(x), names, rotation=90, fontsize=7)
    ax.set_ylabel("channels")
    ax.set_title(title or "channels per layer")
    ax.legend()
    return png(fig)


def stage_sizes_plot(layers: Sequence[Mapping[str, float]]) -> bytes | None:
    """Deep compression: each layer's bytes at each stage, on a log scale."""
    if not can_plot() or not layers:
        return None
    plt = pyplot()
    stages = ("dense_fp32", "pruned_sparse", "shared", "huffman")
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers)), 3.8))
    width = 0.8 / len(stages)
    for k, stage in enumerate(stages):
        ax.bar([i + k * width for i in range(len(layers))], [layer[stage] for layer in layers], width, label=stage)
    ax.set_yscale("log")
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(layers))], [str(layer["name"]) for layer in layers],
                  rotation=90, fontsize=7)
    ax.set_ylabel("bytes")
    ax.set_title("bytes per layer at each stage")
    ax.legend(fontsize=8)
    return png(fig)


def size_accuracy_plot(points: Sequence[tuple[float, float, bool]], target: float | None, xlabel: str,
                       title: str = "") -> bytes | None:
    """Accuracy against size (bytes or MACs): one dot per candidate, filled when it met the target."""
    if not can_plot() or not points:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.8))
    met = [p for p in points if p[2]]
    missed = [p for p in points if not p[2]]
    if met:
        ax.scatter([p[0] for p in met], [p[1] for p in met], color="#10ac84", label="meets the target")
    if missed:
        ax.scatter([p[0] for p in missed], [p[1] for p in missed], facecolors="none", edgecolors="#ee5253",
                   label="misses it")
    if target is not None:
        ax.axhline(target, color="#888", linestyle="--", linewidth=1, label="target")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation accuracy")
    ax.set_title(title or "accuracy against size")
    ax.legend(fontsize=8)
    return png(fig)


def history_plot(history: Sequence[Mapping[str, float]]) -> bytes | None:
    """Loss and accuracy per epoch of a training run."""
    if not can_plot() or not history:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    epochs = [h["epoch"] for h in history]
    ax.plot(epochs, [h["train_acc"] for h in history], marker="o", label="train accuracy")
    if all("val_acc" in h for h in history):
        ax.plot(epochs, [h["val_acc"] for h in history], marker="o", label="validation accuracy")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h["loss"] for h in history], color="#aaa", linestyle=":", label="loss")
    ax2.set_ylabel("loss")
    ax.legend(fontsize=8, loc="center right")
    return png(fig)
