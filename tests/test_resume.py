"""Auto-resume: a run killed with SIGKILL after its first checkpoint, restarted with the same
command, reaches the planned final step, and with ``--deterministic`` ends with exactly the
weights of the uninterrupted run (the restarted input pipeline skips the batches consumed
before the checkpoint, and the weights start from the same seed). Its config.json records the
restart as a second segment that changed nothing."""

from __future__ import annotations

import concurrent.futures
import signal
import time

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    assert_succeeded,
    binary_command,
    checkpoint_steps,
    finish,
    model_weights,
    read_json,
    reference_run,
    run_binary,
    start,
)

POLL_SECONDS = 0.01


@pytest.mark.slow
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(tmp_path, tmp_path_factory):
    # The uninterrupted reference run (shared with other tests) runs meanwhile in a thread.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        reference_future = pool.submit(reference_run, tmp_path_factory)
        model_dir = _kill_and_restart(tmp_path)
        reference = reference_future.result()

    final = f"ckpt/ckpt-{REFERENCE_STEPS}"
    resumed, uninterrupted = model_weights(model_dir / final), model_weights(reference / final)
    assert resumed.keys() == uninterrupted.keys()
    # Exact (tests/tolerances.py): a checkpoint holds the very float32 values, the pipeline
    # replays the same batches and --deterministic runs the same kernels on them.
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)


def _kill_and_restart(tmp_path):
    """Start the reference command, SIGKILL it after its first checkpoint, start it again."""
    model_dir = tmp_path / "run"
    process = start(
        binary_command(f"--model_dir={model_dir}", *REFERENCE_FLAGS), tmp_path / "a.log"
    )
    state_file = model_dir / "ckpt" / "checkpoint"  # written right after the first checkpoint
    while not state_file.exists() and process.poll() is None:
        time.sleep(POLL_SECONDS)
    process.send_signal(signal.SIGKILL)
    killed = finish(process)
    assert killed.returncode == -signal.SIGKILL, (
        f"the run ended by itself (exit code {killed.returncode}) before it could be killed:\n"
        f"{killed.tail()}"
    )
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert latest, "no checkpoint was written before the kill"
    assert int(latest.rsplit("-", 1)[1]) < REFERENCE_STEPS, latest
    assert not (model_dir / "result.json").exists()

    restarted = run_binary(model_dir, *REFERENCE_FLAGS)
    assert_succeeded(restarted)
    assert f"resumed from {latest}" in restarted.output
    assert max(checkpoint_steps(model_dir)) == REFERENCE_STEPS
    assert read_json(model_dir / "result.json")["train_mode"] == "pretrain"
    # config.json records both commands: the first from step 0, the restart from its checkpoint,
    # changing nothing.
    segments = read_json(model_dir / "config.json")["segments"]
    assert [segment["step"] for segment in segments] == [0, int(latest.rsplit("-", 1)[1])]
    assert segments[1]["changes"] == {}
    return model_dir
