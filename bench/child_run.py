"""One ``tf-simclr`` training run as a child process of a bench script, its output appended to a
log file in its model_dir (never a pipe: a long run would block on a full one). Ctrl-C stops the
child at the end of its current call with a checkpoint (tf-simclr saves on SIGINT): the bench
waits for that save, so the same command resumes the run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time

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
        try:
            status = child.wait()
        except KeyboardInterrupt:
            # Ctrl-C reaches the child too (same process group), which saves a checkpoint at the
            # end of its current call: wait for it, so the run resumes from there.
            child.wait()
            raise
    if status:
        raise subprocess.CalledProcessError(status, command)
    return time.time() - started, shown
