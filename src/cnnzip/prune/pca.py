"""PCA width and depth selection, the first stage of the mixed PCA + geometric-median pruning (SPEC §3; the
PCA design of Garg, Panda and Roy, IEEE Access 2020).

A trained layer's channels often span far fewer dimensions than there are channels. Each prunable group of
channels is observed where the next layer reads them (after its BatchNorm, activation and pooling), on a sample
of training images: channels are the features, every position of every image a sample. Principal component
analysis of those activations (mean-centred, not scaled; the covariance is accumulated batch by batch in
float64, so memory does not grow with the sample) gives the number of components that explain `variance` of
the total: that count is the layer's new width.

Depth: along a plain chain of layers (each reading the one before it, at the same resolution, as in a VGG
stage), a layer whose count is not above the count of the layer it reads adds no significant dimensions and is
proposed for removal ("the expansion of dimensions as the model gets deeper"). Layers in residual blocks never
form such a chain here (a block's inner layer feeds the residual stream, not the next analysed layer), so no
layer of a ResNet is proposed; `fuse` removes whole residual blocks instead.

`pca_plan` measures and decides; `pca_prune` builds the network: the widths by the verified channel surgery
(keeping each layer's channels of largest L1 norm), the proposed layers removed where the architecture allows
(the zoo's VGGs), and new weights unless `inherit` asks to keep the surviving ones.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ConfigError, ModelError
from .channels import ChannelPruning, prune_channels
from .graph import ChannelGraph, analyze

__all__ = ["PcaPruning", "Spectrum", "PcaLayer", "PcaPlan", "PcaResult", "activation_spectra",
           "significant_components", "pca_plan", "pca_prune"]


@dataclass(frozen=True)
class PcaPruning:
    """Settings of the PCA stage. Pure data."""

    variance: float = 0.999  # share of the activations' variance the kept components explain
    images: int = 2048  # training images the activations are measured on
    min_width: int = 1
    depth: bool = True  # remove the layers that add no dimensions, where the architecture allows
    residual_stream: bool = False  # also narrow groups tied to residual additions
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.variance, (int, float)) or not 0 < self.variance <= 1:
            raise ConfigError(f"variance is the share of variance to keep, in (0, 1], e.g. 0.999; got "
                              f"{self.variance!r}")
        if self.images < 1 or self.min_width < 1:
            raise ConfigError(f"images and min_width must be >= 1; got {self.images} and {self.min_width}")
        object.__setattr__(self, "skip", tuple(self.skip))


@dataclass
class Spectrum:
    """The covariance eigenvalues of one group's activations (largest first) and how many samples gave them."""

    eigenvalues: torch.Tensor
    samples: int
    positions: int  # spatial positions per image where the group was read
    reader: str  # the layer whose input was observed
    resolution: int  # spatial positions per image of the root layer's output (before any pooling)


@dataclass
class PcaLayer:
    """One row of the PCA table."""

    name: str  # the group's root layer
    width: int
    pca_width: int  # components explaining the variance share (at least min_width)
    variance_kept: float  # share of variance those components explain
    reads: str | None  # the analysed group this layer's root reads, if it reads one directly
    drop: bool = False  # adds no dimensions over `reads`: proposed for removal


@dataclass
class PcaPlan:
    layers: list[PcaLayer]
    excluded: dict[str, str] = field(default_factory=dict)  # groups left alone, with the reason

    @property
    def widths(self) -> dict[str, int]:
        return {r.name: r.pca_width for r in self.layers}

    @property
    def dropped(self) -> list[str]:
        return [r.name for r in self.layers if r.drop]

    def table(self, removed: Iterable[str] = ()) -> str:
        """The PCA table; `removed`: the layers actually removed (the others that add nothing are only named)."""
        removed = set(removed)
        lines = [f"{'layer':<28} {'width':>6} {'PCA width':>9} {'variance kept':>13}  depth"]
        for r in self.layers:
            lines.append(f"{r.name:<28} {r.width:>6} {r.pca_width:>9} {r.variance_kept:>13.4%}  "
                         + (f"adds no dimensions over {r.reads}" + (": removed" if r.name in removed else "")
                            if r.drop else ""))
        return "\n".join(lines)


