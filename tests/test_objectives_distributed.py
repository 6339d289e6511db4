"""Distribution equivalence: two MirroredStrategy replicas == one device with the whole batch.

The global batch holds ``G`` images with two views each. A replica's local batch is
``concat([view1[slice], view2[slice]])`` for its half of the images; the single device sees
``concat([view1, view2])``. With negatives gathered across replicas and synchronised batch norm,
loss, gradients and updated weights must agree.

Every MirroredStrategy instance numbers its collective ops from the same group and instance keys,
and the runtime caches an instance's shape and type for the whole process: two strategies whose
collectives differ collide ("Collective ops is aborted by: Shape mismatch in the collective
instance 100") and poison every later collective. Each test here therefore builds its two-replica
strategy in a collective group of its own (``_collective_key_base``, TF's hook for tests).
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras

from tf_simclr.objectives import LARS, contrastive_loss

TEMPERATURE = 0.5
IMAGES = 8  # G, the global number of images (two views each)
SHAPE = (6, 6, 3)
_COLLECTIVE_KEY_BASES = itertools.count(start=1_000_000, step=10_000)


@pytest.fixture
def mirrored_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPUs, in a collective group no other test uses."""

    class IsolatedMirroredStrategy(tf.distribute.MirroredStrategy):
        _collective_key_base = next(_COLLECTIVE_KEY_BASES)

    return IsolatedMirroredStrategy(["/cpu:0", "/cpu:1"])


def _views(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    view1 = rng.uniform(size=(IMAGES, *SHAPE)).astype(np.float32)
    view2 = np.clip(view1 + 0.3 * rng.normal(size=view1.shape), 0, 1).astype(np.float32)
    return view1, view2


def _local_batches(view1: np.ndarray, view2: np.ndarray, replicas: int) -> list[np.ndarray]:
    per_replica = IMAGES // replicas
    return [
        np.concatenate([view1[slot], view2[slot]])
        for slot in (slice(r * per_replica, (r + 1) * per_replica) for r in range(replicas))
    ]


def _distribute(strategy: tf.distribute.Strategy, batches: list[np.ndarray]):
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(batches[context.replica_id_in_sync_group])
    )


def _initial_weights() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        0.3 * rng.normal(size=(3, 3, 3, 4)),  # conv kernel
        0.1 * rng.normal(size=(4,)),  # conv bias
        1.0 + 0.1 * rng.normal(size=(4,)),  # bn gamma
        0.1 * rng.normal(size=(4,)),  # bn beta
        np.zeros(4),  # bn moving mean
        np.ones(4),  # bn moving variance
        0.5 * rng.normal(size=(4, 5)),  # dense kernel
        0.1 * rng.normal(size=(5,)),  # dense bias
    ]


