"""The custom training loop shared by the three phases (SimCLR section 2 / appendix B.1).

``steps_per_loop`` steps run inside one ``tf.function`` through ``strategy.run``; each replica's
loss is divided by the number of replicas because gradients are summed across replicas. The loop
resumes from the checkpoint it is given (model, optimizer slots and step), logs every metric to
TensorBoard (``model_dir/train``) after every call, saves at ``checkpoint_steps`` boundaries and
logs a progress line every ``log_every_steps`` steps: the two cadences are independent, and a
call stops at whichever boundary comes first. Only finite state is saved: the loop stops on a
non-finite loss, and at every checkpoint boundary it first checks that every model, optimizer and
checkpointed variable is finite (the loss is computed before the update, so the update that
blows the weights up would otherwise be saved). A save that fails (full disk, interruption)
leaves nothing half-written.

SIGTERM and SIGINT stop the loop at the end of the current ``tf.function`` call (the signals
cannot interrupt one; :mod:`tf_simclr.training.preemption`): it saves a checkpoint at that step
(every worker of a cluster stops at the same step) and raises :class:`TrainingInterruptedError`.
The loop's handlers are installed only while it runs; the previous ones are back afterwards.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator

import tensorflow as tf
import tf_keras as keras

from tf_simclr.checkpoints import (
    CKPT_SUBDIR,
    latest_checkpoint,
    remove_unfinished_save,
    restore_summary,
)
from tf_simclr.config import TrainConfig
from tf_simclr.logs import SAVE_NOISE, dropped
from tf_simclr.training.preemption import StopAgreement, StopRequests
from tf_simclr.training.strategy import in_cluster, is_chief

logger = logging.getLogger("tf_simclr")


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss, or a variable at a checkpoint boundary, is NaN or Inf."""


class TrainingInterruptedError(Exception):
    """Training stopped on ``signal_name`` (SIGTERM, SIGINT) at a step boundary, after saving
    ``checkpoint`` at ``step``: the same command resumes from it exactly."""

    def __init__(self, signal_name: str, step: int, checkpoint: str | None) -> None:
        super().__init__(
            f"{signal_name} received: saved {checkpoint or 'no checkpoint'} at step {step}"
        )
        self.signal_name = signal_name
        self.step = step
        self.checkpoint = checkpoint


@dataclasses.dataclass
class LoopSettings:
    """What the loop needs to know about the run (derived from TrainConfig by the runner).

    ``num_examples`` is the size of the training set, which :meth:`epoch` counts epochs in.
    ``resume_from`` is the checkpoint to continue from (None: a fresh run), normally
    :func:`tf_simclr.checkpoints.newest_usable_checkpoint` of ``model_dir``.
    """

    model_dir: str
    total_steps: int
    steps_per_loop: int
    checkpoint_steps: int
    keep_checkpoint_max: int
    global_batch_size: int
    num_examples: int
    jit_compile: bool = False
    resume_from: str | None = None
    log_every_steps: int = TrainConfig.log_every_steps

    def epoch(self, step: int) -> float:
        """Epochs done after ``step`` steps, counted in images seen: ``step * batch /
        examples`` (the input pipeline repeats the shuffled data and batches across epochs)."""
        return step * self.global_batch_size / self.num_examples


@dataclasses.dataclass
class StepFunctions:
    """The per-replica pieces a phase provides to the loop.

    ``compute`` maps a batch to ``(loss, scalars)`` inside the gradient tape: ``loss`` is the
    replica's mean total loss and ``scalars`` the values to log (each averaged over steps and
    replicas; their names are the metrics' names).
    ``variables`` are the variables to train. ``on_checkpoint`` runs before the first step of a
    fresh run and after every checkpoint with the current step (e.g. the kNN monitor) and
    returns extra scalars to log.
    ``before_step`` runs in cross-replica context before every step with the step's
    distributed batch and returns per-replica entries added to it (the memory network follows
    the model and projects the batch there); ``after_step`` runs after the optimizer step with
    that batch (the memory enqueues there);
    ``checkpoint_objects`` are saved and restored with the model and optimizer.
    """

    compute: Callable[[dict], tuple[tf.Tensor, dict[str, tf.Tensor]]]
    variables: Callable[[], list[tf.Variable]]
    learning_rate: Callable[[tf.Tensor], tf.Tensor]
    on_checkpoint: Callable[[int], dict[str, float]] | None = None
    before_step: Callable[[dict], dict] | None = None
    after_step: Callable[[dict], None] | None = None
    checkpoint_objects: dict[str, tf.Module] = dataclasses.field(default_factory=dict)


