"""A training loop with a closed-form answer, for the loop's tests: a linear regression whose SGD
trajectory NumPy computes exactly, driven through :func:`tf_simclr.training.loop.train`."""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints
from tf_simclr.training import loop

DIM, BATCH, LEARNING_RATE = 3, 4, 0.05
TRUE_WEIGHTS = np.array([[1.0], [-2.0], [0.5]], np.float32)


def regression_batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The batch of 1-based training step ``step`` (a pure function of the step)."""
    x = np.random.default_rng(step).normal(size=(BATCH, DIM)).astype(np.float32)
    return x, x @ TRUE_WEIGHTS


def sgd_reference(steps: int) -> np.ndarray:
    weights = np.zeros((DIM, 1), np.float64)
    for step in range(1, steps + 1):
        x, y = regression_batch(step)
        weights -= LEARNING_RATE * 2.0 / BATCH * x.T @ (x @ weights - y)
    return weights


def regression_setup(strategy, poison_step: int = 0):
    """Model, optimizer, step functions and an iterator factory (steps counted from 1)."""
    with strategy.scope():
        model = keras.Sequential(
            [keras.layers.Dense(1, use_bias=False, kernel_initializer="zeros")]
        )
        model.build((None, DIM))
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        optimizer.build(model.trainable_variables)

    def compute(batch):
        error = model(batch["x"], training=True) - batch["y"]
        loss = tf.reduce_mean(tf.square(error))
        return loss, {"loss": loss}

    functions = loop.StepFunctions(
        compute=compute,
        variables=lambda: model.trainable_variables,
        learning_rate=lambda step: tf.constant(LEARNING_RATE),
    )
    factory_calls = []

    def iterator_factory(start_step: int):
        factory_calls.append(start_step)
        batches = [regression_batch(step) for step in range(start_step + 1, start_step + 40)]
        x = np.concatenate([b[0] for b in batches])
        y = np.concatenate([b[1] for b in batches])
        if poison_step:
            y[(poison_step - start_step - 1) * BATCH] = np.nan
        dataset = tf.data.Dataset.from_tensor_slices({"x": x, "y": y}).batch(BATCH)
        return iter(strategy.experimental_distribute_dataset(dataset))

    return model, optimizer, functions, iterator_factory, factory_calls


def settings(model_dir, total_steps, steps_per_loop=3, checkpoint_steps=2):
    """The loop's settings, resuming from the newest usable checkpoint as the runner does."""
    return loop.LoopSettings(
        model_dir=str(model_dir),
        total_steps=total_steps,
        steps_per_loop=steps_per_loop,
        checkpoint_steps=checkpoint_steps,
        keep_checkpoint_max=10,
        global_batch_size=BATCH,
        num_examples=10 * BATCH,
        resume_from=checkpoints.newest_usable_checkpoint(str(model_dir)),
    )


def ckpt_steps(model_dir) -> list[int]:
    state = tf.train.get_checkpoint_state(os.path.join(model_dir, "ckpt"))
    if state is None:
        return []
    return [int(path.rsplit("-", 1)[1]) for path in state.all_model_checkpoint_paths]
