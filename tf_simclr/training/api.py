"""The Python training entry point: ``tf_simclr.train(config)`` runs one phase.

A :class:`~tf_simclr.config.RunConfig` defines the whole run, the strategy
(:class:`~tf_simclr.config.DistributionConfig`) and the precision (``ModelConfig.dtype_policy``)
included; :func:`train` needs nothing else. ``tf-simclr`` is a thin caller: its command line
becomes that configuration (:mod:`tf_simclr.command_line`, also :func:`tf_simclr.config_from_flags`)
and it calls :func:`train`, mapping the exceptions below to exit statuses. So a recipe runs the
same from Python::

    import tf_simclr

    config = tf_simclr.config_from_flags(
        ["--flagfile=flags/folder/pretrain.flags", "--dataset=folder:photos", "--model_dir=runs/p"]
    )
    result = tf_simclr.train(config)  # == runs/p/result.json

:func:`train` starts the strategy, checks the sources, the data and the batch split, locks the
model_dir (training only: an evaluation may follow a training run), checks what the model_dir
holds, then runs ``config.train.mode`` and returns what it recorded in ``result.json``.

A run is one run. When the model_dir has a checkpoint to resume and a ``config.json``, the
command must ask for the same run: a changed setting of the run's identity
(:data:`tf_simclr.command_line.RUN_IDENTITY`: data, batch, image size and augmentation,
optimizer, learning rate and schedule, weight decay, loss, memory, precision, phase, starting
weights and teacher) is refused unless ``config.train.allow_config_change`` names it, the
architecture never changes, and the run may be lengthened but not shortened (unless
``train_steps`` is allowed to change). Operational settings (mode, strategy, cadences, eval and
kNN monitor settings, export ...) are free. Each training command appends a segment to
``config.json`` (the step it started at and what it changed); a permitted change is logged. The
checkpoint must also hold the variables of the model ``config.json`` describes.

A run that already did everything its mode asks for returns its recorded result without
training, and changes nothing, except that a hub module an export cut short left out is
exported again (the train section of ``result.json`` is written before the export).
:func:`plan` does everything :func:`train` does before the lock and the checks of the
model_dir's checkpoints (``tf-simclr --print_config``); it writes nothing and says what the
run would be.

Exceptions of :func:`train`:

- :class:`InvalidConfigError` (a ``ValueError``): the configuration cannot run here (a setting
  of another phase, a missing source or data folder, a batch that does not split over the
  replicas, fine-tuning on unlabeled images, a resume that would change the run, a
  ``config.json`` that cannot be read or does not match the checkpoints ...); raised before
  anything is written, naming the setting (flag and both values) or the file. A ``RunConfig``
  that is invalid in itself raises ``ValueError`` when it is constructed.
- :class:`~tf_simclr.model_dir.ModelDirInUseError`: another run holds the model_dir; nothing
  was changed.
- :class:`~tf_simclr.training.loop.NonFiniteLossError`: the loss became NaN or Inf; the run
  stopped and its last good checkpoint is as it was.
- :class:`~tf_simclr.training.loop.TrainingInterruptedError`: a signal stopped training after
  a checkpoint; ``result.json``'s train section records ``interrupted_by``, ``step`` and
  ``checkpoint``, and the same call resumes from it.
- :class:`~tf_simclr.training.strategy.ClusterStartError`: under ``multi_worker``, the other
  workers of ``TF_CONFIG`` did not come within ``worker_timeout_seconds`` (or this worker cannot
  listen on its address); nothing was written.
- :class:`~tf_simclr.training.strategy.ClusterWaitInterruptedError`: SIGTERM or SIGINT while
  waiting for them; nothing was written.

``KeyboardInterrupt`` passes through (the next call resumes from the newest checkpoint), and so
does an ``OSError`` of a full disk (:func:`tf_simclr.model_dir.is_disk_full` recognises it).
"""

from __future__ import annotations

import dataclasses
import logging
import os

import tensorflow as tf

from tf_simclr.command_line import check_run, flags_of
from tf_simclr.config import RunConfig
from tf_simclr.model_dir import ModelDirInUseError, ModelDirLock, write_json_atomically
from tf_simclr.training.loop import NonFiniteLossError
from tf_simclr.training.runner import PhaseRunner
from tf_simclr.training.strategy import (
    check_batch_sizes,
    configure_logical_cpus,
    create_strategy,
    is_chief,
    make_deterministic,
)

__all__ = [
    "InvalidConfigError",
    "ModelDirInUseError",
    "NonFiniteLossError",
    "Plan",
    "plan",
    "train",
]

logger = logging.getLogger("tf_simclr")

FLAGS_FILENAME = "flags.json"


class InvalidConfigError(ValueError):
    """The configuration cannot run here; raised before anything is written."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What :func:`train` would run, read from the data without training: ``config`` as the
    runner runs it (a batch capped to a small training set, what unlabeled data cannot serve
    turned off, the model with its number of classes and its batch norm), the strategy's
    ``replicas``, the ``num_train_examples`` of an epoch and the ``total_steps``."""

    config: RunConfig
    replicas: int
    num_train_examples: int
    total_steps: int


