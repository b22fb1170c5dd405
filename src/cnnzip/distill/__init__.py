"""Knowledge distillation as `fit` hooks: a smaller student learns from a trained teacher.

    fit(student, batches, config, hooks=[Distillation(teacher, temperature=4, alpha=0.9)])
"""

from .response import Distillation, distillation_loss

__all__ = ["Distillation", "distillation_loss"]
