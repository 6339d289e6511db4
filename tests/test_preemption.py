"""Surviving preemption (issue 30): SIGTERM and SIGINT stop training at a step boundary with a
checkpoint, every worker of a cluster at the same step, and the same command resumes exactly; a
worker of a multi-worker run never waits for its peers without end nor ignores a signal while
it waits; a lost peer ends the run in one line.

In process: the signal recording and its agreement (tf_simclr.training.preemption), the loop's
stop and resume on the closed-form regression of tests/regression_loop.py, the wait for the
workers and the lost-worker line (tf_simclr.training.strategy).

Through the binary (slow): the reference pretraining of tests/binary_runs.py signalled right
after its loop announces itself (the signal then lands while the first call is traced, so the
run always stops mid-run), rerun, and compared with the uninterrupted shared run; two workers
over loopback; lone workers; a worker killed mid-run.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    assert_succeeded,
    binary_command,
    checkpoint_steps,
    checkpoint_values,
    child_env,
    finish,
    finish_together,
    free_ports,
    loopback_tf_config,
    read_json,
    run_binary,
    run_child,
    shared_runs,
    start,
    wait_for_text,
)
from regression_loop import ckpt_steps, regression_setup, settings, sgd_reference

from tf_simclr.training import loop
from tf_simclr.training.preemption import StopAgreement, StopRequests, exit_status
from tf_simclr.training.strategy import (
    ClusterStartError,
    ClusterWaitInterruptedError,
    lost_worker,
    wait_for_workers,
)

# The loop's first line, logged once its signal handlers are in place.
LOOP_STARTED = "training from step"
WAITING = "waiting up to"
# Guards against a hang (the defect of a lone worker); never a timing assertion.
HANG_GUARD_SECONDS = 180

# ----------------------------------------------------------------------------- in process


@pytest.fixture
def fallback_handlers():
    """Python handlers for SIGTERM and SIGINT around a test that signals its own process, so
    that a signal the code under test fails to catch is recorded here instead of ending (or
    interrupting) the test session; yields the signals they received."""
    received: list[str] = []

    def fallback(number, frame):
        received.append(signal.Signals(number).name)

    previous = {
        number: signal.signal(number, fallback) for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        yield fallback, received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def test_exit_status_is_128_plus_the_signal_number():
    assert exit_status("SIGTERM") == 143
    assert exit_status("SIGINT") == 130


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_stop_requests_record_the_first_signal_and_put_the_handlers_back(fallback_handlers, name):
    fallback, received = fallback_handlers
    with StopRequests() as requests:
        assert requests.active
        os.kill(os.getpid(), signal.Signals[name])
        os.kill(os.getpid(), signal.SIGTERM if name == "SIGINT" else signal.SIGINT)
    assert requests.signal_name == name
    assert not requests.active
    assert received == []
    assert signal.getsignal(signal.SIGTERM) is fallback
    assert signal.getsignal(signal.SIGINT) is fallback


def test_stop_requests_leave_signals_alone_outside_the_main_thread(fallback_handlers):
    fallback, _ = fallback_handlers
    seen = {}

    def enter():
        with StopRequests() as requests:
            seen["active"] = requests.active
            seen["handler"] = signal.getsignal(signal.SIGTERM)

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    assert seen == {"active": False, "handler": fallback}


def test_stop_agreement_sums_the_requests_of_every_replica(
    isolated_two_replica_strategy, fallback_handlers
):
    with StopRequests() as requests:
        stop = StopAgreement(isolated_two_replica_strategy, requests, across_workers=True)
        assert stop.signal_name() is None
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.signal_name() == "SIGINT"


@pytest.mark.parametrize(("name", "stop_step"), [("SIGTERM", 3), ("SIGINT", 4)])
def test_loop_saves_at_the_step_boundary_and_resumes(tmp_path, fallback_handlers, name, stop_step):
    """Signalled after step ``stop_step`` (3 between checkpoints, 4 at one), the loop saves
    there, raises, and puts the handlers back; a second call resumes to the end."""
    fallback, received = fallback_handlers
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    learning_rate = functions.learning_rate

    def signalling_learning_rate(step):  # called by the loop after every call
        if int(step) == stop_step:
            os.kill(os.getpid(), signal.Signals[name])
        return learning_rate(step)

    functions.learning_rate = signalling_learning_rate
    run = settings(tmp_path, 8, steps_per_loop=1, checkpoint_steps=4)
    with pytest.raises(loop.TrainingInterruptedError) as interrupted:
        loop.train(strategy, model, optimizer, functions, factory, run)
    error = interrupted.value
    expected = str(tmp_path / "ckpt" / f"ckpt-{stop_step}")
    assert (error.signal_name, error.step, error.checkpoint) == (name, stop_step, expected)
    assert ckpt_steps(tmp_path) == [stop_step]  # saved by the stop, or at the boundary only
    assert received == []
    assert signal.getsignal(signal.SIGTERM) is fallback
    assert signal.getsignal(signal.SIGINT) is fallback

    model, optimizer, functions, factory, calls = regression_setup(strategy)
    loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 8, 1, 4))
    assert calls == [stop_step]
    # Bound: 8 float32 SGD steps of a small linear regression (tests/regression_loop.py)
    # against float64 NumPy, a few eps per step; rel 1e-5.
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(8), rtol=1e-5)


def _listening_socket() -> tuple[socket.socket, str]:
    """A socket listening on a free port of 127.0.0.1, and its address."""
    listener = socket.create_server(("127.0.0.1", 0))
    return listener, f"127.0.0.1:{listener.getsockname()[1]}"


def test_wait_for_workers_returns_when_every_peer_answers():
    (own_port,) = free_ports(1)
    listener, address = _listening_socket()
    with listener:
        wait_for_workers(f"127.0.0.1:{own_port}", {"worker 1": address}, timeout_seconds=30)


def test_wait_for_workers_names_the_missing_peer_after_the_timeout():
    own_port, missing_port = free_ports(2)
    listener, address = _listening_socket()
    peers = {"worker 1": address, "worker 2": f"127.0.0.1:{missing_port}"}
    with listener, pytest.raises(ClusterStartError) as gave_up:
        wait_for_workers(f"127.0.0.1:{own_port}", peers, timeout_seconds=1)
    message = str(gave_up.value)
    assert message.startswith(f"gave up after 1 s waiting for worker 2 at 127.0.0.1:{missing_port}")
    assert "worker 1" not in message
    assert "--worker_timeout_seconds" in message


def test_wait_for_workers_refuses_a_port_in_use():
    listener, address = _listening_socket()
    (peer_port,) = free_ports(1)
    with listener, pytest.raises(ClusterStartError, match="cannot listen on port"):
        wait_for_workers(address, {"worker 1": f"127.0.0.1:{peer_port}"}, timeout_seconds=30)


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_wait_for_workers(fallback_handlers, name):
    fallback, received = fallback_handlers
    own_port, missing_port = free_ports(2)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.Signals[name]))
    timer.start()
    try:
        with pytest.raises(ClusterWaitInterruptedError) as interrupted:
            wait_for_workers(
                f"127.0.0.1:{own_port}", {"worker 1": f"127.0.0.1:{missing_port}"}, 600
            )
    finally:
        timer.cancel()
    assert interrupted.value.signal_name == name
    assert str(interrupted.value) == (
        f"{name} received while waiting for worker 1 at 127.0.0.1:{missing_port}; "
        "nothing was written"
    )
    assert received == []
    assert signal.getsignal(signal.SIGTERM) is fallback


def test_lost_worker_is_one_line_naming_the_address(monkeypatch):
    monkeypatch.setenv("TF_CONFIG", loopback_tf_config([1111, 2222], 0))
    # The error the chief got when worker 1 was killed (measured), shortened.
    message = (
        "Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent "
        "call last):\n  File loop.py, line 331, in _one_step\n\nCollective ops is aborted by: "
        "Error reported from /job:worker/task:1: The following tasks are unhealthy (stopped "
        "sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed.\n"
    )
    error = tf.errors.UnavailableError(None, None, message)
    assert lost_worker(error) == (
        "Error reported from /job:worker/task:1 (127.0.0.1:2222): The following tasks are "
        "unhealthy (stopped sending heartbeats): /job:worker/replica:0/task:1 (127.0.0.1:2222)"
    )
    assert lost_worker(tf.errors.InternalError(None, None, message)) is None
    assert lost_worker(ValueError(message)) is None


# ---------------------------------------------------------------------------- the binary

MIRRORED_FLAGS = (*REFERENCE_FLAGS, "--strategy=mirrored", "--logical_cpu_devices=2")
INTERRUPTED_LINE = re.compile(
    r"^tf-simclr: (SIG\w+) received: saved (\S+) at step (\d+); "
    r"the same command resumes from it\.$",
    re.MULTILINE,
)


def _signal_once_started(process, name: str):
    """Send ``name`` to ``process`` once its loop has started, and wait for its end."""
    started = wait_for_text(process, LOOP_STARTED)
    if started:
        process.send_signal(signal.Signals[name])
    finished = finish(process)
    assert started, f"the loop never announced itself:\n{finished.tail()}"
    return finished


def _interruption(finished, name: str, model_dir: Path) -> tuple[int, str]:
    """The step and checkpoint of the one interruption line of a run stopped by ``name``."""
    output = finished.output
    assert finished.returncode == exit_status(name), finished.tail()
    lines = INTERRUPTED_LINE.findall(output)
    assert len(lines) == 1, finished.tail()
    signal_name, checkpoint, step = lines[0]
    assert "Traceback" not in output, finished.tail()
    assert signal_name == name
    assert checkpoint == str(model_dir / "ckpt" / f"ckpt-{step}")
    return int(step), checkpoint


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "reference_name", "name"),
    [(REFERENCE_FLAGS, "reference", "SIGTERM"), (MIRRORED_FLAGS, "mirrored", "SIGINT")],
    ids=["default-SIGTERM", "mirrored-SIGINT"],
)
def test_a_signalled_run_saves_and_resumes_to_the_uninterrupted_weights(
    tmp_path, tmp_path_factory, flags, reference_name, name
):
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # The uninterrupted run (shared with tests/test_strategy.py) runs meanwhile.
        reference = pool.submit(shared_runs, tmp_path_factory, {reference_name: flags})
        model_dir = tmp_path / "run"
        process = start(binary_command(f"--model_dir={model_dir}", *flags), tmp_path / "a.log")
        interrupted = _signal_once_started(process, name)
        step, checkpoint = _interruption(interrupted, name, model_dir)
        assert interrupted.output.rstrip().splitlines()[-1] == (
            f"tf-simclr: {name} received: saved {checkpoint} at step {step}; "
            "the same command resumes from it."
        )
        assert step < REFERENCE_STEPS
        # The newest checkpoint is the interruption's, wherever the regular ones fall.
        assert checkpoint_steps(model_dir)[-1] == step
        recorded = read_json(model_dir / "result.json")["train"]
        assert (recorded["interrupted_by"], recorded["step"], recorded["checkpoint"]) == (
            name,
            step,
            checkpoint,
        )

        resumed = run_binary(model_dir, *flags)
        assert_succeeded(resumed)
        assert f"resumed from {checkpoint}" in resumed.output
        reference_dir = reference.result()[reference_name]

    final = f"ckpt/ckpt-{REFERENCE_STEPS}"
    values = checkpoint_values(model_dir / final)
    uninterrupted = checkpoint_values(reference_dir / final)
    assert values.keys() == uninterrupted.keys()
    assert len(values) > 100  # model, optimizer slots and step
    # Exact (tests/tolerances.py): a checkpoint holds the very float32 values, the pipeline
    # replays the same batches and --deterministic runs the same kernels on them.
    for variable, value in uninterrupted.items():
        np.testing.assert_array_equal(values[variable], value, err_msg=variable)


def _start_workers(tmp_path: Path, model_dir: Path, ports: list[int], tag: str, *flags: str):
    command = binary_command(f"--model_dir={model_dir}", *flags)
    return [
        start(
            command,
            tmp_path / f"{tag}_worker{index}.log",
            child_env(TF_CONFIG=loopback_tf_config(ports, index)),
        )
        for index in range(len(ports))
    ]


MULTI_WORKER_FLAGS = (*REFERENCE_FLAGS, "--strategy=multi_worker")


@pytest.mark.slow
def test_sigterm_to_the_chief_stops_both_workers_at_the_same_step(tmp_path):
    model_dir = tmp_path / "run"
    chief, other = _start_workers(tmp_path, model_dir, free_ports(2), "a", *MULTI_WORKER_FLAGS)
    chief_done = _signal_once_started(chief, "SIGTERM")
    other_done = finish(other)
    step, checkpoint = _interruption(chief_done, "SIGTERM", model_dir)
    assert _interruption(other_done, "SIGTERM", model_dir) == (step, checkpoint)
    assert step < REFERENCE_STEPS
    assert checkpoint_steps(model_dir)[-1] == step
    assert not list(model_dir.glob(".worker_scratch_*"))  # the other worker's, deleted

    # The same commands (on new ports: a port may linger) resume and finish.
    workers = _start_workers(tmp_path, model_dir, free_ports(2), "b", *MULTI_WORKER_FLAGS)
    for worker in finish_together(workers):
        assert_succeeded(worker)
        assert f"resumed from {checkpoint}" in worker.output
    assert checkpoint_steps(model_dir)[-1] == REFERENCE_STEPS


@pytest.mark.slow
def test_a_lone_worker_gives_up_naming_the_missing_address(tmp_path):
    ports = free_ports(2)
    result = run_child(
        binary_command(
            f"--model_dir={tmp_path / 'run'}",
            *MULTI_WORKER_FLAGS,
            "--worker_timeout_seconds=10",
        ),
        env=child_env(TF_CONFIG=loopback_tf_config(ports, 0)),
        timeout=HANG_GUARD_SECONDS,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == (
        f"tf-simclr: cannot start: gave up after 10 s waiting for worker 1 at "
        f"127.0.0.1:{ports[1]} of TF_CONFIG's cluster: start the same command on every worker "
        "(each with its own TF_CONFIG), or wait longer with --worker_timeout_seconds."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_ends_a_lone_worker_waiting_for_its_peers(tmp_path, name):
    ports = free_ports(2)
    process = start(
        binary_command(f"--model_dir={tmp_path / 'run'}", *MULTI_WORKER_FLAGS),
        tmp_path / "lone.log",
        child_env(TF_CONFIG=loopback_tf_config(ports, 1)),
    )
    try:
        waiting = wait_for_text(process, WAITING, HANG_GUARD_SECONDS)
        process.send_signal(signal.Signals[name])
        # The default --worker_timeout_seconds (300) is longer than this guard: only the signal
        # can have ended the wait.
        process.wait(timeout=HANG_GUARD_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
    finished = finish(process)
    assert waiting, finished.tail()
    assert finished.returncode == exit_status(name), finished.tail()
    assert finished.output.rstrip().splitlines()[-1] == (
        f"tf-simclr: {name} received while waiting for worker 0 at 127.0.0.1:{ports[0]}; "
        "nothing was written."
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_lost_worker_ends_the_run_in_one_line_naming_where_to_resume(tmp_path):
    model_dir = tmp_path / "run"
    ports = free_ports(2)
    flags = (*MULTI_WORKER_FLAGS, "--train_steps=60")
    chief, other = _start_workers(tmp_path, model_dir, ports, "a", *flags)
    first = model_dir / "ckpt" / "checkpoint"  # written right after the first checkpoint
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while not first.exists() and chief.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    other.kill()
    lost, _ = finish(chief), finish(other)
    assert first.exists(), lost.tail()
    assert lost.returncode == 1, lost.tail()
    assert "Traceback" not in lost.output, lost.tail()
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    last = lost.output.rstrip().splitlines()[-1]
    # The parentheses carry TensorFlow's own reason, whose wording is a race inside
    # TensorFlow (the peer's address, "Socket closed", "Connection reset by peer"): it
    # must be there, whatever it says.
    reason = re.fullmatch(
        r"tf-simclr: lost a worker of the cluster \((.+)\); the same command on every "
        rf"worker resumes from {re.escape(latest)}\.",
        last,
    )
    assert reason and reason.group(1).strip(), last
