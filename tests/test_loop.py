"""Unit tests of the training loop (tf_simclr.training.loop), in process.

The loop is driven with a linear regression whose SGD trajectory NumPy computes exactly, so
checkpoint boundaries, resumption, the non-finite stop and the per-replica loss scaling all have
a closed-form answer (the non-chief worker's scratch folder: tests/test_strategy.py). The runner's
bookkeeping around the loop (issue 28): epochs counted in images seen, a batch larger than the
training set capped, checkpoints of an epoch cadence kept apart on small data; the last test
checks the issue's short run on small data through the binary.
"""

from __future__ import annotations

import dataclasses
import logging
import re

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from binary_runs import checkpoint_steps, read_events, read_json, run_binary
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
from tf_simclr.config import (
    MIN_STEPS_BETWEEN_CHECKPOINTS,
    AugmentConfig,
    DataConfig,
    LossConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from tf_simclr.training import loop, runner


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
    # Bound: float32 SGD steps of a small linear regression (tests/regression_loop.py) against
    # float64 NumPy, a few eps per step; rel 1e-5 (also below).
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(5), rtol=1e-5)
    assert set(scalars) == {"loss", "images_per_second", "learning_rate", "eval/probe"}
    events = read_events(tmp_path / "train")
    assert events.steps("train/loss") == [2, 4, 5]
    assert events.steps("eval/probe") == [0, 2, 4, 5]
    # Bound: float32(LEARNING_RATE), rel eps/2 (pytest.approx's 1e-6).
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
        # Bound: float32 losses of a few steps of the regression vs float64, a few eps each.
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
    # Bound: float32 SGD of the regression vs float64 NumPy, a few eps per step (rel 1e-5).
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
    # Bound: as above; two replicas add one more rounding (the all-reduce) per step.
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(4), rtol=1e-5)


# ------------------------------------------- epochs, batch and checkpoints of a run (issue 28)


def run_config(tmp_path, count: int, **train: object) -> RunConfig:
    """A tiny pretraining config on ``count`` synthetic training images (nothing evaluated);
    ``train`` sets TrainConfig fields."""
    return RunConfig(
        model=ModelConfig(resnet_depth=18, width_multiplier=0.125, cifar_stem=True),
        train=TrainConfig(model_dir=str(tmp_path / "run"), knn_monitor=False, **train),
        optim=OptimConfig(),
        loss=LossConfig(),
        augment=AugmentConfig(image_size=16),
        data=DataConfig(dataset=f"synthetic:size=16,count={count},classes=4,test_count=8"),
    )


def start_line_of(caplog) -> str:
    (line,) = [r.getMessage() for r in caplog.records if "steps per epoch" in r.getMessage()]
    return line


def test_the_epoch_counts_images_seen_when_the_data_is_not_a_multiple_of_the_batch(
    tmp_path, caplog
):
    strategy = tf.distribute.get_strategy()
    # flags/folder/pretrain.flags on 180 images: 100 epochs of 180 at batch 128 are 140.6 steps.
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        folder = runner.PhaseRunner(
            run_config(tmp_path, 180, train_batch_size=128, train_epochs=100, checkpoint_epochs=10),
            strategy,
        )
    assert folder.total_steps == 141
    assert start_line_of(caplog).endswith(
        "141 steps of batch 128 (100.27 epochs), 1.41 steps per epoch"
    )
    folder_settings = folder.loop_settings(resume_from=None)
    assert folder_settings.epoch(141) == pytest.approx(141 * 128 / 180)  # bound: float64 ops
    assert folder_settings.checkpoint_steps == 14  # 10 epochs = 14.06 steps
    # flags/fashion_mnist/supervised_1pct.flags: 120 epochs of 600 images at batch 64 are
    # exactly 1125 steps, and the last one ends epoch 120 (it said 125.11).
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        demo = runner.PhaseRunner(
            run_config(tmp_path, 600, train_batch_size=64, train_epochs=120), strategy
        )
    assert demo.total_steps == 1125
    assert start_line_of(caplog).endswith(
        "1125 steps of batch 64 (120 epochs), 9.38 steps per epoch"
    )
    assert demo.loop_settings(resume_from=None).epoch(1125) == pytest.approx(120.0)  # float64


