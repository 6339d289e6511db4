"""The warm-up + cosine learning-rate schedule and the step / scaling helpers."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import OptimConfig
from tf_simclr.objectives import (
    WarmUpAndCosineDecay,
    build_learning_rate_schedule,
    num_train_steps,
    num_warmup_steps,
    scaled_learning_rate,
)


def _expected_rate(step: float, peak: float, warmup: int, total: int) -> float:
    if step < warmup:
        return peak * step / warmup
    progress = min(step - warmup, total - warmup) / (total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def test_schedule_values_at_key_steps() -> None:
    peak, warmup, total = 4.8, 100, 1000
    schedule = WarmUpAndCosineDecay(peak, warmup, total)
    checkpoints = {
        0: 0.0,
        50: peak / 2,  # mid warm-up
        99: peak * 99 / 100,
        100: peak,  # end of warm-up
        550: peak / 2,  # mid decay: cos(pi / 2) = 0
        1000: 0.0,  # last step
        1200: 0.0,  # past the end stays at 0
    }
    # Bound: a few float32 operations on rates <= 0.3 (cos, products), well within 1e-6.
    for step, value in checkpoints.items():
        np.testing.assert_allclose(schedule(step).numpy(), value, atol=1e-6, err_msg=str(step))
    for step in [1, 37, 101, 333, 777, 999]:  # bound: as above, against float64 NumPy
        np.testing.assert_allclose(
            schedule(step).numpy(), _expected_rate(step, peak, warmup, total), rtol=1e-5, atol=1e-6
        )


def test_schedule_without_warmup_starts_at_peak() -> None:
    schedule = WarmUpAndCosineDecay(0.3, warmup_steps=0, total_steps=10)
    # Bound: float32 rounding of 0.3 (rel eps/2, within the default rtol 1e-7), then a few
    # float32 operations (cos(pi / 2) rounds to ~4e-8, not 0).
    np.testing.assert_allclose(schedule(0).numpy(), 0.3)
    np.testing.assert_allclose(schedule(5).numpy(), 0.15, rtol=1e-6)


def test_schedule_with_warmup_longer_than_training_stays_finite() -> None:
    schedule = WarmUpAndCosineDecay(1.0, warmup_steps=20, total_steps=5)
    values = [float(schedule(step).numpy()) for step in range(5)]
    # Bound: one float32 division, rel eps/2.
    np.testing.assert_allclose(values, [step / 20 for step in range(5)], rtol=1e-6)


def test_schedule_accepts_int64_step_tensors_in_tf_function() -> None:
    schedule = WarmUpAndCosineDecay(2.0, warmup_steps=4, total_steps=12)
    compute = tf.function(schedule)
    for step in [0, 2, 4, 8, 12]:  # bound: a few float32 operations on rates <= 2, 1e-6
        np.testing.assert_allclose(
            compute(tf.constant(step, tf.int64)).numpy(),
            _expected_rate(step, 2.0, 4, 12),
            atol=1e-6,
        )


def test_schedule_serialises_through_keras() -> None:
    schedule = WarmUpAndCosineDecay(1.2, warmup_steps=7, total_steps=70)
    clone = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(clone, WarmUpAndCosineDecay)
    assert clone.get_config() == {"peak_learning_rate": 1.2, "warmup_steps": 7, "total_steps": 70}
    # Exact in effect: the same float32 operations on the same numbers (default rtol 1e-7).
    np.testing.assert_allclose(clone(30).numpy(), schedule(30).numpy())


@pytest.mark.parametrize(
    ("base", "scaling", "batch", "expected"),
    [
        (0.3, "linear", 4096, 4.8),
        (0.075, "sqrt", 4096, 4.8),
        (0.3, "linear", 256, 0.3),
        (0.075, "sqrt", 256, 1.2),
        (1.0, "linear", 512, 2.0),
    ],
)
def test_learning_rate_scaling_matches_reference_figures(base, scaling, batch, expected) -> None:
    # Bound: float64 products and a square root, pytest.approx's default rel 1e-6.
    assert scaled_learning_rate(base, batch, scaling) == pytest.approx(expected)


def test_step_counts_follow_the_reference() -> None:
    assert num_train_steps(50000, 100, 512) == 50000 * 100 // 512 + 1 == 9766
    assert num_train_steps(1281167, 100, 4096) == 31279
    assert num_train_steps(50000, 100, 512, train_steps=300) == 300
    assert num_warmup_steps(10, 50000, 512) == 976
    assert num_warmup_steps(10, 1281167, 4096) == 3127
    assert num_warmup_steps(0, 1281167, 4096) == 0
    assert num_warmup_steps(2.5, 1000, 100) == 25


def test_build_learning_rate_schedule_from_config() -> None:
    config = OptimConfig(learning_rate=0.075, learning_rate_scaling="sqrt", warmup_epochs=5)
    schedule = build_learning_rate_schedule(
        config, num_examples=6000, batch_size=64, train_epochs=2
    )
    assert schedule.get_config() == {
        "peak_learning_rate": pytest.approx(0.075 * 8),  # bound: float64 sqrt, rel 1e-6
        "warmup_steps": 5 * 6000 // 64,
        "total_steps": 6000 * 2 // 64 + 1,
    }


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: scaled_learning_rate(0.3, 256, "log"), "learning_rate_scaling"),
        (lambda: scaled_learning_rate(0.3, 0, "linear"), "batch_size"),
        (lambda: num_train_steps(100, 1, 10, train_steps=-1), "train_steps"),
        (lambda: num_train_steps(0, 1, 10), "num_examples"),
        (lambda: num_warmup_steps(-1, 100, 10), "warmup_epochs"),
        (lambda: WarmUpAndCosineDecay(0.0, 1, 10), "peak_learning_rate"),
        (lambda: WarmUpAndCosineDecay(1.0, -1, 10), "warmup_steps"),
        (lambda: WarmUpAndCosineDecay(1.0, 1, 0), "total_steps"),
    ],
)
def test_invalid_schedule_arguments_raise(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()
