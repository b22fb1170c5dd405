"""A latency model of a network in ONNX Runtime: each conv and linear layer timed alone at a few widths.

Fewer MACs are not less time: a kernel's speed depends on its channel counts (blocks of 8 or 16), and what a
pruned layer saves is not proportional to what it loses. NetAdapt (Yang et al., ECCV 2018) predicts a pruned
network's latency from a table of its layers' latencies; so does this. Every conv and linear layer of the model
is rebuilt alone (same kernel, stride, padding, groups and input size) at a grid of input and output widths
(`fractions` of its own), exported to ONNX and run in ONNX Runtime at `batch_size`. A layer's time is what ONNX
Runtime's profiler reports for its compute kernels, without the layout conversions around them (NCHWc reorders,
transposes, the int8 file's quantize/dequantize of its input and output): a whole model converts its layout once,
at its ends, where a layer alone converts it on both sides, and on a 16-channel ResNet layer those conversions
were a third of the alone time and made the table over-predict what pruning saves 2.5-fold. A pruned model's
latency is then predicted as the unpruned model's measured time plus, for each layer, the difference between its
time at its new widths (interpolated in the grid) and at its old ones. Layers with the same configuration are
timed once. One conversion is real inside a model: a layer whose output width is not a multiple of the NCHWc
kernels' channel block (16 with AVX-512, 8 with AVX2; x86 only) hands its consumer a plain NCHW tensor, so its
output reorder is counted in its time at such widths.
A table is cached per model architecture, batch size, thread count, precision and machine, so a search asks for
it once. With `precision="int8"` every layer file (and the whole model) is first quantized as `cnnzip quantize`
does (QDQ, per-channel weights), calibrated on random inputs: ranges change a kernel's results, not its time.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError
from ..io import atomic_write_text

__all__ = ["LatencyTable", "build_latency_table", "layer_configs"]

# Eighths of each width: a 64-channel layer is timed at every multiple of 8, so a width that is not a multiple of
# the NCHWc block (and pays a reorder) is measured, not interpolated between two that are; quarters predicted a
# ResNet-56 cut to widths 12/24/48 to save 49 ms at batch 256 where its kernels saved 34.
EIGHTHS = tuple(i / 8 for i in range(1, 9))


@dataclass(frozen=True)
class _Config:
    """One layer as ONNX Runtime sees it, at the model's full widths."""

    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    kernel: tuple[int, ...] = (1, 1)
    stride: tuple[int, ...] = (1, 1)
    padding: tuple[int, ...] = (0, 0)
    groups: int = 1
    size: tuple[int, ...] = ()  # the input's spatial size

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    def at(self, cin: int, cout: int) -> nn.Module:
        if self.kind == "linear":
            return nn.Linear(cin, cout)
        groups = self.groups if self.groups == 1 else cin  # a depthwise layer stays depthwise
        return nn.Conv2d(cin, cout if self.groups == 1 else cin, self.kernel, self.stride, self.padding,
                         groups=groups)