def checkpoint_manager(
    checkpoint: tf.train.Checkpoint,
    model_dir: str,
    strategy: tf.distribute.Strategy,
    max_to_keep: int,
) -> tf.train.CheckpointManager:
    """CheckpointManager in ``model_dir/ckpt``; non-chief workers write to a scratch folder."""
    directory = os.path.join(model_dir, CKPT_SUBDIR)
    if not is_chief(strategy):
        task_id = strategy.cluster_resolver.task_id
        directory = os.path.join(model_dir, f".worker_scratch_{task_id}", CKPT_SUBDIR)
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=max_to_keep)


def train(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    optimizer: keras.optimizers.Optimizer,
    functions: StepFunctions,
    iterator_factory: Callable[[int], Iterator],
    settings: LoopSettings,
) -> dict[str, float]:
    """Train to ``settings.total_steps``, resuming from ``settings.resume_from``.

    ``iterator_factory(start_step)`` returns the distributed input iterator positioned at
    ``start_step`` (deterministic pipelines skip what was consumed; others just restart).
    Returns the last logged scalars (none when there was nothing left to train). Raises
    :class:`TrainingInterruptedError` after saving on SIGTERM or SIGINT (module docstring).
    """
    checkpoint = tf.train.Checkpoint(
        model=model, optimizer=optimizer, **functions.checkpoint_objects
    )
    manager = checkpoint_manager(
        checkpoint, settings.model_dir, strategy, settings.keep_checkpoint_max
    )
    # Every worker resumes from the chief's checkpoints: a non-chief's scratch folder may be
    # missing or older than the chief's (it is deleted at the end of each run).
    if settings.resume_from:
        checkpoint.restore(settings.resume_from).expect_partial()
        summary = restore_summary(checkpoint, settings.resume_from)
        logger.info("resumed from %s: %s", settings.resume_from, summary)
    finite = FiniteCheck([model, optimizer, *functions.checkpoint_objects.values()])
    start_step = int(optimizer.iterations.numpy())
    chief = is_chief(strategy)
    writer = (
        tf.summary.create_file_writer(os.path.join(settings.model_dir, "train"))
        if chief
        else tf.summary.create_noop_writer()
    )
    run_steps = TrainFunction(strategy, optimizer, functions, settings.jit_compile)
    iterator = iterator_factory(start_step)
    step = start_step
    scalars: dict[str, float] = {}
    initial = None
    if step == 0 and functions.on_checkpoint is not None:
        # Where the encoder stands before any update (e.g. kNN of the random initialisation).
        initial = functions.on_checkpoint(0)
        _write_scalars(writer, initial, 0)
        logger.info("step 0 %s", _format(initial))
    progress = Progress(settings, start_step, initial)
    saved_step = None  # the step this call last wrote a checkpoint at

    def save(step: int) -> None:
        nonlocal saved_step
        offenders = finite.non_finite()
        if offenders:
            listed = ", ".join(offenders[:5]) + (" ..." if len(offenders) > 5 else "")
            what = f"non-finite weights after step {step}: {len(offenders)} of {finite.count}"
            saved = saved_step is not None
            raise _non_finite(f"{what} variables hold NaN or Inf ({listed})", settings, saved)
        _save(manager, step)
        saved_step = step

    with StopRequests() as requests:
        stop = StopAgreement(strategy, requests, across_workers=in_cluster(strategy))
        if requests.active and step < settings.total_steps:
            within = min(settings.steps_per_loop, settings.total_steps - step)
            logger.info(
                "training from step %d to %d; SIGTERM or Ctrl-C stops it within %d step%s, "
                "with a checkpoint",
                step,
                settings.total_steps,
                within,
                "s" if within > 1 else "",
            )
        while step < settings.total_steps:
            count = _steps_to_next_stop(step, settings)
            loop_start = time.time()
            scalars = run_steps(iterator, count)
            step = int(optimizer.iterations.numpy())
            elapsed = max(time.time() - loop_start, 1e-9)
            if not all(math.isfinite(value) for value in scalars.values()):
                saved = saved_step is not None
                raise _non_finite(f"non-finite loss at step {step} ({scalars})", settings, saved)
            progress.add(scalars, count, elapsed)
            scalars["images_per_second"] = count * settings.global_batch_size / elapsed
            scalars["learning_rate"] = float(functions.learning_rate(tf.constant(step)).numpy())
            if step % settings.checkpoint_steps == 0 or step == settings.total_steps:
                save(step)
                if functions.on_checkpoint is not None:
                    measured = functions.on_checkpoint(step)
                    scalars.update(measured)
                    progress.monitored(step, measured)
            _write_scalars(writer, scalars, step)
            if step % settings.log_every_steps == 0 or step == settings.total_steps:
                progress.log(step, scalars["learning_rate"])
            signal_name = stop.signal_name()
            if signal_name is not None:
                if saved_step != step:
                    save(step)
                _finish(writer, manager, chief)
                checkpoint_path = os.path.join(settings.model_dir, CKPT_SUBDIR, f"ckpt-{step}")
                raise TrainingInterruptedError(signal_name, step, checkpoint_path)
    _finish(writer, manager, chief)
    return scalars


