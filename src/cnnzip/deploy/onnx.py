"""Export a model to ONNX, check the file, and time it in ONNX Runtime next to eager PyTorch.

Eager PyTorch at batch 1 spends most of its time in per-operator Python and dispatch overhead, so a pruned model
that does half the work is rarely twice as fast there. ONNX Runtime runs the same graph with that overhead gone
(and with fused Conv+BN+ReLU), which is what a deployed model sees: `compare_latency` reports both, measured the
same way, and is what benchmarks call to report real speed-ups.

onnx and onnxruntime are optional (`pip install 'cnnzip[onnx]'`); they are imported only when a function here
is called.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import CnnzipError, ConfigError, ModelError
from ..measure import Latency, time_calls

if TYPE_CHECKING:
    import onnxruntime

__all__ = ["export_onnx", "onnx_session", "measure_onnx_latency", "compare_latency", "compare_onnx_latency"]

Exporter = Literal["auto", "torchscript", "dynamo"]

_INSTALL_HINT = "pip install 'cnnzip[onnx]'"
_INPUT_NAME = "input"
_OUTPUT_NAME = "output"


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_shape: tuple[int, ...] = (3, 32, 32),
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    rtol: float = 1e-4,
    exporter: Exporter = "auto",
) -> Path:
    """Write `model` as an ONNX file at `path` and prove that ONNX Runtime computes what PyTorch computes.

    The model is exported from a deep copy in eval mode on the CPU, so the caller's model keeps its mode, device
    and parameters. The file is written beside `path` under a temporary name, checked with `onnx.checker`, run in
    ONNX Runtime on a fresh random batch and compared with eager PyTorch on the same batch, and only then renamed
    to `path`: a failed or interrupted export never leaves a file behind.

    `input_shape` is one input without the batch dimension, (C, H, W). With `dynamic_batch` the batch dimension
    is symbolic: the model is traced at batch 2 and verified at batch 2 and batch 1. Without it the file takes
    batch 1 only. Outputs must agree to within `rtol` x max(1, largest |output|).

    `exporter`: "torchscript" is torch's tracing exporter (`dynamo=False`); "dynamo" is the torch.export-based one
    and needs the `onnxscript` package. "auto" uses the tracing exporter and falls back to dynamo when tracing
    fails and onnxscript is installed. Tracing comes first because it honours `opset` exactly and needs no extra
    package; the dynamo exporter (onnxscript 0.7) cannot write opset 17 for models with Pad, writes opset 18 then,
    and takes seconds instead of a fraction of one.

    Raises ModelError when the model cannot be exported or its outputs differ, ConfigError for bad settings, and
    CnnzipError when onnx or onnxruntime is missing.
    """
    onnx, _ = _require_onnx()
    input_shape = _check_shape(input_shape)
    if not isinstance(opset, int) or isinstance(opset, bool) or opset < 7:
        raise ConfigError(f"opset must be an integer >= 7, got {opset!r}")
    if not rtol > 0:
        raise ConfigError(f"rtol must be > 0, got {rtol!r}")
    if exporter not in ("auto", "torchscript", "dynamo"):
        raise ConfigError(f"exporter must be 'auto', 'torchscript' or 'dynamo', got {exporter!r}")
    path = Path(path)
    cpu_model = _eval_copy(model)
    trace_batch = 2 if dynamic_batch else 1
    generator = torch.Generator().manual_seed(0)
    example = torch.randn((trace_batch, *input_shape), generator=generator)
    _eager(cpu_model, example)  # a wrong input_shape or output type fails here, with a clear message

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        _export(cpu_model, example, tmp, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except Exception as e:
            raise ModelError(f"the exported ONNX graph of {_name(model)} is invalid: {_first_line(e)}") from e
        session = onnx_session(tmp)
        for batch in (2, 1) if dynamic_batch else (1,):
            x = torch.randn((batch, *input_shape), generator=generator)
            _verify(session, cpu_model, x, rtol=rtol, what=_name(model))
        del session
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    return path


def onnx_session(path: str | Path, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An ONNX Runtime session for `path` on the CPU, with every graph optimisation on (ORT_ENABLE_ALL).

    `threads` is the number of intra-op threads. By default it is `torch.get_num_threads()`, not ONNX Runtime's
    own default (one per physical core): PyTorch may have been limited (`torch.set_num_threads`,
    OMP_NUM_THREADS, a container's CPU quota), and a comparison that gives one runtime more cores than the other
    measures the cores, not the runtime.
    """
    _, ort = _require_onnx()
    if threads is None:
        threads = torch.get_num_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no ONNX file at {path}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as e:
        raise ModelError(f"ONNX Runtime cannot load {path}: {_first_line(e)}") from e