def _widths(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    return m.in_channels, m.out_channels


def layer_configs(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, _Config]:
    """Each conv (2-D) and linear layer the model runs, by name, with its widths and input size."""
    configs: dict[str, _Config] = {}
    handles = []

    def hook(name):
        def record(m, inputs, _output):
            x = inputs[0]
            if isinstance(m, nn.Linear):
                configs[name] = _Config("linear", m.in_features, m.out_features)
            else:
                depthwise = m.groups > 1 and m.groups == m.in_channels == m.out_channels
                if m.groups > 1 and not depthwise:
                    return  # grouped, not depthwise: left out (cnnzip keeps it whole or prunes whole groups)
                configs[name] = _Config("conv", m.in_channels, m.out_channels, tuple(m.kernel_size),
                                        tuple(m.stride), tuple(m.padding), m.groups, tuple(x.shape[2:]))
        return record

    for name, m in model.named_modules():
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)):
            handles.append(m.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return configs


@dataclass
class LatencyTable:
    """Measured times (ms) of each layer configuration on a grid of (input, output) widths, and of the whole
    unpruned model; `predict` gives a pruned copy's latency."""

    batch_size: int
    threads: int
    base_ms: float
    layers: dict[str, str]  # layer name -> config key
    points: dict[str, dict[str, float]] = field(default_factory=dict)  # config key -> "cin,cout" -> ms
    precision: str = "fp32"

    def layer_ms(self, name: str, cin: int, cout: int) -> float:
        """The layer's time at these widths, interpolated bilinearly in its grid (clamped at its edges)."""
        grid = {tuple(int(v) for v in k.split(",")): ms for k, ms in self.points[self.layers[name]].items()}
        ins, outs = sorted({a for a, _ in grid}), sorted({b for _, b in grid})

        def bracket(values, v):
            v = min(max(v, values[0]), values[-1])
            hi = next(i for i, x in enumerate(values) if x >= v)
            lo = max(hi - 1, 0) if values[hi] > v else hi
            t = 0.0 if values[hi] == values[lo] else (v - values[lo]) / (values[hi] - values[lo])
            return values[lo], values[hi], t

        if all(a == b for a, b in grid):  # depthwise: one width, measured along the diagonal
            i0, i1, ti = bracket(ins, cin)
            return (1 - ti) * grid[i0, i0] + ti * grid[i1, i1]
        i0, i1, ti = bracket(ins, cin)
        o0, o1, to = bracket(outs, cout)
        return ((1 - ti) * (1 - to) * grid[i0, o0] + ti * (1 - to) * grid[i1, o0]
                + (1 - ti) * to * grid[i0, o1] + ti * to * grid[i1, o1])

    def predict(self, model: nn.Module) -> float:
        """Milliseconds the pruned `model` (same layer names, narrower; some residual blocks perhaps removed) should
        take at this batch size."""
        from ..models import RemovedBlock

        modules = dict(model.named_modules())
        removed = [f"{n}." for n, m in modules.items() if isinstance(m, RemovedBlock)]
        total = self.base_ms
        for name, key in self.layers.items():
            m = modules.get(name)
            full = json.loads(key)
            if m is None and name.startswith(tuple(removed)):
                total -= self.layer_ms(name, full["cin"], full["cout"])  # its block was removed: its time goes
                continue  # (the block's addition is not modelled: a removal saves a little more than predicted)
            if m is None or not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue  # a layer a factorisation replaced: not modelled
            cin, cout = _widths(m)
            total += self.layer_ms(name, cin, cout) - self.layer_ms(name, full["cin"], full["cout"])
        return total

    def save(self, path: str | Path) -> Path:
        atomic_write_text(path, json.dumps(asdict(self), indent=1))
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        data = json.loads(Path(path).read_text())
        return cls(**data)


def _machine() -> str:
    cpu = platform.processor()
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{platform.machine()}|{cpu}|{os.cpu_count()}"


_LAYOUT_OPS = {"ReorderInput", "ReorderOutput", "Transpose", "QuantizeLinear", "DequantizeLinear",
               "DynamicQuantizeLinear"}


def _profiled_sessions(files: dict[str, Path], threads: int, workdir: Path) -> dict:
    """ONNX Runtime sessions that record each node's time (ORT's profiler), one file per session."""
    import onnxruntime as ort

    sessions = {}
    for name, path in files.items():
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.enable_profiling = True
        options.profile_file_prefix = str(workdir / f"profile-{name}")
        sessions[name] = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return sessions


def nchwc_block() -> int:
    """The channel block of ONNX Runtime's NCHWc conv kernels on this CPU (MLAS: 16 with AVX-512F, 8 with AVX or
    AVX2); 1 where it has none (not x86)."""
    try:
        flags = next((line.split(":", 1)[1].split() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("flags")), [])
    except OSError:
        flags = []
    return 16 if "avx512f" in flags else 8 if "avx" in flags or "avx2" in flags else 1


def _kernel_ms(session, warmup: int, output_reorder: bool = False) -> float:
    """The median over runs of each compute node's time, summed (ms); layout conversions (but the output's
    reorder, with `output_reorder`) and the first `warmup` runs left out. Ends the session's profiling."""
    events = json.loads(Path(session.end_profiling()).read_text())
    skip = _LAYOUT_OPS - ({"ReorderOutput"} if output_reorder else set())
    per_node: dict[str, list[float]] = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") \
                and e.get("args", {}).get("op_name") not in skip:
            per_node.setdefault(e["name"], []).append(e["dur"] / 1000)
    return sum(statistics.median(v[warmup:] or v) for v in per_node.values())


def _int8(path: Path, shape: tuple[int, ...]) -> Path:
    """The int8 QDQ file of one exported layer (or model), as `cnnzip quantize` writes it; random calibration."""
    import numpy as np

    from ..quantize.ptq import PostTraining, quantize_onnx

    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, *shape)).astype(np.float32) for _ in range(2)]
    out = path.with_suffix(".int8.onnx")
    quantize_onnx(path, out, batches, PostTraining(images=16), workdir=path.with_suffix(".work"))
    return out


