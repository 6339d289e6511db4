"""Learning-rate schedule: linear warm-up, then cosine decay to 0 (SimCLR section 4, appendix B.1).

The peak rate is the base rate scaled with the batch size: ``base * batch / 256`` (linear) or
``base * sqrt(batch)`` (square root, better for small batches / long training, SimCLR B.1). Step
counts follow the reference implementation: ``train_steps`` if given, else
``num_examples * epochs // batch + 1``; warm-up lasts ``warmup_epochs * num_examples // batch``
steps.
"""

from __future__ import annotations

import math
from typing import Any

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import LEARNING_RATE_SCALINGS, OptimConfig


def scaled_learning_rate(base_learning_rate: float, batch_size: int, scaling: str) -> float:
    """The peak learning rate: ``base * batch / 256`` (``linear``) or ``base * sqrt(batch)``."""
    _check_positive_int("batch_size", batch_size)
    if scaling == "linear":
        return base_learning_rate * batch_size / 256.0
    if scaling == "sqrt":
        return base_learning_rate * math.sqrt(batch_size)
    raise ValueError(f"learning_rate_scaling={scaling!r} must be one of {LEARNING_RATE_SCALINGS}.")


def num_train_steps(
    num_examples: int, train_epochs: float, batch_size: int, train_steps: int = 0
) -> int:
    """Total steps: ``train_steps`` if > 0, else ``ceil(num_examples * epochs / batch)``, the
    fewest steps that show every example ``epochs`` times (the reference's ``// batch + 1`` is
    the same unless the data divides evenly, where it trains one step more). The quotient is
    rounded to 6 decimals first, so that float error in ``epochs`` does not add a step."""
    _check_positive_int("batch_size", batch_size)
    if train_steps < 0:
        raise ValueError(f"train_steps={train_steps} must be >= 0 (0 = derive from epochs).")
    if train_steps:
        return train_steps
    _check_positive_int("num_examples", num_examples)
    if train_epochs < 0:
        raise ValueError(f"train_epochs={train_epochs} must be >= 0.")
    return math.ceil(round(num_examples * train_epochs / batch_size, 6))


def num_warmup_steps(warmup_epochs: float, num_examples: int, batch_size: int) -> int:
    """Warm-up steps: ``warmup_epochs * num_examples // batch_size``, as the reference."""
    _check_positive_int("batch_size", batch_size)
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs={warmup_epochs} must be >= 0 (0 disables warm-up).")
    return int(warmup_epochs * num_examples // batch_size)


@keras.utils.register_keras_serializable(package="tf_simclr")
class WarmUpAndCosineDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``peak * step / warmup_steps`` during warm-up, then cosine decay from ``peak`` to 0.

    ``lr(step) = peak * 0.5 * (1 + cos(pi * min(step - warmup, total - warmup) / (total -
    warmup)))`` for ``step >= warmup_steps``; it reaches 0 at ``total_steps``. Build one from
    configuration with :func:`build_learning_rate_schedule`.

    Args:
        peak_learning_rate: the rate at the end of warm-up (already scaled with the batch size).
        warmup_steps: length of the linear warm-up (0 starts directly at the peak).
        total_steps: total number of training steps.
    """

    def __init__(self, peak_learning_rate: float, warmup_steps: int, total_steps: int) -> None:
        super().__init__()
        if not peak_learning_rate > 0:
            raise ValueError(f"peak_learning_rate={peak_learning_rate} must be > 0.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps={warmup_steps} must be >= 0.")
        _check_positive_int("total_steps", total_steps)
        self.peak_learning_rate = float(peak_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)

    def __call__(self, step: tf.Tensor | int) -> tf.Tensor:
        with tf.name_scope("WarmUpAndCosineDecay"):
            step = tf.cast(step, tf.float32)
            peak = tf.constant(self.peak_learning_rate, tf.float32)
            warmup = float(self.warmup_steps)
            # Steps past the warm-up never exceed total_steps - 1 when total <= warmup, so the
            # decay length only needs to be positive to keep the unreached branch finite.
            decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
            warmup_rate = peak * step / warmup if self.warmup_steps else peak
            progress = tf.minimum(tf.maximum(step - warmup, 0.0), decay_steps) / decay_steps
            cosine_rate = peak * 0.5 * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < warmup, warmup_rate, cosine_rate)

    def get_config(self) -> dict[str, Any]:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


def build_learning_rate_schedule(
    optim_config: OptimConfig,
    num_examples: int,
    batch_size: int,
    train_epochs: float,
    train_steps: int = 0,
) -> WarmUpAndCosineDecay:
    """The schedule of ``optim_config`` for a dataset of ``num_examples`` at global ``batch_size``.

    ``batch_size`` is the global batch (all replicas), as in the reference's ``train_batch_size``.
    """
    return WarmUpAndCosineDecay(
        peak_learning_rate=scaled_learning_rate(
            optim_config.learning_rate, batch_size, optim_config.learning_rate_scaling
        ),
        warmup_steps=num_warmup_steps(optim_config.warmup_epochs, num_examples, batch_size),
        total_steps=num_train_steps(num_examples, train_epochs, batch_size, train_steps),
    )


def _check_positive_int(name: str, value: int) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value} must be a positive integer.")
