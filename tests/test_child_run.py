"""The bench scripts' child runs (``bench/child_run.py``): a signal to the bench stops its
tf-simclr child with a checkpoint, and the bench exits with the signal's status."""

from __future__ import annotations

import signal
import sys
import time

import pytest
import tensorflow as tf
from binary_runs import REPO_ROOT, RUN_TIMEOUT_SECONDS, TINY_FLAGS, finish, start


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_bench_stops_its_child_at_a_checkpoint(tmp_path, name):
    model_dir = tmp_path / "run"
    flags = (*TINY_FLAGS, "--train_steps=100000", "--checkpoint_steps=100000")
    code = (
        f"import sys; sys.path.insert(0, {str(REPO_ROOT / 'bench')!r}); "
        "from child_run import run_tf_simclr; "
        f"run_tf_simclr('tiny', {flags!r}, {str(model_dir)!r}, 'child.log')"
    )
    bench = start([sys.executable, "-c", code], tmp_path / "bench.log")
    child_log = model_dir / "child.log"
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while bench.poll() is None and time.monotonic() < deadline:
        if child_log.exists() and "SIGTERM or Ctrl-C stops it" in child_log.read_text():
            break
        time.sleep(0.05)
    bench.send_signal(signal.Signals[name])
    stopped = finish(bench)
    assert stopped.returncode == 128 + signal.Signals[name].value, stopped.tail()
    assert stopped.output.rstrip().splitlines()[-1] == (
        f"{name}: stopped {model_dir} at its checkpoint; the same command resumes it"
    )
    # Only the stop saved (the next planned checkpoint is at step 100000).
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert latest is not None, child_log.read_text()[-2000:]
    assert f"tf-simclr: {name} received: saved {latest} at step" in child_log.read_text()
