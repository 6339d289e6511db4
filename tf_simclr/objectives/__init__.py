"""Training objectives: losses, the LARS optimizer, learning-rate schedule and weight decay.

SimCLR (arXiv 2002.05709) eq. 1 and section 4 / appendix B.1; SimCLRv2 (arXiv 2006.10029)
eq. 2-4.
"""

from tf_simclr.objectives.exclusions import variable_key
from tf_simclr.objectives.lars import LARS
from tf_simclr.objectives.losses import (
    contrastive_loss,
    contrastive_metrics,
    distillation_loss,
    memory_metrics,
    supervised_loss,
)
from tf_simclr.objectives.optimizers import build_optimizer
from tf_simclr.objectives.schedules import (
    WarmUpAndCosineDecay,
    build_learning_rate_schedule,
    num_train_steps,
    num_warmup_steps,
    scaled_learning_rate,
)
from tf_simclr.objectives.weight_decay import weight_decay_loss

__all__ = [
    "LARS",
    "WarmUpAndCosineDecay",
    "build_learning_rate_schedule",
    "build_optimizer",
    "contrastive_loss",
    "contrastive_metrics",
    "distillation_loss",
    "memory_metrics",
    "num_train_steps",
    "num_warmup_steps",
    "scaled_learning_rate",
    "supervised_loss",
    "variable_key",
    "weight_decay_loss",
]
