"""Fine-tuning (SimCLRv2 section 2): the whole network, from projection-head layer
``ft_proj_selector`` (1 for 1% and 10% of the labels), on the labeled subset, crop and flip only.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import LossConfig, OptimConfig
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import supervised_loss
from tf_simclr.training.phases.base import Compute, Phase, accuracy, add_weight_decay


def finetune_compute(model: keras.Model, loss_config: LossConfig, optim: OptimConfig) -> Compute:
    """Supervised cross-entropy on ``{"image", "label"}`` batches of the labelled subset."""

    def compute(batch: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        logits = model(batch["image"], training=True)["logits_sup"]
        loss = supervised_loss(batch["label"], logits, loss_config.label_smoothing)
        scalars = {"supervised_loss": loss, "supervised_acc": accuracy(batch["label"], logits)}
        return add_weight_decay(model, optim, loss, scalars), scalars

    return compute


class FinetunePhase(Phase):
    """Supervised training of the labeled subset (also the supervised-only baseline and, with
    ``fine_tune_after_block=4``, linear evaluation)."""

    train_mode = "finetune"

    def without_labels(self) -> list[str]:
        """Fine-tuning learns labels: unlabeled images are refused."""
        raise ValueError(
            f"--train_mode=finetune learns labels, but --dataset={self.config.data.dataset} "
            "holds unlabeled images (a folder without class subfolders); give it labeled images "
            "(one subfolder per class), or pretrain on these (--train_mode=pretrain)."
        )

    def training_examples(self) -> tuple[tf.data.Dataset, int]:
        subset = self.labeled_subset()
        return subset.labeled, subset.num_labeled

    def compute(self, model: SimCLRModel) -> Compute:
        return finetune_compute(model, self.config.loss, self.config.optim)
