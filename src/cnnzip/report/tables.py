"""Side-by-side descriptions of models: what every command and benchmark prints before and after compressing.

One function measures a model the same way everywhere (parameters, MACs, bytes of the saved file, eager and
ONNX Runtime latency, accuracy), so that tables from different methods can be compared line by line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..measure import Evaluator, count_macs, count_nonzero, count_parameters, measure_latency, saved_bytes

__all__ = ["describe", "format_table", "ratio_row", "latency_table", "comparison_cells"]


def describe(
    model: nn.Module,
    input_shape: tuple[int, ...],
    *,
    evaluator: Evaluator | None = None,
    latency_batches: Sequence[int] = (1, 256),
    repeats: int = 20,
    onnx: bool = True,
) -> dict[str, Any]:
    """Measure `model`: a flat dict of numbers, ready for a table or JSON.

    Latency is measured in eager PyTorch and, when onnxruntime is installed and `onnx` is set, in ONNX Runtime,
    interleaved so machine noise hits both alike.
    """
    row: dict[str, Any] = {
        "params": count_parameters(model), "nonzero": count_nonzero(model),
        "macs": count_macs(model, input_shape), "bytes": saved_bytes(model),
    }
    if evaluator is not None:
        row["accuracy"] = evaluator.evaluate(model).accuracy
    use_onnx = onnx and importlib.util.find_spec("onnxruntime") is not None
    if latency_batches and use_onnx:
        from ..deploy import compare_latency

        for r in compare_latency(model, input_shape, tuple(latency_batches), repeats=repeats, rounds=3):
            b = r["batch_size"]
            row[f"eager_ms_b{b}"] = r["eager"].median_ms
            row[f"ort_ms_b{b}"] = r["onnxruntime"].median_ms
    else:
        for b in latency_batches:
            row[f"eager_ms_b{b}"] = measure_latency(model, input_shape, b, repeats=repeats).median_ms
    return row


def latency_table(
    models: dict[str, nn.Module],
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 256),
    *,
    rounds: int = 5,
    repeats: int = 10,
    onnx: bool = True,
) -> dict[str, dict[str, float]]:
    """Latency of several models measured side by side: `rounds` rounds, each timing every model (in a rotating
    order) in eager PyTorch and ONNX Runtime, so that load from other processes falls on all of them alike.
    Returns, per model, the median milliseconds as `eager_ms_b<B>` and `ort_ms_b<B>`."""
    import statistics
    import tempfile
    from pathlib import Path

    use_onnx = onnx and importlib.util.find_spec("onnxruntime") is not None
    times: dict[str, dict[str, list[float]]] = {n: {} for n in models}
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        if use_onnx:
            from ..deploy import export_onnx, measure_onnx_latency, onnx_session

            for name, model in models.items():
                path = export_onnx(model, Path(tmp) / f"{len(sessions)}.onnx", input_shape)
                sessions[name] = onnx_session(path)
        names = list(models)
        for r in range(rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                for b in batch_sizes:
                    lat = measure_latency(models[name], input_shape, b, warmup=2, repeats=repeats)
                    times[name].setdefault(f"eager_ms_b{b}", []).append(lat.median_ms)
                    if use_onnx:
                        lat = measure_onnx_latency(sessions[name], input_shape, b, warmup=2, repeats=repeats)
                        times[name].setdefault(f"ort_ms_b{b}", []).append(lat.median_ms)
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def ratio_row(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """after / before for every shared number (accuracy as a difference in points)."""
    out: dict[str, Any] = {}
    for k, v in after.items():
        if k in before and isinstance(v, (int, float)) and before[k]:
            out[k] = (v - before[k]) * 100 if "accuracy" in k else v / before[k]
    return out


def _format(key: str) -> str:
    if "accuracy" in key:
        return "{:.2%}"
    if key in ("params", "nonzero", "macs") or "bytes" in key:
        return "{:,}"
    return "{:.3f}" if "ms" in key else "{}"


def comparison_cells(rows: dict[str, dict[str, Any]], ratios: dict[str, Any] | None = None) -> list[list[str]]:
    """The cells of a comparison: a header, then one line per measure with a column per named row (and the
    after/before ratio). Shared by the text table and the HTML report."""
    names = list(rows)
    keys = list(dict.fromkeys(k for r in rows.values() for k in r))
    lines = [["", *names] + (["after/before"] if ratios else [])]
    for k in keys:
        cells = [k] + [_format(k).format(rows[n][k]) if k in rows[n] else "-" for n in names]
        if ratios:
            r = ratios.get(k)
            cells.append("-" if r is None else (f"{r:+.2f} pt" if "accuracy" in k else f"{r:.3f}x"))
        lines.append(cells)
    return lines


def format_table(rows: dict[str, dict[str, Any]], ratios: dict[str, Any] | None = None) -> str:
    """A plain-text table: one column per named row, one line per measure, and an optional ratio column."""
    lines = comparison_cells(rows, ratios)
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in
                               enumerate(zip(line, widths, strict=True))) for line in lines)
