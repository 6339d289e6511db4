"""One ``tf-simclr`` training run as a child process of a bench script, its output appended to a
log file in its model_dir (never a pipe: a long run would block on a full one). SIGTERM or
Ctrl-C (SIGINT) to the bench, from a terminal or from ``kill``, reaches the child, which saves a
checkpoint at the end of its current call (tf-simclr stops so on either signal): the bench waits
for that save and exits with the signal's status (143, 130), so the same command resumes the
run."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time

from tf_simclr.training.preemption import exit_status

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tf_simclr(
    name: str, flags: tuple[str, ...], model_dir: str, log_name: str
) -> tuple[float, str]:
    """Run ``python -m tf_simclr.run FLAGS --model_dir=MODEL_DIR`` from the repository root,
    appending its output to ``MODEL_DIR/LOG_NAME``; its wall time in seconds and its flags as
    one shell line (for the run's record). A failed run raises
    ``subprocess.CalledProcessError``."""
    command = [sys.executable, "-m", "tf_simclr.run", *flags, f"--model_dir={model_dir}"]
    shown = shlex.join(command[3:])
    print(f"\n=== {name}: {shown}", flush=True)
    os.makedirs(model_dir, exist_ok=True)
    started = time.time()
    with open(os.path.join(model_dir, log_name), "a", encoding="utf-8") as log:
        child = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
        received = wait_forwarding_signals(child)
    if received is not None:
        name = signal.Signals(received).name
        print(f"{name}: stopped {model_dir} at its checkpoint; the same command resumes it")
        raise SystemExit(exit_status(name))
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, command)
    return time.time() - started, shown


def wait_forwarding_signals(child: subprocess.Popen) -> int | None:
    """Wait for ``child``, passing SIGTERM and SIGINT on to it (a terminal's Ctrl-C reaches it
    directly too; a second signal changes nothing in tf-simclr); the first signal received, or
    None."""
    received: list[int] = []

    def forward(number: int, _frame: object) -> None:
        received.append(number)
        child.send_signal(number)

    previous = {
        number: signal.signal(number, forward) for number in (signal.SIGTERM, signal.SIGINT)
    }
    try:
        child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    return received[0] if received else None
