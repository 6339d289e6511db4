"""Unit tests of the training loop (tf_simclr.training.loop), in process.

The loop is driven with a linear regression whose SGD trajectory NumPy computes exactly, so
checkpoint boundaries, resumption, the non-finite stop and the per-replica loss scaling all have
a closed-form answer (the non-chief worker's scratch folder: tests/test_strategy.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from binary_runs import read_events
from regression_loop import (
    BATCH,
    DIM,
    LEARNING_RATE,
    ckpt_steps,
    regression_batch,
    regression_setup,
    settings,
    sgd_reference,
)

from tf_simclr import checkpoints
from tf_simclr.training import loop


def test_loop_trains_checkpoints_logs_and_resumes(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    seen = []
    functions.on_checkpoint = lambda step: seen.append(step) or {"eval/probe": float(step)}
    scalars = loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 5))
    assert calls == [0]
    assert int(optimizer.iterations) == 5
    # The monitor sees the initial model (step 0); loops stop at checkpoint boundaries (2, 4)
    # and at the end (5).
    assert seen == [0, 2, 4, 5]
    assert ckpt_steps(tmp_path) == [2, 4, 5]
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(5), rtol=1e-5)
    assert set(scalars) == {"loss", "images_per_second", "learning_rate", "eval/probe"}
    events = read_events(tmp_path / "train")
    assert events.steps("train/loss") == [2, 4, 5]
    assert events.steps("eval/probe") == [0, 2, 4, 5]
    assert events.values("learning_rate") == pytest.approx([LEARNING_RATE] * 3)
    assert "train/learning_rate" not in events.scalars

    # A new process (fresh model and optimizer) continues from step 5 to 7; a resumed run does
    # not measure step 0 again.
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    seen.clear()
    functions.on_checkpoint = lambda step: seen.append(step) or {"eval/probe": float(step)}
    loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 7))
    assert seen == [6, 7]
    assert calls == [5]
    assert ckpt_steps(tmp_path) == [2, 4, 5, 6, 7]
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(7), rtol=1e-5)


def test_train_function_traces_the_step_once_and_averages_its_scalars():
    strategy = tf.distribute.get_strategy()
    _, optimizer, functions, factory, _ = regression_setup(strategy)
    traces = []
    compute = functions.compute
    functions.compute = lambda batch: traces.append(1) or compute(batch)
    train_steps = loop.TrainFunction(strategy, optimizer, functions)
    iterator = factory(0)
    weights = np.zeros((DIM, 1), np.float64)
    for steps in (3, 2):  # a new step count is a new tensor value, not a new trace
        losses = []
        for _ in range(steps):
            x, y = regression_batch(int(optimizer.iterations) + len(losses) + 1)
            losses.append(np.mean((x @ weights - y) ** 2))
            weights -= LEARNING_RATE * 2.0 / BATCH * x.T @ (x @ weights - y)
        scalars = train_steps(iterator, steps)
        assert scalars == {"loss": pytest.approx(np.mean(losses), rel=1e-5)}
    assert len(traces) == 1


def test_loop_stops_on_a_non_finite_loss_without_saving(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy, poison_step=3)
    with pytest.raises(loop.NonFiniteLossError, match="step 3"):
        loop.train(
            strategy, model, optimizer, functions, factory, settings(tmp_path, 6, steps_per_loop=1)
        )
    assert ckpt_steps(tmp_path) == [2]
    assert read_events(tmp_path / "train").steps("train/loss") == [1, 2]
    restored = keras.Sequential([keras.layers.Dense(1, use_bias=False)])
    restored.build((None, DIM))
    tf.train.Checkpoint(model=restored).restore(
        tf.train.latest_checkpoint(str(tmp_path / "ckpt"))
    ).expect_partial()
    np.testing.assert_allclose(restored.get_weights()[0], sgd_reference(2), rtol=1e-5)


@pytest.mark.parametrize("holder", ["model", "checkpoint_object"])
def test_loop_never_saves_non_finite_weights(tmp_path, holder):
    # The update of step 4 (a checkpoint boundary) makes one of the 3 float variables (kernel,
    # checkpointed counter, SGD learning rate) infinite while every loss so far was finite:
    # step 4 must not be saved, and the error names the last finite checkpoint.
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    extra = tf.Module()
    extra.counter = tf.Variable(0.0)
    functions.checkpoint_objects["extra"] = extra
    target = model.trainable_variables[0] if holder == "model" else extra.counter

    def blow_up_at_step_4(batch):
        target.assign_add(tf.where(optimizer.iterations == 4, np.inf, 0.0) * tf.ones_like(target))

    functions.after_step = blow_up_at_step_4
    with pytest.raises(loop.NonFiniteLossError) as stopped:
        loop.train(
            strategy, model, optimizer, functions, factory, settings(tmp_path, 6, steps_per_loop=1)
        )
    assert "non-finite weights after step 4: 1 of 3 variables" in str(stopped.value)
    assert target.name in str(stopped.value)
    assert f"{tmp_path / 'ckpt' / 'ckpt-2'}, is the last finite one" in str(stopped.value)
    assert ckpt_steps(tmp_path) == [2]
    assert checkpoints.newest_usable_checkpoint(str(tmp_path)).endswith("ckpt-2")


def test_two_replicas_follow_the_single_device_trajectory(two_replica_strategy, tmp_path):
    # Each replica's mean loss is divided by the replica count and the gradients are summed:
    # the update is the gradient of the global-batch mean, as on one device.
    model, optimizer, functions, factory, _ = regression_setup(two_replica_strategy)
    loop.train(two_replica_strategy, model, optimizer, functions, factory, settings(tmp_path, 4))
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(4), rtol=1e-5)
