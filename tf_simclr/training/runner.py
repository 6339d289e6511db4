"""Run one phase end to end: data -> model -> loop -> checkpoints -> evaluation -> hub export.

This is what ``tf-simclr`` calls after turning flags into a :class:`RunConfig`. The model_dir
layout is the design's contract: ``ckpt/``, ``train/`` and ``eval/`` (TensorBoard),
``hub/<step>/``, ``config.json``, ``result.json`` and ``labels_subset.txt`` when a label fraction
was used (``flags.json`` is written by the binary).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints, hub
from tf_simclr.config import ModelConfig, RunConfig
from tf_simclr.data import (
    build_dataset,
    build_distributed_dataset,
    label_subset,
    load_source,
)
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import build_learning_rate_schedule, build_optimizer, num_train_steps
from tf_simclr.training import evaluate, loop, phases
from tf_simclr.training.memory import NegativeMemory
from tf_simclr.training.strategy import is_chief

logger = logging.getLogger("tf_simclr")


def restore_weights(model: SimCLRModel, source: str, include_supervised_head: bool) -> None:
    """Load encoder and projection head (and optionally the supervised head) from ``source``."""
    if checkpoints.is_hub_module(source):
        parts = ["encoder", "projection_head"]
        if include_supervised_head:
            parts.append("supervised_head")
        hub.restore_model_from_hub(
            model, source, require_all_parts=include_supervised_head, parts=parts
        )
        return
    parts = {"encoder": model.encoder, "projection_head": model.projection_head}
    if include_supervised_head and model.supervised_head is not None:
        parts["supervised_head"] = model.supervised_head
    prefix, model_dir = checkpoints.find_checkpoint(source)
    saved = checkpoints.read_model_config(os.path.join(model_dir, checkpoints.CONFIG_FILENAME))
    mismatches = hub.architecture_mismatches(saved, model.config, parts)
    if mismatches:
        raise ValueError(
            f"{source!r} holds a different architecture (saved vs requested): "
            f"{'; '.join(mismatches)}; pass the same architecture flags as its run."
        )
    status = tf.train.Checkpoint(model=tf.train.Checkpoint(**parts)).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()


def _build_model(
    config: ModelConfig, strategy: tf.distribute.Strategy, image_size: int
) -> SimCLRModel:
    with strategy.scope():
        return SimCLRModel(config).build_for_size(image_size)


def _write_json(path: str, payload: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)


class PhaseRunner:
    """Builds and runs one phase under ``strategy``; see :func:`run`."""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        self.config = config
        self.strategy = strategy
        self.chief = is_chief(strategy)
        train = config.train
        self.train_source, self.train_info = load_source(
            config.data.dataset, split=config.data.train_split, data_dir=config.data.data_dir
        )
        self.num_classes = self.train_info.num_classes
        head_classes = self.num_classes
        if train.train_mode == "pretrain" and not train.lineareval_while_pretraining:
            head_classes = 0
        # With one replica, synchronised BN computes exactly plain BN, only slower (no fused
        # kernel), so it is switched off there.
        self.model_config = dataclasses.replace(
            config.model,
            num_classes=head_classes,
            supervised_head_stop_gradient=train.train_mode == "pretrain",
            supervised_head_batch_norm=train.train_mode == "pretrain",
            global_bn=config.model.global_bn and strategy.num_replicas_in_sync > 1,
        )

    # -- data ------------------------------------------------------------------------------

    def _training_examples(self) -> tuple[tf.data.Dataset, int]:
        """The training stream for the phase and its size (one epoch)."""
        train, data = self.config.train, self.config.data
        source, count = self.train_source, self.train_info.num_examples
        if train.train_mode == "pretrain":
            return source, count
        subset = label_subset(source, self.train_info, data, self.config.train.model_dir)
        if train.train_mode == "finetune":
            return subset.labeled, subset.num_labeled
        return subset.with_label_mask, count

    def _eval_dataset(self, distributed: bool):
        data = self.config.data
        source, info = load_source(data.dataset, split=data.eval_split, data_dir=data.data_dir)
        kwargs = dict(
            phase="eval",
            global_batch_size=self.config.train.eval_batch_size,
            augment=self.config.augment,
            training=False,
        )
        if distributed:
            return build_distributed_dataset(self.strategy, source, info.num_examples, **kwargs)
        return build_dataset(source, info.num_examples, **kwargs)

    # -- train -----------------------------------------------------------------------------

    def train(self) -> dict[str, float]:
        config, strategy = self.config, self.strategy
        train = config.train
        source, num_examples = self._training_examples()
        batch = train.train_batch_size
        total_steps = num_train_steps(num_examples, train.train_epochs, batch, train.train_steps)
        steps_per_epoch = max(num_examples // batch, 1)
        checkpoint_steps = train.checkpoint_steps or max(
            int(train.checkpoint_epochs * num_examples // batch), 1
        )
        image_size = config.augment.image_size
        model = _build_model(self.model_config, strategy, image_size)
        variables = self._trainable_variables(model)
        with strategy.scope():
            schedule = build_learning_rate_schedule(
                config.optim, num_examples, batch, train.train_epochs, train.train_steps
            )
            optimizer = build_optimizer(config.optim, schedule, model.excluded_variables())
            if self.model_config.dtype_policy == "mixed_float16":
                optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
            optimizer.build(variables)
        first_run = tf.train.latest_checkpoint(os.path.join(train.model_dir, "ckpt")) is None
        if first_run and train.init_checkpoint:
            restore_weights(model, train.init_checkpoint, include_supervised_head=False)
            logger.info("initialised from %s", train.init_checkpoint)
        memory = self._build_memory(model)
        compute = self._compute(model, memory)
        functions = loop.StepFunctions(
            compute=compute,
            variables=lambda: variables,
            learning_rate=schedule,
            on_checkpoint=self._knn_monitor(model) if self._knn_enabled() else None,
        )
        if memory is not None:
            functions.before_step = lambda batch: memory.before_step(strategy, model, batch)
            functions.after_step = lambda batch: memory.after_step(strategy, batch)
            functions.checkpoint_objects["memory"] = memory
        phase = train.train_mode

        def iterator_factory(start_step: int):
            dataset = build_distributed_dataset(
                strategy,
                source,
                num_examples,
                phase=phase,
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

        if phase == "pretrain" and self.chief:
            self._write_view_pairs(source, num_examples)
        settings = loop.LoopSettings(
            model_dir=train.model_dir,
            total_steps=total_steps,
            steps_per_loop=train.steps_per_loop,
            checkpoint_steps=checkpoint_steps,
            keep_checkpoint_max=train.keep_checkpoint_max,
            global_batch_size=batch,
            steps_per_epoch=steps_per_epoch,
            jit_compile=train.jit_compile,
        )
        scalars = loop.train(strategy, model, optimizer, functions, iterator_factory, settings)
        self.model = model
        if self.chief and train.export_hub and train.keep_hub_module_max > 0:
            exported = memory.network if config.memory.export_memory_network else model
            hub.export_to_model_dir(
                exported, train.model_dir, total_steps, train.keep_hub_module_max
            )
        return scalars

    def _build_memory(self, model: SimCLRModel) -> NegativeMemory | None:
        """SimCLRv2's memory of negatives for pretraining, when ``memory_size > 0``."""
        config = self.config
        if config.train.train_mode != "pretrain" or not config.memory.enabled:
            return None
        with self.strategy.scope():
            return NegativeMemory(
                model,
                config.memory,
                global_batch_size=config.train.train_batch_size,
                image_size=config.augment.image_size,
                hidden_norm=config.loss.hidden_norm,
            )

    def _trainable_variables(self, model: SimCLRModel) -> list[tf.Variable]:
        """Fine-tuning and distillation train only what reaches the loss: the encoder, the head
        layers up to ``ft_proj_selector`` and the supervised head (SimCLRv2 section 2)."""
        if self.config.train.train_mode == "pretrain":
            return list(model.trainable_variables)
        config = self.model_config
        used = config.ft_proj_selector % (config.num_head_layers + 1)
        head_layers = model.projection_head.layers_list[:used]
        variables = list(model.encoder.trainable_variables)
        for layer in head_layers:
            variables += layer.trainable_variables
        return variables + list(model.supervised_head.trainable_variables)

    def _compute(self, model: SimCLRModel, memory: NegativeMemory | None) -> phases.Compute:
        config = self.config
        mode = config.train.train_mode
        if mode == "pretrain":
            return phases.pretrain_compute(
                model,
                self.strategy,
                config.loss,
                config.optim,
                linear_eval=config.train.lineareval_while_pretraining,
                memory=memory,
            )
        if mode == "finetune":
            return phases.finetune_compute(model, config.loss, config.optim)
        teacher = self._load_teacher()
        return phases.distill_compute(model, teacher, config.loss, config.optim)

    def _load_teacher(self) -> SimCLRModel:
        source = self.config.train.teacher
        teacher_config = checkpoints.load_model_config(source)
        if teacher_config.num_classes != self.num_classes:
            raise ValueError(
                f"teacher {source!r} predicts {teacher_config.num_classes} classes but the "
                f"dataset has {self.num_classes}; distill from a teacher fine-tuned on the "
                "same labels."
            )
        teacher_config = dataclasses.replace(teacher_config, global_bn=False)
        teacher = _build_model(teacher_config, self.strategy, self.config.augment.image_size)
        restore_weights(teacher, source, include_supervised_head=True)
        teacher.trainable = False
        return teacher

    def _knn_enabled(self) -> bool:
        return self.config.train.train_mode == "pretrain" and self.config.train.knn_monitor

    def _knn_monitor(self, model: SimCLRModel):
        def monitor(step: int) -> dict[str, float]:
            return {"eval/knn_top_1_accuracy": self.knn_accuracy(model)}

        return monitor

    def knn_accuracy(self, model: SimCLRModel) -> float:
        """Weighted kNN top-1 of ``final_avg_pool`` (bank: training images, queries: eval)."""
        train, data = self.config.train, self.config.data
        bank_source = self.train_source.take(train.knn_bank_size)
        bank_count = min(train.knn_bank_size, self.train_info.num_examples)
        bank = build_dataset(
            bank_source,
            bank_count,
            phase="eval",
            global_batch_size=train.eval_batch_size,
            augment=self.config.augment,
            training=False,
        )
        bank_features, bank_labels = evaluate.extract_features(model, bank)
        queries, query_labels = evaluate.extract_features(model, self._eval_dataset(False))
        del data
        return evaluate.weighted_knn_accuracy(
            bank_features,
            bank_labels,
            queries,
            query_labels,
            self.num_classes,
            k=train.knn_k,
            temperature=train.knn_temperature,
        )

    def _write_view_pairs(self, source: tf.data.Dataset, num_examples: int) -> None:
        """A grid of augmented view pairs in TensorBoard: what the network is shown."""
        batch = next(
            iter(
                build_dataset(
                    source.take(8),
                    min(8, num_examples),
                    phase="pretrain",
                    global_batch_size=8,
                    augment=self.config.augment,
                    training=True,
                    seed=self.config.data.seed,
                )
            )
        )
        pairs = tf.concat([batch["view1"], batch["view2"]], axis=2)
        writer = tf.summary.create_file_writer(os.path.join(self.config.train.model_dir, "train"))
        with writer.as_default(step=0):
            tf.summary.image("train/augmented_view_pairs", pairs, max_outputs=8)
        writer.flush()

    # -- evaluate --------------------------------------------------------------------------

    def evaluate(
        self, model: SimCLRModel | None = None, step: int | None = None
    ) -> dict[str, float]:
        """Top-1 / top-5 of the supervised head over the whole eval split (+ kNN for pretrain),
        logged at ``step`` (default: the newest checkpoint's)."""
        train = self.config.train
        if model is None:
            model = self._restore_for_eval()
        results: dict[str, float] = {}
        if model.supervised_head is not None:
            dataset = self._eval_dataset(True)
            results.update(
                evaluate.evaluate_classifier(self.strategy, model, dataset, train.eval_steps)
            )
        if self._knn_enabled():
            results["knn_top_1_accuracy"] = self.knn_accuracy(model)
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
        latest = tf.train.latest_checkpoint(os.path.join(self.config.train.model_dir, "ckpt"))
        return int(latest.rsplit("-", 1)[1]) if latest else 0

    def _restore_for_eval(self, checkpoint: str | None = None) -> SimCLRModel:
        model = _build_model(self.model_config, self.strategy, self.config.augment.image_size)
        path = checkpoint or checkpoints.find_checkpoint(self.config.train.model_dir)[0]
        tf.train.Checkpoint(model=model).restore(path).expect_partial()
        return model