def measure_onnx_latency(
    path_or_session: str | Path | onnxruntime.InferenceSession,
    input_shape: tuple[int, ...],
    batch_size: int = 1,
    *,
    warmup: int = 10,
    repeats: int = 50,
    min_seconds: float = 0.0,
) -> Latency:
    """Time one ONNX Runtime run on a random batch, measured as `cnnzip.measure.measure_latency` measures eager.

    `warmup` runs first, then at least `repeats` timed runs (and more until `min_seconds` have passed); the
    median is reported. A path opens a session with `onnx_session(path)`.
    """
    _check_timing(batch_size, warmup, repeats)
    session = _as_session(path_or_session)
    feed = {_input_name(session, input_shape, batch_size): _random_batch(batch_size, input_shape)}
    times = time_calls(lambda: session.run(None, feed), warmup, repeats, min_seconds)
    return Latency.from_times(batch_size, times)


def compare_onnx_latency(
    paths: dict[str, str | Path],
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 256),
    *,
    rounds: int = 3,
    repeats: int = 10,
) -> dict[str, dict[str, float]]:
    """ONNX Runtime latency of several files measured side by side: `rounds` rounds, each timing every file (in a
    rotating order) at every batch size, so that load from other processes falls on all of them alike. Returns,
    per name, the median milliseconds as `ort_ms_b<B>`."""
    import statistics

    sessions = {name: onnx_session(path) for name, path in paths.items()}
    times: dict[str, dict[str, list[float]]] = {name: {} for name in paths}
    names = list(paths)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            for b in batch_sizes:
                lat = measure_onnx_latency(sessions[name], input_shape, b, warmup=2, repeats=repeats)
                times[name].setdefault(f"ort_ms_b{b}", []).append(lat.median_ms)
    return {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}


