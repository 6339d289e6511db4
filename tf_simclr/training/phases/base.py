"""What every SimCLRv2 phase shares (arXiv 2006.10029 section 2): the phase object the generic
runner drives (TF Model Garden's task, solo-learn's method) and the pieces of its loss.

A phase owns its training examples, the architecture it trains (heads added to the configured
encoder), its trainable variables, its per-replica compute (whose scalars name its metrics),
its monitors and what it restores before training. The runner only asks.

Everything a phase reads is opened when it is constructed, before any file is written: the
training split, the labeled subset and, when the run evaluates, the evaluation split. When the
evaluation split is missing (e.g. ``folder:PATH`` without ``test/``), ``--mode=eval`` and
``train_then_eval`` are refused, and ``--mode=train`` runs with the kNN monitor off and a warning.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import ClassVar

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints
from tf_simclr.config import ModelConfig, OptimConfig, RunConfig
from tf_simclr.data import (
    LabelSubset,
    SourceInfo,
    build_dataset,
    build_distributed_dataset,
    label_subset,
    load_source,
    write_label_subset,
)
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import weight_decay_loss
from tf_simclr.training import evaluate, loop

logger = logging.getLogger("tf_simclr")
Compute = Callable[[dict], tuple[tf.Tensor, dict[str, tf.Tensor]]]
MAX_LOGGED_CLASS_NAMES = 20
MISSING_EVAL_SPLIT_ADVICE = (
    "For a folder: source, move the class folders into PATH/train/ and put held-out images in "
    "PATH/test/, one subfolder per class; or pass --eval_split with a split the source has."
)


def accuracy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    return tf.reduce_mean(tf.cast(predicted == tf.cast(labels, tf.int32), tf.float32))


def add_weight_decay(
    model: keras.Model, optim: OptimConfig, total: tf.Tensor, scalars: dict
) -> tf.Tensor:
    """``total`` plus the L2 term for optimizers other than LARS (which folds weight decay into
    its update); logs ``weight_decay`` and ``total_loss``."""
    decay = weight_decay_loss(
        model.trainable_variables, optim.weight_decay, model.excluded_variables()
    )
    scalars["weight_decay"] = decay
    if optim.optimizer != "lars":
        total = total + decay
    scalars["total_loss"] = total
    return total


def build_model(
    config: ModelConfig, strategy: tf.distribute.Strategy, image_size: int
) -> SimCLRModel:
    """A SimCLRModel with every variable created, under ``strategy``'s scope."""
    with strategy.scope():
        return SimCLRModel(config).build_for_size(image_size)