def run(config: RunConfig, strategy: tf.distribute.Strategy) -> dict:
    """Run ``config.train.mode`` (train, eval or train_then_eval) of one phase."""
    train = config.train
    os.makedirs(train.model_dir, exist_ok=True)
    runner = PhaseRunner(config, strategy)
    if runner.chief:
        payload = config.to_json()
        payload["model"] = dataclasses.asdict(runner.model_config)
        payload["num_train_examples"] = runner.train_info.num_examples
        _write_json(os.path.join(train.model_dir, "config.json"), payload)
    result: dict = {"train_mode": train.train_mode}
    if train.mode in ("train", "train_then_eval"):
        result["train"] = runner.train()
    if train.mode == "train_then_eval":
        result["eval"] = runner.evaluate(runner.model)
    if train.mode == "eval":
        result["eval"] = follow_checkpoints(runner)
    if runner.chief:
        path = os.path.join(train.model_dir, "result.json")
        if os.path.exists(path):  # e.g. mode=eval after training: keep the train section
            with open(path, encoding="utf-8") as handle:
                result = {**json.load(handle), **result}
        _write_json(path, result)
    return result


def follow_checkpoints(runner: PhaseRunner) -> dict:
    """``mode=eval``: evaluate every new checkpoint until the final one (or the timeout)."""
    train = runner.config.train
    directory = os.path.join(train.model_dir, "ckpt")
    results: dict = {}
    timeout = train.eval_timeout_seconds or None
    for path in tf.train.checkpoints_iterator(directory, timeout=timeout):
        step = int(path.rsplit("-", 1)[1])
        results = runner.evaluate(runner._restore_for_eval(path), step)
        logger.info("evaluated %s: %s", path, results)
        if timeout is None:
            break
    return results
