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
:meth:`PhaseRunner.recorded_result` recognises a run that already did everything its mode asks
for, so that rerunning a finished command changes nothing. JSON files are replaced atomically;
training resumes from the newest usable checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints, hub, logs
from tf_simclr.config import MIN_STEPS_BETWEEN_CHECKPOINTS, RunConfig, TrainConfig
from tf_simclr.data import build_distributed_dataset
from tf_simclr.model_dir import write_class_names, write_json_atomically
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import build_learning_rate_schedule, build_optimizer, num_train_steps
from tf_simclr.training import evaluate, loop, phases
from tf_simclr.training.strategy import is_chief

logger = logging.getLogger("tf_simclr")


RESULT_FILENAME = "result.json"


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

    def recorded_result(self) -> dict | None:
        """``result.json`` of a run that already did everything ``mode`` asks for: its train
        section (and for ``train_then_eval`` its eval section) records :attr:`total_steps`, and
        its newest checkpoint is that step's. None otherwise, and for ``mode=eval``, which
        evaluates again."""
        train = self.config.train
        if train.mode == "eval":
            return None
        latest = checkpoints.latest_checkpoint(train.model_dir)
        if latest is None or checkpoints.checkpoint_step(latest) != self.total_steps:
            return None
        recorded = _read_result(train.model_dir)
        sections = ("train", "eval") if train.mode == "train_then_eval" else ("train",)
        steps = [recorded.get(name, {}).get("global_step") for name in sections]
        return recorded if steps == [self.total_steps] * len(sections) else None

    def train(self) -> dict[str, float]:
        """Train from the newest usable checkpoint (or the phase's initial weights) to
        :attr:`total_steps` and export the hub module; returns the last logged scalars (none
        when the checkpoint was already at the last step)."""
        config, strategy, phase = self.config, self.strategy, self.phase
        train = config.train
        source, num_examples = self.source, self.num_examples
        batch = train.train_batch_size
        if self.chief:
            checkpoints.remove_stale_temp_folders(train.model_dir)
        resume_from = checkpoints.newest_usable_checkpoint(train.model_dir)
        if resume_from is None and checkpoints.latest_checkpoint(train.model_dir):
            logger.warning("no usable checkpoint in %s: starting from step 0", train.model_dir)
        model = phases.base.build_model(self.model_config, strategy, config.augment.image_size)
        variables = phase.trainable_variables(model)
        with strategy.scope():
            schedule = build_learning_rate_schedule(
                config.optim, num_examples, batch, train.train_epochs, train.train_steps
            )
            optimizer = build_optimizer(config.optim, schedule, model.excluded_variables())
            if self.model_config.dtype_policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            optimizer.build(variables)
        if resume_from is None:
            phase.restore(model)
        functions = phase.step_functions(model, variables, schedule)

        def iterator_factory(start_step: int):
            dataset = build_distributed_dataset(
                strategy,
                source,
                num_examples,
                phase=phase.train_mode,
                global_batch_size=batch,
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
        scalars = loop.train(strategy, model, optimizer, functions, iterator_factory, settings)
        self.model = model
        exported = os.path.join(train.model_dir, "hub", str(self.total_steps), "saved_model.pb")
        if scalars or not os.path.exists(exported):
            self._export(model)
        return scalars

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
        model = phases.base.build_model(
            self.model_config, self.strategy, self.config.augment.image_size
        )
        path = checkpoint or checkpoints.find_usable_checkpoint(self.config.train.model_dir)[0]
        checkpoints.restore_checkpoint(model, path)
        return model

    def evaluate_source(self, source: str) -> dict:
        """``mode=eval`` of a model_dir without checkpoints of its own: the weights of
        ``--checkpoint`` (a run, a hub module or a reference checkpoint) as they are, at step 0.
        Fine-tuning and distillation evaluate the source's supervised head (an error when it has
        none); pretraining evaluates its encoder (kNN) only."""
        model = phases.base.build_model(
            self.model_config, self.strategy, self.config.augment.image_size
        )
        classifier = self.config.train.train_mode != "pretrain"
        checkpoints.restore_weights(model, source, include_supervised_head=classifier)
        logger.info("evaluating %s as it is (no checkpoint in the model_dir)", source)
        return {**self.evaluate(model, step=0, classifier=classifier), "checkpoint": source}

    def run(self) -> dict:
        """Run ``mode`` (train, eval or train_then_eval); records the result in
        ``result.json`` (sections of earlier runs kept) and returns it."""
        config, train = self.config, self.config.train
        os.makedirs(train.model_dir, exist_ok=True)
        if self.chief and train.mode != "eval":  # an evaluation leaves the run's config
            payload = config.to_json()
            payload["model"] = dataclasses.asdict(self.model_config)
            payload["num_train_examples"] = self.train_info.num_examples
            write_json_atomically(os.path.join(train.model_dir, "config.json"), payload)
            if self.phase.label_info.class_names:
                write_class_names(train.model_dir, self.phase.label_info.class_names)
        recorded = _read_result(train.model_dir)
        result: dict = {"train_mode": train.train_mode}
        if train.mode in ("train", "train_then_eval"):
            scalars = self.train()
            # Nothing left to train (e.g. killed after its last checkpoint): keep the record.
            result["train"] = (
                {**scalars, "global_step": self.total_steps}
                if scalars
                else recorded.get("train", {})
            )
        if train.mode == "train_then_eval":
            result["eval"] = self.evaluate(self.model)
        if train.mode == "eval":
            if checkpoints.evaluates_source(train):
                result["eval"] = self.evaluate_source(train.init_checkpoint)
            else:
                result["eval"] = follow_checkpoints(self)
        result = {**recorded, **result}  # e.g. mode=eval after training: keep the train section
        if self.chief:
            write_json_atomically(os.path.join(train.model_dir, RESULT_FILENAME), result)
        return result


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


def run(config: RunConfig, strategy: tf.distribute.Strategy) -> dict:
    """Run ``config.train.mode`` (train, eval or train_then_eval) of one phase."""
    return PhaseRunner(config, strategy).run()


def follow_checkpoints(runner: PhaseRunner) -> dict:
    """``mode=eval``: evaluate the newest usable checkpoint; with a timeout, every new one
    until the final one (or the timeout), skipping unusable ones with a warning."""
    train = runner.config.train
    directory = os.path.join(train.model_dir, checkpoints.CKPT_SUBDIR)
    results: dict = {}
    timeout = train.eval_timeout_seconds or None
    for path in tf.train.checkpoints_iterator(directory, timeout=timeout):
        if timeout is None:
            path = checkpoints.find_usable_checkpoint(train.model_dir)[0]
        elif problem := checkpoints.checkpoint_problem(path):
            logger.warning("skipping checkpoint %s: it %s", path, problem)
            continue
        step = checkpoints.checkpoint_step(path)
        results = runner.evaluate(runner._restore_for_eval(path), step)
        logger.info("evaluated %s: %s", path, results)
        if timeout is None:
            break
    return results
