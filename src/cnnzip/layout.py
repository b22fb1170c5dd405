"""Channels-last input batches for convolutions on the CPU.

oneDNN's CPU convolutions run faster on NHWC data than on NCHW (`python benchmarks/channels_last.py`: training
steps and evaluation of ResNet-20/56 and MobileNetV2). Giving a batch of images channels_last strides is enough:
the activations keep that layout through the network, while weights and gradients keep the default one (oneDNN
reorders weights itself, as fast as converting the model), so hooks, files and flat indices see what they always
saw. Values do not change; sums may round in another order.

A forward pass that `.view`s an activation across channels and positions cannot take such a batch, and models
with quantization observers must not see an extra batch: those keep the default layout. Code that reads raw
memory (`as_strided`, `data_ptr`, C++ extensions) cannot be detected: set CNNZIP_CHANNELS_LAST=0 for it.
"""

from __future__ import annotations

import os

import torch
from torch import nn

__all__ = ["InputLayout"]


class InputLayout:
    """Converts a model's input batches to the faster layout; decides on the first batch whether the model runs
    on it (one forward pass of two images in eval mode, no gradient)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.decided, self.format = False, None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """`x` in the layout this model takes (a batch another model made channels_last goes back too)."""
        if not self.decided:
            self.decided, self.format = True, _decide(self.model, x)
        return x.contiguous() if self.format is None else x.contiguous(memory_format=self.format)


def _decide(model: nn.Module, x: torch.Tensor) -> torch.memory_format | None:
    if (os.environ.get("CNNZIP_CHANNELS_LAST", "1") == "0" or x.dim() != 4 or x.device.type != "cpu"
            or not any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())):
        return None
    from torch.ao.quantization import FakeQuantizeBase, ObserverBase  # (they record every batch they see)
    from torch.ao.quantization.observer import AffineQuantizedObserverBase

    if any(isinstance(m, ObserverBase | FakeQuantizeBase | AffineQuantizedObserverBase) for m in model.modules()):
        return None
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):  # (a resumed run must draw what it would have)
            model(x[:2].contiguous(memory_format=torch.channels_last))
        return torch.channels_last
    except Exception:  # noqa: BLE001 - e.g. `.view(n, -1)` of such an activation; the default layout runs as always
        return None
    finally:
        model.train(was_training)