@dataclass
class PcaResult:
    model: nn.Module
    plan: PcaPlan
    dropped: list[str]  # layers actually removed (empty where the architecture does not allow it)
    inherited: list[str]  # layers whose weights came from the original (empty unless inherit)


def _reader(graph: ChannelGraph, name: str, size: int) -> tuple[str, nn.Module, list[int]] | None:
    """The first layer that reads the group's channels whole: a plain conv, or a linear behind a flatten."""
    for layer, module, kind, mapped in graph.items(name, range(size)):
        if kind != "in" or len(mapped) % size:
            continue
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.groups == 1 and len(mapped) == size:
            return layer, module, mapped
        if isinstance(module, nn.Linear):
            return layer, module, mapped
    return None


@torch.no_grad()
def activation_spectra(graph: ChannelGraph, batches: Iterable, max_images: int,
                       device: torch.device | str = "cpu") -> dict[str, Spectrum]:
    """Covariance eigenvalues of every prunable group's channels as their first reader sees them.

    `batches` yields (inputs, targets) or inputs, normalised as in training; at most `max_images` are used.
    Groups no conv or linear layer reads whole are left out. The sums stay on `device`, in float64, a few
    thousand rows at a time; only the channels-by-channels sums are kept.
    """
    readers = {g.name: (r, g.size) for g in graph.groups if (r := _reader(graph, g.name, g.size)) is not None}
    sums: dict[str, list] = {}  # group -> [sum x, sum x x^T, rows, positions]
    resolution: dict[str, int] = {}  # group -> positions of its root's output

    def observe_input(group: str, mapped: list[int], size: int):
        index = torch.tensor(mapped)

        def observe(module, inputs):
            x = inputs[0].index_select(1, index.to(inputs[0].device))
            if x.dim() == 2:  # a linear reader: a flatten maps each channel to consecutive features
                x = x.reshape(len(x), size, -1)
            positions = x[0, 0].numel()
            rows = x.reshape(len(x), size, positions).transpose(1, 2).reshape(-1, size)
            acc = sums.setdefault(group, [torch.zeros(size, dtype=torch.float64, device=x.device),
                                          torch.zeros(size, size, dtype=torch.float64, device=x.device), 0,
                                          positions])
            for chunk in rows.split(8192):
                chunk = chunk.double()
                acc[0] += chunk.sum(0)
                acc[1] += chunk.T @ chunk
            acc[2] += len(rows)
        return observe

    def observe_output(group: str):
        def observe(module, inputs, output):
            resolution[group] = output[0, 0].numel()
        return observe

    modules = dict(graph.model.named_modules())
    handles = [module.register_forward_pre_hook(observe_input(g, mapped, size))
               for g, ((_, module, mapped), size) in readers.items()]
    handles += [modules[g].register_forward_hook(observe_output(g)) for g in readers]
    model = graph.model
    was_training = model.training
    home = next(model.parameters()).device
    model.eval().to(device)
    seen = 0
    try:
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            if not isinstance(x, torch.Tensor):
                raise ConfigError("the batches for PCA must yield image tensors or (images, labels) pairs; got "
                                  f"{type(batch).__name__}")
            x = x[: max_images - seen]
            model(x.to(device))
            seen += len(x)
            if seen >= max_images:
                break
    finally:
        for h in handles:
            h.remove()
        model.train(was_training).to(home)
    if seen == 0:
        raise ConfigError("no images to measure the activations on")
    out = {}
    for g, (s, q, n, positions) in sums.items():
        mean = s.cpu() / n
        cov = (q.cpu() - n * torch.outer(mean, mean)) / max(n - 1, 1)
        eig = torch.linalg.eigvalsh(cov).flip(0).clamp_min(0)
        out[g] = Spectrum(eig, n, positions, readers[g][0][0], resolution.get(g, positions))
    return out


