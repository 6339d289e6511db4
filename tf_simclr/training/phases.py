"""The per-replica losses of the three phases of SimCLRv2 (section 2 of arXiv 2006.10029).

* pretrain: NT-Xent between the two views' projections, negatives from every replica (SimCLR
  eq. 1), plus the optional on-line linear classifier on stop-gradient features.
* finetune: cross-entropy of the supervised head reading projection-head layer
  ``ft_proj_selector`` on the labelled subset.
* distill: cross-entropy against the frozen teacher's temperature-scaled distribution on
  unlabelled images (eq. 3), optionally mixed with the labelled loss (eq. 4).

Each ``*_compute`` returns ``(total_loss, scalars)`` for one replica's batch; the weight-decay
term is added for optimizers other than LARS, which folds it into its gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import LossConfig, OptimConfig
from tf_simclr.objectives import (
    contrastive_loss,
    contrastive_metrics,
    distillation_loss,
    memory_metrics,
    supervised_loss,
    weight_decay_loss,
)
from tf_simclr.training.memory import NegativeMemory

Compute = Callable[[dict], tuple[tf.Tensor, dict[str, tf.Tensor]]]


def _accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(predicted == tf.cast(labels, tf.int32), tf.float32))


def _add_weight_decay(
    model: keras.Model, optim: OptimConfig, total: tf.Tensor, scalars: dict
) -> tf.Tensor:
    decay = weight_decay_loss(
        model.trainable_variables, optim.weight_decay, model.excluded_variables()
    )
    scalars["weight_decay"] = decay
    if optim.optimizer != "lars":
        total = total + decay
    scalars["total_loss"] = total
    return total


def pretrain_compute(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    loss_config: LossConfig,
    optim: OptimConfig,
    linear_eval: bool,
    memory: NegativeMemory | None = None,
) -> Compute:
    """NT-Xent on ``{"view1", "view2"}`` batches (+ linear evaluation on ``"label"``). With a
    ``memory`` the anchors are contrasted with the memory network's projections of the batch
    (``{"memory_view1", "memory_view2"}``, added by its ``before_step``) and of earlier batches.
    ``contrast_acc`` and ``contrast_entropy`` always measure the in-batch targets alone."""

    def compute(batch: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        images = tf.concat([batch["view1"], batch["view2"]], axis=0)
        outputs = model(images, training=True)
        negatives, mask, targets = None, None, None
        if memory is not None:
            negatives, mask = memory.negatives()
            targets = tf.concat([batch["memory_view1"], batch["memory_view2"]], axis=0)
        loss, logits, labels = contrastive_loss(
            outputs["proj_head_output"],
            temperature=loss_config.temperature,
            hidden_norm=loss_config.hidden_norm,
            strategy=strategy,
            loss_scale=loss_config.loss_scale,
            memory=negatives,
            memory_mask=mask,
            targets=targets,
        )
        scalars = {"contrast_loss": loss}
        if memory is None:
            scalars.update(contrastive_metrics(logits, labels))
        else:
            in_batch = tf.shape(logits)[1] - memory.size
            scalars.update(contrastive_metrics(logits[:, :in_batch], labels[:, :in_batch]))
            scalars.update(memory_metrics(logits, labels, memory.size))
            scalars["memory_fill"] = memory.fill()
        total = loss
        if linear_eval:
            class_labels = tf.concat([batch["label"], batch["label"]], axis=0)
            sup = supervised_loss(class_labels, outputs["logits_sup"])
            scalars["supervised_loss"] = sup
            scalars["supervised_acc"] = _accuracy(class_labels, outputs["logits_sup"])
            total = total + sup
        return _add_weight_decay(model, optim, total, scalars), scalars

    return compute


def finetune_compute(model: keras.Model, loss_config: LossConfig, optim: OptimConfig) -> Compute:
    """Supervised cross-entropy on ``{"image", "label"}`` batches of the labelled subset."""

    def compute(batch: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        logits = model(batch["image"], training=True)["logits_sup"]
        loss = supervised_loss(batch["label"], logits, loss_config.label_smoothing)
        scalars = {"supervised_loss": loss, "supervised_acc": _accuracy(batch["label"], logits)}
        return _add_weight_decay(model, optim, loss, scalars), scalars

    return compute


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
            "teacher_agreement": _accuracy(tf.argmax(teacher_logits, axis=-1), logits),
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
        return _add_weight_decay(student, optim, total, scalars), scalars

    return compute