def compare_latency(
    model: nn.Module,
    input_shape: tuple[int, ...],
    batch_sizes: Sequence[int] = (1, 256),
    *,
    warmup: int = 10,
    repeats: int = 50,
    rounds: int = 5,
    threads: int | None = None,
    opset: int = 17,
    workdir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Eager PyTorch and ONNX Runtime latency of `model` on the CPU, side by side, for each batch size.

    The model is exported with `export_onnx` (verified) to `workdir/model.onnx`, or to a temporary directory
    that is removed afterwards. For each batch size both runtimes get `warmup` untimed passes, then `repeats`
    timed passes each, split into `rounds` rounds that alternate between the runtimes (and alternate which one
    goes first), so that a burst of load from other processes hits both alike. Each Latency is the median of all
    its timed passes. Both run on the same random batch with the same number of threads (`threads`, default
    `torch.get_num_threads()`; PyTorch's setting is restored afterwards).

    Interleaving evens out slow drifts, not contention: when other processes take cores, eager PyTorch (OpenMP
    threads that wait for each other at every operator) slows far more than ONNX Runtime, and the speed-up is
    overstated. On a shared machine, pass `threads` below the number of free cores (e.g. 1).

    Returns one dict per batch size: `batch_size`, `eager` and `onnxruntime` (cnnzip.measure.Latency), and
    `speedup` (eager median / ONNX Runtime median).
    """
    input_shape = _check_shape(input_shape)
    batch_sizes = list(batch_sizes)
    if not batch_sizes:
        raise ConfigError("compare_latency needs at least one batch size")
    for batch_size in batch_sizes:
        _check_timing(batch_size, warmup, repeats)
    if not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
        raise ConfigError(f"threads must be an integer >= 1, got {threads!r}")
    _require_onnx()

    with contextlib.ExitStack() as stack:
        if workdir is None:
            directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cnnzip-onnx-")))
        else:
            directory = Path(workdir)
        onnx_path = export_onnx(model, directory / "model.onnx", input_shape, opset=opset, dynamic_batch=True)
        cpu_model = _eval_copy(model)
        torch_threads = torch.get_num_threads()
        if threads is not None:
            torch.set_num_threads(threads)
            stack.callback(torch.set_num_threads, torch_threads)
        session = onnx_session(onnx_path, threads=torch.get_num_threads())
        per_round = max(1, math.ceil(repeats / rounds))
        stack.enter_context(torch.no_grad())
        results = []
        for batch_size in batch_sizes:
            x = _random_batch(batch_size, input_shape)
            xt = torch.from_numpy(x)
            feed = {_input_name(session, input_shape, batch_size): x}

            def run_eager(xt: torch.Tensor = xt) -> None:
                cpu_model(xt)

            def run_ort(feed: dict[str, np.ndarray] = feed) -> None:
                session.run(None, feed)

            runners = {"eager": run_eager, "onnxruntime": run_ort}
            times: dict[str, list[float]] = {name: [] for name in runners}
            for run in runners.values():
                time_calls(run, warmup, 0, 0.0)
            for r in range(rounds):
                order = list(runners) if r % 2 == 0 else list(reversed(runners))
                for name in order:
                    times[name] += time_calls(runners[name], 0, per_round, 0.0)
            eager = Latency.from_times(batch_size, times["eager"])
            ort_latency = Latency.from_times(batch_size, times["onnxruntime"])
            results.append({
                "batch_size": batch_size,
                "eager": eager,
                "onnxruntime": ort_latency,
                "speedup": eager.median_ms / ort_latency.median_ms,
            })
    return results


# --- private plumbing -------------------------------------------------------------------------------------------


def _require_onnx() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise CnnzipError(f"ONNX export and timing need onnx and onnxruntime: {_INSTALL_HINT} ({e})") from e
    return onnx, onnxruntime


def _check_shape(input_shape: Any) -> tuple[int, ...]:
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = ()
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
        raise ConfigError(f"input_shape must be a non-empty tuple of positive integers such as (3, 32, 32), "
                          f"got {input_shape!r}")
    return shape


def _check_timing(batch_size: int, warmup: int, repeats: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats must be an integer >= 1, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")


def _name(model: nn.Module) -> str:
    spec = getattr(model, "cnnzip_spec", None)
    return spec["name"] if isinstance(spec, dict) and "name" in spec else type(model).__name__


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _eval_copy(model: nn.Module) -> nn.Module:
    """A CPU copy of `model` in eval mode; the caller's model is left as it was."""
    if not isinstance(model, nn.Module):
        raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
    return copy.deepcopy(model).cpu().eval()


@torch.no_grad()
def _eager(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    try:
        y = model(x)
    except Exception as e:
        raise ModelError(f"{_name(model)} fails on an input of shape {tuple(x.shape)}: {_first_line(e)}; "
                         f"is input_shape right?") from e
    if not isinstance(y, torch.Tensor):
        raise ModelError(f"ONNX export needs a model whose forward returns one tensor; {_name(model)} returned "
                         f"{type(y).__name__}")
    return y


def _export(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int, dynamic_batch: bool,
            exporter: Exporter) -> None:
    has_onnxscript = importlib.util.find_spec("onnxscript") is not None
    if exporter == "dynamo" and not has_onnxscript:
        raise CnnzipError("the dynamo ONNX exporter needs onnxscript: pip install onnxscript")
    attempts = ["torchscript", "dynamo"] if exporter == "auto" else [exporter]
    if exporter == "auto" and not has_onnxscript:
        attempts = ["torchscript"]
    errors = []
    for attempt in attempts:
        try:
            if attempt == "torchscript":
                _export_torchscript(model, example, path, opset=opset, dynamic_batch=dynamic_batch)
            else:
                _export_dynamo(model, example, path, opset=opset, dynamic_batch=dynamic_batch)
            return
        except Exception as e:  # noqa: BLE001 - exporters raise anything; all are reported below, with a cause
            errors.append((attempt, e))
    detail = "; ".join(f"{attempt} exporter: {_first_line(e)}" for attempt, e in errors)
    hint = "" if has_onnxscript else " (installing onnxscript enables the newer dynamo exporter as a fallback)"
    raise ModelError(f"cannot export {_name(model)} to ONNX opset {opset}: {detail}{hint}") from errors[-1][1]


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int,
                        dynamic_batch: bool) -> None:
    axes = {_INPUT_NAME: {0: "batch"}, _OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        # The tracing exporter announces its own deprecation, and notes strided slices it cannot constant-fold;
        # neither is actionable here. Tracer warnings (data-dependent control flow) stay visible.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*[Cc]onstant folding.*")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, *, opset: int,
                   dynamic_batch: bool) -> None:
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset,
                      input_names=[_INPUT_NAME], output_names=[_OUTPUT_NAME], dynamic_shapes=shapes,
                      external_data=False, verbose=False)


def _verify(session: onnxruntime.InferenceSession, model: nn.Module, x: torch.Tensor, *, rtol: float,
            what: str) -> None:
    expected = _eager(model, x).numpy()
    if not np.isfinite(expected).all():
        raise ModelError(f"{what} outputs NaN or inf on a random input; its ONNX export cannot be verified")
    try:
        (actual, *_) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    except Exception as e:
        raise ModelError(f"ONNX Runtime fails to run the export of {what} at batch {len(x)}: "
                         f"{_first_line(e)}") from e
    if actual.shape != expected.shape:
        raise ModelError(f"the ONNX export of {what} gives output shape {actual.shape} at batch {len(x)}, "
                         f"PyTorch gives {expected.shape}")
    scale = float(np.abs(expected).max(initial=0.0))
    max_diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max(initial=0.0))
    tolerance = rtol * max(scale, 1.0)
    if not max_diff <= tolerance:  # also catches NaN
        raise ModelError(
            f"ONNX Runtime's output for {what} differs from PyTorch's by up to {max_diff:.3g} at batch {len(x)} "
            f"(tolerance {tolerance:.3g}, largest output {scale:.3g}); the model may use randomness or "
            f"data-dependent control flow in eval mode, which the export cannot capture")


