"""Feature-based knowledge distillation (FitNets, Romero et al., ICLR 2015): the student's intermediate feature
maps learn to match the teacher's, through a small adapter trained beside the student.

    hook = FeatureDistillation(teacher, student, {"layer2": "layer2"}, torch.zeros(1, 3, 32, 32))
    fit(student, batches, config, hooks=[hook])

For each (student layer, teacher layer) pair the loss adds `weight` times the mean squared error between
adapter(student feature) and the teacher feature. The adapter is a 1x1 convolution (a linear map for flat
features) from the student's channels to the teacher's, so a thinner student can match a wider teacher; where the
resolutions differ, the larger map is average-pooled to the smaller. The adapters are the hook's own parameters:
`fit` trains them and keeps them in its checkpoints. The teacher runs in eval mode without gradients.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layout import InputLayout
from ..train import TrainHook, capture_features

__all__ = ["FeatureDistillation", "feature_shapes", "match_resolution", "paired_layers"]


@torch.no_grad()
def feature_shapes(model: nn.Module, layers: Sequence[str], example_input: torch.Tensor) -> dict[str, tuple]:
    """The output shape (without the batch) of each named layer on `example_input`; a clear error for a name the
    model lacks or a layer whose output is not one tensor."""
    was_training = model.training
    model.eval()
    try:
        with capture_features(model, layers) as captured:
            logits = model(example_input.to(next(model.parameters()).device))
    finally:
        model.train(was_training)
    shapes = {"": tuple(logits.shape[1:])}
    for name in layers:
        out = captured.get(name)
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"layer {name!r} did not give one tensor on the example input (it gave "
                              f"{type(out).__name__}): name a layer whose output is a feature map")
        shapes[name] = tuple(out.shape[1:])
    return shapes


def paired_layers(teacher: nn.Module, student: nn.Module, layers: Mapping[str, str] | Sequence[str],
                  example_input: torch.Tensor, kind: str) -> tuple[nn.Module, dict[str, str], dict, dict]:
    """What every feature-reading distillation starts from: a frozen copy of the teacher, the (student layer ->
    teacher layer) pairs (a list pairs layers of the same name), and both sides' feature shapes, checked: the
    layers exist and the two models predict the same classes."""
    pairs = dict(layers) if isinstance(layers, Mapping) else {name: name for name in layers}
    if not pairs:
        raise ConfigError(f"{kind} distillation needs at least one layer")
    teacher = copy.deepcopy(teacher).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    s_shapes = feature_shapes(student, list(pairs), example_input)
    t_shapes = feature_shapes(teacher, list(pairs.values()), example_input)
    if s_shapes[""] != t_shapes[""]:
        raise ConfigError(f"the teacher predicts {t_shapes[''][0]} classes and the student {s_shapes[''][0]}: "
                          "distillation needs the same classes")
    return teacher, pairs, s_shapes, t_shapes


def match_resolution(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Average-pool the larger of two feature maps to the other's spatial size."""
    if a.dim() > 2 and a.shape[2:] != b.shape[2:]:
        if a.shape[2:].numel() > b.shape[2:].numel():
            a = F.adaptive_avg_pool2d(a, b.shape[2:]) if a.dim() == 4 else F.adaptive_avg_pool1d(a, b.shape[2:])
        else:
            b = F.adaptive_avg_pool2d(b, a.shape[2:]) if b.dim() == 4 else F.adaptive_avg_pool1d(b, a.shape[2:])
    return a, b


class FeatureDistillation(TrainHook):
    """A `fit` hook adding the FitNets loss for each (student layer -> teacher layer) pair in `layers` (a list
    pairs layers of the same name). `student` and `example_input` (a batch of one) give the shapes the adapters
    need; the teacher and the student must predict the same classes."""

    def __init__(self, teacher: nn.Module, student: nn.Module, layers: Mapping[str, str] | Sequence[str],
                 example_input: torch.Tensor, weight: float = 1.0) -> None:
        if weight <= 0:
            raise ConfigError(f"the feature loss weight must be > 0; got {weight}")
        self.teacher, pairs, s_shapes, t_shapes = paired_layers(teacher, student, layers, example_input, "feature")
        self.layout = InputLayout(self.teacher)  # the student's batches may be channels_last: does it take them?
        self.pairs, self.weight, self.features = pairs, weight, tuple(pairs)
        self.adapters = nn.ModuleDict()
        with torch.random.fork_rng():  # the same adapters every time, whatever the caller's random state
            torch.manual_seed(0)
            self._build_adapters(pairs, s_shapes, t_shapes)

    def _build_adapters(self, pairs: dict[str, str], s_shapes: dict, t_shapes: dict) -> None:
        for i, (s_name, t_name) in enumerate(pairs.items()):
            s, t = s_shapes[s_name], t_shapes[t_name]
            if len(s) != len(t):
                raise ConfigError(f"student layer {s_name!r} gives {len(s) - 1}-d feature maps and teacher layer "
                                  f"{t_name!r} {len(t) - 1}-d ones: pair layers of the same kind")
            conv = {1: nn.Linear, 2: nn.Conv1d, 3: nn.Conv2d}.get(len(s))
            if conv is None:
                raise ConfigError(f"layer {s_name!r} gives {len(s)}-d features; feature distillation takes flat "
                                  "features and 1-d or 2-d maps")
            self.adapters[str(i)] = conv(s[0], t[0], bias=False) if conv is nn.Linear else \
                conv(s[0], t[0], 1, bias=False)

    def parameters(self):
        return list(self.adapters.parameters())

    def loss(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor,
             features: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        with torch.no_grad(), capture_features(self.teacher, self.pairs.values()) as taught:
            self.teacher.to(inputs.device)(self.layout(inputs))
        self.adapters.to(inputs.device)
        total = logits.new_zeros((), dtype=torch.float32)
        for i, (s_name, t_name) in enumerate(self.pairs.items()):
            student, teacher = match_resolution(self.adapters[str(i)](features[s_name].float()),
                                                taught[t_name].float())
            total = total + F.mse_loss(student, teacher)
        return self.weight * total