def train(config: RunConfig) -> dict:
    """Run one phase (``config.train.mode``: train, eval or train_then_eval) and return its
    result, the dictionary recorded in ``MODEL_DIR/result.json``: ``train_mode``, and a
    ``train`` section (the last logged scalars and ``global_step``; ``global_step`` alone when
    the command that trained the last steps was killed before recording them) and an ``eval``
    section (top-1 / top-5, kNN for pretraining, ``num_examples``, ``global_step``) as the mode
    asks.
    A training run also writes ``config.json`` (with its segments) and ``flags.json``
    (:func:`flags_of`); see the module docstring for what a resume may change and for the
    exceptions."""
    strategy = _start(config)
    model_dir = config.train.model_dir
    lock = ModelDirLock(model_dir)
    # Other workers of a multi-worker run share the chief's model_dir; an evaluation may read a
    # model_dir while a training run holds it.
    trains = is_chief(strategy) and config.train.mode != "eval"
    try:
        if trains and os.path.isdir(model_dir):
            lock.acquire()  # a second run on a model_dir stops here, before reading data
        runner = _runner(config, strategy)
        os.makedirs(model_dir, exist_ok=True)
        if trains:
            lock.acquire()
        _check_model_dir(runner)
        recorded = runner.recorded_result()
        if recorded is not None:
            missing = runner.missing_export()
            if missing is None:
                logger.warning(
                    "%s has already finished (step %d); nothing was changed. Its recorded "
                    "results (result.json) are returned.",
                    model_dir,
                    runner.total_steps,
                )
                return recorded
            logger.warning(
                "%s has already finished (step %d), but its hub module %s is missing (an "
                "export cut short): exporting it again; nothing is trained. Its recorded "
                "results (result.json) are returned.",
                model_dir,
                runner.total_steps,
                missing,
            )
            runner.export_finished()
            return recorded
        if trains:  # an evaluation leaves the flags of the run it evaluates
            write_json_atomically(os.path.join(model_dir, FLAGS_FILENAME), flags_of(config))
        return runner.run()
    finally:
        lock.release()


def plan(config: RunConfig) -> Plan:
    """What :func:`train` would run (:class:`Plan`): the strategy started, the sources, the
    data and the batch split checked, the data's size and classes read, what the model_dir
    holds checked against the command (a resume that would change the run, checkpoints of
    another model); nothing trained or written, no lock taken. Raises
    :class:`InvalidConfigError` as :func:`train` does."""
    strategy = _start(config)
    runner = _runner(config, strategy)
    _check_model_dir(runner)
    return Plan(
        config=dataclasses.replace(runner.config, model=runner.model_config),
        replicas=strategy.num_replicas_in_sync,
        num_train_examples=runner.num_examples,
        total_steps=runner.total_steps,
    )


def _start(config: RunConfig) -> tf.distribute.Strategy:
    """Check what the run needs (:func:`~tf_simclr.command_line.check_run`), start
    ``config.distribution``'s strategy (after splitting the CPU and making the run
    deterministic, when asked) and check that the batches split over its replicas."""
    try:
        check_run(config)
    except ValueError as error:
        raise InvalidConfigError(str(error)) from error
    distribution, data, train = config.distribution, config.data, config.train
    _split_cpu(distribution.logical_cpu_devices)
    if data.deterministic:
        make_deterministic(data.seed)
    strategy = create_strategy(
        distribution.strategy, distribution.tpu, distribution.worker_timeout_seconds
    )
    evaluates = train.mode != "train"
    try:
        check_batch_sizes(
            strategy, train.train_batch_size, train.eval_batch_size if evaluates else None
        )
    except ValueError as error:
        raise InvalidConfigError(str(error)) from error
    return strategy


def _split_cpu(count: int) -> None:
    """Split the CPU into ``count`` logical devices, unless an earlier run of this process did
    already (TensorFlow cannot change them once it has initialised its devices)."""
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) == count:
        return
    try:
        configure_logical_cpus(count)
    except RuntimeError as error:
        raise InvalidConfigError(
            f"logical_cpu_devices={count}: TensorFlow has already initialised its devices in "
            f"this process ({error}); run in a fresh process to split the CPU."
        ) from error


def _runner(config: RunConfig, strategy: tf.distribute.Strategy) -> PhaseRunner:
    """The runner of the phase: it reads and checks the data, the labeled subset, the batch
    and the step count, and writes nothing."""
    try:
        return PhaseRunner(config, strategy)
    except (ValueError, FileNotFoundError) as error:
        raise InvalidConfigError(str(error)) from error


def _check_model_dir(runner: PhaseRunner) -> None:
    """What the model_dir holds against the command (:meth:`PhaseRunner.check_model_dir`):
    a resume that would change the run, a config.json that cannot be read or does not match
    the checkpoints."""
    try:
        runner.check_model_dir()
    except (ValueError, FileNotFoundError) as error:
        raise InvalidConfigError(str(error)) from error
