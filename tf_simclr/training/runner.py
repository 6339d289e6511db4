"""Run one phase end to end: data -> model -> loop -> checkpoints -> evaluation -> hub export.

:func:`tf_simclr.train` (and so ``tf-simclr``) runs a :class:`RunConfig` with this. The
model_dir layout is the design's contract: ``ckpt/``, ``train/`` and ``eval/`` (TensorBoard),
``hub/<step>/``, ``config.json``, ``classes.txt`` (the source's class names, line i naming
class i), ``result.json`` and ``labels_subset.txt`` when a label fraction was used
(``flags.json`` is written by :func:`tf_simclr.training.api.train`).

Constructing a :class:`PhaseRunner` reads and checks everything the run needs (data, splits,
labeled subset, batch, step count) and writes nothing. Against the size of the training set it
caps a batch larger than the set (:func:`capped_batch_size`), counts epochs in images seen (step
x global batch / training examples) and keeps checkpoints of a cadence in epochs at least
:data:`~tf_simclr.config.MIN_STEPS_BETWEEN_CHECKPOINTS` apart (:func:`checkpoint_interval`).

Training resumes from the newest usable checkpoint, and a resume is the same run or it is
refused: :meth:`PhaseRunner.check_model_dir`, before anything is written, compares the command
with the run's ``config.json`` (what may change: :data:`tf_simclr.command_line.RUN_IDENTITY` and
its neighbours) and the checkpoint's variable shapes with the model it describes. Each command
that trains appends a segment to ``config.json`` (:meth:`PhaseRunner.config_record`), whose top
level holds the settings of the newest one. The train section of ``result.json`` is written
before the hub module is exported, and on an interruption
(:class:`~tf_simclr.training.loop.TrainingInterruptedError`) it records where training stopped.
:meth:`PhaseRunner.recorded_result` recognises a run that already did everything its mode asks
for, so that rerunning a finished command trains nothing; :meth:`PhaseRunner.missing_export`
names the module an export cut short left out. JSON files are replaced atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import os
import tempfile

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints, hub, logs
from tf_simclr.command_line import (
    RESUME_LENGTH,
    RUN_ARCHITECTURE,
    RUN_IDENTITY,
    Change,
    allowed_changes,
    setting_changes,
)
from tf_simclr.config import MIN_STEPS_BETWEEN_CHECKPOINTS, RunConfig, TrainConfig
from tf_simclr.data import build_distributed_dataset
from tf_simclr.model_dir import write_class_names, write_json_atomically
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import build_learning_rate_schedule, build_optimizer, num_train_steps
from tf_simclr.training import evaluate, loop, phases
from tf_simclr.training.strategy import is_chief

logger = logging.getLogger("tf_simclr")


RESULT_FILENAME = "result.json"
SEGMENTS_KEY = "segments"
# What result.json's train section records of a training stopped by a signal.
INTERRUPTED_KEY = "interrupted_by"


def capped_batch_size(batch: int, num_examples: int, replicas: int) -> int:
    """``batch``, or if it is larger than the ``num_examples`` training examples, the largest
    multiple of ``replicas`` that is not (every replica gets the same share).

    A batch cannot hold more distinct images than the training set: the repeated stream would
    put copies of an image in one batch (false negatives of NT-Xent, SimCLR section 2.1), and
    the learning rate, scaled by the batch (SimCLR appendix B.1), would be that of a batch the
    data does not have. Raises ValueError when there are fewer examples than replicas.
    """
    if batch <= num_examples:
        return batch
    capped = num_examples - num_examples % replicas
    if not capped:
        raise ValueError(
            f"the training set holds {num_examples} training example"
            f"{'s' if num_examples != 1 else ''}, fewer than the {replicas} replicas of this "
            "strategy (each needs one per step): use more data or fewer replicas."
        )
    return capped


def checkpoint_interval(train: TrainConfig, num_examples: int, batch: int) -> int:
    """Steps between checkpoints: ``checkpoint_steps`` when set; otherwise ``checkpoint_epochs``
    counted in images seen (``checkpoint_epochs * num_examples // batch`` steps, as the
    reference), but at least ``MIN_STEPS_BETWEEN_CHECKPOINTS`` (the loop always saves the last
    step)."""
    if train.checkpoint_steps:
        return train.checkpoint_steps
    steps = int(train.checkpoint_epochs * num_examples // batch)
    return max(steps, MIN_STEPS_BETWEEN_CHECKPOINTS)


class PhaseRunner:
    """Runs the phase ``PHASES[train_mode]`` under ``strategy``; see :func:`run`. Generic: it
    asks the phase for its examples, architecture, variables, compute, monitors and export."""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        self.strategy = strategy
        self.chief = is_chief(strategy)
        self.phase = phases.PHASES[config.train.train_mode](config, strategy)
        # The phase may have turned off what its data cannot serve (the kNN monitor).
        self.config = self.phase.config
        self.model_config = self.phase.model_config()
        self.train_info = self.phase.train_info
        self.source, self.num_examples = self.phase.training_examples()
        self._cap_batch()
        train = self.config.train
        self.total_steps = num_train_steps(
            self.num_examples, train.train_epochs, train.train_batch_size, train.train_steps
        )
        self._model: SimCLRModel | None = None
        self._permitted: list[str] | None = None  # the checked resume's changes, to be logged
        logger.info("%s", self._start_line())

    def _cap_batch(self) -> None:
        """Cap a batch larger than the training set (:func:`capped_batch_size`) in the config
        of the runner and of the phase (so the learning rate, the pipeline, the memory and
        ``config.json`` all get it), with one warning naming both numbers."""
        train, examples = self.config.train, self.num_examples
        batch = capped_batch_size(
            train.train_batch_size, examples, self.strategy.num_replicas_in_sync
        )
        if batch == train.train_batch_size:
            return
        memory_size = self.config.memory.memory_size
        if memory_size % batch:
            raise ValueError(
                f"--train_batch_size={train.train_batch_size} is capped to {batch} ({examples} "
                f"training examples), which does not divide --memory_size={memory_size}: every "
                f"step writes one projection per image; use a multiple of {batch}, or more data."
            )
        logger.warning(
            "--train_batch_size=%d is larger than the %d training examples: training with "
            "batch %d (the learning rate is scaled for it).",
            train.train_batch_size,
            examples,
            batch,
        )
        capped = dataclasses.replace(train, train_batch_size=batch)
        self.phase.config = dataclasses.replace(self.config, train=capped)
        self.config = self.phase.config

    def _start_line(self) -> str:
        """Phase, data, model, strategy, precision and steps, in one line."""
        train, strategy = self.config.train, self.strategy
        return logs.start_line(
            f"{train.train_mode} (mode {train.mode})",
            self.phase.describe_data(),
            self.model_config,
            type(strategy).__name__.strip("_"),
            strategy.num_replicas_in_sync,
            (self.total_steps, train.train_batch_size, self.num_examples),
        )

    def loop_settings(self, resume_from: str | None) -> loop.LoopSettings:
        """The training loop's settings, resuming from ``resume_from`` (None: a fresh run)."""
        train = self.config.train
        return loop.LoopSettings(
            model_dir=train.model_dir,
            total_steps=self.total_steps,
            steps_per_loop=train.steps_per_loop,
            checkpoint_steps=checkpoint_interval(train, self.num_examples, train.train_batch_size),
            keep_checkpoint_max=train.keep_checkpoint_max,
            global_batch_size=train.train_batch_size,
            num_examples=self.num_examples,
            jit_compile=train.jit_compile,
            resume_from=resume_from,
            log_every_steps=train.log_every_steps,
        )

    # -- what the model_dir already holds ------------------------------------------------------

    @functools.cached_property
    def resume_point(self) -> str | None:
        """The newest usable checkpoint of the model_dir, which training resumes from (None: the
        run starts at step 0); read once, every newer unusable one named in a warning."""
        return checkpoints.newest_usable_checkpoint(self.config.train.model_dir)

    @property
    def config_path(self) -> str:
        """The model_dir's ``config.json``."""
        return os.path.join(self.config.train.model_dir, checkpoints.CONFIG_FILENAME)

    @functools.cached_property
    def saved_config(self) -> dict | None:
        """The ``config.json`` of the run this command continues: a training mode, a checkpoint
        to resume from and a ``config.json`` (ValueError naming it when it cannot be read);
        None for a new run and for ``mode=eval``."""
        if self.config.train.mode == "eval" or self.resume_point is None:
            return None
        if not os.path.exists(self.config_path):
            return None
        return checkpoints.read_run_config(self.config_path)

    def settings(self) -> dict:
        """What ``config.json`` records of this command: every configuration section as the run
        runs it (``model``: the model it builds) and ``num_train_examples``."""
        payload = self.config.to_json()
        payload["model"] = dataclasses.asdict(self.model_config)
        payload["num_train_examples"] = self.train_info.num_examples
        return payload

    def check_model_dir(self) -> None:
        """Check, before anything is written, that this command can run on what the model_dir
        holds; raises ValueError naming what is wrong.

        A resume (a training mode, a usable checkpoint and a ``config.json``) must be the same
        run: a change of a :data:`~tf_simclr.command_line.RUN_IDENTITY` setting not named by
        ``allow_config_change``, of the architecture, or a shorter run (see
        :data:`~tf_simclr.command_line.RESUME_LENGTH`) is refused with each flag and both values.
        Then the checkpoint it resumes (or, for ``mode=eval``, the newest one) must hold the
        variables of the model ``config.json`` and the command describe, shape for shape."""
        if self._permitted is not None:  # checked already
            return
        train, permitted = self.config.train, []
        if train.mode == "eval":  # --checkpoint evaluated as it is is checked when restored
            prefix = None
            if not checkpoints.evaluates_source(train):
                prefix = checkpoints.latest_checkpoint(train.model_dir)
        else:
            prefix = self.resume_point
            if self.saved_config is not None:
                permitted = self._check_same_run(self.saved_config, prefix)
        if prefix is not None:
            self._check_checkpoint(prefix)
        self._permitted = permitted

    def _check_same_run(self, saved: dict, prefix: str) -> list[str]:
        """Refuse what :meth:`check_model_dir` refuses of a resume from ``prefix`` of the run
        whose ``config.json`` holds ``saved``; returns a log line per change it permits."""
        train, step = self.config.train, checkpoints.checkpoint_step(prefix)
        allowed = allowed_changes(train.allow_config_change)
        changes = setting_changes(saved, self.settings())
        fixed = [change for change in changes if change.key in RUN_ARCHITECTURE]
        refused = [
            change for change in changes if change.key in RUN_IDENTITY and change.key not in allowed
        ]
        length = [change for change in changes if change.key in RESUME_LENGTH]
        problems = []
        if refused:
            names = ",".join(change.name for change in refused)
            problems.append(
                f"{_described(refused)}: pass them as config.json has them, or "
                f"--allow_config_change={names} to change them from step {step} on (recorded as "
                "a new segment in config.json)"
            )
        if fixed:
            problems.append(
                f"{_described(fixed)}: a run's architecture never changes (its checkpoints hold it)"
            )
        saved_train = {**dataclasses.asdict(TrainConfig(model_dir="-")), **saved.get("train", {})}
        saved_total = num_train_steps(
            self.num_examples,
            saved_train["train_epochs"],
            saved_train["train_batch_size"],
            saved_train["train_steps"],
        )
        steps = f"{_described(length)}: " if length else ""
        if self.total_steps < step:
            problems.append(
                f"{steps}this command ends the run at step {self.total_steps}, before step "
                f"{step}, which it has reached; a run cannot go back: evaluate it (--mode=eval) "
                f"or start a new run from it (--checkpoint={prefix})"
            )
        elif self.total_steps < saved_total and not allowed & RESUME_LENGTH:
            problems.append(
                f"{steps}this command shortens the run from {saved_total} to "
                f"{self.total_steps} steps: pass --allow_config_change=train_steps to end it "
                "earlier (its learning-rate schedule then ends there too)"
            )
        if problems:
            raise ValueError(
                f"{train.model_dir} holds a run that this command would change ({step} steps "
                f"trained; its settings are in {self.config_path}), and a resume continues the "
                f"same run. {'. '.join(problems)}. Or train a new run in another --model_dir."
            )
        permitted = [
            f"{change.describe()}: changed from step {step} on, as --allow_config_change allows"
            for change in changes
            if change.key in RUN_IDENTITY
        ]
        if self.total_steps < saved_total:  # a longer run is the start line's news
            permitted.append(
                f"{steps}the run now ends at step {self.total_steps} instead of {saved_total}, "
                "as --allow_config_change allows"
            )
        return permitted

    def _check_checkpoint(self, prefix: str) -> None:
        """Refuse a checkpoint whose model variables differ from the model this command builds
        (e.g. a config.json of another run copied into the model_dir)."""
        problems = checkpoints.checkpoint_mismatches(self.built_model(), prefix)
        if not problems:
            return
        if os.path.exists(self.config_path):
            described = f"that {self.config_path} describes"
            advice = (
                "It was replaced or edited: put back the run's own config.json, or train a new "
                "run in another --model_dir."
            )
        else:
            described = "that the flags describe"
            advice = "Pass the architecture flags of the run that wrote it."
        raise ValueError(
            f"the checkpoint {prefix} does not hold the model {described}: "
            f"{'; '.join(problems)}. {advice}"
        )

    def recorded_result(self) -> dict | None:
        """``result.json`` of a run that already did everything ``mode`` asks for: its train
        section (and for ``train_then_eval`` its eval section) records :attr:`total_steps`,
        and not as interrupted, and the checkpoint training would resume from is that step's.
        None otherwise, and for ``mode=eval``, which evaluates again."""
        train = self.config.train
        if train.mode == "eval":
            return None
        latest = self.resume_point
        if latest is None or checkpoints.checkpoint_step(latest) != self.total_steps:
            return None
        recorded = _read_result(train.model_dir)
        sections = ("train", "eval") if train.mode == "train_then_eval" else ("train",)
        finished = all(_finished(recorded.get(name, {}), self.total_steps) for name in sections)
        return recorded if finished else None

    def missing_export(self) -> str | None:
        """The hub module of the last step when the run exports one and it is not there (an
        export cut short by a kill); None otherwise."""
        train = self.config.train
        path = os.path.join(train.model_dir, "hub", str(self.total_steps))
        if not train.export_hub or checkpoints.is_hub_module(path):
            return None
        return path

    def export_finished(self) -> None:
        """Export the hub module of a finished run from its last checkpoint, training nothing
        (what a rerun does when :meth:`missing_export` names one)."""
        prefix = self.resume_point
        model, _, functions = self._prepare(prefix)
        if functions.checkpoint_objects:  # e.g. the memory network, which may be exported
            status = tf.train.Checkpoint(**functions.checkpoint_objects).restore(prefix)
            status.expect_partial().assert_existing_objects_matched()
        self._export(model)

    # -- training ----------------------------------------------------------------------------

    def built_model(self) -> SimCLRModel:
        """The phase's model, built once under the strategy: checked against the checkpoint,
        then trained or evaluated."""
        if self._model is None:
            self._model = phases.base.build_model(
                self.model_config, self.strategy, self.config.augment.image_size
            )
        return self._model

    def _prepare(
        self, resume_from: str | None
    ) -> tuple[SimCLRModel, keras.optimizers.Optimizer, loop.StepFunctions]:
        """The model with the weights of ``resume_from`` (or the phase's initial weights), its
        optimizer and the phase's step functions. The weights come first: what the phase builds
        from the model starts from them (the memory network copies the online network, also
        when a resume adds the memory); the loop then restores the whole checkpoint."""
        config, strategy, phase = self.config, self.strategy, self.phase
        train = config.train
        model = self.built_model()
        variables = phase.trainable_variables(model)
        with strategy.scope():
            schedule = build_learning_rate_schedule(
                config.optim,
                self.num_examples,
                train.train_batch_size,
                train.train_epochs,
                train.train_steps,
            )
            optimizer = build_optimizer(config.optim, schedule, model.excluded_variables())
            if self.model_config.dtype_policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            optimizer.build(variables)
        if resume_from is None:
            phase.restore(model)
        else:
            checkpoints.restore_checkpoint(model, resume_from)
        return model, optimizer, phase.step_functions(model, variables, schedule)

    def train(self) -> dict[str, float]:
        """Train from the newest usable checkpoint (or the phase's initial weights) to
        :attr:`total_steps`; returns the last logged scalars (none when the checkpoint was
        already at the last step). The hub module is :meth:`run`'s to export."""
        config, strategy, phase = self.config, self.strategy, self.phase
        train = config.train
        source, num_examples = self.source, self.num_examples
        if self.chief:
            checkpoints.remove_stale_temp_folders(train.model_dir)
        resume_from = self.resume_point
        if resume_from is None and checkpoints.latest_checkpoint(train.model_dir):
            logger.warning("no usable checkpoint in %s: starting from step 0", train.model_dir)
        model, optimizer, functions = self._prepare(resume_from)

        def iterator_factory(start_step: int):
            dataset = build_distributed_dataset(
                strategy,
                source,
                num_examples,
                phase=phase.train_mode,
                global_batch_size=train.train_batch_size,
                augment=config.augment,
                training=True,
                seed=config.data.seed,
                deterministic=config.data.deterministic,
                cache=config.data.cache_dataset,
                shuffle_buffer=config.data.shuffle_buffer,
                start_step=start_step,
            )
            return iter(dataset)

        if self.chief:
            phase.before_training(source, num_examples)
        settings = self.loop_settings(resume_from)
        return loop.train(strategy, model, optimizer, functions, iterator_factory, settings)

    def _export(self, model: SimCLRModel) -> None:
        """The TF-Hub module of the phase into ``model_dir/hub/<step>``. Every worker exports:
        under MultiWorkerMirroredStrategy reading the synchronised batch-norm statistics is a
        collective op, so a non-chief worker writes the same module to a scratch folder that
        it then deletes."""
        train = self.config.train
        if not train.export_hub:
            return
        with tempfile.TemporaryDirectory() as scratch:
            hub.export_to_model_dir(
                self.phase.exported_model(model),
                train.model_dir if self.chief else scratch,
                self.total_steps,
                train.keep_hub_module_max,
                class_names=self.phase.label_info.class_names,
            )

    # -- evaluation --------------------------------------------------------------------------

    def evaluate(
        self, model: SimCLRModel | None = None, step: int | None = None, classifier: bool = True
    ) -> dict[str, float]:
        """Top-1 / top-5 of the supervised head (unless ``classifier`` is False) over the whole
        eval split and the phase's own evaluations (kNN for pretraining), logged at ``step``
        (default: the newest checkpoint's)."""
        train = self.config.train
        if model is None:
            model = self._restore_for_eval()
        results: dict[str, float] = {}
        if classifier and model.supervised_head is not None:
            dataset = self.phase.eval_dataset(True)
            results.update(
                evaluate.evaluate_classifier(self.strategy, model, dataset, train.eval_steps)
            )
        results.update(self.phase.evaluations(model))
        step = self._latest_step() if step is None else step
        if self.chief:
            writer = tf.summary.create_file_writer(os.path.join(train.model_dir, "eval"))
            with writer.as_default(step=step):
                for name, value in results.items():
                    if name != "num_examples":
                        tf.summary.scalar(f"eval/{name}", value)
            writer.flush()
        results["global_step"] = step
        return results

    def _latest_step(self) -> int:
        latest = checkpoints.latest_checkpoint(self.config.train.model_dir)
        return checkpoints.checkpoint_step(latest) if latest else 0

    def _restore_for_eval(self, checkpoint: str | None = None) -> SimCLRModel:
        model = self.built_model()
        path = checkpoint or checkpoints.find_usable_checkpoint(self.config.train.model_dir)[0]
        checkpoints.restore_checkpoint(model, path)
        return model

    def evaluate_source(self, source: str) -> dict:
        """``mode=eval`` of a model_dir without checkpoints of its own: the weights of
        ``--checkpoint`` (a run, a hub module or a reference checkpoint) as they are, at step 0.
        Fine-tuning and distillation evaluate the source's supervised head (an error when it has
        none); pretraining evaluates its encoder (kNN) only."""
        model = self.built_model()
        classifier = self.config.train.train_mode != "pretrain"
        checkpoints.restore_weights(model, source, include_supervised_head=classifier)
        logger.info("evaluating %s as it is (no checkpoint in the model_dir)", source)
        return {**self.evaluate(model, step=0, classifier=classifier), "checkpoint": source}

    # -- the whole command -------------------------------------------------------------------

    def config_record(self) -> dict:
        """What ``config.json`` holds after this command: :meth:`settings` at the top level,
        and ``segments``, one per training command, oldest first. A new run's first segment is
        ``{"step": 0, "settings": <its settings>}``; each resume appends ``{"step": <the step it
        resumed from>, "changes": {"optim.learning_rate": {"from": 0.3, "to": 0.5}, ...}}`` with
        every setting it changed (none when it only continued), so that the first segment's
        settings and every later change stay on record."""
        now = self.settings()
        saved = self.saved_config
        if saved is None:
            return {**now, SEGMENTS_KEY: [{"step": 0, "settings": now}]}
        first = {key: value for key, value in saved.items() if key != SEGMENTS_KEY}
        earlier = saved.get(SEGMENTS_KEY) or [{"step": 0, "settings": first}]
        changes = {
            change.key: {"from": change.saved, "to": change.now}
            for change in setting_changes(saved, now)
        }
        examples = saved.get("num_train_examples")
        if examples != now["num_train_examples"]:
            changes["num_train_examples"] = {"from": examples, "to": now["num_train_examples"]}
        step = checkpoints.checkpoint_step(self.resume_point)
        return {**now, SEGMENTS_KEY: [*earlier, {"step": step, "changes": changes}]}

    def run(self) -> dict:
        """Run ``mode`` (train, eval or train_then_eval) after :meth:`check_model_dir`; records
        the result in ``result.json`` (sections of earlier runs kept) and returns it. Training
        records its section before the export; an interruption records where it stopped
        (``{"interrupted_by": "SIGTERM", "step": ..., "checkpoint": ...}`` merged into the
        train section) and is raised again."""
        self.check_model_dir()
        train = self.config.train
        os.makedirs(train.model_dir, exist_ok=True)
        if self.chief and train.mode != "eval":  # an evaluation leaves the run's config
            for line in self._permitted:
                logger.warning("%s", line)
            write_json_atomically(self.config_path, self.config_record())
            if self.phase.label_info.class_names:
                write_class_names(train.model_dir, self.phase.label_info.class_names)
        recorded = _read_result(train.model_dir)
        # e.g. mode=eval after training: the train section is kept
        result = {**recorded, "train_mode": train.train_mode}
        if train.mode in ("train", "train_then_eval"):
            try:
                scalars = self.train()
            except loop.TrainingInterruptedError as error:
                stopped = {
                    INTERRUPTED_KEY: error.signal_name,
                    "step": error.step,
                    "checkpoint": error.checkpoint,
                }
                self._write_result({**result, "train": {**recorded.get("train", {}), **stopped}})
                raise
            # Nothing left to train (e.g. killed after its last checkpoint): the recorded
            # section if it records the last step, else that step.
            result["train"] = (
                {**scalars, "global_step": self.total_steps}
                if scalars
                else _finished_section(recorded.get("train", {}), self.total_steps)
            )
            self._write_result(result)  # before the export, which a kill may cut short
            if scalars or self.missing_export():
                self._export(self.built_model())
        if train.mode == "train_then_eval":
            result["eval"] = self.evaluate(self.built_model())
        if train.mode == "eval":
            if checkpoints.evaluates_source(train):
                result["eval"] = self.evaluate_source(train.init_checkpoint)
            else:
                result["eval"] = follow_checkpoints(self)
        self._write_result(result)
        return result

    def _write_result(self, result: dict) -> None:
        if self.chief:
            path = os.path.join(self.config.train.model_dir, RESULT_FILENAME)
            write_json_atomically(path, result)


