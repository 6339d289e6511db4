"""The three phases of SimCLRv2 (arXiv 2006.10029 section 2) as objects the runner drives:
``PHASES[train_mode]`` is the only place a ``train_mode`` is looked up."""

from tf_simclr.training.phases.base import Compute, Phase
from tf_simclr.training.phases.distill import DistillPhase, distill_compute
from tf_simclr.training.phases.finetune import FinetunePhase, finetune_compute
from tf_simclr.training.phases.pretrain import PretrainPhase, pretrain_compute

PHASES: dict[str, type[Phase]] = {
    phase.train_mode: phase for phase in (PretrainPhase, FinetunePhase, DistillPhase)
}

__all__ = [
    "PHASES",
    "Compute",
    "DistillPhase",
    "FinetunePhase",
    "Phase",
    "PretrainPhase",
    "distill_compute",
    "finetune_compute",
    "pretrain_compute",
]
