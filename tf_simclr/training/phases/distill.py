"""Distillation / self-training (SimCLRv2 section 2, eq. 3-4): a frozen fine-tuned teacher
labels every training image with its temperature-scaled distribution; the student (same size or
smaller) learns it, optionally mixed with the labels of the labeled subset.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints
from tf_simclr.config import LossConfig, OptimConfig, RunConfig
from tf_simclr.data import mark_unlabeled, mix_evenly
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import distillation_loss
from tf_simclr.training.phases.base import (
    Compute,
    Phase,
    accuracy,
    add_weight_decay,
    build_model,
)


def distill_compute(
    student: keras.Model, teacher: keras.Model, loss_config: LossConfig, optim: OptimConfig
) -> Compute:
    """Distillation from the frozen teacher (inference mode) on ``{"image", "label",
    "has_label"}`` batches; with ``distill_alpha < 1`` labelled examples also get
    ``(1 - alpha)`` times their cross-entropy (SimCLRv2 eq. 4)."""
    alpha = loss_config.distill_alpha

    def compute(batch: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        teacher_logits = tf.stop_gradient(teacher(batch["image"], training=False)["logits_sup"])
        logits = student(batch["image"], training=True)["logits_sup"]
        distill = distillation_loss(
            teacher_logits,
            logits,
            temperature=loss_config.distill_temperature,
            hinton_tau_squared=loss_config.hinton_tau_squared,
        )
        scalars = {
            "distill_loss": distill,
            "teacher_agreement": accuracy(tf.argmax(teacher_logits, axis=-1), logits),
        }
        total = distill
        if alpha < 1.0:
            mask = tf.cast(batch["has_label"], tf.float32)
            labels = tf.cast(batch["label"], tf.int32)
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
                tf.maximum(labels, 0), logits
            )
            sup = tf.reduce_sum(per_example * mask) / tf.maximum(
                tf.cast(tf.size(mask), tf.float32), 1.0
            )
            scalars["supervised_loss"] = sup
            total = alpha * distill + (1.0 - alpha) * sup
        return add_weight_decay(student, optim, total, scalars), scalars

    return compute


class DistillPhase(Phase):
    """The student learns from ``--teacher`` on all training images (labels where drawn). The
    labels come from ``--dataset`` or, with ``--label_dataset``, from that source's training
    split, whose labeled examples are mixed evenly into ``--dataset``'s images."""

    train_mode = "distill"

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        # Read first, so that a wrong teacher stops the run before it writes.
        self.teacher_config = dataclasses.replace(
            checkpoints.load_model_config(config.train.teacher), global_bn=False
        )
        super().__init__(config, strategy)

    def model_classes(self) -> int:
        """The teacher's classes, which must be the labels' if there are labels."""
        labeled, predicted = self.label_info.num_classes, self.teacher_config.num_classes
        if labeled and labeled != predicted:
            raise ValueError(
                f"teacher {self.config.train.teacher!r} predicts {predicted} classes but the "
                f"dataset has {labeled} ({self.config.data.labels_source}); distill from a "
                "teacher fine-tuned on the same labels."
            )
        return predicted

    def without_labels(self) -> list[str]:
        """Unlabeled images are distilled on; labels in the loss need a labeled source."""
        data, alpha = self.config.data, self.config.loss.distill_alpha
        if alpha < 1.0:
            wanted = f"--distill_alpha={alpha} weighs labels into the loss"
        elif data.uses_label_subset:
            wanted = "a labeled subset is drawn (--label_fraction, --labels_per_class, ...)"
        else:
            return []
        raise ValueError(
            f"{wanted}, but --dataset={data.dataset} holds unlabeled images; pass "
            "--label_dataset with a labeled source (one subfolder per class) for the labels, or "
            "distill from the teacher alone (--distill_alpha=1, no labeled subset)."
        )

    def training_examples(self) -> tuple[tf.data.Dataset, int]:
        images, count = self.train_source, self.train_info.num_examples
        if self.label_info is not self.train_info:
            subset = self.labeled_subset()
            mixed = mix_evenly(subset.labeled, subset.num_labeled, images, count)
            return mixed, subset.num_labeled + count
        if not self.label_info.num_classes:
            return mark_unlabeled(images), count
        return self.labeled_subset().with_label_mask, count

    def compute(self, model: SimCLRModel) -> Compute:
        return distill_compute(model, self.teacher(), self.config.loss, self.config.optim)

    def teacher(self) -> SimCLRModel:
        """The frozen teacher, with its supervised head, from ``--teacher``."""
        source = self.config.train.teacher
        teacher = build_model(self.teacher_config, self.strategy, self.config.augment.image_size)
        checkpoints.restore_weights(teacher, source, include_supervised_head=True)
        teacher.trainable = False
        return teacher
