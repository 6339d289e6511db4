"""Stopping training on SIGTERM and SIGINT at a step boundary, with a checkpoint (issue 30).

A scheduler preempts a job with SIGTERM (and SIGKILL after a grace period); a user stops one
with Ctrl-C (SIGINT). While the training loop runs, :class:`StopRequests` records either signal
instead of acting on it. Python runs a signal handler only between two calls into TensorFlow, so
the earliest point to stop is the end of the current ``tf.function`` call (``steps_per_loop``
steps, fewer before a checkpoint or progress boundary): there the loop saves a checkpoint and
raises :class:`~tf_simclr.training.loop.TrainingInterruptedError`, and the same command resumes
from it exactly. Outside the loop the signals act as they did before it (Ctrl-C interrupts data
loading at once).

Every step of a multi-worker run is collective, so its workers must stop at the same step:
:class:`StopAgreement` all-reduces each worker's request at every call boundary (one collective
of two numbers per call), and every worker stops when any one was signalled, on SIGTERM when
any worker got SIGTERM.

``tf.distribute.experimental.PreemptionCheckpointHandler`` agrees on a step for SIGTERM, and it
works on CPU MultiWorkerMirroredStrategy over loopback (TF 2.21, measured: SIGTERM to the chief
at step 40 made both workers save at step 42 and exit). It is not used because: it ignores
SIGINT (measured: Ctrl-C raised KeyboardInterrupt in the chief mid-step, nothing was saved and
the other worker died on "Collective ops is aborted by: Socket closed"); it sets its SIGTERM
handler when constructed and never puts the previous one back (measured: ``signal.getsignal``
returns its method; its source has no restore); it ends the process itself (measured: both
workers exited with status 42, its default ``exit_fn``); when constructed it restores the
newest checkpoint of the manager, not the newest usable one, and adds a counter variable of its
own to the checkpoint (read in its source); on a GCP CPU VM it does nothing (its source logs a
warning and neither watches nor saves); and the signalled worker waits without a timeout for
every peer to acknowledge (its source), so a dead peer hangs it.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

import tensorflow as tf

# The signals that stop training at a step boundary, SIGTERM first: when workers of one cluster
# got different ones, they all stop on SIGTERM (a scheduler's, which will not wait).
STOP_SIGNAL_NAMES = ("SIGTERM", "SIGINT")


def exit_status(signal_name: str) -> int:
    """The status a shell reports for a process ended by ``signal_name``: 128 + its number
    (SIGTERM 143, SIGINT 130), which schedulers and scripts recognise."""
    return 128 + signal.Signals[signal_name].value


class StopRequests:
    """Inside a ``with`` block, records the first SIGTERM or SIGINT (:attr:`signal_name`)
    instead of acting on it; the previous handlers are back when the block ends.

    Python sets signal handlers only in the main thread: in another thread it records nothing
    and the signals act as before. A second signal changes nothing (the first one already
    stops at the earliest point); SIGKILL ends the process at once.
    """

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopRequests:
        if threading.current_thread() is threading.main_thread():
            for name in STOP_SIGNAL_NAMES:
                number = signal.Signals[name]
                self._previous[number] = signal.signal(number, self._record)
        return self

    @property
    def active(self) -> bool:
        """Whether the handlers are in place (inside the block, in the main thread)."""
        return bool(self._previous)

    def __exit__(self, *exc_info: object) -> None:
        for number, previous in self._previous.items():
            # None: the handler was set outside Python; the default is the nearest to it.
            signal.signal(number, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _record(self, number: int, frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(number).name


class StopAgreement:
    """The signal that stops training at a call boundary, the same on every worker.

    In one process it is this process's request (:class:`StopRequests`). With
    ``across_workers`` every replica's request is summed under ``strategy`` (one all-reduce,
    which every worker runs at the same boundary): SIGTERM when any worker got SIGTERM, else
    SIGINT when any got SIGINT, else None.
    """

    def __init__(
        self, strategy: tf.distribute.Strategy, requests: StopRequests, across_workers: bool
    ) -> None:
        self._strategy = strategy
        self._requests = requests
        self._across_workers = across_workers
        self._sum = tf.function(self._sum_over_replicas, autograph=False)

    def signal_name(self) -> str | None:
        """The signal to stop on now, or None to go on."""
        local = self._requests.signal_name
        if not self._across_workers:
            return local
        requested = tf.constant([float(local == name) for name in STOP_SIGNAL_NAMES])
        counts = self._sum(requested).numpy()
        return next(
            (name for name, count in zip(STOP_SIGNAL_NAMES, counts, strict=True) if count > 0),
            None,
        )

    def _sum_over_replicas(self, requested: tf.Tensor) -> tf.Tensor:
        per_replica = self._strategy.run(tf.identity, args=(requested,))
        return self._strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
