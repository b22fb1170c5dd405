"""One point of the search space: a model compressed by two methods at two ratios, and its real size.

The two methods are network slimming (structured, "ns") and deep compression (unstructured, "dc": magnitude
pruning, weight sharing, Huffman coding), applied in either order. The size of a candidate is the length of the
file a user would ship: the compressed file when deep compression is part of the pipeline, otherwise the cnnzip
model file of the channel-pruned fp32 model.
"""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

from .. import lowrank  # noqa: F401 - registers its search axis
from ..deep import (
    MagnitudePruning,
    MaskHook,
    SharedWeightsHook,
    WeightSharing,
    codebooks_of,
    prune_magnitude,
    save_compressed,
    share_weights,
)
from ..errors import ConfigError
from ..finetune import Finetune
from ..io import ModelMeta, save_model
from ..methods import by_axis, orders
from ..prune import IMPORTANCE, ChannelPruning, analyze, apply_plan, plan_channels
from ..prune.pca import activation_spectra, significant_components
from ..train import recalibrate_batchnorm

__all__ = ["Pipeline", "Candidate", "Compressor", "ORDERS", "STAGES", "Finetune", "pca_variance"]

# Orders the search runs: each registered axis alone and each pair a method declares (`methods.orders`).
ORDERS = orders()

STAGES = ("structured", "final", "shared")
"""When `build` offers fine-tuning: after the structured step (if another step follows), after the last pruning
step (zeros held by a mask hook), and after weight sharing (centroids trained)."""



def pca_variance(ratio: float) -> float:
    """The variance share PCA keeps at the search's structured `ratio`: 1 - ratio**3, so that the grid's first
    steps fall where PCA widths change most (0.1: 99.9%, 0.2: 99.2%, 0.3: 97.3%, 0.5: 87.5%); 0 keeps all."""
    return 1 - ratio ** 3


@dataclass(frozen=True)
class Pipeline:
    """Which methods, in which order, with which fixed settings. Pure data.

    `order`: 'ns-dc' (slimming first), 'dc-ns' (deep compression's pruning first), 'ns' or 'dc' alone; 'lr'
    (low-rank factors removing the ratio of the MACs) alone or after structured pruning ('ns-lr').
    `structured`: the channel importance (slimming = |BN gamma|, or l1, l2, fpgm), or "pca": each layer keeps
    as many channels (of largest L1 norm) as the components that explain `pca_variance(ratio)` of its activations'
    variance (`prune.pca`: the third paper's width selection, as a knob the search turns).
    `quantize`: 'int8' makes int8 post-training quantization the last step: a candidate is then the int8 ONNX
    file (its size is that file's, its accuracy ONNX Runtime's). Structured pruning only ('ns'): the int8 file
    stores dense weights, so deep compression's zeros and shared values would not shrink it.
    `round_to`: structured pruning keeps multiples of this many channels per layer (`ChannelPruning.round_to`).
    `residual_stream`: structured pruning also narrows channels joined by residual additions
    (`ChannelPruning.residual_stream`).
    `recalibrate`: re-estimate BatchNorm statistics on this many training images (the calibration batches) after
    the compression steps, before a candidate is measured (`train.recalibrate_batchnorm`); 0 = never.
    """

    order: str = "ns-dc"
    structured: str = "slimming"
    conv_bits: int = 8
    fc_bits: int = 5
    skip: tuple[str, ...] = ()
    quantize: str | None = None
    round_to: int = 1
    residual_stream: bool = True
    recalibrate: int = 0

    def __post_init__(self) -> None:
        if self.order not in orders():
            raise ConfigError(f"order must be one of {', '.join(orders())}; got {self.order!r}")
        if self.structured != "pca" and self.structured not in IMPORTANCE:
            raise ConfigError(f"structured must be pca or one of {', '.join(IMPORTANCE)}; got {self.structured!r}")
        if self.quantize not in (None, "int8"):
            raise ConfigError(f"quantize must be int8 or nothing; got {self.quantize!r}")
        if self.quantize and "dc" in self.order.split("-"):
            raise ConfigError("an int8 file stores dense weights, so deep compression's zeros and shared values do "
                              "not shrink it: search --order ns with --quantize int8")
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool) or self.round_to < 1:
            raise ConfigError(f"round_to must be an integer >= 1; got {self.round_to!r}")
        if not isinstance(self.recalibrate, int) or isinstance(self.recalibrate, bool) or self.recalibrate < 0:
            raise ConfigError(f"recalibrate is a number of training images (0: none); got {self.recalibrate!r}")
        object.__setattr__(self, "skip", tuple(self.skip))

    @property
    def axes(self) -> tuple[str, ...]:
        """The methods whose ratios the search sets, first one first."""
        return tuple(self.order.split("-"))