def test_progress_lines_give_the_epoch_of_the_images_seen(tmp_path, caplog):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    # 6 training examples, batches of 4: step s has seen 4 s images, 2 s / 3 epochs.
    six = dataclasses.replace(settings(tmp_path, 6, steps_per_loop=2), num_examples=6)
    six = dataclasses.replace(six, log_every_steps=3)
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        loop.train(strategy, model, optimizer, functions, factory, six)
    epochs = [
        re.match(r"step (\d+)/6 epoch ([\d.]+) ", record.getMessage()) for record in caplog.records
    ]
    assert [(m[1], m[2]) for m in epochs if m] == [("3", "2.00"), ("6", "4.00")]


def test_a_batch_larger_than_the_training_set_is_capped_with_one_warning(tmp_path, caplog):
    assert runner.capped_batch_size(512, 180, replicas=1) == 180
    assert runner.capped_batch_size(512, 45, replicas=2) == 44  # still splits over 2 replicas
    assert runner.capped_batch_size(64, 600, replicas=2) == 64
    assert runner.capped_batch_size(44, 45, replicas=4) == 44
    with pytest.raises(ValueError, match=r"1 training example.* 2 replicas"):
        runner.capped_batch_size(512, 1, replicas=2)
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        capped = runner.PhaseRunner(
            run_config(tmp_path, 40, train_batch_size=512, train_steps=5),
            tf.distribute.get_strategy(),
        )
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "--train_batch_size=512" in warnings[0] and "40 training examples" in warnings[0]
    assert capped.config.train.train_batch_size == 40  # what config.json records
    assert capped.phase.config.train.train_batch_size == 40
    assert start_line_of(caplog).endswith("5 steps of batch 40 (5 epochs), 1 steps per epoch")
    assert capped.loop_settings(resume_from=None).global_batch_size == 40
    # A memory of negatives takes one projection per image of each step: 512 divided 1024, the
    # capped batch does not.
    with_memory = dataclasses.replace(
        run_config(tmp_path, 40, train_batch_size=512, train_steps=5),
        memory=MemoryConfig(memory_size=1024),
    )
    with pytest.raises(ValueError, match=r"capped to 40 .* --memory_size=1024"):
        runner.PhaseRunner(with_memory, tf.distribute.get_strategy())


def test_the_checkpoint_cadence_of_epochs_keeps_saves_apart():
    def interval(examples: int, batch: int, **train: object) -> int:
        return runner.checkpoint_interval(TrainConfig(model_dir="x", **train), examples, batch)

    minimum = MIN_STEPS_BETWEEN_CHECKPOINTS
    assert interval(180, 180) == minimum  # 1 epoch is 1 step: not a save per step
    assert interval(180, 128, checkpoint_epochs=10) == 14
    assert interval(60000, 256) == 234  # fashion_mnist/pretrain.flags: every epoch
    assert interval(180, 180, checkpoint_steps=1) == 1  # an explicit cadence is kept
    assert interval(180, 180, checkpoint_steps=3, checkpoint_epochs=10) == 3


@pytest.mark.slow
def test_a_short_run_on_a_small_dataset_caps_its_batch_and_saves_once(tmp_path):
    # The command on a 40-image dataset: the default batch (512) and cadence (every
    # epoch, here a step).
    model_dir = tmp_path / "run"
    finished = run_binary(
        model_dir,
        "--train_mode=finetune",
        "--dataset=synthetic:size=32,count=40,classes=4",
        "--image_size=32",
        "--resnet_depth=18",
        "--width_multiplier=0.25",
        "--train_steps=5",
        "--noexport_hub",
    )
    assert finished.returncode == 0, finished.tail()
    capped = [line for line in finished.output.splitlines() if "--train_batch_size=512" in line]
    assert len(capped) == 1, finished.output
    assert "40 training examples" in capped[0]
    assert checkpoint_steps(model_dir) == [5]
    assert read_json(model_dir / "config.json")["train"]["train_batch_size"] == 40
    # The learning rate is scaled for the batch of 40: 0.3 * 40 / 256 at the peak, half of it
    # at step 5 of 10 warm-up steps (10 epochs of one step each).
    learning_rate = read_json(model_dir / "result.json")["train"]["learning_rate"]
    # Bound: the float32 schedule, a few roundings (rel 1e-5).
    assert learning_rate == pytest.approx(0.3 * 40 / 256 * 5 / 10, rel=1e-5)
