"""What every SimCLRv2 phase shares (arXiv 2006.10029 section 2): the phase object the generic
runner drives (TF Model Garden's task, solo-learn's method) and the pieces of its loss.

A phase owns its training examples, the architecture it trains (heads added to the configured
encoder), its trainable variables, its per-replica compute (whose scalars name its metrics),
its monitors and what it restores before training. The runner only asks.

Everything a phase reads is opened when it is constructed, before any file is written: the
training split, the labeled subset and, when the run evaluates, the evaluation split. When the
evaluation split is missing (e.g. ``folder:PATH`` without ``test/``), ``--mode=eval`` and
``train_then_eval`` are refused, and ``--mode=train`` runs with the kNN monitor off and a warning.

Labels may come from other sources than the training images: ``label_dataset`` (distillation's
labeled examples) and ``eval_dataset`` (evaluation and the kNN monitor). Training images without
labels (a folder without class folders) turn off, with one warning, what needs their labels: the
on-line linear probe and, unless ``eval_dataset`` is labeled, the kNN monitor and the evaluation
after training; a phase that cannot do without them (fine-tuning) is refused.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import ClassVar

import tensorflow as tf
import tf_keras as keras

from tf_simclr import checkpoints
from tf_simclr.config import DataConfig, ModelConfig, OptimConfig, RunConfig
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


def _open_labeled(
    name: str, split: str, data: DataConfig, role: str
) -> tuple[tf.data.Dataset, SourceInfo]:
    """``load_source`` of a split that must be labeled (ValueError naming ``role`` if not),
    read with ``data``'s ``data_dir`` and ``max_image_megapixels``."""
    dataset, info = load_source(
        name,
        split=split,
        data_dir=data.data_dir,
        max_image_megapixels=data.max_image_megapixels,
    )
    if not info.num_classes:
        raise ValueError(
            f"{role} needs labels, but {name} split {split!r} holds unlabeled images (a folder "
            "without class subfolders); pass a source with one subfolder per class."
        )
    return dataset, info


def _join(names: list[str]) -> str:
    """``"a"``, ``"a and b"``, ``"a, b and c"``."""
    return " and ".join(filter(None, [", ".join(names[:-1]), names[-1]]))


def _classes(count: int, class_names: tuple[str, ...]) -> str:
    """``"3 classes (a, b, c)"`` (the first names only), ``"3 classes"`` without names."""
    if not class_names:
        return f"{count} classes"
    shown = ", ".join(class_names[:MAX_LOGGED_CLASS_NAMES])
    if len(class_names) > MAX_LOGGED_CLASS_NAMES:
        shown += f", ... ({len(class_names) - MAX_LOGGED_CLASS_NAMES} more)"
    return f"{count} classes ({shown})"


def _source_phrase(role: str, name: str, infos: list[SourceInfo]) -> str:
    """``role``, the source ``name``, the images per split read and the classes."""
    counts = ", ".join(f"{info.split}: {info.num_examples} images" for info in infos)
    first = infos[0]
    classes = _classes(first.num_classes, first.class_names) if first.num_classes else "unlabeled"
    return f"{role} {name}: {counts}; {classes}"


