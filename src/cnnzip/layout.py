"""Channels-last input batches for convolutions on the CPU.

oneDNN's CPU convolutions run faster on NHWC data than on NCHW (`python benchmarks/channels_last.py`: training
steps and evaluation of ResNet-20/56 and MobileNetV2). Giving a batch of images channels_last strides is enough:
the activations keep that layout through the network, while weights and gradients keep the default one (oneDNN
reorders weights itself, as fast as converting the model), so hooks, files and flat indices see what they always
saw. Values do not change; sums may round in another order.

A forward pass that `.view`s an activation across channels and positions cannot take such a batch, and models
with quantization observers must not see an extra batch: those keep the default layout.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["InputLayout"]

_UNDECIDED = object()


class InputLayout:
    """Converts a model's input batches to the faster layout; decides on the first batch whether the model runs
    on it (one forward pass of two images in eval mode, no gradient)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.format: torch.memory_format | None | object = _UNDECIDED

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.format is _UNDECIDED:
            self.format = _decide(self.model, x)
        return x if self.format is None else x.contiguous(memory_format=self.format)


def _decide(model: nn.Module, x: torch.Tensor) -> torch.memory_format | None:
    if x.dim() != 4 or x.device.type != "cpu" or not any(isinstance(m, nn.modules.conv._ConvNd)
                                                         for m in model.modules()):
        return None
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase  # (they record every batch they see)

    if any(isinstance(m, ObserverBase | FakeQuantizeBase) for m in model.modules()):
        return None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x[:2].contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except RuntimeError:  # e.g. `.view(n, -1)` of a channels_last activation: the default layout works
        return None
    finally:
        model.train(was_training)
