"""LARS, the optimizer factory and weight decay against NumPy re-implementations; LARS steps
over two MirroredStrategy replicas against one device."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from replica_equivalence import (
    assert_same_weights,
    excluded_from_decay,
    reordered,
    run_steps,
    tiny_model,
    two_views,
)
from tolerances import drift_tolerance, reduction_bound

from tf_simclr.config import OptimConfig
from tf_simclr.objectives import (
    LARS,
    WarmUpAndCosineDecay,
    build_optimizer,
    variable_key,
    weight_decay_loss,
)


def _numpy_lars_step(
    weights: np.ndarray,
    gradient: np.ndarray,
    velocity: np.ndarray,
    *,
    learning_rate: float,
    momentum: float,
    weight_decay: float,
    eeta: float,
    nesterov: bool,
    excluded: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """The reference LARS update (google-research/simclr, classic momentum), in float64."""
    if not excluded:
        gradient = gradient + weight_decay * weights
    trust_ratio = 1.0
    if not excluded:
        weight_norm, gradient_norm = np.linalg.norm(weights), np.linalg.norm(gradient)
        if weight_norm > 0 and gradient_norm > 0:
            trust_ratio = eeta * weight_norm / gradient_norm
    scaled_lr = learning_rate * trust_ratio
    velocity = momentum * velocity + scaled_lr * gradient
    update = momentum * velocity + scaled_lr * gradient if nesterov else velocity
    return weights - update, velocity


def _make_variables(rng: np.random.Generator) -> dict[str, tf.Variable]:
    # Names are deliberately misleading: exclusion must follow identity, never names.
    return {
        "decayed": tf.Variable(rng.normal(size=(3, 4)).astype(np.float32), name="dense/bias"),
        "excluded": tf.Variable(rng.normal(size=(4,)).astype(np.float32), name="conv/kernel"),
        "zero": tf.Variable(np.zeros((2, 2), np.float32), name="zero_kernel"),
        "frozen_gradient": tf.Variable(rng.normal(size=(5,)).astype(np.float32), name="w"),
    }


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_matches_numpy_over_several_steps(nesterov: bool) -> None:
    rng = np.random.default_rng(0)
    variables = _make_variables(rng)
    hyper = {"learning_rate": 0.5, "momentum": 0.9, "weight_decay": 0.05, "eeta": 0.01}
    optimizer = LARS(
        hyper["learning_rate"],
        momentum=hyper["momentum"],
        weight_decay=hyper["weight_decay"],
        eeta=hyper["eeta"],
        nesterov=nesterov,
        excluded_variables=[variables["excluded"]],
    )
    weights = {name: v.numpy().astype(np.float64) for name, v in variables.items()}
    velocities = {name: np.zeros_like(w) for name, w in weights.items()}

    for step in range(4):
        gradients = {name: rng.normal(size=w.shape) for name, w in weights.items()}
        if step == 1:
            gradients["frozen_gradient"] = np.zeros_like(weights["frozen_gradient"])
        optimizer.apply_gradients(
            (tf.constant(gradients[name], tf.float32), variables[name]) for name in variables
        )
        for name in variables:
            weights[name], velocities[name] = _numpy_lars_step(
                weights[name],
                gradients[name],
                velocities[name],
                nesterov=nesterov,
                excluded=name == "excluded",
                **hyper,
            )
        # Bound: per step, float32 norms of at most 12 values (reduction_bound(12, |w|**2)),
        # a trust ratio and 3 updates against float64: ~20 eps relative per step, 4 steps.
        for name, variable in variables.items():
            np.testing.assert_allclose(
                variable.numpy(), weights[name], rtol=1e-5, atol=1e-6, err_msg=name
            )
    assert int(optimizer.iterations.numpy()) == 4


def test_lars_excluded_set_is_exactly_the_one_passed() -> None:
    variables = _make_variables(np.random.default_rng(1))
    optimizer = LARS(0.1, excluded_variables=[variables["excluded"], variables["zero"]])
    flags = {name: optimizer.is_excluded(variable) for name, variable in variables.items()}
    assert flags == {"decayed": False, "excluded": True, "zero": True, "frozen_gradient": False}
    twin = tf.Variable(variables["excluded"].numpy(), name=variables["excluded"].name)
    assert not optimizer.is_excluded(twin)  # same name and value, different variable


def test_lars_follows_a_learning_rate_schedule() -> None:
    schedule = WarmUpAndCosineDecay(peak_learning_rate=2.0, warmup_steps=2, total_steps=6)
    weight = tf.Variable([3.0, -4.0])
    optimizer = LARS(schedule, momentum=0.0, weight_decay=0.0, eeta=0.5)
    expected = np.array([3.0, -4.0])
    for step in range(4):
        gradient = np.array([1.0, 2.0]) * (step + 1)
        optimizer.apply_gradients([(tf.constant(gradient, tf.float32), weight)])
        warmup_rate = 2.0 * step / 2
        rate = warmup_rate if step < 2 else 2.0 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 4))
        trust = 0.5 * np.linalg.norm(expected) / np.linalg.norm(gradient)
        expected = expected - rate * trust * gradient
        # Bound: float32 2-element norms, a cosine and an update per step, ~10 eps each, 4 steps.
        np.testing.assert_allclose(weight.numpy(), expected, rtol=1e-5)


def test_lars_checkpoint_restores_momentum_and_iterations(tmp_path) -> None:
    rng = np.random.default_rng(2)
    initial = rng.normal(size=(3, 3)).astype(np.float32)
    gradients = [tf.constant(rng.normal(size=(3, 3)), tf.float32) for _ in range(3)]

    def run(steps, variable, optimizer):
        for gradient in steps:
            optimizer.apply_gradients([(gradient, variable)])

    reference = tf.Variable(initial)
    run(gradients, reference, LARS(0.3, weight_decay=1e-3, eeta=0.1))

    first = tf.Variable(initial)
    first_optimizer = LARS(0.3, weight_decay=1e-3, eeta=0.1)
    run(gradients[:2], first, first_optimizer)
    path = tf.train.Checkpoint(weight=first, optimizer=first_optimizer).save(tmp_path / "ckpt")

    restored = tf.Variable(np.zeros((3, 3), np.float32))
    restored_optimizer = LARS(0.3, weight_decay=1e-3, eeta=0.1)
    tf.train.Checkpoint(weight=restored, optimizer=restored_optimizer).restore(
        path
    ).assert_existing_objects_matched()
    restored_optimizer.build([restored])
    # Exact: a checkpoint holds the very float32 values.
    np.testing.assert_array_equal(
        restored_optimizer.momentums[0].numpy(), first_optimizer.momentums[0].numpy()
    )
    assert int(restored_optimizer.iterations.numpy()) == 2
    run(gradients[2:], restored, restored_optimizer)
    # Exact: the same float32 operations on the same values in the same process.
    np.testing.assert_array_equal(restored.numpy(), reference.numpy())


def test_lars_config_round_trip_keeps_hyperparameters() -> None:
    schedule = WarmUpAndCosineDecay(peak_learning_rate=1.5, warmup_steps=3, total_steps=9)
    optimizer = LARS(schedule, momentum=0.8, weight_decay=1e-4, eeta=0.002, nesterov=True)
    clone = LARS.from_config(optimizer.get_config())
    assert (clone.momentum, clone.weight_decay, clone.eeta, clone.nesterov) == (
        0.8,
        1e-4,
        0.002,
        True,
    )
    assert isinstance(clone._learning_rate, WarmUpAndCosineDecay)
    assert clone._learning_rate.get_config() == schedule.get_config()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"momentum": 1.0}, "momentum"),
        ({"eeta": 0.0}, "eeta"),
        ({"weight_decay": -1e-6}, "weight_decay"),
        ({"excluded_variables": [tf.constant(1.0)]}, "not a tf.Variable"),
    ],
)
def test_lars_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LARS(0.1, **kwargs)


def test_variable_key_sees_through_mixed_precision_wrappers() -> None:
    layer = keras.layers.Dense(2, dtype="mixed_bfloat16")
    layer.build((None, 3))
    assert type(layer.kernel).__name__ == "AutoCastVariable"
    optimizer = LARS(0.1, excluded_variables=[layer.bias])
    assert variable_key(layer.kernel) == variable_key(layer.kernel._variable)
    assert optimizer.is_excluded(layer.bias._variable)
    assert not optimizer.is_excluded(layer.kernel)


def test_build_optimizer_makes_each_kind() -> None:
    excluded = tf.Variable([1.0])
    lars = build_optimizer(
        OptimConfig(optimizer="lars", momentum=0.8, nesterov=True, eeta=0.01, weight_decay=1e-5),
        0.2,
        [excluded],
    )
    assert isinstance(lars, LARS)
    assert (lars.momentum, lars.nesterov, lars.eeta, lars.weight_decay) == (0.8, True, 0.01, 1e-5)
    assert lars.is_excluded(excluded)

    momentum = build_optimizer(OptimConfig(optimizer="momentum", momentum=0.7), 0.2)
    assert isinstance(momentum, keras.optimizers.SGD)
    assert (momentum.momentum, momentum.nesterov) == (0.7, True)

    adam = build_optimizer(OptimConfig(optimizer="adam"), 0.01)
    assert isinstance(adam, keras.optimizers.Adam)
    np.testing.assert_allclose(adam.learning_rate.numpy(), 0.01)  # bound: float32(0.01), 1e-7


def test_weight_decay_loss_sums_l2_over_non_excluded_variables() -> None:
    rng = np.random.default_rng(3)
    kernel = tf.Variable(rng.normal(size=(3, 2)).astype(np.float32), name="kernel")
    misleading = tf.Variable(rng.normal(size=(2,)).astype(np.float32), name="batch_normalization")
    gamma = tf.Variable(rng.normal(size=(2,)).astype(np.float32), name="gamma")
    expected = 1e-3 * 0.5 * (np.sum(kernel.numpy() ** 2) + np.sum(misleading.numpy() ** 2))

    loss = weight_decay_loss([kernel, misleading, gamma], 1e-3, excluded_variables=[gamma])
    # Bound: 8 positive squares (each rounded), summed, times 1e-3 and 0.5: 10 roundings of
    # positive terms, reduction_bound(10, 1) relative.
    np.testing.assert_allclose(loss.numpy(), expected, rtol=reduction_bound(10, 1.0))
    assert weight_decay_loss([gamma], 1e-3, [gamma]).numpy() == 0.0
    assert weight_decay_loss([kernel], 0.0).numpy() == 0.0
    with pytest.raises(ValueError, match="weight_decay"):
        weight_decay_loss([kernel], -1.0)


def test_weight_decay_loss_gradient_is_decay_times_weight() -> None:
    kernel = tf.Variable([[1.0, -2.0], [0.5, 3.0]])
    with tf.GradientTape() as tape:
        loss = weight_decay_loss([kernel], 0.1)
    # Bound: one float32 product each side (rel eps/2, within the default rtol 1e-7).
    np.testing.assert_allclose(tape.gradient(loss, kernel).numpy(), 0.1 * kernel.numpy())


# ------------------------------------------------------------------ two replicas == one device


def test_lars_steps_and_checkpoint_restore_match_single_device(
    isolated_two_replica_strategy, one_device_strategy, tmp_path
) -> None:
    first_views, later_views = [two_views(20)], [two_views(21), two_views(22)]

    def make(strategy):
        with strategy.scope():
            model = tiny_model()
            optimizer = LARS(
                2.0,
                momentum=0.9,
                weight_decay=1e-2,
                eeta=0.01,
                excluded_variables=excluded_from_decay(model),
            )
        return model, optimizer

    results = {}
    for label, strategy in (
        ("single", one_device_strategy),
        ("mirrored", isolated_two_replica_strategy),
    ):
        model, optimizer = make(strategy)
        first_losses = run_steps(strategy, model, optimizer, first_views)
        saved = tf.train.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / label)

        restored_model, restored_optimizer = make(strategy)
        tf.train.Checkpoint(model=restored_model, optimizer=restored_optimizer).restore(
            saved
        ).assert_existing_objects_matched()
        later_losses = run_steps(strategy, restored_model, restored_optimizer, later_views)

        assert int(restored_optimizer.iterations.numpy()) == 3
        results[label] = (first_losses + later_losses, restored_model)

    uninterrupted_model, uninterrupted_optimizer = make(one_device_strategy)
    uninterrupted_losses = run_steps(
        one_device_strategy, uninterrupted_model, uninterrupted_optimizer, first_views + later_views
    )
    # The same three steps on reordered batches measure the round-off spread (tests/tolerances.py).
    reordered_model, reordered_optimizer = make(one_device_strategy)
    reordered_losses = run_steps(
        one_device_strategy,
        reordered_model,
        reordered_optimizer,
        reordered(first_views + later_views),
    )

    single_losses = np.array(results["single"][0])
    spread = float(np.max(np.abs(single_losses - reordered_losses)))
    atol = drift_tolerance(spread, 3, float(np.max(np.abs(single_losses))))
    np.testing.assert_allclose(results["mirrored"][0], single_losses, rtol=0, atol=atol)
    assert_same_weights(results["single"][1], results["mirrored"][1], reordered_model, steps=3)
    # Exact: a restored checkpoint holds the very float32 values, and the same device runs the
    # same kernels on them, so resuming changes no bit.
    np.testing.assert_array_equal(single_losses, uninterrupted_losses)
    for resumed, uninterrupted in zip(
        results["single"][1].weights, uninterrupted_model.weights, strict=True
    ):
        np.testing.assert_array_equal(resumed.numpy(), uninterrupted.numpy(), err_msg=resumed.name)
