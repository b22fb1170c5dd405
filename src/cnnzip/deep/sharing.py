"""Deep compression, step 2: weight sharing. Each layer's surviving weights are clustered with k-means into
2^bits values, and every weight becomes an index into that layer's codebook.

Initialisation is linear between the smallest and largest weight, which the paper found best: it keeps the
rare large weights, which matter most, as their own centroids. Pruned (zero) weights stay exactly zero and are
not clustered; the file stores their positions instead.

Centroid fine-tuning runs through the one training loop: the hook gives each weight the summed gradient of its
cluster, so all weights of a cluster take the same step, and re-ties them exactly after the step.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, layer_patterns
from ..train import TrainHook
from .magnitude import prunable_weights

__all__ = ["WeightSharing", "Codebook", "kmeans_1d", "share_weights", "SharedWeightsHook", "codebooks_of"]


@dataclass(frozen=True)
class WeightSharing:
    """Bits per weight index: 2^bits clusters per layer (paper: 8 for conv, 5 for fully connected)."""

    conv_bits: int = 8
    fc_bits: int = 5
    skip: tuple[str, ...] = ()
    max_iter: int = 100

    def __post_init__(self) -> None:
        for name in ("conv_bits", "fc_bits"):
            bits = getattr(self, name)
            if not 1 <= bits <= 16:
                raise ConfigError(f"{name} must be between 1 and 16; got {bits}")
        if self.max_iter < 1:
            raise ConfigError("max_iter must be >= 1")
        object.__setattr__(self, "skip", tuple(self.skip))
        layer_patterns(self.skip, "--skip")

    def bits_for(self, module: nn.Module) -> int:
        return self.fc_bits if isinstance(module, nn.Linear) else self.conv_bits


@dataclass
class Codebook:
    """One layer's sharing: fp32 centroids, and for each nonzero position (row-major) its centroid index."""

    centroids: torch.Tensor  # (k,) float32
    positions: torch.Tensor  # (n,) int64, flat indices of the nonzero weights
    labels: torch.Tensor  # (n,) int64, centroid index of each
    bits: int

    def weights(self, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
        out = torch.zeros(int(torch.tensor(shape).prod()), dtype=torch.float32)
        out[self.positions] = self.centroids[self.labels]
        return out.view(shape)


def kmeans_1d(values: torch.Tensor, k: int, max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means on scalars, linearly initialised. Returns (centroids, labels).

    In one dimension every cluster is a contiguous run of the sorted values, so after one sort each iteration
    costs O(k log n): cut points by binary search, cluster sums from a prefix sum. Clusters that end up empty
    are removed, so there may be fewer than k centroids.
    """
    x = values.detach().double().flatten()
    if x.numel() == 0:
        return torch.zeros(0), torch.zeros(0, dtype=torch.long)
    xs, _ = torch.sort(x)
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(xs, 0)])
    k = min(k, int(torch.unique_consecutive(xs).numel()))
    centroids = torch.linspace(float(xs[0]), float(xs[-1]), k, dtype=torch.float64)
    cuts = None
    for _ in range(max_iter):
        bounds = (centroids[1:] + centroids[:-1]) / 2
        # A value equal to a bound joins the lower cluster, as torch.bucketize does below.
        new_cuts = torch.cat([torch.zeros(1, dtype=torch.long), torch.searchsorted(xs, bounds, right=True),
                              torch.tensor([len(xs)])])
        if cuts is not None and torch.equal(new_cuts, cuts):
            break
        cuts = new_cuts
        counts = cuts[1:] - cuts[:-1]
        sums = prefix[cuts[1:]] - prefix[cuts[:-1]]
        centroids = torch.where(counts > 0, sums / counts.clamp(min=1), centroids)
        centroids, _ = torch.sort(centroids)
    labels = torch.bucketize(x, (centroids[1:] + centroids[:-1]) / 2)
    used = torch.bincount(labels, minlength=len(centroids)) > 0
    remap = torch.cumsum(used.long(), 0) - 1
    return centroids[used].float(), remap[labels]


def share_weights(model: nn.Module, config: WeightSharing = WeightSharing()  # noqa: B008 - frozen
                  ) -> tuple[nn.Module, dict[str, Codebook]]:
    """A copy of `model` whose conv/linear weights are replaced by their cluster centroids, and the codebooks."""
    shared = copy.deepcopy(model)
    modules = dict(shared.named_modules())
    books: dict[str, Codebook] = {}
    with torch.no_grad():
        for pname, weight in prunable_weights(shared, config.skip).items():
            module = modules[pname.rsplit(".", 1)[0]] if "." in pname else shared
            bits = config.bits_for(module)
            flat = weight.detach().flatten().float().cpu()
            positions = torch.nonzero(flat).flatten()
            centroids, labels = kmeans_1d(flat[positions], 2 ** bits, config.max_iter)
            book = Codebook(centroids=centroids, positions=positions, labels=labels, bits=bits)
            weight.copy_(book.weights(weight.shape).to(weight.device, weight.dtype))
            books[pname] = book
    return shared, books


def codebooks_of(model: nn.Module, books: dict[str, Codebook]) -> dict[str, Codebook]:
    """The codebooks with centroids read back from a model whose centroids were fine-tuned."""
    params = dict(model.named_parameters())
    out = {}
    for name, book in books.items():
        flat = params[name].detach().flatten().float().cpu()
        centroids = book.centroids.clone()
        if book.labels.numel():
            first = torch.full((len(centroids),), -1, dtype=torch.long)
            first.scatter_(0, book.labels.flip(0), book.positions.flip(0))  # any member of each cluster
            centroids = flat[first]
        out[name] = Codebook(centroids=centroids, positions=book.positions, labels=book.labels, bits=book.bits)
    return out


class SharedWeightsHook(TrainHook):
    """Trains centroids instead of weights: the gradient of a centroid is the sum of its weights' gradients."""

    def __init__(self, books: dict[str, Codebook]) -> None:
        self.books = books
        self._bound: dict[str, tuple[nn.Parameter, torch.Tensor, torch.Tensor]] | None = None

    def _bind(self, model: nn.Module) -> dict[str, tuple[nn.Parameter, torch.Tensor, torch.Tensor]]:
        """Each shared parameter with its positions and labels, moved to its device once."""
        if self._bound is None:
            params = dict(model.named_parameters())
            self._bound = {k: (params[k], b.positions.to(params[k].device), b.labels.to(params[k].device))
                           for k, b in self.books.items()}
        return self._bound

    def after_backward(self, model: nn.Module) -> None:
        for name, (p, pos, lab) in self._bind(model).items():
            if p.grad is None:
                continue
            g = p.grad.view(-1)
            k = len(self.books[name].centroids)
            per_centroid = torch.zeros(k, dtype=g.dtype, device=g.device).index_add_(0, lab, g[pos])
            g.zero_()
            g[pos] = per_centroid[lab]

    def after_step(self, model: nn.Module) -> None:
        with torch.no_grad():
            for name, (p, pos, lab) in self._bind(model).items():
                w = p.view(-1)
                k = len(self.books[name].centroids)
                sums = torch.zeros(k, dtype=w.dtype, device=w.device).index_add_(0, lab, w[pos])
                counts = torch.bincount(lab, minlength=k).clamp(min=1).to(w.dtype)
                values = (sums / counts)[lab]
                w.zero_()
                w[pos] = values
