"""Distributed pretraining through the binary: two mirrored replicas equal one device, and the
two workers of a MultiWorkerMirroredStrategy run over loopback end with identical weights.

Every run is a subprocess (``--strategy=mirrored --logical_cpu_devices=2``, ``--strategy=
multi_worker`` with TF_CONFIG), as a user would start it; the pytest process itself creates no
strategy here.
"""

from __future__ import annotations

import json
import socket
import sys

import numpy as np
import pytest
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    Finished,
    assert_succeeded,
    checkpoint_steps,
    finish_together,
    model_weights,
    read_events,
    read_json,
    shared_runs,
    start,
    subprocess_env,
    weight_differences,
)

MIRRORED_FLAGS = (*REFERENCE_FLAGS, "--strategy=mirrored", "--logical_cpu_devices=2")
# Two replicas sum in another order than one device: after 12 steps the weights differ by ~1e-5.
# Different data per replica or a wrong gradient scale moves them by 1e-3 to 1.
WEIGHT_ATOL = 1e-4
# The one-device batch norm runs TF's fused kernel, which applies Bessel's n/(n-1) to the batch
# variance before averaging it into moving_variance; tf_keras's synchronised batch norm does not.
# With n = 32 the moving variances drift apart by a fraction of 1/31 (0.3% after 12 steps).
MOVING_VARIANCE_RTOL = 1e-2


@pytest.fixture(scope="module")
def mirrored_runs(tmp_path_factory):
    return shared_runs(tmp_path_factory, {"reference": REFERENCE_FLAGS, "mirrored": MIRRORED_FLAGS})


@pytest.mark.slow
def test_two_mirrored_replicas_give_the_weights_of_one_device(mirrored_runs):
    one, two = mirrored_runs["reference"], mirrored_runs["mirrored"]
    log = two.with_suffix(".log").read_text(encoding="utf-8")
    assert "device:CPU:1'" in log, "the mirrored run did not use the second logical CPU"
    assert read_json(two / "config.json")["model"]["global_bn"] is True
    assert read_json(one / "config.json")["model"]["global_bn"] is False
    assert checkpoint_steps(one) == checkpoint_steps(two) == [3, 6, 9, 12]

    for step in (3, REFERENCE_STEPS):
        first = model_weights(one / f"ckpt/ckpt-{step}")
        second = model_weights(two / f"ckpt/ckpt-{step}")
        assert first.keys() == second.keys()
        for name, value in first.items():
            if "moving_variance" in name:
                np.testing.assert_allclose(
                    second[name], value, rtol=MOVING_VARIANCE_RTOL, err_msg=name
                )
            else:
                np.testing.assert_allclose(
                    second[name], value, rtol=0, atol=WEIGHT_ATOL, err_msg=name
                )
    # ... while training moved the trained weights by much more than that tolerance.
    moved = weight_differences(one / "ckpt/ckpt-3", one / f"ckpt/ckpt-{REFERENCE_STEPS}")
    assert max(value for name, value in moved.items() if "moving_" not in name) > 100 * WEIGHT_ATOL

    # The per-step losses agree too (each step's loss is logged on its own).
    single, mirrored = read_events(one / "train"), read_events(two / "train")
    for tag in ("train/contrast_loss", "train/supervised_loss"):
        assert single.steps(tag) == mirrored.steps(tag) == list(range(1, REFERENCE_STEPS + 1))
        np.testing.assert_allclose(mirrored.values(tag), single.values(tag), rtol=2e-4)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    sockets = []
    try:
        for _ in range(count):
            handle = socket.socket()
            handle.bind(("127.0.0.1", 0))
            sockets.append(handle)
        return [handle.getsockname()[1] for handle in sockets]
    finally:
        for handle in sockets:
            handle.close()


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
        f"--model_dir={model_dir}",
    )
    workers = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        env = subprocess_env(TF_CONFIG=tf_config, KEEP_SCRATCH_TO=str(kept))
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
        "result.json",
        "train",
    ]
    assert (kept / "ckpt" / "ckpt-4.index").exists(), sorted(kept.rglob("*"))
    assert read_json(model_dir / "result.json")["train"]["contrast_loss"] > 0

    differences = weight_differences(model_dir / "ckpt/ckpt-4", kept / "ckpt/ckpt-4")
    assert max(differences.values()) <= 1e-6, max(differences.items(), key=lambda kv: kv[1])
    # ... and they trained: the weights moved from the step-2 checkpoint.
    moved = weight_differences(model_dir / "ckpt/ckpt-2", model_dir / "ckpt/ckpt-4")
    assert max(moved.values()) > 1e-4


def _assert_worker_succeeded(worker: Finished) -> None:
    assert_succeeded(worker)
    assert "MultiWorkerMirroredStrategy with cluster_spec" in worker.output, worker.tail()