def _described(changes: list[Change]) -> str:
    """``--a=1 (config.json: 2), --b=...``."""
    return ", ".join(change.describe() for change in changes)


def _finished(section: dict, total_steps: int) -> bool:
    """Whether a section of ``result.json`` records the end of a run of ``total_steps``."""
    return section.get("global_step") == total_steps and INTERRUPTED_KEY not in section


def _finished_section(recorded: dict, total_steps: int) -> dict:
    """The train section of a run found at its last step with nothing left to train:
    ``recorded`` when it records that end, else ``{"global_step": total_steps}`` (the last
    scalars were lost with the command that trained them)."""
    return recorded if _finished(recorded, total_steps) else {"global_step": total_steps}


def _read_result(model_dir: str) -> dict:
    """The model_dir's ``result.json`` ({} when there is none, or it is unreadable)."""
    path = os.path.join(model_dir, RESULT_FILENAME)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError) as error:
        logger.warning("ignoring %s, which cannot be read: %s", path, error)
        return {}


def follow_checkpoints(runner: PhaseRunner) -> dict:
    """``mode=eval``: evaluate the newest usable checkpoint (passing over recorded ones whose
    files are gone or unusable, with a warning); with a timeout, then every newer one until the
    timeout (a new one found unusable, e.g. pruned by the training run before it was read,
    gives way to the newest usable one, evaluated unless it was already)."""
    train = runner.config.train
    if not train.eval_timeout_seconds:
        path = checkpoints.find_usable_checkpoint(train.model_dir)[0]
        return _evaluate_checkpoint(runner, path)
    directory = os.path.join(train.model_dir, checkpoints.CKPT_SUBDIR)
    results: dict = {}
    evaluated_step = -1
    # What the model_dir holds now, then each checkpoint the training run records.
    arrivals = tf.train.checkpoints_iterator(directory, timeout=train.eval_timeout_seconds)
    for _ in itertools.chain([None], arrivals):
        newest = checkpoints.newest_usable_in(directory)
        if newest is None or checkpoints.checkpoint_step(newest) <= evaluated_step:
            continue
        results = _evaluate_checkpoint(runner, newest)
        evaluated_step = checkpoints.checkpoint_step(newest)
    if not results:
        logger.warning(
            "nothing evaluated: no usable checkpoint appeared in %s within "
            "--eval_timeout_seconds=%d",
            directory,
            train.eval_timeout_seconds,
        )
    return results


def _evaluate_checkpoint(runner: PhaseRunner, path: str) -> dict:
    results = runner.evaluate(runner._restore_for_eval(path), checkpoints.checkpoint_step(path))
    logger.info("evaluated %s: %s", path, results)
    return results