def significant_components(eigenvalues: torch.Tensor, variance: float) -> int:
    """The fewest leading components whose eigenvalues reach `variance` of the total (1 when there is none)."""
    total = float(eigenvalues.sum())
    if total <= 0:
        return 1
    share = torch.cumsum(eigenvalues, 0) / total
    return min(int((share < variance - 1e-12).sum()) + 1, len(eigenvalues))


def pca_plan(model: nn.Module, config: PcaPruning, batches: Iterable, example_input: torch.Tensor,
             *, graph: ChannelGraph | None = None, device: torch.device | str = "cpu") -> PcaPlan:
    """Measure every prunable group's activations and decide its width, and which layers add no dimensions."""
    if not any(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in model.modules()):
        raise ModelError("PCA width selection needs a model with conv layers; this one has none")
    graph = graph if graph is not None else analyze(model, example_input, skip=config.skip)
    residual = set() if config.residual_stream else graph.residual_groups()
    groups = [g for g in graph.groups if g.name not in residual and g.blocks == 1]
    excluded = dict(graph.excluded)
    excluded.update({g.name: "tied to a residual addition (residual_stream=False)" for g in graph.groups
                     if g.name in residual})
    excluded.update({g.name: "read or written by a grouped convolution" for g in graph.groups if g.blocks > 1
                     and g.name not in residual})
    spectra = activation_spectra(graph, batches, config.images, device)
    small = [(g.name, g.size, spectra[g.name]) for g in groups
             if g.name in spectra and spectra[g.name].samples <= g.size]
    if small:
        name, size, sp = small[0]
        raise ConfigError(f"too few samples for PCA: {name} has {size} channels but {sp.samples // sp.positions} "
                          f"images give only {sp.samples} activation samples there; use more images (at least "
                          f"{size // sp.positions + 1})")
    # The analysed group each root reads directly: a plain chain of layers.
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    roots = {g.name: g for g in sorted(groups, key=lambda g: order.get(g.name, 0)) if g.name in spectra}
    reads = {spectra[g].reader: g for g in roots}
    layers = []
    for g in roots.values():
        sp = spectra[g.name]
        k = max(min(significant_components(sp.eigenvalues, config.variance), g.size), min(config.min_width, g.size))
        kept = float(sp.eigenvalues[:k].sum() / sp.eigenvalues.sum()) if float(sp.eigenvalues.sum()) > 0 else 1.0
        layers.append(PcaLayer(g.name, g.size, k, kept, reads.get(g.name)))
    by_name = {r.name: r for r in layers}
    stream = graph.residual_groups()  # a residual addition is no plain chain: its layers are never dropped
    for r in layers:
        before = by_name.get(r.reads) if r.reads else None
        if before is not None and not {r.name, before.name} & stream and \
                spectra[r.name].resolution == spectra[before.name].resolution:
            r.drop = r.pca_width <= before.pca_width
    if not layers:
        raise ModelError("PCA found no layer whose channels it can measure and narrow ("
                         + "; ".join(f"{k}: {v}" for k, v in list(excluded.items())[:5]) + ")")
    return PcaPlan(layers, excluded)


