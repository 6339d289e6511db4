"""Unit tests of the phases' losses (tf_simclr.training.phases), in process: fine-tuning,
distillation and pretraining's on-line linear probe against NumPy and tf.nn references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from model_fixtures import tiny_model_config

from tf_simclr.config import LossConfig, OptimConfig
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import contrastive_loss, weight_decay_loss
from tf_simclr.training import phases


def image_batch(count: int = 6, seed: int = 0) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.random((count, 16, 16, 3)), tf.float32),
        "label": tf.constant(rng.integers(0, 4, count), tf.int32),
    }


@pytest.mark.parametrize("optimizer", ["lars", "momentum"])
def test_finetune_loss_and_weight_decay(optimizer):
    keras.utils.set_random_seed(1)
    model = SimCLRModel(tiny_model_config(ft_proj_selector=1)).build_for_size(16)
    optim = OptimConfig(optimizer=optimizer, weight_decay=1e-3)
    batch = image_batch()
    total, scalars = phases.finetune_compute(model, LossConfig(), optim)(batch)
    logits = model(batch["image"], training=True)["logits_sup"]
    expected = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], logits)
    )
    decay = weight_decay_loss(model.trainable_variables, 1e-3, model.excluded_variables())
    # Bound: the same model in training mode on the same batch, eager both times (the same
    # kernels): equal up to a few float32 roundings of the loss and of the decay's sum of
    # per-variable terms (rel 1e-5).
    assert float(scalars["supervised_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(scalars["weight_decay"]) == pytest.approx(float(decay), rel=1e-5)
    assert float(decay) > 0
    # LARS decays inside its update; the other optimizers get the L2 term in the loss.
    added = 0.0 if optimizer == "lars" else float(decay)
    assert float(total) == pytest.approx(float(expected) + added, rel=1e-5)  # bound: as above
    assert float(scalars["total_loss"]) == pytest.approx(float(total))  # exact: the same value


def test_distill_mixes_teacher_and_labels_and_never_trains_the_teacher():
    keras.utils.set_random_seed(2)
    student = SimCLRModel(tiny_model_config()).build_for_size(16)
    teacher = SimCLRModel(tiny_model_config(width_multiplier=0.25)).build_for_size(16)
    teacher.trainable = False
    batch = image_batch(count=8, seed=3)
    batch["has_label"] = tf.constant([True, False, True, False, False, False, True, False])
    batch["label"] = tf.where(batch["has_label"], batch["label"], -1)
    loss = LossConfig(distill_temperature=2.0, distill_alpha=0.25)
    compute = phases.distill_compute(student, teacher, loss, OptimConfig(optimizer="lars"))
    with tf.GradientTape(persistent=True) as tape:
        total, scalars = compute(batch)
    teacher_logits = teacher(batch["image"], training=False)["logits_sup"].numpy()
    logits = student(batch["image"], training=True)["logits_sup"].numpy()

    def log_softmax(values):
        shifted = values - values.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    targets = np.exp(log_softmax(teacher_logits / 2.0))
    distill = -np.mean(np.sum(targets * log_softmax(logits / 2.0), axis=1))
    mask = batch["has_label"].numpy()
    labels = np.maximum(batch["label"].numpy(), 0)
    per_example = -log_softmax(logits)[np.arange(8), labels]
    supervised = np.sum(per_example * mask) / 8  # unlabeled examples count in the mean as 0
    # Bound: the same logits (eager, same kernels) through float32 vs float64 softmaxes at
    # temperature 2: a few eps of each logit, over 8 examples; rel 1e-4 leaves room for the
    # student's batch norm statistics of a second call summing in another order.
    assert float(scalars["distill_loss"]) == pytest.approx(distill, rel=1e-4)
    assert float(scalars["supervised_loss"]) == pytest.approx(supervised, rel=1e-4)
    assert float(total) == pytest.approx(0.25 * distill + 0.75 * supervised, rel=1e-4)
    agreement = np.mean(np.argmax(logits, 1) == np.argmax(teacher_logits, 1))
    assert float(scalars["teacher_agreement"]) == pytest.approx(agreement)  # exact: a count
    assert all(grad is None for grad in tape.gradient(total, teacher.variables))
    trained = student.encoder.trainable_variables + student.supervised_head.trainable_variables
    assert all(grad is not None for grad in tape.gradient(total, trained))


def test_pretrain_linear_probe_does_not_train_the_encoder():
    keras.utils.set_random_seed(3)
    config = tiny_model_config(supervised_head_stop_gradient=True)
    model = SimCLRModel(config).build_for_size(16)
    images = image_batch(count=4, seed=4)
    batch = {
        "view1": images["image"],
        "view2": tf.image.flip_left_right(images["image"]),
        "label": images["label"],
    }
    compute = phases.pretrain_compute(
        model, None, LossConfig(temperature=0.2), OptimConfig(), linear_eval=True
    )
    with tf.GradientTape(persistent=True) as tape:
        total, scalars = compute(batch)
    outputs = model(tf.concat([batch["view1"], batch["view2"]], 0), training=True)
    expected, _, _ = contrastive_loss(outputs["proj_head_output"], temperature=0.2)
    # Bound: the same model on the same batch (eager, same kernels), then the same loss op.
    assert float(scalars["contrast_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(  # bound: one float32 addition
        float(scalars["contrast_loss"]) + float(scalars["supervised_loss"]), rel=1e-5
    )
    predicted = np.argmax(outputs["logits_sup"].numpy(), axis=1)
    labels = np.concatenate([batch["label"].numpy()] * 2)
    assert float(scalars["supervised_acc"]) == pytest.approx(
        np.mean(predicted == labels)
    )  # exact: a count
    probe_to_encoder = tape.gradient(scalars["supervised_loss"], model.encoder.trainable_variables)
    assert all(grad is None for grad in probe_to_encoder)
    probe_to_head = tape.gradient(
        scalars["supervised_loss"], model.supervised_head.trainable_variables
    )
    assert all(grad is not None for grad in probe_to_head)
