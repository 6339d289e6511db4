"""ResNet v1 encoders of SimCLRv2 (section 2 and Table 1 of arXiv 2006.10029).

Depths 18 and 34 use basic blocks, 50 to 200 bottleneck blocks. Width is scaled by
``width_multiplier`` (1x, 2x, 3x in the paper; fractions such as 0.25 work for small-scale runs).
``sk_ratio > 0`` turns every 3x3 convolution of a bottleneck into a selective-kernel convolution
(Li et al. 2019, as used in SimCLRv2 section 2) and switches on the ResNet-D changes the paper uses
with it: the deep 3-conv stem and the average-pool shortcut (He et al. 2019, "Bag of Tricks").
``se_ratio > 0`` adds squeeze-excitation to every block. The CIFAR stem (3x3 stride-1 conv, no
max-pool, SimCLR appendix B.9) is chosen explicitly with ``cifar_stem``.

The last batch norm of every residual block starts with gamma = 0 (Goyal et al. 2017), batch norm
momentum and epsilon are configurable (0.9 and 1e-5 in the paper), and ``global_bn`` synchronises
batch statistics across replicas (SimCLR section 3, "Global BN").

Two options reproduce the reference implementation (google-research/simclr) where it differs:
``reference_resnet_d`` (its ResNet-D shortcut pooling, :class:`Shortcut`) and
``initial_conv_before_bn`` (its ``initial_conv`` endpoint, :class:`Stem`). Everything else
already computes what its resnet.py computes: fixed padding of strided convolutions, batch-norm
epsilon 1e-5, the selective-kernel convolution, the 3-conv stem.
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import ModelConfig

BLOCKS_PER_GROUP = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
}
GROUP_FILTERS = (64, 128, 256, 512)
GROUP_STRIDES = (1, 2, 2, 2)
SK_MIN_DIM = 32
BOTTLENECK_EXPANSION = 4


def batch_norm(config: ModelConfig, *, zero_init: bool = False, center: bool = True, name=None):
    """Batch norm with the paper's momentum/epsilon; cross-replica when ``global_bn``."""
    return keras.layers.BatchNormalization(
        momentum=config.batch_norm_decay,
        epsilon=config.batch_norm_epsilon,
        center=center,
        gamma_initializer="zeros" if zero_init else "ones",
        synchronized=config.global_bn,
        dtype=config.dtype_policy,
        name=name,
    )