def _finish(
    writer: tf.summary.SummaryWriter, manager: tf.train.CheckpointManager, chief: bool
) -> None:
    """Flush the summaries; a non-chief worker deletes its scratch checkpoints (every worker
    resumes from the chief's)."""
    writer.flush()
    if not chief:
        shutil.rmtree(os.path.dirname(manager.directory), ignore_errors=True)


def _steps_to_next_stop(step: int, settings: LoopSettings) -> int:
    """Steps of the next ``tf.function`` call: ``steps_per_loop``, fewer to stop at the next
    checkpoint, the next progress line or the last step."""
    return min(
        settings.steps_per_loop,
        settings.total_steps - step,
        settings.checkpoint_steps - step % settings.checkpoint_steps,
        settings.log_every_steps - step % settings.log_every_steps,
    )


def _save(manager: tf.train.CheckpointManager, step: int) -> None:
    """Save checkpoint ``step``; if the save fails, remove what it wrote before re-raising."""
    try:
        with dropped(SAVE_NOISE):
            manager.save(checkpoint_number=step)
    except BaseException:
        remove_unfinished_save(os.path.join(manager.directory, f"ckpt-{step}"))
        raise


def _non_finite(what: str, settings: LoopSettings, saved: bool) -> NonFiniteLossError:
    """The error of a non-finite stop: what went wrong, which checkpoint is left and what to do.

    A finite checkpoint may already have diverged (e.g. huge weights and optimizer slots after
    one step at an absurd learning rate): when a resumed run goes non-finite again before its
    first new checkpoint, resuming from that checkpoint is not a way out, and the message says so.
    """
    latest = latest_checkpoint(settings.model_dir)
    advice = "Lower --learning_rate, check the data, or use --precision=float32."
    if settings.resume_from and not saved:
        advice = (
            f"This run resumed from {settings.resume_from} and went non-finite before writing a "
            "new checkpoint, so that checkpoint has probably diverged already: start over with "
            "a lower --learning_rate in a new --model_dir (--checkpoint=<an earlier "
            "checkpoint> starts it from earlier weights)."
        )
    return NonFiniteLossError(
        f"{what}; stopped without saving: the newest checkpoint, "
        f"{latest or 'none yet'}, is the last finite one. {advice}"
    )


class FiniteCheck:
    """Checks, in one ``tf.function``, which floating-point variables of ``holders`` (models,
    optimizers, ``tf.Module`` s) are not finite."""

    def __init__(self, holders: list) -> None:
        seen: set[int] = set()
        self._variables = []
        for holder in holders:
            for variable in holder.variables:
                if variable.dtype.is_floating and id(variable) not in seen:
                    seen.add(id(variable))
                    self._variables.append(variable)
        self._flags = tf.function(self._finite_flags, autograph=False)

    @property
    def count(self) -> int:
        """How many variables are checked."""
        return len(self._variables)

    def _finite_flags(self) -> tf.Tensor:
        return tf.stack([tf.reduce_all(tf.math.is_finite(v)) for v in self._variables])

    def non_finite(self) -> list[str]:
        """Names of the variables holding NaN or Inf (none: every one is finite)."""
        flags = self._flags().numpy()
        return [v.name for v, ok in zip(self._variables, flags, strict=True) if not ok]


