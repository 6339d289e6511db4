"""Projection head g(.) and supervised head (SimCLR section 2, SimCLRv2 section 2).

SimCLRv2 uses a deeper non-linear projection head (3 layers) and fine-tunes from one of its
middle layers rather than from the encoder output. Every layer is a dense layer followed by batch
norm (the layer's bias is replaced by the batch norm's beta, none on the output layer), with a
ReLU on every layer but the last. The head returns the list
``[proj_head_input, proj_head_1, ..., proj_head_N]`` so that ``ft_proj_selector`` can pick any of
them. Heads compute in float32 even under a mixed-precision policy: they are small, and the
contrastive and supervised losses need full-precision logits.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import ModelConfig
from tf_simclr.models.resnet import batch_norm


class DenseBN(keras.layers.Layer):
    """Dense layer (N(0, 0.01) init, no bias) + batch norm (centred only if ``use_bias``)."""

    def __init__(
        self, config: ModelConfig, units: int, *, use_bias: bool, relu: bool, **kwargs
    ) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.dense = keras.layers.Dense(
            units,
            use_bias=False,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",
        )
        self.bn = batch_norm(dataclasses.replace(config, dtype_policy="float32"), center=use_bias)
        self.relu = relu

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        x = self.bn(self.dense(inputs), training=training)
        return tf.nn.relu(x) if self.relu else x


class ProjectionHead(keras.layers.Layer):
    """g(.): ``nonlinear`` (N dense+BN layers), ``linear`` (one dense+BN) or ``none`` (identity).

    Hidden layers keep the input width (2048 for ResNet-50 1x); the output layer has
    ``proj_out_dim`` units (128). With ``truncated_proj_head`` every one of the
    ``num_proj_layers`` layers is a hidden layer: the first layers of a deeper head whose later
    layers a checkpoint does not hold.
    """

    def __init__(self, config: ModelConfig, input_dim: int, **kwargs) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.mode = config.proj_head_mode
        if config.proj_head_mode == "nonlinear":
            hidden = config.num_proj_layers - (0 if config.truncated_proj_head else 1)
            self.layers_list = [
                DenseBN(config, input_dim, use_bias=True, relu=True, name=f"proj_head_{i + 1}")
                for i in range(hidden)
            ]
            if not config.truncated_proj_head:
                self.layers_list.append(
                    DenseBN(
                        config,
                        config.proj_out_dim,
                        use_bias=False,
                        relu=False,
                        name=f"proj_head_{config.num_proj_layers}",
                    )
                )
        elif config.proj_head_mode == "linear":
            self.layers_list = [
                DenseBN(config, config.proj_out_dim, use_bias=False, relu=False, name="proj_head_1")
            ]
        else:
            self.layers_list = []

    def call(self, inputs: tf.Tensor, training=None) -> list[tf.Tensor]:
        outputs = [inputs]
        for layer in self.layers_list:
            outputs.append(layer(outputs[-1], training=training))
        return outputs


class SupervisedHead(keras.layers.Layer):
    """Linear classifier on the selected head layer (SimCLRv2 section 2, fine-tuning), optionally
    after a parameter-free batch norm (``supervised_head_batch_norm``, the on-line probe)."""

    def __init__(self, config: ModelConfig, **kwargs) -> None:
        super().__init__(dtype="float32", **kwargs)
        self.bn = None
        if config.supervised_head_batch_norm:
            self.bn = keras.layers.BatchNormalization(
                center=False,
                scale=False,
                synchronized=config.global_bn,
                momentum=config.batch_norm_decay,
                epsilon=config.batch_norm_epsilon,
                dtype="float32",
                name="bn",
            )
        self.dense = keras.layers.Dense(
            config.num_classes,
            kernel_initializer="zeros"
            if config.zero_init_logits_layer
            else keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",
        )

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        if self.bn is not None:
            inputs = self.bn(inputs, training=training)
        return self.dense(inputs)