def _as_session(path_or_session: Any) -> onnxruntime.InferenceSession:
    if isinstance(path_or_session, (str, os.PathLike)):
        return onnx_session(path_or_session)
    if not (hasattr(path_or_session, "run") and hasattr(path_or_session, "get_inputs")):
        raise ConfigError(f"expected an ONNX file path or an onnxruntime.InferenceSession, "
                          f"got {type(path_or_session).__name__}")
    return path_or_session


def _input_name(session: onnxruntime.InferenceSession, input_shape: tuple[int, ...], batch_size: int) -> str:
    """The session's one input, after checking that a batch of `input_shape` fits it."""
    input_shape = _check_shape(input_shape)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise ModelError(f"expected an ONNX model with one input, this one has {len(inputs)}")
    declared = list(inputs[0].shape)
    wanted = [batch_size, *input_shape]
    fits = len(declared) == len(wanted) and all(
        not isinstance(d, int) or d == w for d, w in zip(declared, wanted, strict=True))
    if not fits:
        raise ConfigError(f"the ONNX model takes input of shape {declared}, not {wanted} "
                          f"(batch_size={batch_size}, input_shape={input_shape})")
    return inputs[0].name


def _random_batch(batch_size: int, input_shape: tuple[int, ...]) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.standard_normal((batch_size, *input_shape), dtype=np.float32)
