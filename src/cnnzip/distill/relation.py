"""Relation-based knowledge distillation: the student learns how the teacher relates the images of a batch to each
other, not the teacher's features themselves, so student and teacher may differ in width.

- "rkd" (Relational Knowledge Distillation, Park et al., CVPR 2019): each layer's features, average-pooled to one
  vector per image, give the pairwise distances (normalised by their mean) and the angles of every triplet; the
  student's are pulled to the teacher's by a smooth L1 loss, weighted 25 (distances) and 50 (angles) as in the
  paper.
- "sp" (Similarity-Preserving, Tung and Mori, ICCV 2019): each layer's flattened features give the batch's
  similarity matrix, rows L2-normalised; the loss is the squared Frobenius distance between the student's and the
  teacher's, over batch size squared, weighted 3000 as in the paper.

    fit(student, batches, config, hooks=[RelationDistillation(teacher, student, ["layer3"], example, kind="sp")])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layout import InputLayout
from ..train import TrainHook, capture_features
from .feature import paired_layers

__all__ = ["RelationDistillation", "rkd_loss", "sp_loss", "KINDS"]

KINDS = {"rkd": 1.0, "sp": 3000.0}
"""The relation losses and their default weights."""


def _vectors(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).mean(2) if x.dim() > 2 else x


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance: float = 25.0, angle: float = 50.0) -> torch.Tensor:
    """RKD's distance and angle losses between two batches of features (pooled to vectors)."""
    s, t = _vectors(student.float()), _vectors(teacher.float())

    def distances(e: torch.Tensor) -> torch.Tensor:
        d = torch.cdist(e, e)
        positive = d[d > 0]
        return d / positive.mean() if positive.numel() else d

    def angles(e: torch.Tensor) -> torch.Tensor:
        diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)  # diff[j, i] = unit(e_i - e_j)
        return torch.bmm(diff, diff.transpose(1, 2)).flatten()  # cosines of the angles at every j

    with torch.no_grad():
        t_d, t_a = distances(t), angles(t)
    return distance * F.smooth_l1_loss(distances(s), t_d) + angle * F.smooth_l1_loss(angles(s), t_a)


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """The similarity-preserving loss between two batches of features (any shape after the batch)."""
    def similarity(x: torch.Tensor) -> torch.Tensor:
        q = x.float().flatten(1)
        return F.normalize(q @ q.T, p=2, dim=1)

    b = student.shape[0]
    return (similarity(student) - similarity(teacher).detach()).pow(2).sum() / (b * b)


class RelationDistillation(TrainHook):
    """A `fit` hook adding a relation loss (`kind`: "rkd" or "sp") for each (student layer -> teacher layer)
    pair; `weight` scales it (1 by default for rkd, whose two terms carry the paper's weights; 3000 for sp)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, layers: Mapping[str, str] | Sequence[str],
                 example_input: torch.Tensor, kind: str = "rkd", weight: float | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"the relation loss is one of {', '.join(KINDS)}; got {kind!r}")
        weight = KINDS[kind] if weight is None else weight
        if weight <= 0:
            raise ConfigError(f"the relation loss weight must be > 0; got {weight}")
        self.teacher, pairs, _, _ = paired_layers(teacher, student, layers, example_input, "relation")
        self.layout = InputLayout(self.teacher)  # the student's batches may be channels_last: does it take them?
        self.pairs, self.kind, self.weight, self.features = pairs, kind, weight, tuple(pairs)

    def loss(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with torch.no_grad(), capture_features(self.teacher, self.pairs.values()) as taught:
            self.teacher.to(inputs.device)(self.layout(inputs))
        relate = rkd_loss if self.kind == "rkd" else sp_loss
        total = sum(relate(features[s], taught[t]) for s, t in self.pairs.items())
        return self.weight * total