def pca_prune(model: nn.Module, config: PcaPruning, batches: Iterable, example_input: torch.Tensor, *,
              inherit: bool = False, seed: int = 0, device: torch.device | str = "cpu") -> PcaResult:
    """The PCA network: `model` narrowed to the PCA widths, without the layers that add no dimensions where the
    architecture allows it (`config.depth`; the zoo's VGGs), with new weights (the paper trains it from
    scratch; every layer with a `reset_parameters` is re-initialised, a custom layer without one keeps its
    values) or, with `inherit`, the original's weights of the channels kept (largest L1 norm): all of them when
    no layer is removed, else every conv (with its BatchNorm) and linear layer whose shape survives. The
    caller's model is not changed."""
    graph = analyze(model, example_input, skip=config.skip)
    plan = pca_plan(model, config, batches, example_input, graph=graph, device=device)
    widths = {re.escape(name): width for name, width in plan.widths.items()}
    narrowed = prune_channels(model, ChannelPruning(method="l1", widths=widths, skip=config.skip,
                                                    residual_stream=True), example_input, graph=graph).model
    dropped = plan.dropped if config.depth and _is_vgg(model) else []
    if inherit and not dropped:
        return PcaResult(narrowed, plan, [], [n for n, m in narrowed.named_modules()
                                             if any(True for _ in m.parameters(recurse=False))])
    built = _vgg_without(narrowed, dropped) if dropped else narrowed
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for m in built.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        if hasattr(built, "_init_weights"):
            built._init_weights()  # the architecture's own initialisation, as a model built anew gets
    inherited = _inherit(built, narrowed, dropped) if inherit else []
    return PcaResult(built, plan, dropped, inherited)


def _is_vgg(model: nn.Module) -> bool:
    """Whether `model` is a zoo VGG, whose depth `_vgg_without` can change."""
    from ..models.vgg import VGG

    return isinstance(model, VGG)


def _vgg_without(model: nn.Module, dropped: list[str]) -> nn.Module:
    """A zoo VGG with `model`'s widths but without the conv layers named in `dropped` (each with its BN, ReLU)."""
    from ..models import create_model

    spec = dict(getattr(model, "cnnzip_spec", {}))
    if not spec:
        raise ModelError("removing VGG layers needs a zoo VGG (created by cnnzip.create_model)")
    cfg: list[int | str] = []
    for n, m in model.feature.named_children():
        if isinstance(m, nn.Conv2d) and f"feature.{n}" not in dropped:
            cfg.append(m.out_channels)
        elif isinstance(m, nn.MaxPool2d):
            cfg.append("M")
    spec.pop("width", None)  # the widths are in the layer list
    name = spec.pop("name")
    return create_model(name, **{**spec, "cfg": cfg})


def _inherit(built: nn.Module, source: nn.Module, dropped: list[str]) -> list[str]:
    """Copy `source`'s weights into `built` layer by layer, in order, where shapes agree; never the layer right
    after a removed one (it learned to read the removed layer's outputs), and a BatchNorm only with the conv
    before it. Returns the layers copied."""
    def layers(m: nn.Module) -> list[tuple[str, nn.Module]]:
        return [(n, x) for n, x in m.named_modules()
                if isinstance(x, (nn.Conv2d, nn.Conv1d, nn.Linear, nn.modules.batchnorm._BatchNorm))]

    norm = nn.modules.batchnorm._BatchNorm
    found = layers(source)
    kept, fresh, after = [], set(), False
    for i, (n, x) in enumerate(found):
        if n in dropped or (isinstance(x, norm) and i > 0 and found[i - 1][0] in dropped):
            after = True  # this conv (and its BatchNorm) goes; the next weight layer reads something else now
            continue
        if after and not isinstance(x, norm):
            fresh.add(n)
            after = False
        kept.append((n, x))
    copied: list[str] = []
    conv_copied = False
    for (name, target), (origin_name, origin) in zip(layers(built), kept, strict=True):
        src, dst = origin.state_dict(), target.state_dict()
        fits = origin_name not in fresh and all(k in src and src[k].shape == v.shape for k, v in dst.items())
        if isinstance(target, norm):
            fits = fits and conv_copied  # statistics of the conv's outputs: only with that conv's weights
        else:
            conv_copied = fits
        if fits:
            target.load_state_dict(src)
            copied.append(name)
    return copied