@dataclass
class Candidate:
    ratios: tuple[float, ...]
    model: nn.Module
    size: int  # bytes of the shipped file
    path: Path | None = None
    notes: dict = field(default_factory=dict)
    onnx: Path | None = None  # the candidate's ONNX file, when it is one (int8)


class Compressor:
    """Builds candidates of one pipeline from one trained model, caching the channel analysis."""

    def __init__(self, model: nn.Module, pipeline: Pipeline, meta: ModelMeta, workdir: str | Path | None = None,
                 calibration: Sequence[np.ndarray] | None = None,
                 recalibration: Sequence[np.ndarray | torch.Tensor] | None = None):
        """`calibration`: training batches (numpy, normalised, not augmented) for the int8 step; needed only with
        quantize. `recalibration`: training batches for BatchNorm recalibration, augmented as in training
        (`train.recalibrate_batchnorm`), and the images PCA measures with structured="pca"; needed only then,
        `calibration` if not given."""
        if pipeline.quantize and not calibration:
            raise ConfigError("quantizing candidates needs calibration batches of training images")
        recalibration = recalibration if recalibration is not None else calibration
        pca = pipeline.structured == "pca" and "ns" in pipeline.axes
        if (pipeline.recalibrate or pca) and not recalibration:
            raise ConfigError(("PCA widths need" if pca else "recalibrating candidates needs")
                              + " batches of training images (recalibration=...)")
        self.calibration = list(calibration) if calibration else None
        self.recalibration = [torch.as_tensor(x) for x in recalibration] if pipeline.recalibrate or pca else None
        self._spectra: dict[str, torch.Tensor] | None = None
        self.model = copy.deepcopy(model).cpu().eval()
        self.pipeline = pipeline
        self.meta = meta
        self.example = torch.zeros(1, *meta.input_shape)
        self._graph = None
        self._context = SimpleNamespace(example=self.example, skip=pipeline.skip)
        self._tmp = tempfile.TemporaryDirectory() if workdir is None else None
        self.workdir = Path(workdir) if workdir is not None else Path(self._tmp.name)
        self.workdir.mkdir(parents=True, exist_ok=True)

    def __getstate__(self) -> dict:
        """A copy for another process (a Ray worker) leaves out the channel graph, which holds a traced autograd
        graph that cannot be pickled; the copy analyses the model again on its first structured candidate."""
        state = dict(self.__dict__)
        state["_graph"], state["_tmp"] = None, None
        return state

    def prepare(self) -> None:
        """Do now the analysis that the first structured candidate would do (the channel graph, PCA spectra), so
        that a copy sent to a worker carries the spectra instead of each worker measuring them (the graph holds a
        traced autograd graph that does not pickle: each worker analyses the model once)."""
        if "ns" in self.pipeline.axes:
            if self._graph is None:
                self._graph = analyze(self.model, self.example, skip=self.pipeline.skip)
            if self.pipeline.structured == "pca":
                self._pca_widths(0.5)  # measures the spectra

    def build(self, ratios: tuple[float, ...], keep_file: Path | None = None,
              finetune: Finetune | None = None) -> Candidate:
        """The candidate at `ratios` (one per method of the pipeline, in its order).

        Search trials are built without `finetune`; the winner may be rebuilt with it (see STAGES).
        """
        if len(ratios) != len(self.pipeline.axes):
            raise ConfigError(f"pipeline {self.pipeline.order} takes {len(self.pipeline.axes)} ratios")
        model = self.model
        masks: dict[str, torch.Tensor] = {}
        for k, (method, ratio) in enumerate(zip(self.pipeline.axes, ratios, strict=True)):
            if method == "ns":
                model = self._channel_prune(model, ratio)
                if finetune is not None and ratio > 0 and k + 1 < len(ratios):
                    finetune("structured", model, [])
            elif method == "dc":
                if ratio > 0:
                    model, masks = prune_magnitude(model, MagnitudePruning(ratio=ratio, skip=self.pipeline.skip))
            else:  # a family's own step (e.g. low-rank factors): its registered `apply`
                model = by_axis(method).apply(model, ratio, self._context)
        if finetune is not None:
            if model is self.model:  # nothing pruned: train a copy, never the model every candidate starts from
                model = copy.deepcopy(model)
            if masks:  # channel surgery after magnitude pruning changes shapes: the zeros are the masks
                params = dict(model.named_parameters())
                masks = {name: (params[name] != 0).float() for name in masks}
            finetune("final", model, [MaskHook(masks)] if masks else [])
        path = keep_file or self.workdir / "candidate"
        if "dc" in self.pipeline.axes:
            shared, books = share_weights(model, WeightSharing(conv_bits=self.pipeline.conv_bits,
                                                               fc_bits=self.pipeline.fc_bits,
                                                               skip=self.pipeline.skip))
            if finetune is not None:
                finetune("shared", shared, [SharedWeightsHook(books)])
                books = codebooks_of(shared, books)
            self._recalibrate(shared)  # statistics only: the shared weights and their codebooks stay
            report = save_compressed(path, shared, books, self.meta)
            return Candidate(ratios, shared, report.file_bytes, path if keep_file else None)
        if model is not self.model and any(r > 0 for r in ratios):
            self._recalibrate(model)
        if self.pipeline.quantize:
            return self._int8(ratios, model, keep_file)
        save_model(path, model, self.meta)
        return Candidate(ratios, model, path.stat().st_size, path if keep_file else None)

    def _recalibrate(self, model: nn.Module) -> None:
        if self.pipeline.recalibrate:
            recalibrate_batchnorm(model, self.recalibration, self.pipeline.recalibrate, device="cpu")

    def _int8(self, ratios: tuple[float, ...], model: nn.Module, keep_file: Path | None) -> Candidate:
        """Export, quantize (calibrated afresh: each candidate has its own weights) and wrap for ONNX Runtime."""
        from ..deploy import OnnxModel, export_onnx, stamp_meta
        from ..quantize import PostTraining, quantize_onnx

        fp32 = export_onnx(model, self.workdir / "candidate.fp32.onnx", tuple(self.meta.input_shape))
        path = keep_file or self.workdir / "candidate.int8.onnx"
        quantize_onnx(fp32, path, self.calibration, PostTraining())
        stamp_meta(path, self.meta)
        return Candidate(ratios, OnnxModel(path), path.stat().st_size, path if keep_file else None, onnx=path)

    def latency(self, candidate: Candidate, batch_size: int, rounds: int = 3) -> float:
        """The candidate's ONNX Runtime time at `batch_size` as a fraction of the original model's fp32 file,
        the two timed side by side (rotating rounds, medians): a ratio stays steady while the machine's load
        drifts, where milliseconds would not."""
        from ..deploy import compare_onnx_latency, export_onnx

        shape = tuple(self.meta.input_shape)
        base = self.workdir / "baseline.fp32.onnx"
        if not base.exists():
            export_onnx(self.model, base, shape)
        path = candidate.onnx or export_onnx(candidate.model, self.workdir / "candidate.fp32.onnx", shape)
        repeats = 10 if batch_size < 64 else 3
        times = compare_onnx_latency({"base": base, "candidate": path}, shape, (batch_size,), rounds=rounds,
                                     repeats=repeats)
        key = f"ort_ms_b{batch_size}"
        return times["candidate"][key] / times["base"][key]

    def _channel_prune(self, model: nn.Module, ratio: float) -> nn.Module:
        if ratio == 0:
            return model
        if self._graph is None:
            self._graph = analyze(self.model, self.example, skip=self.pipeline.skip)
        graph = self._graph
        if model is not self.model:
            # Same architecture, other weights (magnitude-pruned first): its groups are the original's, already
            # tried; the surgery below is verified in full as always.
            graph = analyze(model, self.example, skip=self.pipeline.skip, verify=False)
            trusted = {g.name for g in self._graph.groups}
            graph.groups = [g for g in graph.groups if g.name in trusted]
            graph.excluded = dict(self._graph.excluded)
        if self.pipeline.structured == "pca":
            config = ChannelPruning(method="l1", widths=self._pca_widths(ratio), skip=self.pipeline.skip,
                                    round_to=self.pipeline.round_to, residual_stream=self.pipeline.residual_stream)
        else:
            config = ChannelPruning(method=self.pipeline.structured, ratio=ratio, skip=self.pipeline.skip,
                                    round_to=self.pipeline.round_to, residual_stream=self.pipeline.residual_stream)
        return apply_plan(graph, plan_channels(graph, config)).model

    def _pca_widths(self, ratio: float) -> dict[str, int]:
        """Each group's width at `ratio`: its PCA components at `pca_variance(ratio)`, measured once on the
        original model (a magnitude-pruned model keeps the original's widths)."""
        if self._spectra is None:
            residual = set() if self.pipeline.residual_stream else self._graph.residual_groups()
            images = sum(len(x) for x in self.recalibration)
            spectra = activation_spectra(self._graph, self.recalibration, images)
            self._spectra = {g.name: spectra[g.name].eigenvalues for g in self._graph.groups
                             if g.name in spectra and g.name not in residual and g.blocks == 1}
        variance = pca_variance(ratio)
        return {re.escape(name): significant_components(eig, variance) for name, eig in self._spectra.items()}