def build_latency_table(model: nn.Module, input_shape: tuple[int, ...], batch_size: int = 1, *,
                        fractions: Sequence[float] = EIGHTHS, round_to: int = 1,
                        repeats: int = 20, rounds: int = 3, threads: int | None = None,
                        cache_dir: str | Path | None = None, precision: str = "fp32") -> LatencyTable:
    """Time every conv and linear layer configuration of `model` alone in ONNX Runtime at `fractions` of its input
    and output widths (rounded to multiples of `round_to`), and the whole model; cached in `cache_dir` (default
    $CNNZIP_CACHE or ~/.cache/cnnzip/latency) under a key of the architecture, batch size, threads, precision
    (fp32, or int8 as ONNX Runtime runs `cnnzip quantize`'s files) and machine."""
    from .onnx import export_onnx, measure_onnx_latency, onnx_session

    if precision not in ("fp32", "int8"):
        raise ConfigError(f"precision must be fp32 or int8; got {precision!r}")

    if not fractions or any(not 0 < f <= 1 for f in fractions) or 1.0 not in fractions:
        raise ConfigError(f"fractions are shares of each layer's width in (0, 1], including 1; got {list(fractions)}")
    threads = threads or torch.get_num_threads()
    model = model.cpu().eval()
    configs = layer_configs(model, tuple(input_shape))
    if not configs:
        raise ConfigError("the model has no conv or linear layer to time")
    arch = hashlib.sha256(json.dumps({n: c.key() for n, c in sorted(configs.items())}).encode()).hexdigest()[:16]
    key = hashlib.sha256(json.dumps([arch, list(input_shape), batch_size, threads, sorted(fractions), round_to,
                                     _machine(), "kernels", nchwc_block()] + ([precision] if precision != "fp32" else []))
                         .encode()).hexdigest()[:16]
    default = Path(os.environ.get("CNNZIP_CACHE", Path.home() / ".cache" / "cnnzip")) / "latency"
    cache = Path(cache_dir) if cache_dir is not None else default
    path = cache / f"{key}.json"
    if path.exists():
        return LatencyTable.load(path)

    def width(n: int, f: float) -> int:
        w = max(1, int(round(n * f)))
        return min(n, max(round_to, -(-w // round_to) * round_to)) if round_to > 1 else w

    points: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files, labels = {}, []
        for cfg in {c.key(): c for c in configs.values()}.values():
            shape = (cfg.cin,) if cfg.kind == "linear" else (cfg.cin, *cfg.size)
            pairs = {(width(cfg.cin, fi), width(cfg.cout, fo)) for fi in fractions for fo in fractions}
            if cfg.groups > 1:  # depthwise: one width
                pairs = {(a, a) for a, _ in pairs}
            for cin, cout in sorted(pairs):
                layer_shape = (cin, *shape[1:])
                name = f"{len(files)}"
                layer = export_onnx(cfg.at(cin, cout), Path(tmp) / f"{name}.onnx", layer_shape)
                files[name] = (_int8(layer, layer_shape) if precision == "int8" else layer, layer_shape)
                labels.append((cfg.key(), f"{cin},{cout}", name))
        whole = export_onnx(model, Path(tmp) / "model.onnx", tuple(input_shape))
        whole = _int8(whole, tuple(input_shape)) if precision == "int8" else whole
        sessions = _profiled_sessions({n: p for n, (p, _) in files.items()}, threads, Path(tmp))
        base = onnx_session(whole, threads=threads)
        base_times = []
        for r in range(rounds):  # rounds over everything, so that load drifts fall on all layers alike
            base_times.append(measure_onnx_latency(base, tuple(input_shape), batch_size, warmup=2,
                                                   repeats=repeats).median_ms)
            for n, session in sessions.items():
                measure_onnx_latency(session, files[n][1], batch_size, warmup=2 if r == 0 else 0, repeats=repeats)
        for cfg_key, widths, n in labels:
            cout = int(widths.split(",")[1])
            points.setdefault(cfg_key, {})[widths] = _kernel_ms(sessions[n], warmup=2,
                                                                output_reorder=cout % nchwc_block() != 0)
    table = LatencyTable(batch_size, threads, statistics.median(base_times),
                         {name: c.key() for name, c in configs.items()}, points, precision)
    table.save(path)
    return table
