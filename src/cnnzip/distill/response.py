"""Response-based knowledge distillation (Hinton et al. 2015): the student matches the teacher's softened
class probabilities.

    fit(student, batches, config, hooks=[Distillation(teacher, temperature=4, alpha=0.9)])

The training loss becomes (1 - alpha) * CE(student, labels) + alpha * T^2 * KL(teacher_T || student_T), where
_T means softmax at temperature T; the T^2 keeps the soft term's gradients on the scale of the hard one. The
teacher runs in eval mode without gradients, on the student's device.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..layout import InputLayout
from ..train import TrainHook

__all__ = ["Distillation", "distillation_loss"]


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


class Distillation(TrainHook):
    """A `fit` hook that turns the loss into the distillation loss above.

    `fit` always adds the cross-entropy; this hook contributes alpha * (soft - CE), so the total is the
    weighted sum. The teacher is copied, so the caller may go on changing the model it came from.
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.9,
                 label_smoothing: float = 0.0) -> None:
        if temperature <= 0:
            raise ConfigError(f"the distillation temperature must be > 0; got {temperature}")
        if not 0 <= alpha <= 1:
            raise ConfigError(f"alpha weighs the soft loss against the hard one and must be in [0, 1]; got {alpha}")
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.layout = InputLayout(self.teacher)  # the student's batches may be channels_last: does it take them?
        self.temperature, self.alpha = temperature, alpha
        self.label_smoothing = label_smoothing  # must equal the TrainConfig's, whose cross-entropy this offsets

    def loss(self, model: nn.Module, inputs: torch.Tensor, logits: torch.Tensor,
             targets: torch.Tensor) -> torch.Tensor | None:
        if self.alpha == 0:
            return None
        with torch.no_grad():
            self.teacher.to(inputs.device)
            teacher_logits = self.teacher(self.layout(inputs))
        soft = distillation_loss(logits.float(), teacher_logits.float(), self.temperature)
        hard = F.cross_entropy(logits.float(), targets, label_smoothing=self.label_smoothing)
        return self.alpha * (soft - hard)
