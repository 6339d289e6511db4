"""Readable logs (issue 16): TensorFlow's chatter filtered without hiding real warnings, one
summary line per checkpoint restore, progress lines at their own cadence (independent of the
checkpoints), and through the binary a short log: a pretraining run on a tiny dataset (a
checkpoint and a kNN evaluation every 3 steps) with a hub export, then its resumption.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import logging as absl_logging
from binary_runs import (
    SMALL_MODEL,
    assert_succeeded,
    binary_command,
    checkpoint_steps,
    child_env,
    finish,
    read_events,
    start,
)
from regression_loop import BATCH, ckpt_steps, regression_batch, regression_setup, settings
from tensorflow.python.platform import tf_logging

from tf_simclr import checkpoints, logs
from tf_simclr.config import ModelConfig
from tf_simclr.training import evaluate, loop

# ----------------------------------------------------------------------- TensorFlow's chatter


def record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("tensorflow", level, "file.py", 1, message, None, None)


def test_drop_messages_drops_the_listed_texts_and_passes_the_rest():
    drop = logs.DropMessages(logs.SAVE_NOISE + logs.RUN_NOISE + logs.DISTRIBUTE_NOISE)
    noisy = [
        # tf.distribute's INFO lines of every traced reduction (TensorFlow 2.21's wording).
        "Collective all_reduce tensors: 73 all_reduces, num_devices = 2, group_size = 2, "
        "implementation = CommunicationImplementation.RING, num_packs = 1",
        "Collective all_reduce IndexedSlices: 1 all_reduces, num_devices =2, group_size = 2, "
        "implementation = CommunicationImplementation.AUTO",
        "Collective batch_all_gather: 1 all-gathers, num_devices = 2, group_size = 2, "
        "implementation = CommunicationImplementation.AUTO, ",
        "batch_all_reduce: 73 all-reduces with algorithm = nccl, num_packs = 1",
        "Reduce to /job:localhost/replica:0/task:0/device:CPU:0 then broadcast to "
        "('/job:localhost/replica:0/task:0/device:CPU:0',).",
        "Gather to /job:localhost/replica:0/task:0/device:CPU:0 then broadcast to "
        "('/job:localhost/replica:0/task:0/device:CPU:0', "
        "'/job:localhost/replica:0/task:0/device:CPU:1').",
        "Check health not enabled.",
        "Function `signature` contains input name(s) unknown_1, unknown_2 with unsupported "
        "characters which will be renamed to unknown_1_1 in the SavedModel.",
        "Sharding callback duration: 99 microseconds",
        "5 out of the last 5 calls to <function f at 0x1> triggered tf.function retracing.",
        "Value in checkpoint could not be found in the restored object: (root).optimizer.iter",
        "Unresolved object in checkpoint: (root).optimizer.iter",
    ]
    real = [
        "Checkpoint file not found: /runs/x/ckpt-3",
        "Could not load dynamic library 'libcudnn.so.9'",
        "Gradients do not exist for variables ['dense/kernel:0'] when minimizing the loss.",
        "Efficient allreduce is not supported for 2 IndexedSlices",
        "Efficient batch_reduce is not supported if destinations are different.",
        "MultiWorkerMirroredStrategy with cluster_spec = {'worker': ['localhost:1', "
        "'localhost:2']}, task_type = 'worker', task_id = 0, num_workers = 2",
    ]
    assert not any(drop.filter(record(message)) for message in noisy)
    assert all(drop.filter(record(message)) for message in real)


def restore_partially(tmp_path: Path, name: str) -> None:
    """Restore a checkpoint into an object lacking one of its values, without ``expect_partial``
    (TensorFlow warns when the restore's status is deleted)."""
    saved = tf.train.Checkpoint(kept=tf.Variable(1.0), dropped=tf.Variable(2.0))
    path = saved.write(str(tmp_path / name))
    status = tf.train.Checkpoint(kept=tf.Variable(0.0)).restore(path)
    del status
    gc.collect()


# As TensorFlow 2.21 logs them (signature_serialization.py through absl, polymorphic_function.py
# through tf_logging); TensorFlow logs each only a few times per process, so a test that made
# them for real would depend on the tests run before it in the session.
SIGNATURE_NAMES = (
    "Function `signature` contains input name(s) unknown_1, unknown_2 with unsupported "
    "characters which will be renamed to unknown_1_1, unknown_2_1 in the SavedModel."
)
RETRACING = (
    "5 out of the last 5 calls to <function features at 0x7f> triggered tf.function retracing. "
    "Tracing is expensive and the excessive number of tracings could be due to (1) ..."
)


def test_tensorflows_chatter_is_dropped_and_real_warnings_pass(caplog, tmp_path):
    with caplog.at_level(logging.INFO), logs.dropped(logs.SAVE_NOISE + logs.RUN_NOISE):
        absl_logging.info(SIGNATURE_NAMES)
        tf_logging.warning(RETRACING)
        restore_partially(tmp_path, "filtered")
        tf_logging.warning("a real TensorFlow warning")
        absl_logging.warning("a real absl warning")
    filtered = [record.getMessage() for record in caplog.records]
    assert filtered == ["a real TensorFlow warning", "a real absl warning"]
    assert not logging.getLogger("tensorflow").filters, "the filter outlived its block"
    caplog.clear()
    with caplog.at_level(logging.INFO):  # the restore's warnings are real
        restore_partially(tmp_path, "unfiltered")
    unfiltered = [record.getMessage() for record in caplog.records]
    assert "Value in checkpoint could not be found in the restored object: (root).dropped" in (
        unfiltered
    )


def test_the_knn_features_are_traced_once_for_all_checkpoints():
    traces = []

    def model(images: tf.Tensor, training: bool) -> dict[str, tf.Tensor]:
        traces.append(images.shape)
        return {"final_avg_pool": tf.reduce_mean(images, axis=[1, 2])}

    images = {"image": tf.zeros([10, 4, 4, 3]), "label": tf.zeros([10], tf.int32)}
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(4)  # batches of 4, 4 and 2
    features = evaluate.feature_function(model)  # what the kNN monitor makes once
    for _ in range(6):  # six checkpoints
        values, _ = evaluate.features_of(features, dataset)
    assert values.shape == (10, 3)
    assert len(traces) <= 2, traces  # no retracing per call, hence no retracing warning


# --------------------------------------------------------------------------- restore summary


def test_a_restore_is_summarised_in_one_phrase(tmp_path):
    inner = tf.Module()
    inner.kernel = tf.Variable([1.0, 2.0])
    saved = tf.train.Checkpoint(inner=inner, step=tf.Variable(3), slot=tf.Variable(0.5))
    path = saved.save(str(tmp_path / "ckpt"))  # with its save_counter, as the loop saves
    fresh = tf.Module()
    fresh.kernel = tf.Variable([0.0, 0.0])
    root = tf.train.Checkpoint(inner=fresh, step=tf.Variable(0), new=tf.Variable(7.0))
    root.restore(path).expect_partial()
    summary = checkpoints.restore_summary(root, path)
    assert summary == (
        "restored 3 variables; 1 not in the checkpoint (values set before the restore kept): new; "
        "1 in the checkpoint not used: slot"
    )
    np.testing.assert_array_equal(fresh.kernel.numpy(), [1.0, 2.0])


# ------------------------------------------------------------------------------ the cadence

PROGRESS = re.compile(r"step (\d+)/(\d+) epoch [\d.]+ loss=(\S+) lr=\S+ images/s=\S+ eta=")


def test_progress_lines_and_checkpoints_keep_their_own_cadence(tmp_path, caplog):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    every_ten = settings(tmp_path, 20, steps_per_loop=3, checkpoint_steps=10)
    every_ten = dataclasses.replace(every_ten, log_every_steps=5)
    with caplog.at_level(logging.INFO, logger="tf_simclr"):
        loop.train(strategy, model, optimizer, functions, factory, every_ten)
    lines = [PROGRESS.match(record.getMessage()) for record in caplog.records]
    progress = [(int(m[1]), int(m[2]), float(m[3])) for m in lines if m]
    assert [(step, total) for step, total, _ in progress] == [(5, 20), (10, 20), (15, 20), (20, 20)]
    assert ckpt_steps(tmp_path) == [10, 20]
    # Each line's loss is the mean over the 5 steps since the previous line (before each
    # step's update), although the tf.function calls (3 steps at most) straddle the lines.
    weights = np.zeros((3, 1))
    losses = []
    for step in range(1, 21):
        x, y = regression_batch(step)
        losses.append(np.mean((x @ weights - y) ** 2))
        weights -= functions.learning_rate(step).numpy() * 2.0 / BATCH * x.T @ (x @ weights - y)
    for index, (_, _, loss) in enumerate(progress):
        # Bound: the progress line prints 4 significant digits (rel 5e-4), plus float32 SGD
        # steps of the regression vs float64, a few eps each: rel 1e-3.
        assert loss == pytest.approx(np.mean(losses[5 * index : 5 * index + 5]), rel=1e-3)
    # TensorBoard still gets the scalars of every call.
    assert read_events(tmp_path / "train").steps("train/loss") == [3, 5, 8, 10, 13, 15, 18, 20]


def test_the_start_line_names_the_architecture():
    config = ModelConfig(
        resnet_depth=50, width_multiplier=2, sk_ratio=0.0625, num_classes=10, ft_proj_selector=1
    )
    line = logs.start_line(
        "finetune (mode train)", "data x: train: 50 images", config, "Mirrored", 2, (30, 32, 50)
    )
    assert line == (
        "finetune (mode train) | data x: train: 50 images | model ResNet-50 width 2, SK 0.0625, "
        "3-layer head to 128, 10-class supervised head on proj_head_1 | strategy Mirrored "
        "(2 replicas) | precision float32 | 30 steps of batch 32 (19.2 epochs), 1.56 steps per "
        "epoch"
    )


# --------------------------------------------------------------------------- through the binary

TINY_DATA = "synthetic:size=16,count=96,classes=4,test_count=32"
# 3 steps per epoch; a checkpoint and a kNN evaluation every 3 steps.
LOG_FLAGS = (
    "--train_mode=pretrain",
    *(flag for flag in SMALL_MODEL if not flag.startswith("--dataset=")),
    f"--dataset={TINY_DATA}",
    "--train_batch_size=32",
    "--log_every_steps=10",
    "--checkpoint_steps=3",
    "--learning_rate=0.02",
)
# What a normal run may print besides its final JSON, one pattern per kind of line.
EXPECTED_LINES = {
    "start": r"pretrain \(mode train\) \| data synthetic:\S+: train: 96 images, test: 32 images; "
    r"4 classes \(.+\) \| model ResNet-18 width 0\.125, no SK, CIFAR stem, 3-layer head to 128, "
    r"4-class supervised head on proj_head_input \| strategy \w+ \(1 replica\) \| precision "
    r"float32 \| (\d+) steps of batch 32 \([\d.]+ epochs\), 3 steps per epoch$",
    "initial kNN": r"step 0 eval/knn_top_1_accuracy=[\d.]+$",
    "progress": r"step (\d+)/\d+ epoch [\d.]+ contrast_acc=.* images/s=[\d.]+ eta=[\d:]+; "
    r"at step (\d+) eval/knn_top_1_accuracy=[\d.]+$",
    "resumed": r"resumed from (\S+): restored \d+ variables$",
    "stoppable": r"training from step (\d+) to (\d+); SIGTERM or Ctrl-C stops it within \d+ "
    r"steps?, with a checkpoint$",
    "exported": r"exported hub module to (\S+) \(encoder, projection_head, supervised_head; \d+ "
    r"variables, 14 signatures, [\d.]+ MB\)$",
}
# The chatter of TensorFlow 2.21 before issue 16: signature input names, retracing, CUDA probing,
# checkpoint writer timings, restore warnings.
NOISE = (
    "unknown_",
    "input name(s)",
    "retracing",
    "cuInit",
    "Sharding callback",
    "Value in checkpoint",
    "Unresolved object",
)


def log_lines(output: str) -> list[str]:
    """The lines before the final result JSON, each without absl's prefix."""
    lines = output.splitlines()
    lines = lines[: lines.index("{")]
    return [re.sub(r"^[IWEF]\d{4} [\d:.]+ +\d+ \S+:\d+\] ", "", line) for line in lines]


def classify(lines: list[str]) -> list[tuple[str, re.Match]]:
    """``(kind, match)`` of every line; fails on a line of no expected kind."""
    kinds = []
    for line in lines:
        found = [(kind, re.match(pattern, line)) for kind, pattern in EXPECTED_LINES.items()]
        found = [(kind, match) for kind, match in found if match]
        assert found, f"unexpected log line: {line}"
        kinds.append(found[0])
    return kinds


@pytest.mark.long
@pytest.mark.slow
def test_a_pretraining_run_and_its_resumption_log_a_few_useful_lines(tmp_path):
    model_dir = tmp_path / "run"
    env = child_env(TF_CPP_MIN_LOG_LEVEL=None)  # a user's
    runs = []
    for steps in (20, 25):
        command = binary_command(f"--model_dir={model_dir}", *LOG_FLAGS, f"--train_steps={steps}")
        runs.append(finish(start(command, tmp_path / f"run_{steps}.log", env)))
        assert_succeeded(runs[-1])
    first, second = (classify(log_lines(run.output)) for run in runs)
    for run in runs:
        lines = log_lines(run.output)
        assert len(lines) <= 6, "\n".join(lines)
        for text in NOISE:
            assert text not in "\n".join(lines), text
    assert [kind for kind, _ in first] == [
        "start",
        "initial kNN",
        "stoppable",
        "progress",
        "progress",
        "exported",
    ]
    assert first[0][1][1] == "20"
    # A progress line every 10 steps, each with the kNN of the newest checkpoint (every 3 steps).
    assert [(m[1], m[2]) for kind, m in first if kind == "progress"] == [("10", "9"), ("20", "20")]
    assert first[-1][1][1] == str(model_dir / "hub" / "20")
    assert [kind for kind, _ in second] == ["start", "resumed", "stoppable", "progress", "exported"]
    assert [(m[1], m[2]) for kind, m in first + second if kind == "stoppable"] == [
        ("0", "20"),
        ("20", "25"),
    ]
    assert second[1][1][1] == str(model_dir / "ckpt" / "ckpt-20")
    assert [(m[1], m[2]) for kind, m in second if kind == "progress"] == [("25", "25")]
    assert second[-1][1][1] == str(model_dir / "hub" / "25")
    assert sorted(path.name for path in (model_dir / "hub").iterdir()) == ["25"]  # 20 removed
    # Checkpoints kept their own cadence (every 3 steps and at each run's last step).
    assert checkpoint_steps(model_dir) == [18, 20, 21, 24, 25]


# The mirrored run: a few steps of a small model on tiny synthetic data.
REPLICA_FLAGS = (
    "--train_mode=pretrain",
    "--dataset=synthetic:size=32,count=64,classes=4",
    "--image_size=32",
    "--resnet_depth=18",
    "--width_multiplier=0.25",
    "--train_batch_size=16",
    "--train_steps=3",
)
# What tf.distribute logs at INFO for every traced cross-replica reduction or gather
# (cross_device_ops.py), under MirroredStrategy and MultiWorkerMirroredStrategy alike.
DISTRIBUTE_CHATTER = ("Collective all_reduce", "Collective batch_all_gather", "then broadcast to")


@pytest.mark.slow
def test_a_mirrored_run_logs_about_as_many_lines_as_a_one_device_run(tmp_path):
    commands = {
        "one_device": binary_command(f"--model_dir={tmp_path / 'one'}", *REPLICA_FLAGS),
        "mirrored": binary_command(
            f"--model_dir={tmp_path / 'two'}",
            *REPLICA_FLAGS,
            "--strategy=mirrored",
            "--logical_cpu_devices=2",
        ),
    }
    env = child_env(TF_CPP_MIN_LOG_LEVEL=None)  # a user's
    started = [start(command, tmp_path / f"{name}.log", env) for name, command in commands.items()]
    one_device, mirrored = (finish(process) for process in started)
    assert_succeeded(one_device)
    assert_succeeded(mirrored)
    single, replicated = log_lines(one_device.output), log_lines(mirrored.output)
    for text in DISTRIBUTE_CHATTER:
        assert text not in mirrored.output, text
    assert any("strategy MirroredStrategy (2 replicas)" in line for line in replicated)
    # MirroredStrategy's one line naming its devices is all it adds.
    assert len(replicated) <= len(single) + 1, "\n".join(replicated)