def _tiny_model() -> keras.Model:
    """conv + synchronised batch norm + dense: enough to exercise cross-replica gradients."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=True, momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="dense")(x)
    model = keras.Model(inputs, outputs)
    model.set_weights(_initial_weights())
    return model


def _excluded(model: keras.Model) -> list[tf.Variable]:
    bn = model.get_layer("bn")
    return [bn.gamma, bn.beta, model.get_layer("conv").bias, model.get_layer("dense").bias]


def _make_step(strategy: tf.distribute.Strategy, model: keras.Model, optimizer) -> tf.function:
    replicas = strategy.num_replicas_in_sync

    def replica_step(images: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            hidden = model(images, training=True)
            loss, _, _ = contrastive_loss(hidden, temperature=TEMPERATURE, strategy=strategy)
            scaled = loss / replicas  # gradients are summed across replicas
        gradients = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss

    @tf.function
    def step(images):
        losses = strategy.run(replica_step, args=(images,))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    return step


def _run(strategy, model, optimizer, views_list) -> list[float]:
    step = _make_step(strategy, model, optimizer)
    replicas = strategy.num_replicas_in_sync
    return [
        float(step(_distribute(strategy, _local_batches(*views, replicas))).numpy())
        for views in views_list
    ]


def _assert_same_weights(a: keras.Model, b: keras.Model) -> None:
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=1e-5, atol=1e-5, err_msg=x.name)


def test_cross_replica_nt_xent_and_its_gradient_equal_single_device(mirrored_strategy) -> None:
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2 * IMAGES, 7)).astype(np.float32)
    view1, view2 = hidden[:IMAGES], hidden[IMAGES:]

    variable = tf.Variable(hidden)
    with tf.GradientTape() as tape:
        loss, logits, labels = contrastive_loss(variable, temperature=TEMPERATURE)
    gradient = tape.gradient(loss, variable).numpy()

    strategy = mirrored_strategy

    def replica_fn(local):
        with tf.GradientTape() as local_tape:
            local_tape.watch(local)
            result = contrastive_loss(local, temperature=TEMPERATURE, strategy=strategy)
            scaled = result[0] / strategy.num_replicas_in_sync
        return (*result, local_tape.gradient(scaled, local))

    per_replica = strategy.run(
        tf.function(replica_fn),
        args=(_distribute(strategy, _local_batches(view1, view2, 2)),),
    )
    local = [strategy.experimental_local_results(value) for value in per_replica]
    half = IMAGES // 2
    np.testing.assert_allclose(np.mean([x.numpy() for x in local[0]]), loss.numpy(), rtol=1e-5)
    for replica in range(2):
        rows = slice(replica * half, (replica + 1) * half)
        np.testing.assert_allclose(local[1][replica].numpy(), logits.numpy()[rows], atol=1e-5)
        np.testing.assert_array_equal(local[2][replica].numpy(), labels.numpy()[rows])
        # The gathered negatives must send their gradient back to the replica that owns them.
        expected_gradient = np.concatenate(
            [gradient[rows], gradient[IMAGES + replica * half : IMAGES + (replica + 1) * half]]
        )
        np.testing.assert_allclose(local[3][replica].numpy(), expected_gradient, atol=1e-6)


def test_nt_xent_with_strategy_outside_strategy_run_raises(mirrored_strategy) -> None:
    with (
        mirrored_strategy.scope(),
        pytest.raises(ValueError, match=r"inside strategy\.run"),
    ):
        contrastive_loss(tf.ones((4, 3)), strategy=mirrored_strategy)


def test_sgd_step_with_sync_bn_matches_single_device(
    mirrored_strategy, one_device_strategy
) -> None:
    views = [_views(10)]
    models, losses = [], []
    for strategy in (one_device_strategy, mirrored_strategy):
        with strategy.scope():
            model = _tiny_model()
            optimizer = keras.optimizers.SGD(0.5)
        losses.append(_run(strategy, model, optimizer, views))
        models.append(model)

    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    _assert_same_weights(*models)
    assert not np.allclose(models[0].get_weights()[0], _initial_weights()[0], atol=1e-3)


def test_lars_steps_and_checkpoint_restore_match_single_device(
    mirrored_strategy, one_device_strategy, tmp_path
) -> None:
    first_views, later_views = [_views(20)], [_views(21), _views(22)]

    def make(strategy):
        with strategy.scope():
            model = _tiny_model()
            optimizer = LARS(
                2.0, momentum=0.9, weight_decay=1e-2, eeta=0.01, excluded_variables=_excluded(model)
            )
        return model, optimizer

    results = {}
    for label, strategy in (("single", one_device_strategy), ("mirrored", mirrored_strategy)):
        model, optimizer = make(strategy)
        first_losses = _run(strategy, model, optimizer, first_views)
        saved = tf.train.Checkpoint(model=model, optimizer=optimizer).save(tmp_path / label)

        restored_model, restored_optimizer = make(strategy)
        tf.train.Checkpoint(model=restored_model, optimizer=restored_optimizer).restore(
            saved
        ).assert_existing_objects_matched()
        later_losses = _run(strategy, restored_model, restored_optimizer, later_views)

        assert int(restored_optimizer.iterations.numpy()) == 3
        results[label] = (first_losses + later_losses, restored_model)

    uninterrupted_model, uninterrupted_optimizer = make(one_device_strategy)
    uninterrupted_losses = _run(
        one_device_strategy, uninterrupted_model, uninterrupted_optimizer, first_views + later_views
    )

    np.testing.assert_allclose(results["single"][0], results["mirrored"][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(results["single"][0], uninterrupted_losses, rtol=1e-5, atol=1e-5)
    _assert_same_weights(results["single"][1], results["mirrored"][1])
    _assert_same_weights(results["single"][1], uninterrupted_model)
