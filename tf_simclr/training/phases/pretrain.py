"""Pretraining (SimCLR section 2, SimCLRv2 section 2): NT-Xent between the projections of two
augmented views of every unlabeled image, negatives from every replica (SimCLR eq. 1), with
SimCLRv2's memory of negatives when ``memory_size > 0`` and the on-line linear probe on
stop-gradient features when ``lineareval_while_pretraining``; the kNN monitor watches the
encoder from step 0.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import LossConfig, ModelConfig, OptimConfig
from tf_simclr.data import build_dataset
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import (
    contrastive_loss,
    contrastive_metrics,
    memory_metrics,
    supervised_loss,
)
from tf_simclr.training import evaluate, loop
from tf_simclr.training.memory import NegativeMemory
from tf_simclr.training.phases.base import Compute, Phase, accuracy, add_weight_decay


def pretrain_compute(
    model: keras.Model,
    strategy: tf.distribute.Strategy,
    loss_config: LossConfig,
    optim: OptimConfig,
    linear_eval: bool,
    memory: NegativeMemory | None = None,
) -> Compute:
    """NT-Xent on ``{"view1", "view2"}`` batches (+ linear evaluation on ``"label"``). With a
    ``memory`` the anchors are contrasted with the memory network's projections of the batch
    (``{"memory_view1", "memory_view2"}``, added by its ``before_step``) and of earlier batches.
    ``contrast_acc`` and ``contrast_entropy`` always measure the in-batch targets alone."""

    def compute(batch: dict) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
        images = tf.concat([batch["view1"], batch["view2"]], axis=0)
        outputs = model(images, training=True)
        negatives, mask, targets = None, None, None
        if memory is not None:
            negatives, mask = memory.negatives()
            targets = tf.concat([batch["memory_view1"], batch["memory_view2"]], axis=0)
        loss, logits, labels = contrastive_loss(
            outputs["proj_head_output"],
            temperature=loss_config.temperature,
            hidden_norm=loss_config.hidden_norm,
            strategy=strategy,
            loss_scale=loss_config.loss_scale,
            memory=negatives,
            memory_mask=mask,
            targets=targets,
        )
        scalars = {"contrast_loss": loss}
        if memory is None:
            scalars.update(contrastive_metrics(logits, labels))
        else:
            in_batch = tf.shape(logits)[1] - memory.size
            scalars.update(contrastive_metrics(logits[:, :in_batch], labels[:, :in_batch]))
            scalars.update(memory_metrics(logits, labels, memory.size))
            scalars["memory_fill"] = memory.fill()
        total = loss
        if linear_eval:
            class_labels = tf.concat([batch["label"], batch["label"]], axis=0)
            sup = supervised_loss(class_labels, outputs["logits_sup"])
            scalars["supervised_loss"] = sup
            scalars["supervised_acc"] = accuracy(class_labels, outputs["logits_sup"])
            total = total + sup
        return add_weight_decay(model, optim, total, scalars), scalars

    return compute


class PretrainPhase(Phase):
    """Self-supervised pretraining on every training image (labels only feed the probe)."""

    train_mode = "pretrain"

    def __init__(self, config, strategy) -> None:
        super().__init__(config, strategy)
        self.memory: NegativeMemory | None = None

    def model_config(self) -> ModelConfig:
        """The probe's head reads stop-gradient, standardised features."""
        return dataclasses.replace(
            super().model_config(),
            supervised_head_stop_gradient=True,
            supervised_head_batch_norm=True,
        )

    def head_classes(self) -> int:
        """The on-line linear probe's classes; no head without it."""
        return self.num_classes if self.config.train.lineareval_while_pretraining else 0

    def without_labels(self) -> list[str]:
        """Unlabeled images: the on-line linear probe, which learns their labels, is off."""
        if not self.config.train.lineareval_while_pretraining:
            return []
        self._replace_train(lineareval_while_pretraining=False)
        return ["the on-line linear probe"]

    def training_examples(self) -> tuple[tf.data.Dataset, int]:
        return self.train_source, self.train_info.num_examples

    def trainable_variables(self, model: SimCLRModel) -> list[tf.Variable]:
        return list(model.trainable_variables)

    def compute(self, model: SimCLRModel) -> Compute:
        config = self.config
        return pretrain_compute(
            model,
            self.strategy,
            config.loss,
            config.optim,
            linear_eval=config.train.lineareval_while_pretraining,
            memory=self.memory,
        )

    def step_functions(
        self, model: SimCLRModel, variables: list[tf.Variable], learning_rate
    ) -> loop.StepFunctions:
        """With a memory of negatives: the memory network follows and projects before each
        step, the queue takes the projections after it, and both are checkpointed."""
        config, strategy = self.config, self.strategy
        if config.memory.enabled:
            with strategy.scope():
                self.memory = NegativeMemory(
                    model,
                    config.memory,
                    global_batch_size=config.train.train_batch_size,
                    image_size=config.augment.image_size,
                    hidden_norm=config.loss.hidden_norm,
                )
        functions = super().step_functions(model, variables, learning_rate)
        memory = self.memory
        if memory is not None:
            functions.before_step = lambda batch: memory.before_step(strategy, model, batch)
            functions.after_step = lambda batch: memory.after_step(strategy, batch)
            functions.checkpoint_objects["memory"] = memory
        return functions

    def monitor_reads_eval_split(self) -> bool:
        return self.config.train.knn_monitor

    def monitor(self, model: SimCLRModel) -> Callable[[int], dict[str, float]] | None:
        if not self.config.train.knn_monitor:
            return None
        features = evaluate.feature_function(model)  # traced once for every checkpoint
        return lambda step: {"eval/knn_top_1_accuracy": self.knn_accuracy(features)}

    def evaluations(self, model: SimCLRModel) -> dict[str, float]:
        if not self.config.train.knn_monitor:
            return {}
        return {"knn_top_1_accuracy": self.knn_accuracy(evaluate.feature_function(model))}

    def exported_model(self, model: SimCLRModel) -> SimCLRModel:
        if self.memory is not None and self.config.memory.export_memory_network:
            return self.memory.network
        return model

    def before_training(self, source: tf.data.Dataset, num_examples: int) -> None:
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
