"""Run one phase end to end: data -> model -> loop -> checkpoints -> evaluation -> hub export.

This is what ``tf-simclr`` calls after turning flags into a :class:`RunConfig`. The model_dir
layout is the design's contract: ``ckpt/``, ``train/`` and ``eval/`` (TensorBoard),
``hub/<step>/``, ``config.json``, ``classes.txt`` (the source's class names, line i naming
class i), ``result.json`` and ``labels_subset.txt`` when a label fraction was used
(``flags.json`` is written by the binary).

Constructing a :class:`PhaseRunner` reads and checks everything the run needs (data, splits,
labeled subset, step count) and writes nothing. :meth:`PhaseRunner.recorded_result` recognises a
run that already did everything its mode asks for, so that rerunning a finished command changes
nothing. JSON files are replaced atomically; training resumes from the newest usable checkpoint.
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
from tf_simclr.config import RunConfig
from tf_simclr.data import build_distributed_dataset
from tf_simclr.model_dir import write_class_names, write_json_atomically
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import build_learning_rate_schedule, build_optimizer, num_train_steps
from tf_simclr.training import evaluate, loop, phases
from tf_simclr.training.strategy import is_chief

logger = logging.getLogger("tf_simclr")


RESULT_FILENAME = "result.json"


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
        train = self.config.train
        self.source, self.num_examples = self.phase.training_examples()
        self.total_steps = num_train_steps(
            self.num_examples, train.train_epochs, train.train_batch_size, train.train_steps
        )
        self.steps_per_epoch = max(self.num_examples // train.train_batch_size, 1)
        logger.info("%s", self._start_line())

    def _start_line(self) -> str:
        """Phase, data, model, strategy, precision and steps, in one line."""
        train, strategy = self.config.train, self.strategy
        return logs.start_line(
            f"{train.train_mode} (mode {train.mode})",
            self.phase.describe_data(),
            self.model_config,
            type(strategy).__name__.strip("_"),
            strategy.num_replicas_in_sync,
            (self.total_steps, self.steps_per_epoch, train.train_batch_size),
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
        total_steps = self.total_steps
        if self.chief:
            checkpoints.remove_stale_temp_folders(train.model_dir)
        resume_from = checkpoints.newest_usable_checkpoint(train.model_dir)
        if resume_from is None and checkpoints.latest_checkpoint(train.model_dir):
            logger.warning("no usable checkpoint in %s: starting from step 0", train.model_dir)
        checkpoint_steps = train.checkpoint_steps or max(
            int(train.checkpoint_epochs * num_examples // batch), 1
        )
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
        settings = loop.LoopSettings(
            model_dir=train.model_dir,
            total_steps=total_steps,
            steps_per_loop=train.steps_per_loop,
            checkpoint_steps=checkpoint_steps,
            keep_checkpoint_max=train.keep_checkpoint_max,
            global_batch_size=batch,
            steps_per_epoch=self.steps_per_epoch,
            jit_compile=train.jit_compile,
            resume_from=resume_from,
            log_every_steps=train.log_every_steps,
        )
        scalars = loop.train(strategy, model, optimizer, functions, iterator_factory, settings)
        self.model = model
        exported = os.path.join(train.model_dir, "hub", str(total_steps), "saved_model.pb")
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
