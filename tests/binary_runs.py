"""Helpers of the end-to-end tests: run the ``tf-simclr`` binary as a user would and read back
what it wrote (checkpoints, TensorBoard events, JSON files). Every child process of the tests
starts here: :func:`start` (output to a log file) or :func:`run_child` (output captured).

Runs are tiny (ResNet-18 at width 1/8 with the CIFAR stem on 16x16 synthetic images) so that the
whole set stays within a few minutes on two CPU cores. Output goes to ``<model_dir>.log`` files,
never to pipes: a worker of a multi-worker run blocked on a full pipe would stall its peer.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

REPO_ROOT = Path(__file__).resolve().parents[1]
# Generous guard against a hung run (e.g. a worker waiting for a dead peer); not a timing assert.
RUN_TIMEOUT_SECONDS = 900

SMALL_DATA = "synthetic:size=16,count=256,classes=4,test_count=64"
SMALL_MODEL = (
    f"--dataset={SMALL_DATA}",
    "--image_size=16",
    "--cifar_stem",
    "--resnet_depth=18",
    "--width_multiplier=0.125",
    "--nouse_blur",
)
# The short deterministic pretraining shared by the distribution, resume, NaN and precision
# tests: 12 steps of batch 32, one step per loop (so step 1's loss is logged on its own) and a
# checkpoint every 3 steps. Linear evaluation stays on (it is part of the pretraining step). The
# learning rate is low enough for training not to be chaotic: at 0.5, round-off differences
# between one and two replicas grow ~10x per step (the batch-norm scales move by ~1 in 12 steps).
REFERENCE_STEPS = 12
REFERENCE_FLAGS = (
    "--train_mode=pretrain",
    "--mode=train",
    *SMALL_MODEL,
    "--train_batch_size=32",
    f"--train_steps={REFERENCE_STEPS}",
    "--steps_per_loop=1",
    "--checkpoint_steps=3",
    "--learning_rate=0.02",
    "--warmup_epochs=0",
    "--noknn_monitor",
    "--noexport_hub",
    "--deterministic",
    "--seed=3",
)
# Two steps of the tiny model without the monitors and the export (runs in the test's process).
TINY_FLAGS = (
    *SMALL_MODEL,
    "--train_mode=pretrain",
    "--mode=train",
    "--train_steps=2",
    "--train_batch_size=16",
    "--steps_per_loop=1",
    "--checkpoint_steps=2",
    "--noknn_monitor",
    "--noexport_hub",
)
# An evaluation as a user would type it after training: no architecture flag at all.
EVAL_FLAGS = (
    "--train_mode=pretrain",
    "--mode=eval",
    f"--dataset={SMALL_DATA}",
    "--image_size=16",
    "--eval_batch_size=32",
    "--noknn_monitor",
)


def child_env(**extra: str | None) -> dict[str, str]:
    """The environment of a child run: this one without TF_CONFIG, plus ``extra`` (a value of
    None unsets that variable, e.g. ``TF_USE_LEGACY_KERAS=None`` for Keras 3)."""
    env = {key: value for key, value in os.environ.items() if key != "TF_CONFIG"}
    env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env.update(extra)
    return {key: value for key, value in env.items() if value is not None}


def binary_command(*flags: str) -> list[str]:
    """``python -m tf_simclr.run FLAGS...`` (the same entry point as the ``tf-simclr`` script)."""
    return [sys.executable, "-m", "tf_simclr.run", *flags]


def console_script(name: str) -> str:
    """The installed console script ``name`` (``tf-simclr``, ``tf-simclr-export``): the one
    ``pip install -e .`` put beside this interpreter, as a user runs it."""
    path = Path(sys.executable).with_name(name)
    assert path.is_file(), f"no console script {path}: install the package (make install)"
    return str(path)


@dataclasses.dataclass
class Finished:
    """A finished child process and where its output went."""

    returncode: int
    log_path: Path

    @property
    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output.splitlines()[-lines:])


def _default_sigint() -> None:
    """Ctrl-C (SIGINT) handled as in a terminal, even when this test session runs in the
    background, where the shell starts it (and so its children) with SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(
    command: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path = REPO_ROOT,
):
    """Start ``command`` in ``cwd`` (the repository root) with stdout and stderr in
    ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log_path, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish()
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env or child_env(),
        stdout=handle,
        stderr=subprocess.STDOUT,
        preexec_fn=_default_sigint,
    )
    process.log_handle = handle
    process.log_path = log_path
    return process


# What run_child returns: returncode, and stdout and stderr as text.
ChildResult = subprocess.CompletedProcess


def run_child(
    command: list[str],
    *,
    cwd: Path = REPO_ROOT,
    env: dict[str, str] | None = None,
    timeout: float = RUN_TIMEOUT_SECONDS,
    check: bool = False,
) -> ChildResult:
    """Run ``command`` in ``cwd`` to its end, its stdout and stderr captured as text.

    ``env`` defaults to :func:`child_env`. A child still running after ``timeout`` seconds
    is killed (subprocess.TimeoutExpired). ``check`` asserts that it exited with 0, showing its
    output otherwise. For long runs whose output may be large, :func:`start` writes to a file.
    """
    result = subprocess.run(
        command,
        cwd=cwd,
        env=child_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        preexec_fn=_default_sigint,
    )
    if check:
        assert result.returncode == 0, (
            f"{command[:3]} exited with {result.returncode}\nstdout:\n{result.stdout}\n"
            f"stderr:\n{result.stderr[-5000:]}"
        )
    return result


def run_python(code: str, *args: str, **options) -> ChildResult:
    """``python -c CODE ARGS`` (``code`` dedented) in a fresh interpreter; ``options`` as for
    :func:`run_child`."""
    return run_child([sys.executable, "-c", textwrap.dedent(code), *args], **options)


def finish(process) -> Finished:
    """Wait for a process from :func:`start` (killing it if it hangs)."""
    try:
        process.wait(timeout=RUN_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    finally:
        process.log_handle.close()
    return Finished(process.returncode, process.log_path)


def finish_together(processes: list) -> list[Finished]:
    """Wait for processes that depend on each other (the workers of one cluster): when one
    fails, the others would wait for it forever, so they are killed."""
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while any(process.poll() is None for process in processes):
        failed = any(process.poll() not in (None, 0) for process in processes)
        if failed or time.monotonic() > deadline:
            for process in processes:
                if process.poll() is None:
                    process.kill()
        time.sleep(0.2)
    return [finish(process) for process in processes]


def run_all(jobs: dict[str, tuple[list[str], Path]]) -> dict[str, Finished]:
    """Run ``{name: (command, log_path)}`` concurrently and wait for all of them."""
    processes = {name: start(command, log) for name, (command, log) in jobs.items()}
    return {name: finish(process) for name, process in processes.items()}


def run_binary(model_dir: Path, *flags: str) -> Finished:
    """Run the binary with ``--model_dir=model_dir`` and ``flags``; output in ``<dir>.log``."""
    command = binary_command(f"--model_dir={model_dir}", *flags)
    return finish(start(command, model_dir.with_suffix(".log")))


def assert_succeeded(finished: Finished) -> None:
    assert finished.returncode == 0, (
        f"run failed with exit code {finished.returncode}; end of {finished.log_path}:\n"
        f"{finished.tail()}"
    )


def shared_runs(
    tmp_path_factory,
    runs: dict[str, tuple[str, ...]],
    envs: dict[str, dict[str, str]] | None = None,
) -> dict[str, Path]:
    """model_dirs of the named runs (``{name: flags}``), shared by every test of the session;
    ``envs`` adds environment variables to some of them (``{name: {variable: value}}``).

    A run already finished in this session (same name) is reused; the missing ones are started
    together, so that their single-threaded phases (imports, tracing) overlap. Under
    pytest-xdist the workers share one folder: a lock lets one of them run what is missing while
    the others wait for it.
    """
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is in the session's
        base = base.parent
    root = base / "shared_runs"
    root.mkdir(parents=True, exist_ok=True)
    dirs = {name: root / name for name in runs}
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        missing = {
            name: (
                binary_command(f"--model_dir={dirs[name]}", *flags),
                dirs[name].with_suffix(".log"),
            )
            for name, flags in runs.items()
            if not (dirs[name] / "result.json").exists()
        }
        for name in missing:
            shutil.rmtree(dirs[name], ignore_errors=True)
        envs = envs or {}
        processes = [
            start(command, log, child_env(**envs.get(name, {})))
            for name, (command, log) in missing.items()
        ]
        for process in processes:
            assert_succeeded(finish(process))
    return dirs


def reference_run(tmp_path_factory) -> Path:
    """The model_dir of the shared reference pretraining (:data:`REFERENCE_FLAGS`)."""
    return shared_runs(tmp_path_factory, {"reference": REFERENCE_FLAGS})["reference"]


def wait_for_text(process, text: str, timeout: float = RUN_TIMEOUT_SECONDS) -> bool:
    """Wait until the log of ``process`` (from :func:`start`) holds ``text``; False when the
    process ended, or ``timeout`` seconds passed, without it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ended = process.poll() is not None
        if text in process.log_path.read_text(encoding="utf-8", errors="replace"):
            return True
        if ended:
            return False
        time.sleep(0.05)
    return False


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