class ConvBN(keras.layers.Layer):
    """Convolution with "fixed" padding (independent of input size), batch norm, optional ReLU.

    Strided convolutions pad ``kernel_size - 1`` pixels explicitly and convolve ``valid``, as in
    the reference ResNet, so outputs do not depend on whether the input side is even or odd.
    """

    def __init__(
        self,
        config: ModelConfig,
        filters: int,
        kernel_size: int,
        strides: int = 1,
        *,
        relu: bool = True,
        zero_init: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.padding = None
        if strides > 1 and kernel_size > 1:
            pad_total = kernel_size - 1
            pad = (pad_total // 2, pad_total - pad_total // 2)
            self.padding = keras.layers.ZeroPadding2D((pad, pad), dtype=config.dtype_policy)
        self.conv = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="valid" if self.padding is not None else "same",
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            dtype=config.dtype_policy,
        )
        self.bn = batch_norm(config, zero_init=zero_init)
        self.relu = relu

    def call(
        self, inputs: tf.Tensor, training=None, with_convolution: bool = False
    ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
        """The activation; with ``with_convolution`` also the convolution's output before batch
        norm, as ``(convolution, activation)`` (the reference's ``initial_conv`` endpoint)."""
        x = self.padding(inputs) if self.padding is not None else inputs
        convolution = self.conv(x)
        x = self.bn(convolution, training=training)
        x = tf.nn.relu(x) if self.relu else x
        return (convolution, x) if with_convolution else x


class SelectiveKernel(keras.layers.Layer):
    """Selective-kernel 3x3 convolution (SimCLRv2 section 2, SK-Net with two paths).

    One convolution produces both paths (2 x filters channels); a squeezed global descriptor
    (``max(filters * sk_ratio, 32)`` channels) predicts a softmax over the two paths per channel.
    """

    def __init__(self, config: ModelConfig, filters: int, strides: int, **kwargs) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.paths = ConvBN(config, 2 * filters, 3, strides)
        squeezed = max(int(filters * config.sk_ratio), SK_MIN_DIM)
        self.squeeze = ConvBN(config, squeezed, 1)
        self.mixing = keras.layers.Conv2D(
            2 * filters,
            1,
            use_bias=False,
            kernel_initializer=keras.initializers.VarianceScaling(),
            dtype=config.dtype_policy,
        )

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        paths = tf.stack(tf.split(self.paths(inputs, training=training), 2, axis=-1))
        descriptor = tf.reduce_mean(tf.reduce_sum(paths, axis=0), axis=[1, 2], keepdims=True)
        mixing = self.mixing(self.squeeze(descriptor, training=training))
        weights = tf.nn.softmax(tf.stack(tf.split(mixing, 2, axis=-1)), axis=0)
        return tf.reduce_sum(paths * weights, axis=0)


class SqueezeExcitation(keras.layers.Layer):
    """Squeeze-and-excitation channel gating (Hu et al. 2018), optional in SimCLRv2."""

    def __init__(self, config: ModelConfig, channels: int, **kwargs) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        reduced = max(1, int(channels * config.se_ratio))
        self.reduce = keras.layers.Conv2D(
            reduced,
            1,
            kernel_initializer=keras.initializers.VarianceScaling(),
            dtype=config.dtype_policy,
        )
        self.expand = keras.layers.Conv2D(
            channels,
            1,
            kernel_initializer=keras.initializers.VarianceScaling(),
            dtype=config.dtype_policy,
        )

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        squeezed = tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)
        gate = tf.sigmoid(self.expand(tf.nn.relu(self.reduce(squeezed))))
        return inputs * gate


class Shortcut(keras.layers.Layer):
    """Projection shortcut: 1x1 conv + BN; with SK (ResNet-D) average-pool, then stride-1 conv.

    The ResNet-D pool is 2x2 with the block's stride, "same" padding left out of the average.
    ``reference_resnet_d`` pools as google-research/simclr does instead (its resnet.py, both the
    TF1 and the tf2/ version): every projection shortcut pools, a stride-1 one with a 2x2/1
    "same" pool, and a strided one pads one row and column of zeros at the bottom and right,
    which count in the average, before a "valid" pool (the same values at even input sizes).
    """

    def __init__(self, config: ModelConfig, filters: int, strides: int, **kwargs) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.padding = None
        self.pool = None
        conv_strides = strides
        if config.sk_ratio > 0 and config.reference_resnet_d:
            if strides > 1:
                self.padding = keras.layers.ZeroPadding2D(
                    ((0, 1), (0, 1)), dtype=config.dtype_policy
                )
            self.pool = keras.layers.AveragePooling2D(
                2,
                strides=strides,
                padding="valid" if strides > 1 else "same",
                dtype=config.dtype_policy,
            )
            conv_strides = 1
        elif config.sk_ratio > 0 and strides > 1:
            self.pool = keras.layers.AveragePooling2D(
                2, strides=strides, padding="same", dtype=config.dtype_policy
            )
            conv_strides = 1
        self.proj = ConvBN(config, filters, 1, conv_strides, relu=False)

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        x = self.padding(inputs) if self.padding is not None else inputs
        x = self.pool(x) if self.pool is not None else x
        return self.proj(x, training=training)


class ResidualBlock(keras.layers.Layer):
    """Basic block (two 3x3 convs) of ResNet-18/34."""

    def __init__(
        self, config: ModelConfig, filters: int, strides: int, use_projection: bool, **kwargs
    ) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.shortcut = Shortcut(config, filters, strides) if use_projection else None
        self.conv1 = ConvBN(config, filters, 3, strides)
        self.conv2 = ConvBN(config, filters, 3, 1, relu=False, zero_init=True)
        self.se = SqueezeExcitation(config, filters) if config.se_ratio > 0 else None

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        shortcut = inputs if self.shortcut is None else self.shortcut(inputs, training=training)
        x = self.conv2(self.conv1(inputs, training=training), training=training)
        if self.se is not None:
            x = self.se(x)
        return tf.nn.relu(x + shortcut)


class BottleneckBlock(keras.layers.Layer):
    """Bottleneck block (1x1, 3x3 or selective kernel, 1x1 x4) of ResNet-50 and deeper."""

    def __init__(
        self, config: ModelConfig, filters: int, strides: int, use_projection: bool, **kwargs
    ) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        out_filters = BOTTLENECK_EXPANSION * filters
        self.shortcut = Shortcut(config, out_filters, strides) if use_projection else None
        self.conv1 = ConvBN(config, filters, 1)
        if config.sk_ratio > 0:
            self.conv2 = SelectiveKernel(config, filters, strides)
        else:
            self.conv2 = ConvBN(config, filters, 3, strides)
        self.conv3 = ConvBN(config, out_filters, 1, relu=False, zero_init=True)
        self.se = SqueezeExcitation(config, out_filters) if config.se_ratio > 0 else None

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        shortcut = inputs if self.shortcut is None else self.shortcut(inputs, training=training)
        x = self.conv1(inputs, training=training)
        x = self.conv2(x, training=training)
        x = self.conv3(x, training=training)
        if self.se is not None:
            x = self.se(x)
        return tf.nn.relu(x + shortcut)


class BlockGroup(keras.layers.Layer):
    """A stage of blocks sharing a width; the first block may stride and projects its shortcut."""

    def __init__(
        self, config: ModelConfig, filters: int, num_blocks: int, strides: int, **kwargs
    ) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        block = BottleneckBlock if config.uses_bottleneck else ResidualBlock
        self.blocks = [
            block(config, filters, strides if i == 0 else 1, use_projection=i == 0)
            for i in range(num_blocks)
        ]

    def call(self, inputs: tf.Tensor, training=None) -> tf.Tensor:
        x = inputs
        for layer in self.blocks:
            x = layer(x, training=training)
        return x


class Stem(keras.layers.Layer):
    """Input stem: 7x7/2 conv + 3x3/2 max-pool, the 3-conv ResNet-D stem (SK), or the CIFAR stem."""

    def __init__(self, config: ModelConfig, **kwargs) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.initial_conv_before_bn = config.initial_conv_before_bn
        width = int(64 * config.width_multiplier)
        if config.cifar_stem:
            self.convs = [ConvBN(config, width, 3, 1)]
        elif config.sk_ratio > 0:
            half = max(width // 2, 1)
            self.convs = [
                ConvBN(config, half, 3, 2),
                ConvBN(config, half, 3, 1),
                ConvBN(config, width, 3, 1),
            ]
        else:
            self.convs = [ConvBN(config, width, 7, 2)]
        self.max_pool = None
        if not config.cifar_stem:
            self.max_pool = keras.layers.MaxPooling2D(
                3, strides=2, padding="same", dtype=config.dtype_policy
            )

    def call(self, inputs: tf.Tensor, training=None) -> tuple[tf.Tensor, tf.Tensor]:
        """``(initial_conv, initial_max_pool)``: ``initial_conv`` is the last convolution's
        activation, or with ``initial_conv_before_bn`` its output before batch norm (where the
        reference's resnet.py names it)."""
        x = inputs
        for layer in self.convs[:-1]:
            x = layer(x, training=training)
        convolution, x = self.convs[-1](x, training=training, with_convolution=True)
        pooled = self.max_pool(x) if self.max_pool is not None else x
        return (convolution if self.initial_conv_before_bn else x), pooled


class ResNet(keras.layers.Layer):
    """The encoder f(.): returns the backbone endpoints of the design's contract.

    ``initial_conv``, ``initial_max_pool``, ``block_group1`` .. ``block_group4`` and
    ``final_avg_pool`` (global average pool, the representation h of SimCLR section 2).
    """

    def __init__(self, config: ModelConfig, **kwargs) -> None:
        super().__init__(dtype=config.dtype_policy, **kwargs)
        self.config = config
        self.stem = Stem(config, name="stem")
        self.block_groups = [
            BlockGroup(
                config,
                int(filters * config.width_multiplier),
                num_blocks,
                strides,
                name=f"block_group{i + 1}",
            )
            for i, (filters, num_blocks, strides) in enumerate(
                zip(
                    GROUP_FILTERS,
                    BLOCKS_PER_GROUP[config.resnet_depth],
                    GROUP_STRIDES,
                    strict=True,
                )
            )
        ]
        frozen = config.fine_tune_after_block
        if frozen >= 0:
            for layer in [self.stem, *self.block_groups[:frozen]]:
                layer.trainable = False

    def call(self, images: tf.Tensor, training=None) -> dict[str, tf.Tensor]:
        frozen = self.config.fine_tune_after_block
        initial_conv, x = self.stem(images, training=training)
        if frozen == 0:
            x = tf.stop_gradient(x)
        endpoints = {"initial_conv": initial_conv, "initial_max_pool": x}
        for i, group in enumerate(self.block_groups):
            x = group(x, training=training)
            if frozen == i + 1:
                x = tf.stop_gradient(x)
            endpoints[f"block_group{i + 1}"] = x
        endpoints["final_avg_pool"] = tf.reduce_mean(x, axis=[1, 2])
        return endpoints
