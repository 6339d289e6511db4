"""Two MirroredStrategy replicas against one device with the whole batch, for the equivalence
tests of the objectives under distribution (tests/test_losses.py, tests/test_lars.py).

The global batch holds ``IMAGES`` images with two views each. A replica's local batch is
``concat([view1[slice], view2[slice]])`` for its share of the images; the single device sees
``concat([view1, view2])``. With negatives gathered across replicas and synchronised batch norm,
loss, gradients and updated weights must agree. The two-replica strategy of these tests is the
``isolated_two_replica_strategy`` fixture of tests/conftest.py.

"Agree" is measured on the machine running the test (tests/tolerances.py): the single device
trains a second time on the same batches with their images in another order (:func:`reordered`;
NT-Xent and batch norm are invariant under it, the summation order is not), and the two-replica
weights must be within :data:`tolerances.SPREAD_MULTIPLE` times that spread of the one-device
weights.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tf_keras as keras
from tolerances import drift_tolerance

from tf_simclr.objectives import contrastive_loss

TEMPERATURE = 0.5
IMAGES = 8  # G, the global number of images (two views each)
SHAPE = (6, 6, 3)


def two_views(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views of ``IMAGES`` random images: the second is the first plus clipped noise."""
    rng = np.random.default_rng(seed)
    view1 = rng.uniform(size=(IMAGES, *SHAPE)).astype(np.float32)
    view2 = np.clip(view1 + 0.3 * rng.normal(size=view1.shape), 0, 1).astype(np.float32)
    return view1, view2


def reordered(views_list: list[tuple[np.ndarray, np.ndarray]]) -> list[tuple[np.ndarray, ...]]:
    """The same batches with their images in another order (the same order for both views)."""
    order = np.random.default_rng(7).permutation(IMAGES)
    return [(view1[order], view2[order]) for view1, view2 in views_list]


def local_batches(view1: np.ndarray, view2: np.ndarray, replicas: int) -> list[np.ndarray]:
    per_replica = IMAGES // replicas
    return [
        np.concatenate([view1[slot], view2[slot]])
        for slot in (slice(r * per_replica, (r + 1) * per_replica) for r in range(replicas))
    ]


def distribute(strategy: tf.distribute.Strategy, batches: list[np.ndarray]):
    return strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(batches[context.replica_id_in_sync_group])
    )


def initial_weights() -> list[np.ndarray]:
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


def tiny_model() -> keras.Model:
    """conv + synchronised batch norm + dense: enough to exercise cross-replica gradients."""
    inputs = keras.Input(SHAPE)
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(synchronized=True, momentum=0.9, name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5, name="dense")(x)
    model = keras.Model(inputs, outputs)
    model.set_weights(initial_weights())
    return model


def excluded_from_decay(model: keras.Model) -> list[tf.Variable]:
    """Batch-norm parameters and biases: the variables LARS neither decays nor adapts."""
    bn = model.get_layer("bn")
    return [bn.gamma, bn.beta, model.get_layer("conv").bias, model.get_layer("dense").bias]


def make_step(strategy: tf.distribute.Strategy, model: keras.Model, optimizer) -> tf.function:
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


def run_steps(strategy, model, optimizer, views_list) -> list[float]:
    """One step of :func:`make_step` per ``(view1, view2)`` pair; the mean loss of each."""
    step = make_step(strategy, model, optimizer)
    replicas = strategy.num_replicas_in_sync
    return [
        float(step(distribute(strategy, local_batches(*pair, replicas))).numpy())
        for pair in views_list
    ]


def assert_same_weights(
    a: keras.Model, b: keras.Model, reordered_a: keras.Model, steps: int
) -> None:
    """``b``'s weights equal ``a``'s within 10x the round-off spread between ``a`` and
    ``reordered_a``, ``a``'s training on :func:`reordered` batches (tests/tolerances.py)."""
    spread = max(
        float(np.max(np.abs(x.numpy() - y.numpy())))
        for x, y in zip(a.weights, reordered_a.weights, strict=True)
    )
    magnitude = max(float(np.max(np.abs(x.numpy()))) for x in a.weights)
    atol = drift_tolerance(spread, steps, magnitude)
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), rtol=0, atol=atol, err_msg=x.name)
