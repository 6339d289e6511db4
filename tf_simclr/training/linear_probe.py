"""Converged linear evaluation of fixed features (SimCLR section 4, "linear evaluation protocol").

The features of a frozen encoder (or raw pixels, or a randomly initialised encoder, the study's
reference rows) are extracted once without augmentation, standardised with the training
features' mean and standard deviation, and a softmax-regression classifier is trained on them to
convergence with Adam and a cosine-decayed rate. The number of epochs grows as the labeled set
shrinks (``target_steps`` updates, within ``[min_epochs, max_epochs]``), so that 600 labels get
as many updates as 60,000. Everything runs in one ``tf.function``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import tensorflow as tf
import tf_keras as keras


@dataclasses.dataclass(frozen=True)
class LinearProbeConfig:
    """Optimisation of the linear classifier; the defaults converge on Fashion-MNIST features."""

    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    target_steps: int = 5000
    min_epochs: int = 30
    max_epochs: int = 300
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.target_steps < 1:
            raise ValueError("batch_size and target_steps must be >= 1.")
        if not 1 <= self.min_epochs <= self.max_epochs:
            raise ValueError(f"need 1 <= min_epochs <= max_epochs, got {self}.")
        if self.learning_rate <= 0 or self.weight_decay < 0:
            raise ValueError("learning_rate must be > 0 and weight_decay >= 0.")

    def epochs(self, num_examples: int) -> int:
        """Epochs for ``num_examples`` labels: ``target_steps`` updates, clipped."""
        steps_per_epoch = math.ceil(num_examples / self.batch_size)
        wanted = math.ceil(self.target_steps / steps_per_epoch)
        return min(max(wanted, self.min_epochs), self.max_epochs)


def standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    """``(x - mean) / std`` with the training features' statistics (constant columns kept at
    0), applied to ``train`` and to every array of ``others``."""
    train = np.asarray(train, np.float64)
    mean, std = train.mean(axis=0), train.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    return [((np.asarray(x, np.float64) - mean) / std).astype(np.float32) for x in (train, *others)]


def fit_linear_probe(
    features: np.ndarray, labels: np.ndarray, num_classes: int, config: LinearProbeConfig
) -> tuple[np.ndarray, np.ndarray, float]:
    """Train ``softmax(x W + b)`` on (already standardised) ``features``; returns ``(W, b,
    final training loss)``, the loss being the full-batch mean cross-entropy plus
    ``weight_decay / 2 * ||W||^2``."""
    features = tf.constant(features, tf.float32)
    labels = tf.constant(labels, tf.int32)
    count, dim = int(features.shape[0]), int(features.shape[1])
    steps_per_epoch = math.ceil(count / config.batch_size)
    total_steps = config.epochs(count) * steps_per_epoch
    weights = tf.Variable(tf.zeros([dim, num_classes]))
    bias = tf.Variable(tf.zeros([num_classes]))
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(config.learning_rate, total_steps)
    )

    def objective(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        logits = tf.matmul(x, weights) + bias
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        return loss + 0.5 * config.weight_decay * tf.reduce_sum(tf.square(weights))

    def adam_step(x: tf.Tensor, y: tf.Tensor) -> None:
        with tf.GradientTape() as tape:
            loss = objective(x, y)
        grads = tape.gradient(loss, [weights, bias])
        optimizer.apply_gradients(zip(grads, [weights, bias], strict=True))

    @tf.function
    def train() -> tf.Tensor:
        seed = tf.constant([config.seed, 0], tf.int64)
        for epoch in tf.range(total_steps // steps_per_epoch):
            order = tf.random.experimental.stateless_shuffle(
                tf.range(count), seed=seed + tf.cast([0, epoch], tf.int64)
            )
            for start in tf.range(0, count, config.batch_size):
                batch = order[start : start + config.batch_size]
                adam_step(tf.gather(features, batch), tf.gather(labels, batch))
        return objective(features, labels)

    final_loss = float(train())
    return weights.numpy(), bias.numpy(), final_loss


def linear_probe_accuracy(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    config: LinearProbeConfig | None = None,
) -> dict[str, float]:
    """Standardise, fit the probe on the training features, and report test top-1 together
    with the training loss and the number of epochs it took."""
    config = config or LinearProbeConfig()
    train_x, test_x = standardize(train_features, test_features)
    weights, bias, loss = fit_linear_probe(train_x, train_labels, num_classes, config)
    predicted = np.argmax(test_x @ weights + bias, axis=1)
    return {
        "linear_top_1_accuracy": float(np.mean(predicted == np.asarray(test_labels))),
        "train_loss": loss,
        "epochs": config.epochs(len(train_x)),
        "num_labeled": len(train_x),
    }
