"""Choosing the strategy (tf_simclr.training.strategy) and training under it.

In process: ``create_strategy`` on the session's two logical CPUs (tests/conftest.py), the batch
check, and ``is_chief`` with what depends on it in the loop (a non-chief worker resumes from the
chief's checkpoints and writes only to a scratch folder).

Through the binary: two mirrored replicas equal one device, and the two workers of a
MultiWorkerMirroredStrategy run over loopback end with identical weights. Every such run is a
child process (``--strategy=mirrored --logical_cpu_devices=2``, ``--strategy=multi_worker`` with
TF_CONFIG), as a user would start it.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    Finished,
    assert_succeeded,
    checkpoint_steps,
    child_env,
    finish_together,
    free_ports,
    model_weights,
    read_events,
    read_json,
    shared_runs,
    start,
    weight_differences,
)
from regression_loop import ckpt_steps, regression_setup, settings, sgd_reference
from tolerances import ONEDNN_OFF, differences, drift_tolerance, max_difference

from tf_simclr.training import loop
from tf_simclr.training.strategy import check_batch_sizes, create_strategy, is_chief

# ----------------------------------------------------------------------------- in process


def test_create_strategy_default_is_tensorflows_default():
    strategy = create_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1


def test_create_strategy_mirrored_replicates_over_the_logical_cpus():
    if tf.config.list_logical_devices("GPU"):
        pytest.skip("mirrored replicates over the GPUs when there are some")
    # Created, never run: its collectives would collide with the session's two_replica_strategy.
    strategy = create_strategy("mirrored")
    assert isinstance(strategy, tf.distribute.MirroredStrategy)
    assert strategy.num_replicas_in_sync == 2
    devices = sorted(strategy.extended.worker_devices)
    assert [device.rsplit("/", 1)[1] for device in devices] == ["device:CPU:0", "device:CPU:1"]


def test_create_strategy_rejects_an_unknown_name():
    expected = "strategy='parameter_server' must be one of ('default', 'mirrored', 'multi_worker'"
    with pytest.raises(ValueError, match=re.escape(expected)):
        create_strategy("parameter_server")


def test_check_batch_sizes_accepts_batches_that_split_over_the_replicas(two_replica_strategy):
    check_batch_sizes(two_replica_strategy, 32, 6)
    check_batch_sizes(two_replica_strategy, 2, None)
    check_batch_sizes(tf.distribute.get_strategy(), 33, 7)


@pytest.mark.parametrize(
    ("train_batch_size", "eval_batch_size", "named", "suggested"),
    [
        (33, 8, "--train_batch_size=33", "e.g. 32 or 34."),
        (32, 7, "--eval_batch_size=7", "e.g. 6 or 8."),
        (1, None, "--train_batch_size=1", "e.g. 2."),
    ],
)
def test_check_batch_sizes_names_a_batch_that_does_not_split(
    two_replica_strategy, train_batch_size, eval_batch_size, named, suggested
):
    expected = f"{named} does not split evenly over the 2 replicas of this strategy"
    with pytest.raises(ValueError, match=re.escape(expected)) as rejected:
        check_batch_sizes(two_replica_strategy, train_batch_size, eval_batch_size)
    assert str(rejected.value).endswith(f"use a multiple of 2, {suggested}")


class WorkerView:
    """A strategy seen from worker ``task_id`` of a two-worker cluster (for is_chief)."""

    def __init__(self, strategy: tf.distribute.Strategy, task_id: int) -> None:
        self._strategy = strategy
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}),
            task_type="worker",
            task_id=task_id,
        )

    def __getattr__(self, name):
        return getattr(self._strategy, name)


def test_non_chief_resumes_from_the_chief_and_leaves_no_trace(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 2))
    assert ckpt_steps(tmp_path) == [2]
    events_before = sorted(os.listdir(tmp_path / "train"))

    worker = WorkerView(strategy, task_id=1)
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    loop.train(worker, model, optimizer, functions, factory, settings(tmp_path, 4))
    assert calls == [2], "the non-chief did not resume from the chief's checkpoint"
    # Bound: 4 float32 SGD steps of a small linear regression (tests/regression_loop.py)
    # against float64 NumPy, a few eps per step; rel 1e-5.
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(4), rtol=1e-5)
    assert ckpt_steps(tmp_path) == [2]
    assert sorted(os.listdir(tmp_path / "train")) == events_before
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "train"]  # scratch folder deleted


def test_checkpoint_manager_puts_non_chief_checkpoints_in_a_scratch_folder(tmp_path):
    strategy = tf.distribute.get_strategy()
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    chief = loop.checkpoint_manager(checkpoint, str(tmp_path), WorkerView(strategy, 0), 1)
    other = loop.checkpoint_manager(checkpoint, str(tmp_path), WorkerView(strategy, 1), 1)
    assert chief.directory == str(tmp_path / "ckpt")
    assert other.directory == str(tmp_path / ".worker_scratch_1" / "ckpt")


def test_is_chief_is_a_lone_process_or_worker_0():
    strategy = tf.distribute.get_strategy()
    assert is_chief(strategy)
    assert is_chief(WorkerView(strategy, task_id=0))
    assert not is_chief(WorkerView(strategy, task_id=1))


# ---------------------------------------------------------------------------- the binary

MIRRORED_FLAGS = (*REFERENCE_FLAGS, "--strategy=mirrored", "--logical_cpu_devices=2")
# Two replicas sum the batch norm statistics, the gathered logits and the gradients in another
# order than one device, and 12 steps of training amplify that round-off by a factor that
# depends on the CPU's kernels (measured: 1.4e-5 on an AMD EPYC, 1.09e-4 on a Xeon with AMX).
# The tolerance is measured on the machine running the test (tests/tolerances.py): the one-device
# reference run again with oneDNN off (Eigen's kernels, another summation order everywhere)
# shows how far round-off alone moves these weights here.
# The one-device batch norm runs TF's fused kernel, which applies Bessel's N/(N-1) to the batch
# variance before averaging it into moving_variance; tf_keras's synchronised batch norm does not.
# Every moving variance is a positive combination of batch variances (plus its initial 1, which
# both runs share), so the two differ by at most a fraction 1/(N-1) of it, N the fewest values a
# channel is normalised over: 2 views x 32 images x the 2x2 map of the last block group (16 px,
# CIFAR stem, strides 1-2-2-2) = 256.
FEWEST_VALUES_PER_CHANNEL = 2 * 32 * 2 * 2
BESSEL_RTOL = 1 / (FEWEST_VALUES_PER_CHANNEL - 1)


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    return shared_runs(
        tmp_path_factory,
        {"reference": REFERENCE_FLAGS, "mirrored": MIRRORED_FLAGS, "onednn_off": REFERENCE_FLAGS},
        envs={"onednn_off": ONEDNN_OFF},
    )


def _split(weights: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """``weights`` as (moving variances, everything else)."""
    variances = {name: value for name, value in weights.items() if "moving_variance" in name}
    others = {name: value for name, value in weights.items() if name not in variances}
    return variances, others


def _relative(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> float:
    """The largest relative difference of two sets of positive arrays (moving variances)."""
    return max(float(np.max(np.abs(first[n] / second[n].astype(np.float64) - 1))) for n in first)


@pytest.mark.slow
def test_two_mirrored_replicas_give_the_weights_of_one_device(mirrored_runs):
    one, two = mirrored_runs["reference"], mirrored_runs["mirrored"]
    other_order = mirrored_runs["onednn_off"]
    log = two.with_suffix(".log").read_text(encoding="utf-8")
    assert "device:CPU:1'" in log, "the mirrored run did not use the second logical CPU"
    assert read_json(two / "config.json")["model"]["global_bn"] is True
    assert read_json(one / "config.json")["model"]["global_bn"] is False
    assert checkpoint_steps(one) == checkpoint_steps(two) == [3, 6, 9, 12]

    atol = {}
    for step in (3, REFERENCE_STEPS):
        first_variances, first = _split(model_weights(one / f"ckpt/ckpt-{step}"))
        second_variances, second = _split(model_weights(two / f"ckpt/ckpt-{step}"))
        other_variances, other = _split(model_weights(other_order / f"ckpt/ckpt-{step}"))
        magnitude = max(float(np.max(np.abs(value))) for value in first.values() if value.size)
        # Bound: 10x the round-off spread measured here (tests/tolerances.py, drift_tolerance).
        atol[step] = drift_tolerance(max_difference(first, other), step, magnitude)
        differ = differences(first, second)
        worst = max(differ, key=differ.get)
        assert differ[worst] <= atol[step], f"step {step}: {worst} differs by {differ[worst]}"
        # Bound: Bessel's 1/(N-1) plus 10x the measured round-off spread of moving variances.
        spread = _relative(other_variances, first_variances)
        rtol = BESSEL_RTOL + drift_tolerance(spread, step, 1.0)
        assert _relative(second_variances, first_variances) <= rtol, (step, rtol)
    # ... while training moved the trained weights by much more than that tolerance, so a bug
    # that changes the updates (unaveraged gradients, unsynchronised statistics) cannot hide in it.
    moved = weight_differences(one / "ckpt/ckpt-3", one / f"ckpt/ckpt-{REFERENCE_STEPS}")
    assert max(value for name, value in moved.items() if "moving_" not in name) > 10 * max(
        atol.values()
    )

    # The per-step losses agree too (each step's loss is logged on its own), within 10x the
    # relative spread of the losses of the oneDNN-off run (the same bound as the weights).
    single, mirrored = read_events(one / "train"), read_events(two / "train")
    reordered = read_events(other_order / "train")
    for tag in ("train/contrast_loss", "train/supervised_loss"):
        assert single.steps(tag) == mirrored.steps(tag) == list(range(1, REFERENCE_STEPS + 1))
        reference = np.array(single.values(tag))
        spread = float(np.max(np.abs(np.array(reordered.values(tag)) / reference - 1)))
        rtol = drift_tolerance(spread, REFERENCE_STEPS, 1)
        np.testing.assert_allclose(mirrored.values(tag), reference, rtol=rtol, err_msg=tag)


# The non-chief worker deletes its scratch checkpoints at the end of the run (loop.train). To
# compare its weights with the chief's, this driver keeps a copy of the folder just before the
# deletion; everything else is the unmodified binary.
KEEP_SCRATCH_DRIVER = """
import os, shutil, sys
from tf_simclr.training import loop