class Phase:
    """One phase of the pipeline under ``strategy``; subclasses set ``train_mode``."""

    train_mode: ClassVar[str] = ""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        self.config = config
        self.strategy = strategy
        data = config.data
        self.train_source, self.train_info = load_source(
            data.dataset, split=data.train_split, data_dir=data.data_dir
        )
        self.num_classes = self.train_info.num_classes
        self._eval_examples: tuple[tf.data.Dataset, SourceInfo] | None = None
        self._subset: LabelSubset | None = None
        self._open_eval_split()

    def describe_data(self) -> str:
        """The data in a phrase (for the run's start line): images per split read, the classes
        and their names."""
        splits = [self.train_info]
        if self._eval_examples is not None:
            splits.append(self._eval_examples[1])
        counts = ", ".join(f"{info.split}: {info.num_examples} images" for info in splits)
        names = self.train_info.class_names
        shown = ", ".join(names[:MAX_LOGGED_CLASS_NAMES])
        if len(names) > MAX_LOGGED_CLASS_NAMES:
            shown += f", ... ({len(names) - MAX_LOGGED_CLASS_NAMES} more in classes.txt)"
        return f"data {self.config.data.dataset}: {counts}; {self.num_classes} classes" + (
            f" ({shown})" if names else ""
        )

    def _open_eval_split(self) -> None:
        """Open the evaluation split now if the run will read it. Missing, it is an error for the
        evaluation modes; for ``--mode=train`` the kNN monitor is turned off with a warning."""
        config = self.config
        evaluates = config.train.mode != "train"
        if not (evaluates or self.monitor_reads_eval_split()):
            return
        try:
            self.eval_examples()
        except FileNotFoundError as error:
            split = config.data.eval_split
            if evaluates:
                raise ValueError(
                    f"--mode={config.train.mode} evaluates on --eval_split={split}, which cannot "
                    f"be read: {error} {MISSING_EVAL_SPLIT_ADVICE}"
                ) from error
            logger.warning(
                "the kNN monitor is off: its queries come from --eval_split=%s, which cannot be "
                "read: %s %s",
                split,
                error,
                MISSING_EVAL_SPLIT_ADVICE,
            )
            train = dataclasses.replace(config.train, knn_monitor=False)
            self.config = dataclasses.replace(config, train=train)

    def monitor_reads_eval_split(self) -> bool:
        """Whether the monitor during training reads the evaluation split."""
        return False

    def eval_examples(self) -> tuple[tf.data.Dataset, SourceInfo]:
        """``(dataset, info)`` of the evaluation split, opened once."""
        if self._eval_examples is None:
            data = self.config.data
            self._eval_examples = load_source(
                data.dataset, split=data.eval_split, data_dir=data.data_dir
            )
        return self._eval_examples

    def labeled_subset(self) -> LabelSubset:
        """The labeled subset of the training split, drawn once; :meth:`before_training`
        writes a drawn one to ``model_dir/labels_subset.txt``."""
        if self._subset is None:
            self._subset = label_subset(
                self.train_source, self.train_info, self.config.data, model_dir=None
            )
        return self._subset

    # -- what is trained -------------------------------------------------------------------

    def model_config(self) -> ModelConfig:
        """The configured architecture with this phase's heads (the encoder and projection head
        of ``--checkpoint`` when that is a reference checkpoint). With one replica synchronised
        BN computes exactly plain BN, only slower (no fused kernel), so it is switched off."""
        return dataclasses.replace(
            checkpoints.source_architecture(self.config.model, self.config.train.init_checkpoint),
            num_classes=self.num_classes,
            global_bn=self.config.model.global_bn and self.strategy.num_replicas_in_sync > 1,
        )

    def training_examples(self) -> tuple[tf.data.Dataset, int]:
        """The training stream (``(image, label[, has_label])`` elements) and its size."""
        raise NotImplementedError

    def trainable_variables(self, model: SimCLRModel) -> list[tf.Variable]:
        """Fine-tuning and distillation train only what reaches the loss: the encoder, the
        head layers up to ``ft_proj_selector`` and the supervised head (section 2)."""
        config = model.config
        used = config.ft_proj_selector % (config.num_head_layers + 1)
        variables = list(model.encoder.trainable_variables)
        for layer in model.projection_head.layers_list[:used]:
            variables += layer.trainable_variables
        return variables + list(model.supervised_head.trainable_variables)

    def restore(self, model: SimCLRModel) -> None:
        """Before the first step of a fresh run: the encoder and projection head of
        ``--checkpoint`` when given (never its supervised head)."""
        source = self.config.train.init_checkpoint
        if source:
            checkpoints.restore_weights(model, source, include_supervised_head=False)
            logger.info("initialised from %s", source)

    def compute(self, model: SimCLRModel) -> Compute:
        raise NotImplementedError

    def step_functions(
        self, model: SimCLRModel, variables: list[tf.Variable], learning_rate
    ) -> loop.StepFunctions:
        """What the loop runs: the compute, the variables and the monitors."""
        return loop.StepFunctions(
            compute=self.compute(model),
            variables=lambda: variables,
            learning_rate=learning_rate,
            on_checkpoint=self.monitor(model),
        )

    def monitor(self, model: SimCLRModel) -> Callable[[int], dict[str, float]] | None:
        """Scalars measured at step 0 and at every checkpoint (None: nothing)."""
        return None

    def before_training(self, source: tf.data.Dataset, num_examples: int) -> None:
        """Chief-only work before the first step: a drawn labeled subset is written to
        ``model_dir/labels_subset.txt``."""
        data = self.config.data
        if self._subset is not None and data.uses_label_subset and not data.labels_subset_file:
            write_label_subset(self._subset, self.train_info, data, self.config.train.model_dir)

    def exported_model(self, model: SimCLRModel) -> SimCLRModel:
        """The network the phase's hub module holds."""
        return model

    # -- evaluation ------------------------------------------------------------------------

    def evaluations(self, model: SimCLRModel) -> dict[str, float]:
        """Evaluations besides the supervised head's accuracy (e.g. the kNN monitor)."""
        return {}

    def eval_dataset(self, distributed: bool):
        """The evaluation split, batched (per replica with ``distributed``)."""
        source, info = self.eval_examples()
        kwargs = dict(
            phase="eval",
            global_batch_size=self.config.train.eval_batch_size,
            augment=self.config.augment,
            training=False,
        )
        if distributed:
            return build_distributed_dataset(self.strategy, source, info.num_examples, **kwargs)
        return build_dataset(source, info.num_examples, **kwargs)

    def knn_accuracy(self, features: Callable[[tf.Tensor], tf.Tensor]) -> float:
        """Weighted kNN top-1 of ``final_avg_pool`` (bank: training images, queries: eval);
        ``features`` is the model's :func:`~tf_simclr.training.evaluate.feature_function`."""
        train = self.config.train
        bank = build_dataset(
            self.train_source.take(train.knn_bank_size),
            min(train.knn_bank_size, self.train_info.num_examples),
            phase="eval",
            global_batch_size=train.eval_batch_size,
            augment=self.config.augment,
            training=False,
        )
        bank_features, bank_labels = evaluate.features_of(features, bank)
        queries, query_labels = evaluate.features_of(features, self.eval_dataset(False))
        return evaluate.weighted_knn_accuracy(
            bank_features,
            bank_labels,
            queries,
            query_labels,
            self.num_classes,
            k=train.knn_k,
            temperature=train.knn_temperature,
        )