class TrainFunction:
    """``steps`` training steps in one ``tf.function`` (the reference's multi-step loop).

    Calling it runs the steps and returns the mean over them of every scalar that ``compute``
    returned (each averaged over the replicas). The names are those of ``compute``'s scalars,
    read when the function is traced: a phase lists its metrics in one place, its compute.

    Traced without AutoGraph (the loop is an explicit ``tf.while_loop``), like every function
    that traces the model: nothing the step calls branches on tensors in Python, and converting
    it all cost a fifth of a short run's CPU time (BENCHMARKS.md, "The test suite").
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        optimizer: keras.optimizers.Optimizer,
        functions: StepFunctions,
        jit_compile: bool = False,
    ) -> None:
        self._strategy = strategy
        self._optimizer = optimizer
        self._functions = functions
        self.names: tuple[str, ...] = ()
        gradients = self._gradients
        self._compute_gradients = (
            tf.function(gradients, jit_compile=True, autograph=False) if jit_compile else gradients
        )
        self._run_steps = tf.function(self._steps, autograph=False)

    def __call__(self, iterator: Iterator, steps: int) -> dict[str, float]:
        values = self._run_steps(iterator, tf.constant(steps, tf.int32)).numpy()
        return dict(zip(self.names, (float(v) for v in values), strict=True))

    def _gradients(self, batch: dict) -> tuple[list[tf.Tensor], dict[str, tf.Tensor]]:
        optimizer = self._optimizer
        loss_scaling = isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)
        variables = self._functions.variables()
        with tf.GradientTape() as tape:
            loss, scalars = self._functions.compute(batch)
            scaled = loss / self._strategy.num_replicas_in_sync
            if loss_scaling:
                scaled = optimizer.get_scaled_loss(scaled)
        grads = tape.gradient(scaled, variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        return grads, scalars

    def _replica_step(self, batch: dict) -> tf.Tensor:
        grads, scalars = self._compute_gradients(batch)
        self._optimizer.apply_gradients(zip(grads, self._functions.variables(), strict=True))
        self.names = tuple(sorted(scalars))
        return tf.stack([tf.cast(scalars[name], tf.float32) for name in self.names])

    def _one_step(self, iterator: Iterator) -> tf.Tensor:
        functions, strategy = self._functions, self._strategy
        batch = next(iterator)
        if functions.before_step is not None:
            batch = {**batch, **functions.before_step(batch)}
        values = strategy.run(self._replica_step, args=(batch,))
        if functions.after_step is not None:
            functions.after_step(batch)
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, values, axis=None)

    def _steps(self, iterator: Iterator, steps: tf.Tensor) -> tf.Tensor:
        # A TensorArray takes its element shape from the first write, so the step is traced
        # once, whatever number of scalars ``compute`` returns.
        def step(index: tf.Tensor, history: tf.TensorArray) -> tuple[tf.Tensor, tf.TensorArray]:
            return index + 1, history.write(index, self._one_step(iterator))

        _, history = tf.while_loop(
            lambda index, _: index < steps,
            step,
            (tf.constant(0), tf.TensorArray(tf.float32, size=steps)),
        )
        return tf.reduce_mean(history.stack(), axis=0)


def _write_scalars(writer, scalars: dict[str, float], step: int) -> None:
    with writer.as_default(step=step):
        for name, value in scalars.items():
            tag = name if name == "learning_rate" or "/" in name else f"train/{name}"
            tf.summary.scalar(tag, value)


def _format(scalars: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" for name, value in scalars.items())


class Progress:
    """The progress lines: the training scalars averaged over the steps since the previous
    line, the speed over them, the estimated time left, and the newest monitor scalars (e.g.
    the kNN accuracy of the last checkpoint) with the step they were measured at."""

    def __init__(
        self,
        settings: LoopSettings,
        start_step: int,
        initial_monitors: dict[str, float] | None = None,
    ) -> None:
        self._settings = settings
        self._start_step = start_step
        self._started = time.time()
        self._steps = 0
        self._seconds = 0.0
        self._sums: dict[str, float] = {}
        self._monitors = None if initial_monitors is None else (start_step, initial_monitors)

    def add(self, scalars: dict[str, float], steps: int, seconds: float) -> None:
        """Count ``steps`` steps that took ``seconds`` and averaged ``scalars``."""
        self._steps += steps
        self._seconds += seconds
        for name, value in scalars.items():
            self._sums[name] = self._sums.get(name, 0.0) + value * steps

    def monitored(self, step: int, scalars: dict[str, float]) -> None:
        """The monitor scalars measured at ``step``."""
        self._monitors = (step, scalars)

    def log(self, step: int, learning_rate: float) -> None:
        """Log the line of ``step`` and start a new interval."""
        settings = self._settings
        done = max(step - self._start_step, 1)
        eta = (time.time() - self._started) / done * (settings.total_steps - step)
        means = {name: total / self._steps for name, total in self._sums.items()}
        line = (
            f"step {step}/{settings.total_steps} epoch {settings.epoch(step):.2f} "
            f"{_format(means)} "
            f"lr={learning_rate:.4g} "
            f"images/s={self._steps * settings.global_batch_size / self._seconds:.1f} "
            f"eta={time.strftime('%H:%M:%S', time.gmtime(eta))}"
        )
        if self._monitors is not None:
            measured_at, monitors = self._monitors
            line += f"; at step {measured_at} {_format(monitors)}"
        logger.info("%s", line)
        self._steps, self._seconds, self._sums = 0, 0.0, {}