class KeepingShutil:
    @staticmethod
    def rmtree(path, ignore_errors=False):
        shutil.copytree(path, os.environ["KEEP_SCRATCH_TO"])
        shutil.rmtree(path, ignore_errors=ignore_errors)

loop.shutil = KeepingShutil
from tf_simclr import run
sys.argv = ["tf-simclr", *sys.argv[1:]]
run.run_main()
"""


@pytest.mark.slow
def test_two_workers_over_loopback_end_with_identical_weights(tmp_path):
    model_dir, kept = tmp_path / "run", tmp_path / "kept_scratch"
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    flags = (
        *REFERENCE_FLAGS,
        "--train_steps=4",
        "--checkpoint_steps=2",
        "--strategy=multi_worker",
        "--export_hub",
        f"--model_dir={model_dir}",
    )
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = child_env(TF_CONFIG=tf_config, KEEP_SCRATCH_TO=str(kept))
        command = [sys.executable, "-c", KEEP_SCRATCH_DRIVER, *flags]
        workers.append(start(command, tmp_path / f"worker{index}.log", env))
    chief, other = finish_together(workers)
    _assert_worker_succeeded(chief)
    _assert_worker_succeeded(other)

    # The chief (worker 0) wrote the model_dir; the other worker only its scratch, now deleted.
    assert checkpoint_steps(model_dir) == [2, 4]
    assert sorted(path.name for path in model_dir.iterdir()) == [
        "ckpt",
        "classes.txt",
        "config.json",
        "flags.json",
        "hub",
        "result.json",
        "train",
    ]
    assert (kept / "ckpt" / "ckpt-4.index").exists(), sorted(kept.rglob("*"))
    # Both workers exported (reading synchronised variables is collective); only the chief kept it.
    assert (model_dir / "hub" / "4" / "saved_model.pb").exists()
    assert read_json(model_dir / "result.json")["train"]["contrast_loss"] > 0

    # Exact (tests/tolerances.py): both workers apply the same all-reduced gradients and batch
    # statistics to the same weights with the same kernels.
    differences = weight_differences(model_dir / "ckpt/ckpt-4", kept / "ckpt/ckpt-4")
    assert max(differences.values()) == 0.0, max(differences.items(), key=lambda kv: kv[1])
    # ... and they trained: the weights moved from the step-2 checkpoint.
    moved = weight_differences(model_dir / "ckpt/ckpt-2", model_dir / "ckpt/ckpt-4")
    assert max(moved.values()) > 1e-4


def _assert_worker_succeeded(worker: Finished) -> None:
    assert_succeeded(worker)
    assert "MultiWorkerMirroredStrategy with cluster_spec" in worker.output, worker.tail()
