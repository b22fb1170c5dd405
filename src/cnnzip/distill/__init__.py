"""Knowledge distillation as `fit` hooks: a smaller student learns from a trained teacher.

    fit(student, batches, config, hooks=[Distillation(teacher, temperature=4, alpha=0.9)])          # responses
    fit(student, batches, config, hooks=[FeatureDistillation(teacher, student, ["layer3"], example)])  # FitNets
    fit(student, batches, config, hooks=[RelationDistillation(teacher, student, ["layer3"], example)])  # RKD, SP
"""

from .feature import FeatureDistillation
from .relation import RelationDistillation, rkd_loss, sp_loss
from .response import Distillation, distillation_loss
from .spec import DISTILL_KINDS, DistillSpec, distillation_hooks, distilling

__all__ = ["Distillation", "distillation_loss", "FeatureDistillation", "RelationDistillation", "rkd_loss",
           "sp_loss", "DistillSpec", "distillation_hooks", "distilling", "DISTILL_KINDS"]
