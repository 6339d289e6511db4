"""SimCLRModel: encoder + projection head + optional supervised head (SimCLRv2 section 2).

``SimCLRModel(images, training)`` returns the endpoint dict of the design contract, every value
float32: ``initial_conv``, ``initial_max_pool``, ``block_group1`` .. ``block_group4``,
``final_avg_pool``, ``proj_head_input`` (== ``final_avg_pool``), ``proj_head_1`` ..
``proj_head_N``, ``proj_head_output`` (the last head layer, the z of SimCLR section 2) and
``logits_sup`` when ``num_classes > 0``. Images are float32 in [0, 1], NHWC, any size.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import ModelConfig
from tf_simclr.models.heads import ProjectionHead, SupervisedHead
from tf_simclr.models.resnet import ResNet

PARTS = ("encoder", "projection_head", "supervised_head")


class SimCLRModel(keras.Model):
    """The SimCLRv2 network; ``.encoder``, ``.projection_head``, ``.supervised_head`` are layers."""

    def __init__(self, config: ModelConfig, **kwargs) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.encoder = ResNet(config, name="resnet")
        self.projection_head = ProjectionHead(
            config, config.encoder_output_dim, name="projection_head"
        )
        self.supervised_head = (
            SupervisedHead(config, name="head_supervised") if config.num_classes > 0 else None
        )

    def call(self, images: tf.Tensor, training=None) -> dict[str, tf.Tensor]:
        return self.endpoints(images, training=training)

    def endpoints(
        self, images: tf.Tensor, training=None, parts: Iterable[str] | None = None
    ) -> dict[str, tf.Tensor]:
        """The endpoint dict, restricted to ``parts`` (``"encoder"`` always runs;
        ``"projection_head"``, ``"supervised_head"``; default: every part the model has)."""
        parts = set(PARTS if parts is None else parts)
        endpoints = dict(self.encoder(images, training=training))
        head_outputs = [endpoints["final_avg_pool"]]
        if "projection_head" in parts:
            head_outputs = self.projection_head(endpoints["final_avg_pool"], training=training)
            endpoints["proj_head_input"] = head_outputs[0]
            for i, output in enumerate(head_outputs[1:]):
                endpoints[f"proj_head_{i + 1}"] = output
            endpoints["proj_head_output"] = head_outputs[-1]
        if "supervised_head" in parts and self.supervised_head is not None:
            features = head_outputs[self.config.ft_proj_selector % len(head_outputs)]
            if self.config.supervised_head_stop_gradient:
                features = tf.stop_gradient(features)
            endpoints["logits_sup"] = self.supervised_head(features, training=training)
        return {name: tf.cast(value, tf.float32) for name, value in endpoints.items()}

    def build_for_size(self, image_size: int = 32) -> SimCLRModel:
        """Create every variable by running one inference-mode forward pass on zeros."""
        self(tf.zeros([1, image_size, image_size, 3]), training=False)
        return self

    def excluded_variables(self) -> list[tf.Variable]:
        """Variables exempt from weight decay and LARS adaptation (SimCLR appendix B.1).

        Decided by what a variable *is*: batch-norm gamma and beta, every bias, and all of the
        supervised head. The model must be built first.
        """
        excluded: dict[int, tf.Variable] = {}
        for layer in self._flatten_layers(include_self=False):
            if isinstance(layer, keras.layers.BatchNormalization):
                candidates = [layer.gamma, layer.beta]
            elif isinstance(layer, keras.layers.Dense | keras.layers.Conv2D):
                candidates = [layer.bias]
            else:
                candidates = []
            for variable in candidates:
                if variable is not None:
                    excluded[id(variable)] = variable
        if self.supervised_head is not None:
            for variable in self.supervised_head.variables:
                excluded[id(variable)] = variable
        return list(excluded.values())