def loopback_tf_config(ports: list[int], index: int) -> str:
    """TF_CONFIG of worker ``index`` of a cluster of workers on 127.0.0.1 at ``ports``."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    return json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def checkpoint_steps(model_dir: Path) -> list[int]:
    """Steps of the checkpoints in ``model_dir/ckpt`` (from their index files), sorted."""
    names = (path.name for path in (model_dir / "ckpt").glob("ckpt-*.index"))
    return sorted(int(name[len("ckpt-") : -len(".index")]) for name in names)


def truncate_data_file(prefix: Path | str) -> Path:
    """Cut the data file of checkpoint ``prefix`` in half, as a kill or a full disk during the
    save would; returns its path."""
    prefix = Path(prefix)
    (data,) = prefix.parent.glob(f"{prefix.name}.data-*")
    with open(data, "r+b") as handle:
        handle.truncate(data.stat().st_size // 2)
    return data


def model_weights(prefix: Path | str) -> dict[str, np.ndarray]:
    """Every model variable of a checkpoint (optimizer slots and counters left out)."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(str(prefix))
        if name.startswith("model/")
    }


def checkpoint_values(prefix: Path | str) -> dict[str, np.ndarray]:
    """Every value of a checkpoint (model, optimizer slots and step) but its save counter,
    which counts the saves of the run rather than its training."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(prefix))
    return {
        name: reader.get_tensor(name)
        for name, _ in tf.train.list_variables(str(prefix))
        if not name.startswith("save_counter")
    }


def weight_differences(a: Path | str, b: Path | str) -> dict[str, float]:
    """Max absolute difference per model variable of two checkpoints (same variables)."""
    first, second = model_weights(a), model_weights(b)
    assert first.keys() == second.keys(), sorted(first.keys() ^ second.keys())[:5]
    assert len(first) > 50, f"only {len(first)} model variables in {a}"
    return {
        name: float(np.max(np.abs(first[name].astype(np.float64) - second[name])))
        if first[name].size
        else 0.0
        for name in first
    }


@dataclasses.dataclass
class Events:
    """What a TensorBoard log directory holds: scalars ``{tag: [(step, value)]}`` and image
    summaries ``{tag: [(step, width, height, number of images)]}``."""

    scalars: dict[str, list[tuple[int, float]]]
    images: dict[str, list[tuple[int, int, int, int]]]

    def values(self, tag: str) -> list[float]:
        return [value for _, value in self.scalars[tag]]

    def steps(self, tag: str) -> list[int]:
        return [step for step, _ in self.scalars[tag]]


def read_events(directory: Path) -> Events:
    """Read back every summary of ``directory`` with TensorBoard's own event reader."""
    accumulator = event_accumulator.EventAccumulator(
        str(directory),
        size_guidance={event_accumulator.TENSORS: 0, event_accumulator.IMAGES: 0},
    )
    accumulator.Reload()
    scalars: dict[str, list[tuple[int, float]]] = {}
    images: dict[str, list[tuple[int, int, int, int]]] = {}
    for tag in accumulator.Tags()["tensors"]:
        plugin = accumulator.SummaryMetadata(tag).plugin_data.plugin_name
        for event in accumulator.Tensors(tag):
            value = tensor_util.make_ndarray(event.tensor_proto)
            if plugin == "scalars":
                scalars.setdefault(tag, []).append((event.step, float(value)))
            elif plugin == "images":
                width, height = int(value[0]), int(value[1])
                images.setdefault(tag, []).append((event.step, width, height, len(value) - 2))
    return Events(scalars, images)
