"""Distillation / self-training (SimCLRv2 section 2, eq. 3-4): a frozen fine-tuned teacher
labels every training image with its temperature-scaled distribution; the student (same size or
smaller) learns it, optionally mixed with the labels of the labeled subset.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints
from tf_simclr.config import LossConfig, ModelConfig, OptimConfig, RunConfig
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
    """The student learns from ``--teacher`` on all training images (labels where drawn)."""

    train_mode = "distill"

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        super().__init__(config, strategy)
        self.teacher_config = self._read_teacher_config()

    def _read_teacher_config(self) -> ModelConfig:
        """The architecture of ``--teacher``, read (and checked against the data's classes)
        when the phase is constructed, so that a wrong teacher stops the run before it writes."""
        source = self.config.train.teacher
        teacher_config = checkpoints.load_model_config(source)
        if teacher_config.num_classes != self.num_classes:
            raise ValueError(
                f"teacher {source!r} predicts {teacher_config.num_classes} classes but the "
                f"dataset has {self.num_classes}; distill from a teacher fine-tuned on the "
                "same labels."
            )
        return dataclasses.replace(teacher_config, global_bn=False)

    def training_examples(self) -> tuple[tf.data.Dataset, int]:
        return self.labeled_subset().with_label_mask, self.train_info.num_examples

    def compute(self, model: SimCLRModel) -> Compute:
        return distill_compute(model, self.teacher(), self.config.loss, self.config.optim)

    def teacher(self) -> SimCLRModel:
        """The frozen teacher, with its supervised head, from ``--teacher``."""
        source = self.config.train.teacher
        teacher = build_model(self.teacher_config, self.strategy, self.config.augment.image_size)
        checkpoints.restore_weights(teacher, source, include_supervised_head=True)
        teacher.trainable = False
        return teacher