class Phase:
    """One phase of the pipeline under ``strategy``; subclasses set ``train_mode``."""

    train_mode: ClassVar[str] = ""

    def __init__(self, config: RunConfig, strategy: tf.distribute.Strategy) -> None:
        self.config = config
        self.strategy = strategy
        data = config.data
        self.train_source, self.train_info = load_source(
            data.dataset,
            split=data.train_split,
            data_dir=data.data_dir,
            max_image_megapixels=data.max_image_megapixels,
        )
        self.label_source, self.label_info = self.train_source, self.train_info
        if data.labels_source != data.dataset:
            self.label_source, self.label_info = _open_labeled(
                data.labels_source, data.train_split, data, "--label_dataset"
            )
        self.num_classes = self.model_classes()
        self._eval_examples: tuple[tf.data.Dataset, SourceInfo] | None = None
        self._knn_bank: tuple[tf.data.Dataset, int] | None = None
        self._subset: LabelSubset | None = None
        if not self.label_info.num_classes:
            self._turn_off_what_needs_labels()
        self._open_eval_split()

    def describe_data(self) -> str:
        """The data in a phrase per source read (for the run's start line): images per split,
        the classes and their names."""
        data = self.config.data
        lines = {data.dataset: ("data", [self.train_info])}
        if data.labels_source != data.dataset:
            lines[data.labels_source] = ("labels", [self.label_info])
        if self._eval_examples is not None:
            _, infos = lines.setdefault(data.evaluation_source, ("evaluation", []))
            infos.append(self._eval_examples[1])
        return "; ".join(_source_phrase(role, name, infos) for name, (role, infos) in lines.items())

    def _replace_train(self, **changes: object) -> None:
        """Change the phase's TrainConfig (what its data cannot serve is turned off)."""
        train = dataclasses.replace(self.config.train, **changes)
        self.config = dataclasses.replace(self.config, train=train)

    def _turn_off_what_needs_labels(self) -> None:
        """The training data is unlabeled: the phase turns off what needs its labels (or refuses
        to run without them), and without an ``eval_dataset`` the kNN monitor and the evaluation
        after training are off too; one warning says what was turned off and why."""
        data = self.config.data
        dropped = self.without_labels()
        evaluation = [] if data.eval_dataset else self._turn_off_evaluation()
        dropped += evaluation
        if not dropped:
            return
        hint = ""
        if evaluation:
            hint = "; --eval_dataset=A_LABELED_SOURCE monitors and evaluates with its labels"
        logger.warning(
            "--dataset=%s holds unlabeled images, so %s %s off%s.",
            data.dataset,
            _join(dropped),
            "is" if len(dropped) == 1 else "are",
            hint,
        )

    def _turn_off_evaluation(self) -> list[str]:
        """Without labels to evaluate with: the names of what is turned off (the kNN monitor,
        the evaluation of ``train_then_eval``); ``--mode=eval`` is refused."""
        train, data = self.config.train, self.config.data
        if train.mode == "eval":
            raise ValueError(
                f"--mode=eval measures accuracy with labels, but --dataset={data.dataset} holds "
                "unlabeled images (a folder without class subfolders); pass --eval_dataset with "
                "a labeled source (e.g. folder:PATH with one subfolder per class)."
            )
        dropped = ["the kNN monitor"] if self.monitor_reads_eval_split() else []
        if train.mode == "train_then_eval":
            dropped.append("the evaluation after training")
        self._replace_train(knn_monitor=False, mode="train")
        return dropped

    def without_labels(self) -> list[str]:
        """Called when the training data is unlabeled: turn off what needs its labels and return
        their names, or raise ValueError when the phase cannot run without them."""
        return []

    def model_classes(self) -> int:
        """Classes the phase's model predicts: the labeled source's."""
        return self.label_info.num_classes

    def head_classes(self) -> int:
        """Classes of the supervised head of the trained model (0: no head)."""
        return self.num_classes

    def _open_eval_split(self) -> None:
        """Open the evaluation split (and the kNN monitor's bank) now if the run will read it.
        Missing, it is an error for the evaluation modes and in an ``eval_dataset``; otherwise
        (``--mode=train``) the kNN monitor is turned off with a warning."""
        config = self.config
        evaluates = config.train.mode != "train"
        if not (evaluates or self.monitor_reads_eval_split()):
            return
        try:
            self.eval_examples()
            if self.monitor_reads_eval_split():
                self.knn_bank()
        except FileNotFoundError as error:
            split = config.data.eval_split
            if config.data.eval_dataset:
                raise ValueError(
                    f"--eval_dataset={config.data.eval_dataset} cannot be read: {error}"
                ) from error
            if evaluates:
                raise ValueError(
                    f"--mode={config.train.mode} evaluates on --eval_split={split}, which cannot "
                    f"be read: {error} {MISSING_EVAL_SPLIT_ADVICE}"
                ) from error
            logger.warning(
                "the kNN monitor is off: it reads --train_split and --eval_split=%s of %s, which "
                "cannot be read: %s %s",
                split,
                config.data.evaluation_source,
                error,
                MISSING_EVAL_SPLIT_ADVICE,
            )
            self._replace_train(knn_monitor=False)

    def monitor_reads_eval_split(self) -> bool:
        """Whether the monitor during training reads the evaluation split."""
        return False

    def eval_examples(self) -> tuple[tf.data.Dataset, SourceInfo]:
        """``(dataset, info)`` of the evaluation split, opened (and checked) once: it must be
        labeled, with the classes of the model's supervised head if it has one."""
        if self._eval_examples is None:
            data = self.config.data
            dataset, info = _open_labeled(
                data.evaluation_source, data.eval_split, data, "evaluation"
            )
            self._check_eval_classes(info)
            self._eval_examples = dataset, info
        return self._eval_examples

    def _check_eval_classes(self, info: SourceInfo) -> None:
        """Raises ValueError unless ``info``'s classes are those the supervised head predicts."""
        head, labels = self.head_classes(), self.label_info
        both_named = bool(info.class_names and labels.class_names)
        same_names = not both_named or info.class_names == labels.class_names
        if not head or (info.num_classes == head and same_names):
            return
        raise ValueError(
            f"{info.name} split {info.split!r} has {_classes(info.num_classes, info.class_names)}"
            f" but the model predicts {_classes(head, labels.class_names)}, those of "
            f"{labels.name}; evaluate on the same classes (--eval_dataset)."
        )

    def knn_bank(self) -> tuple[tf.data.Dataset, int]:
        """The kNN monitor's bank: the first ``knn_bank_size`` images of the evaluation source's
        training split, with their labels, and their number; opened once."""
        if self._knn_bank is None:
            data, size = self.config.data, self.config.train.knn_bank_size
            if data.evaluation_source == data.labels_source:
                source, info = self.label_source, self.label_info
            else:
                source, info = _open_labeled(
                    data.evaluation_source, data.train_split, data, "the kNN monitor"
                )
            self._knn_bank = source.take(size), min(size, info.num_examples)
        return self._knn_bank

    def labeled_subset(self) -> LabelSubset:
        """The labeled subset of the labels' training split, drawn once;
        :meth:`before_training` writes a drawn one to ``model_dir/labels_subset.txt``."""
        if self._subset is None:
            self._subset = label_subset(
                self.label_source, self.label_info, self.config.data, model_dir=None
            )
        return self._subset

    # -- what is trained -------------------------------------------------------------------

    def model_config(self) -> ModelConfig:
        """The configured architecture with this phase's heads (the encoder and projection head
        of ``--checkpoint`` when that is a reference checkpoint). With one replica synchronised
        BN computes exactly plain BN, only slower (no fused kernel), so it is switched off."""
        return dataclasses.replace(
            checkpoints.source_architecture(self.config.model, self.config.train.init_checkpoint),
            num_classes=self.head_classes(),
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
            write_label_subset(self._subset, self.label_info, data, self.config.train.model_dir)

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
        """Weighted kNN top-1 of ``final_avg_pool`` (bank: :meth:`knn_bank`, queries: the
        evaluation split); ``features`` is the model's
        :func:`~tf_simclr.training.evaluate.feature_function`."""
        train = self.config.train
        bank = build_dataset(
            *self.knn_bank(),
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
            self.eval_examples()[1].num_classes,
            k=train.knn_k,
            temperature=train.knn_temperature,
        )
