"""Accuracy-aware post-training quantization: keep the layers int8 hurts most in fp32, until the target is met.

What NNCF's `quantize_with_accuracy_control` does, on ONNX Runtime files: quantize everything; if the int8 model
misses the target, measure each layer's sensitivity, then return layers to fp32 in order of sensitivity until the
target is met or `max_fp32` layers are kept. A layer's activation input stays quantized as long as the layer that
feeds it is quantized (`feeding_nodes`), so the unit returned to fp32 is a layer together with its feeders, and
its sensitivity is the validation accuracy with that unit in fp32. Calibration is done once (its ranges are
cached), so each try costs a quantization pass and an evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .ptq import PostTraining, feeding_nodes, quantizable_nodes, quantize_onnx

__all__ = ["Fallback", "quantize_to_target"]


@dataclass
class Fallback:
    path: Path
    accuracy: float  # of the file written
    met: bool
    all_int8_accuracy: float
    kept_fp32: list[str] = field(default_factory=list)  # in the order they were returned to fp32
    steps: list[dict] = field(default_factory=list)  # per kept layer: its sensitivity, accuracy after, file bytes
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> accuracy gain with it and its feeders fp32
    not_quantized: list[str] = field(default_factory=list)


def quantize_to_target(fp32: str | Path, out: str | Path, calibration: Sequence[np.ndarray], config: PostTraining,
                       accuracy_of: Callable[[Path], float], target: float | None, *, workdir: str | Path,
                       max_fp32: int | None = None, say: Callable[[str], None] | None = None) -> Fallback:
    """Quantize `fp32` to `out`; with a `target`, fall back layer by layer as the module docstring says.

    `accuracy_of(path)` is the validation accuracy of an ONNX file (never the test split).
    """
    say = say or (lambda text: None)
    out, work = Path(out), Path(workdir)
    first = quantize_onnx(fp32, out, calibration, config, workdir=work)
    accuracy = accuracy_of(out)
    result = Fallback(out, accuracy, target is None or accuracy >= target, accuracy,
                      kept_fp32=list(first.kept_fp32), not_quantized=first.not_quantized)
    if result.met:
        return result
    say(f"all-int8 accuracy {accuracy:.2%} misses {target:.2%}: measuring each layer's sensitivity")
    trial = work / "trial.int8.onnx"
    feeders = feeding_nodes(work / "preprocessed.onnx")
    skip = set(first.kept_fp32) | set(first.not_quantized)
    candidates = [n for n in quantizable_nodes(work / "preprocessed.onnx") if n not in skip]

    def unit(node: str) -> list[str]:
        return [n for n in (*feeders.get(node, []), node) if n not in skip]

    for i, node in enumerate(candidates):
        quantize_onnx(fp32, trial, calibration, config, workdir=work, keep_fp32=[*skip, *unit(node)])
        result.sensitivity[node] = accuracy_of(trial) - accuracy
        say(f"sensitivity {i + 1}/{len(candidates)}: {node} (with its feeders) in fp32 gains "
            f"{result.sensitivity[node]:+.2%}")
    order = sorted(candidates, key=lambda n: -result.sensitivity[n])
    kept = list(first.kept_fp32)
    for node in order[: max_fp32 if max_fp32 is not None else len(order)]:
        added = [n for n in unit(node) if n not in kept]
        if not added:
            continue
        kept += added
        quantize_onnx(fp32, out, calibration, config, workdir=work, keep_fp32=kept)
        accuracy = accuracy_of(out)
        result.steps.append({"layer": node, "fp32": added, "sensitivity": result.sensitivity[node],
                             "accuracy": accuracy, "bytes": out.stat().st_size})
        say(f"{', '.join(added)} back to fp32: accuracy {accuracy:.2%}, {out.stat().st_size:,} bytes")
        if accuracy >= target:
            break
    trial.unlink(missing_ok=True)
    result.kept_fp32, result.accuracy, result.met = kept, accuracy, accuracy >= target
    return result
