"""Post-training quantization to int8 that ONNX Runtime runs with int8 kernels.

The model is exported to ONNX (verified against PyTorch), pre-processed (shape inference, Conv+BatchNorm
folding), calibrated on training images, and written in the QDQ format: per-channel symmetric int8 weights and
8-bit activations, which ONNX Runtime's CPU provider fuses into integer convolutions and matrix products. The
activations are uint8 by default: on x86, ONNX Runtime's U8S8 kernels (uint8 activations, int8 weights) ran
ResNet-20 about twice as fast as its S8S8 ones, which were slower than fp32 (benchmarks/quantize_resnet56.py).
The int8 file is then checked in ONNX Runtime against the fp32 file on the same images.

Calibration ranges are computed once per run and cached (ONNX Runtime's `calibration_cache_path`), so trying
other sets of layers kept in fp32 (`sensitivity.py`) costs a quantization pass, not a calibration.
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import CnnzipError, ConfigError, ModelError, layer_patterns

__all__ = ["PostTraining", "Int8Result", "quantize_onnx", "quantizable_nodes", "feeding_nodes", "top1_agreement",
           "CALIBRATIONS"]

CALIBRATIONS = ("minmax", "entropy", "percentile")
QUANTIZED_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class PostTraining:
    """How to quantize. Pure data.

    - `calibration`: how activation ranges are set from the calibration images: minmax, entropy (KL) or
      percentile (`percentile` of |activation|).
    - `images`: training images to calibrate on (never validation or test images).
    - `per_channel`: one weight scale per output channel (else per tensor).
    - `activations`: uint8 (asymmetric; the fast kernels on x86) or int8.
    - `keep_fp32`: names or regular expressions of ONNX nodes (e.g. `/conv1/Conv`) left in fp32.
    """

    calibration: str = "minmax"
    images: int = 512
    percentile: float = 99.999
    per_channel: bool = True
    activations: str = "uint8"
    keep_fp32: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.calibration not in CALIBRATIONS:
            raise ConfigError(f"calibration must be one of {', '.join(CALIBRATIONS)}; got {self.calibration!r}")
        if self.images < 1:
            raise ConfigError(f"calibration needs at least one image; got {self.images}")
        if self.activations not in ("uint8", "int8"):
            raise ConfigError(f"activations must be uint8 or int8; got {self.activations!r}")
        if not 50 < self.percentile <= 100:
            raise ConfigError(f"percentile must be in (50, 100]; got {self.percentile}")
        object.__setattr__(self, "keep_fp32", tuple(self.keep_fp32))
        layer_patterns(self.keep_fp32, "--keep-fp32")


@dataclass
class Int8Result:
    path: Path
    kept_fp32: list[str]  # nodes left in fp32
    not_quantized: list[str]  # quantizable nodes ONNX Runtime left in fp32 on its own


def _require():
    try:
        import onnx
        from onnxruntime import quantization
    except ImportError as exc:
        raise CnnzipError("quantization needs onnx and onnxruntime: pip install 'cnnzip[onnx]'") from exc
    return onnx, quantization


def quantizable_nodes(path: str | Path) -> list[str]:
    """Names of the nodes an int8 pass would quantize (convolutions and matrix products), in graph order."""
    onnx, _ = _require()
    return [n.name for n in onnx.load(str(path)).graph.node if n.op_type in QUANTIZED_OPS]


def feeding_nodes(path: str | Path) -> dict[str, list[str]]:
    """For every quantizable node, the quantizable nodes whose outputs reach its activation input through
    operations that are not quantized themselves (ReLU, pooling, additions...). The tensor between them is
    quantized as long as either end is: to keep it in fp32, the node and these must all stay fp32."""
    onnx, _ = _require()
    graph = onnx.load(str(path)).graph
    producer = {o: n for n in graph.node for o in n.output}
    out = {}
    for node in graph.node:
        if node.op_type not in QUANTIZED_OPS:
            continue
        found, seen, frontier = [], set(), [node.input[0]]
        while frontier and len(seen) < 64:
            tensor = frontier.pop()
            source = producer.get(tensor)
            if source is None or source.name in seen:
                continue
            seen.add(source.name)
            if source.op_type in QUANTIZED_OPS:
                found.append(source.name)
            elif source.op_type not in ("QuantizeLinear", "DequantizeLinear"):
                frontier.extend(i for i in source.input if i in producer)
        out[node.name] = sorted(found)
    return out


class _Reader:
    """ONNX Runtime's calibration reader over a list of batches (numpy float32, NCHW)."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]) -> None:
        self.name, self.batches, self.i = name, list(batches), 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quantize_onnx(fp32: str | Path, out: str | Path, calibration: Iterable[np.ndarray], config: PostTraining,
                  *, workdir: str | Path | None = None, keep_fp32: Sequence[str] = ()) -> Int8Result:
    """Write the int8 QDQ model of the fp32 ONNX file `fp32` to `out`.

    `calibration` yields input batches (normalised like the model's inputs). `keep_fp32` adds node names to
    `config.keep_fp32` (exact names). With `workdir`, the pre-processed model and the calibration ranges are
    kept there and reused by later calls with the same `workdir`.
    """
    onnx, q = _require()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(workdir) if workdir is not None else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        pre = work / "preprocessed.onnx"
        if not pre.exists():
            try:
                q.quant_pre_process(str(fp32), str(pre))
            except Exception as exc:  # noqa: BLE001 - shape inference fails in many ways on odd graphs
                raise ModelError(f"ONNX Runtime cannot prepare {fp32} for quantization ({type(exc).__name__}: "
                                 f"{str(exc).splitlines()[0][:160]})") from exc
        nodes = quantizable_nodes(pre)
        patterns = layer_patterns(config.keep_fp32, "--keep-fp32")
        excluded = sorted({n for n in nodes if any(p.fullmatch(n) for p in patterns)} | set(keep_fp32))
        batches = list(calibration)
        if not batches:
            raise ConfigError("the calibration set is empty: give it at least one batch of training images")
        session_input = onnx.load(str(pre)).graph.input[0].name
        method = {"minmax": q.CalibrationMethod.MinMax, "entropy": q.CalibrationMethod.Entropy,
                  "percentile": q.CalibrationMethod.Percentile}[config.calibration]
        options = {"ActivationSymmetric": False, "WeightSymmetric": True}
        if config.calibration == "percentile":
            options["CalibPercentile"] = config.percentile
        kwargs = {}
        if "calibration_cache_path" in inspect.signature(q.quantize_static).parameters:
            kwargs["calibration_cache_path"] = str(work / f"ranges-{config.calibration}.json")
        try:
            q.quantize_static(str(pre), str(out), _Reader(session_input, batches), quant_format=q.QuantFormat.QDQ,
                              per_channel=config.per_channel,
                              activation_type=q.QuantType.QUInt8 if config.activations == "uint8" else q.QuantType.QInt8,
                              weight_type=q.QuantType.QInt8, calibrate_method=method, nodes_to_exclude=excluded,
                              extra_options=options, **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"ONNX Runtime could not quantize {fp32}: {str(exc).splitlines()[0][:200]}") from exc
    quantized = _quantized_nodes(out)
    return Int8Result(Path(out), excluded, [n for n in nodes if n not in quantized and n not in excluded])


def _quantized_nodes(path: str | Path) -> set[str]:
    """Nodes whose weight input comes from a DequantizeLinear: the ones that run in int8."""
    onnx, _ = _require()
    graph = onnx.load(str(path)).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return {n.name for n in graph.node if n.op_type in QUANTIZED_OPS and len(n.input) > 1
            and n.input[1] in dequantized}


def top1_agreement(a, b, batches: Iterable[np.ndarray]) -> float:
    """The fraction of images on which two models (callables on numpy batches) predict the same class."""
    same = total = 0
    for x in batches:
        same += int((np.argmax(a(x), 1) == np.argmax(b(x), 1)).sum())
        total += len(x)
    return same / total if total else 0.0


