"""Quantization-aware training through the one training loop: fake-quantized layers, trained with `fit`.

`prepare_qat(model, config)` returns a copy whose convolutions and linear layers see their inputs and weights
fake-quantized as ONNX Runtime will quantize them (uint8 per-tensor activations with ranges followed during
training, symmetric per-channel weights; straight-through gradients from PyTorch's fake-quantize ops). Train it
with any `Finetune`; then `calibrate_ranges` sets every activation range to the min and max over the calibration
images, which is exactly what ONNX Runtime's MinMax calibration computes from the same images, and `strip_qat`
returns the plain model with the trained weights, for `quantize_onnx`. Weight scales are max|w| per output
channel in both, so the ONNX Runtime int8 file computes what the fake-quantized model computes (`tests` measure
the agreement).

Lower weight bit widths (`weight_bits=4`): the weights train on a 4-bit grid (values -7..7 times a per-channel
scale). ONNX Runtime's CPU kernels take int8 weights, so the file stores them as int8 on its own 8-bit grid,
which holds those 15 levels to within half an 8-bit step: the file is no smaller than an 8-bit one, the accuracy
is what 4-bit training gives.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, layer_patterns

__all__ = ["QuantizationAware", "FakeQuantized", "prepare_qat", "calibrate_ranges", "strip_qat"]


@dataclass(frozen=True)
class QuantizationAware:
    """Settings. `weight_bits`: 8 or lower (symmetric, per output channel); `momentum` of the activation ranges'
    moving averages during training; `skip`: layer names or regexes left in fp32."""

    weight_bits: int = 8
    momentum: float = 0.1
    skip: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not 2 <= self.weight_bits <= 8:
            raise ConfigError(f"weight_bits must be in [2, 8]; got {self.weight_bits}")
        if not 0 < self.momentum <= 1:
            raise ConfigError(f"momentum must be in (0, 1]; got {self.momentum}")
        object.__setattr__(self, "skip", tuple(self.skip))
        layer_patterns(self.skip, "skip")


class FakeQuantized(nn.Module):
    """A conv or linear layer whose input and weight are fake-quantized."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, weight_bits: int, momentum: float) -> None:
        super().__init__()
        self.layer, self.qmax, self.momentum = layer, 2 ** (weight_bits - 1) - 1, momentum
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                lo, hi = x.detach().min().clamp(max=0), x.detach().max().clamp(min=0)
                if not bool(self.seen):
                    self.lo.copy_(lo)
                    self.hi.copy_(hi)
                    self.seen.fill_(True)
                else:
                    self.lo.lerp_(lo, self.momentum)
                    self.hi.lerp_(hi, self.momentum)
        if bool(self.seen):
            scale = float((self.hi - self.lo).clamp(min=1e-8)) / 255
            zero = int(round(-float(self.lo) / scale))
            x = torch.fake_quantize_per_tensor_affine(x, scale, min(max(zero, 0), 255), 0, 255)
        w = self.layer.weight
        scale = (w.detach().abs().flatten(1).amax(dim=1) / self.qmax).clamp(min=1e-12).float()
        w = torch.fake_quantize_per_channel_affine(w, scale, torch.zeros_like(scale, dtype=torch.int32), 0,
                                                   -self.qmax, self.qmax)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        return self.layer._conv_forward(x, w, self.layer.bias)


def prepare_qat(model: nn.Module, config: QuantizationAware = QuantizationAware()) -> nn.Module:  # noqa: B008
    """A copy of `model` with every conv and linear layer (but those in `config.skip`) fake-quantized."""
    patterns = layer_patterns(config.skip, "skip")
    qat = copy.deepcopy(model)
    names = [n for n, m in qat.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and n
             and not any(p.fullmatch(n) for p in patterns)]
    if not names:
        raise ConfigError("the model has no conv or linear layer to quantize")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = qat.get_submodule(parent_name) if parent_name else qat
        setattr(parent, child, FakeQuantized(getattr(parent, child), config.weight_bits, config.momentum))
    return qat


@torch.no_grad()
def calibrate_ranges(qat: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Set every activation range to the min and max over `batches` (what ONNX Runtime's MinMax sees)."""
    layers = [m for m in qat.modules() if isinstance(m, FakeQuantized)]
    seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module, inputs):
        x = inputs[0]
        lo, hi = x.min().clamp(max=0), x.max().clamp(min=0)
        old = seen.get(id(module))
        seen[id(module)] = (lo, hi) if old is None else (torch.minimum(old[0], lo), torch.maximum(old[1], hi))

    handles = [m.register_forward_pre_hook(record) for m in layers]
    was_training = qat.training
    qat.eval()
    for m in layers:
        m.seen.fill_(False)  # the float pass: ranges of the unquantized inputs, as the fp32 file's calibration sees
    try:
        for x in batches:
            qat(x)
    finally:
        for h in handles:
            h.remove()
        qat.train(was_training)
    for m in layers:
        lo, hi = seen[id(m)]
        m.lo.copy_(lo)
        m.hi.copy_(hi)
        m.seen.fill_(True)


def strip_qat(qat: nn.Module) -> nn.Module:
    """The plain model with the trained weights (fake quantization removed), for export."""
    plain = copy.deepcopy(qat)
    for name, m in list(plain.named_modules()):
        if isinstance(m, FakeQuantized):
            parent_name, _, child = name.rpartition(".")
            parent = plain.get_submodule(parent_name) if parent_name else plain
            setattr(parent, child, m.layer)
    return plain
