"""Test support: SimCLRv2 networks with random weights, written in the three checkpoint formats
of the reference implementation (google-research/simclr) by this file's own code, and their
endpoints computed by hand with ``tf.nn`` ops.

The names follow the reference's code as read (written out here independently of
``tf_simclr.reference``, which this file does not import):

* TF2 (``tf2/resnet.py``, ``tf2/model.py``): object paths under ``model/``; list indices count
  the layers without weights (``Conv2dFixedPadding`` holds ``conv2d``, ``BatchNormRelu`` holds
  ``bn``, ``SK_Conv2D`` holds ``conv2d_fixed_padding``, ``batch_norm_relu``, ``conv2d_0``,
  ``batch_norm_relu_1``, ``conv2d_1``). ``tf2/run.py`` saves ``tf.train.Checkpoint(model=...,
  global_step=..., optimizer=...)``; its SavedModel module holds ``model`` and
  ``trainable_variables_list``.
* TF1 (``resnet.py``, ``model_util.py``): ``tf.layers`` names (``conv2d_<n>``,
  ``batch_normalization_<n>`` in creation order) under ``base_model``, ``head_contrastive/nl_<j>``
  and ``head_supervised/linear_layer``; optimizer slots ``<name>/Momentum``.

The hand-built forward pass computes what those files compute in inference mode: fixed padding
of strided convolutions, batch norm with epsilon 1e-5, the selective kernel, the ResNet-D shortcut
(a 2x2 average pool of every projection shortcut, zero-padded at the bottom and right when
strided), ``initial_conv`` before the stem's last batch norm.
"""

from __future__ import annotations

import collections
import dataclasses
import os

import numpy as np
import tensorflow as tf
from tolerances import drift_tolerance

BLOCKS = {
    18: (False, (2, 2, 2, 2)),
    34: (False, (3, 4, 6, 3)),
    50: (True, (3, 4, 6, 3)),
    101: (True, (3, 4, 23, 3)),
    152: (True, (3, 8, 36, 3)),
    200: (True, (3, 24, 36, 3)),
}
EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A network as the reference's flags describe it. ``head_layers`` layers of the
    projection head are in the checkpoint; with ``truncated`` they are the first layers of a
    deeper head (all hidden layers). ``ft_proj_selector`` is the head output the supervised head
    reads (``num_classes`` > 0)."""

    resnet_depth: int = 50
    width_multiplier: float = 1 / 64
    sk_ratio: float = 0.0
    cifar_stem: bool = False
    head_layers: int = 3
    truncated: bool = False
    proj_out_dim: int = 8
    num_classes: int = 0
    ft_proj_selector: int = 0


@dataclasses.dataclass
class Layer:
    """A layer with weights: its TF2 object path, its TF1 name and its weights by name."""

    tf2: str
    tf1: str
    weights: dict[str, np.ndarray]


@dataclasses.dataclass
class Block:
    """A residual block: its projection shortcut (conv, batch norm) if any, and its main path
    as steps ``(conv, batch norm, stride, relu)`` or ``("sk", layers, stride)``."""

    strides: int
    resnet_d: bool
    shortcut: tuple[Layer, Layer] | None
    steps: list[tuple]


@dataclasses.dataclass
class Network:
    """Every layer in the reference's creation order, and the structure of the forward pass."""

    architecture: Architecture
    layers: list[Layer]
    stem: list[tuple[Layer, Layer, int]]
    groups: list[list[Block]]
    head: list[tuple[Layer, Layer, bool]]
    supervised: Layer | None


class _Builder:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self.layers: list[Layer] = []
        self.counts: collections.Counter[str] = collections.Counter()

    def _tf1(self, base: str) -> str:
        count = self.counts[base]
        self.counts[base] += 1
        return f"base_model/{base}" + (f"_{count}" if count else "")

    def conv(self, tf2: str, size: int, channels_in: int, channels_out: int) -> Layer:
        shape = (size, size, channels_in, channels_out)
        kernel = self.rng.normal(0.0, 1.0 / np.sqrt(size * size * channels_in), shape)
        layer = Layer(tf2, self._tf1("conv2d"), {"kernel": kernel.astype(np.float32)})
        self.layers.append(layer)
        return layer

    def batch_norm(
        self, tf2: str, channels: int, center: bool = True, tf1: str | None = None
    ) -> Layer:
        weights = {"gamma": self.rng.uniform(0.5, 1.5, channels)}
        if center:
            weights["beta"] = self.rng.normal(0.0, 0.1, channels)
        weights["moving_mean"] = self.rng.normal(0.0, 0.1, channels)
        weights["moving_variance"] = self.rng.uniform(0.5, 1.5, channels)
        name = tf1 or self._tf1("batch_normalization")
        layer = Layer(tf2, name, {k: v.astype(np.float32) for k, v in weights.items()})
        self.layers.append(layer)
        return layer

    def dense(self, tf2: str, tf1: str, channels_in: int, channels_out: int, bias: bool) -> Layer:
        shape = (channels_in, channels_out)
        weights = {"kernel": self.rng.normal(0.0, 1.0 / np.sqrt(channels_in), shape)}
        if bias:
            weights["bias"] = self.rng.normal(0.0, 0.2, channels_out)
        layer = Layer(tf2, tf1, {k: v.astype(np.float32) for k, v in weights.items()})
        self.layers.append(layer)
        return layer


def build_network(architecture: Architecture, seed: int) -> Network:
    """Random weights for every layer of ``architecture``, named as the reference names them."""
    a, build = architecture, _Builder(np.random.default_rng(seed))
    sk = a.sk_ratio > 0
    width = int(64 * a.width_multiplier)
    stem_path = "resnet_model/initial_conv_relu_max_pool"
    if a.cifar_stem:
        stem = [(0, 2, 3, 3, width, 1)]
    elif sk:
        half = int(64 * a.width_multiplier // 2)
        stem = [(0, 1, 3, 3, half, 2), (2, 3, 3, half, half, 1), (4, 6, 3, half, width, 1)]
    else:
        stem = [(0, 2, 7, 3, width, 2)]
    stem_layers = []
    for conv, bn, size, channels_in, channels_out, strides in stem:
        layer = build.conv(f"{stem_path}/{conv}/conv2d", size, channels_in, channels_out)
        norm = build.batch_norm(f"{stem_path}/{bn}/bn", channels_out)
        stem_layers.append((layer, norm, strides))
    bottleneck, counts = BLOCKS[a.resnet_depth]
    channels = width
    groups = []
    for g, (base, blocks, stride) in enumerate(
        zip((64, 128, 256, 512), counts, (1, 2, 2, 2), strict=True)
    ):
        filters = int(base * a.width_multiplier)
        group = []
        for b in range(blocks):
            prefix = f"resnet_model/block_groups/{g}/layers/{b}"
            strides = stride if b == 0 else 1
            out = 4 * filters if bottleneck else filters
            shortcut = None
            if b == 0:
                listing = f"{prefix}/{'projection_layers' if bottleneck else 'shortcut_layers'}"
                index = (2 if strides > 1 else 1) if sk else 0
                conv = build.conv(f"{listing}/{index}/conv2d", 1, channels, out)
                shortcut = (conv, build.batch_norm(f"{listing}/{index + 1}/bn", out))
            if bottleneck:
                main = f"{prefix}/conv_relu_dropblock_layers"
                steps = [
                    (
                        build.conv(f"{main}/0/conv2d", 1, channels, filters),
                        build.batch_norm(f"{main}/1/bn", filters),
                        1,
                        True,
                    )
                ]
                if sk:
                    mid = max(int(filters * a.sk_ratio), 32)
                    layer = f"{main}/3"
                    paths = build.conv(
                        f"{layer}/conv2d_fixed_padding/conv2d", 3, filters, 2 * filters
                    )
                    paths_bn = build.batch_norm(f"{layer}/batch_norm_relu/bn", 2 * filters)
                    squeeze = build.conv(f"{layer}/conv2d_0", 1, filters, mid)
                    squeeze_bn = build.batch_norm(f"{layer}/batch_norm_relu_1/bn", mid)
                    mixing = build.conv(f"{layer}/conv2d_1", 1, mid, 2 * filters)
                    steps.append(("sk", (paths, paths_bn, squeeze, squeeze_bn, mixing), strides))
                    last = 5
                else:
                    steps.append(
                        (
                            build.conv(f"{main}/3/conv2d", 3, filters, filters),
                            build.batch_norm(f"{main}/4/bn", filters),
                            strides,
                            True,
                        )
                    )
                    last = 6
                steps.append(
                    (
                        build.conv(f"{main}/{last}/conv2d", 1, filters, out),
                        build.batch_norm(f"{main}/{last + 1}/bn", out),
                        1,
                        False,
                    )
                )
            else:
                main = f"{prefix}/conv2d_bn_layers"
                steps = [
                    (
                        build.conv(f"{main}/0/conv2d", 3, channels, filters),
                        build.batch_norm(f"{main}/1/bn", filters),
                        strides,
                        True,
                    ),
                    (
                        build.conv(f"{main}/2/conv2d", 3, filters, filters),
                        build.batch_norm(f"{main}/3/bn", filters),
                        1,
                        False,
                    ),
                ]
            group.append(Block(strides, sk, shortcut, steps))
            channels = out
        groups.append(group)
    head = []
    for j in range(a.head_layers):
        hidden = a.truncated or j < a.head_layers - 1
        out = channels if hidden else a.proj_out_dim
        dense = build.dense(
            f"_projection_head/linear_layers/{j}/dense",
            f"head_contrastive/nl_{j}/dense",
            channels,
            out,
            bias=False,
        )
        bn = build.batch_norm(
            f"_projection_head/linear_layers/{j}/bn_relu/bn",
            out,
            center=hidden,
            tf1=f"head_contrastive/nl_{j}/batch_normalization",
        )
        head.append((dense, bn, hidden))
    supervised = None
    if a.num_classes:
        widths = [channels] + [dense.weights["kernel"].shape[1] for dense, _, _ in head]
        supervised = build.dense(
            "supervised_head/linear_layer/dense",
            "head_supervised/linear_layer/dense",
            widths[a.ft_proj_selector],
            a.num_classes,
            bias=True,
        )
    return Network(a, build.layers, stem_layers, groups, head, supervised)


# -- the hand-built forward pass --------------------------------------------------------------


def _conv(x: tf.Tensor, kernel: np.ndarray, strides: int) -> tf.Tensor:
    if strides == 1:
        return tf.nn.conv2d(x, kernel, 1, "SAME")
    total = kernel.shape[0] - 1
    padding = [total // 2, total - total // 2]
    x = tf.pad(x, [[0, 0], padding, padding, [0, 0]])
    return tf.nn.conv2d(x, kernel, strides, "VALID")


def _bn(x: tf.Tensor, layer: Layer) -> tf.Tensor:
    w = layer.weights
    x = (x - w["moving_mean"]) / np.sqrt(w["moving_variance"] + EPSILON) * w["gamma"]
    return x + w["beta"] if "beta" in w else x


def _selective_kernel(x: tf.Tensor, layers: tuple[Layer, ...], strides: int) -> tf.Tensor:
    paths, paths_bn, squeeze, squeeze_bn, mixing = layers
    both = tf.nn.relu(_bn(_conv(x, paths.weights["kernel"], strides), paths_bn))
    first, second = tf.split(both, 2, axis=-1)
    summary = tf.reduce_mean(first + second, axis=[1, 2], keepdims=True)
    summary = tf.nn.relu(_bn(_conv(summary, squeeze.weights["kernel"], 1), squeeze_bn))
    logits = tf.stack(tf.split(_conv(summary, mixing.weights["kernel"], 1), 2, axis=-1))
    attention = tf.nn.softmax(logits, axis=0)
    return attention[0] * first + attention[1] * second


def _block(x: tf.Tensor, block: Block) -> tf.Tensor:
    shortcut = x
    if block.shortcut is not None:
        conv, bn = block.shortcut
        strides = block.strides
        if block.resnet_d:
            if strides > 1:
                shortcut = tf.pad(shortcut, [[0, 0], [0, 1], [0, 1], [0, 0]])
                shortcut = tf.nn.avg_pool2d(shortcut, 2, strides, "VALID")
            else:
                shortcut = tf.nn.avg_pool2d(shortcut, 2, 1, "SAME")
            strides = 1
        shortcut = _bn(_conv(shortcut, conv.weights["kernel"], strides), bn)
    for step in block.steps:
        if step[0] == "sk":
            x = _selective_kernel(x, step[1], step[2])
        else:
            conv, bn, strides, relu = step
            x = _bn(_conv(x, conv.weights["kernel"], strides), bn)
            x = tf.nn.relu(x) if relu else x
    return tf.nn.relu(x + shortcut)


def endpoints(network: Network, images: np.ndarray) -> dict[str, np.ndarray]:
    """Every endpoint of the reference network for ``images`` (inference mode)."""
    out = {}
    x = tf.constant(images)
    for conv, bn, strides in network.stem:
        convolution = _conv(x, conv.weights["kernel"], strides)
        x = tf.nn.relu(_bn(convolution, bn))
    out["initial_conv"] = convolution
    if not network.architecture.cifar_stem:
        x = tf.nn.max_pool2d(x, 3, 2, "SAME")
    out["initial_max_pool"] = x
    for g, group in enumerate(network.groups):
        for block in group:
            x = _block(x, block)
        out[f"block_group{g + 1}"] = x
    hidden = [tf.reduce_mean(x, axis=[1, 2])]
    out["final_avg_pool"] = out["proj_head_input"] = hidden[0]
    for j, (dense, bn, relu) in enumerate(network.head):
        z = _bn(tf.matmul(hidden[-1], dense.weights["kernel"]), bn)
        hidden.append(tf.nn.relu(z) if relu else z)
        out[f"proj_head_{j + 1}"] = hidden[-1]
    out["proj_head_output"] = hidden[-1]
    if network.supervised is not None:
        selected = hidden[network.architecture.ft_proj_selector]
        weights = network.supervised.weights
        out["logits_sup"] = tf.matmul(selected, weights["kernel"]) + weights["bias"]
    return {name: np.asarray(value) for name, value in out.items()}


def _in_float64(item):
    """``item`` (a network, or part of one) with every weight in float64."""
    if isinstance(item, Layer):
        return dataclasses.replace(
            item, weights={k: v.astype(np.float64) for k, v in item.weights.items()}
        )
    if isinstance(item, (Network, Block)):
        fields = dataclasses.fields(item)
        return dataclasses.replace(
            item, **{f.name: _in_float64(getattr(item, f.name)) for f in fields}
        )
    if isinstance(item, (list, tuple)):
        return type(item)(_in_float64(part) for part in item)
    return item


def endpoint_tolerances(network: Network, images: np.ndarray) -> dict[str, float]:
    """The absolute tolerance of each endpoint of ``network`` computed another float32 way (a
    model loaded from its checkpoint): 10x the round-off of :func:`endpoints` on this machine,
    measured against the same forward pass in float64 (tests/tolerances.py, drift_tolerance)."""
    exact = endpoints(_in_float64(network), images.astype(np.float64))
    computed = endpoints(network, images)
    return {
        name: drift_tolerance(float(np.max(np.abs(computed[name] - value))), 1, np.abs(value).max())
        for name, value in exact.items()
    }


# -- writers -----------------------------------------------------------------------------------


def _object_tree(network: Network) -> tuple[dict, list[tf.Variable]]:
    """Nested dicts of variables along the TF2 object paths, and the trainable variables."""
    tree: dict = {}
    trainable = []
    for layer in network.layers:
        node = tree
        for step in layer.tf2.split("/"):
            node = node.setdefault(step, {})
        for name, value in layer.weights.items():
            variable = tf.Variable(value, name=name, trainable=not name.startswith("moving"))
            node[name] = variable
            if variable.trainable:
                trainable.append(variable)
    return tree, trainable


def write_tf2_checkpoint(network: Network, directory: str, step: int = 7) -> str:
    """What ``tf2/run.py`` saves: model, global step and an optimizer with momentum slots for
    the trainable variables; returns the checkpoint prefix (``directory/ckpt-<step>``)."""
    import tf_keras as keras

    tree, trainable = _object_tree(network)
    optimizer = keras.optimizers.legacy.SGD(0.1, momentum=0.9)
    optimizer.apply_gradients((tf.zeros_like(v), v) for v in trainable)
    optimizer.iterations.assign(step)
    checkpoint = tf.train.Checkpoint(
        model=tree, global_step=optimizer.iterations, optimizer=optimizer
    )
    return tf.train.CheckpointManager(checkpoint, directory, max_to_keep=1).save(step)


def write_tf2_saved_model(network: Network, directory: str) -> str:
    """The released ``saved_model/`` form: a module with ``model`` and
    ``trainable_variables_list`` (so ``variables/variables`` keys the trainable weights by the
    list's indices); returns ``directory``."""
    module = tf.Module()
    module.model, module.trainable_variables_list = _object_tree(network)
    tf.saved_model.save(module, directory)
    return directory


def write_tf1_checkpoint(
    network: Network,
    directory: str,
    *,
    step: int = 9,
    ema: Network | None = None,
    memory: bool = False,
    extra: dict[str, np.ndarray] | None = None,
) -> str:
    """A TF1 checkpoint (``directory/model.ckpt-<step>`` and ``checkpoint``) with the
    network's weights, a ``Momentum`` slot per trainable weight, the global step, optionally
    the ``ema_model/`` copy (``ema``'s weights), a memory of negatives and ``extra`` variables;
    returns the prefix."""
    tensors = dict(extra or {})
    for layer in network.layers:
        for name, value in layer.weights.items():
            tensors[f"{layer.tf1}/{name}"] = value
            if not name.startswith("moving"):
                tensors[f"{layer.tf1}/{name}/Momentum"] = np.zeros_like(value)
    for layer in ema.layers if ema is not None else []:
        for name, value in layer.weights.items():
            tensors[f"ema_model/{layer.tf1}/{name}"] = value
    if memory:
        tensors["memory"] = np.zeros((16, network.architecture.proj_out_dim), np.float32)
        tensors["memory_ptr"] = np.zeros((), np.int64)
    tensors["global_step"] = np.array(step, np.int64)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(directory, f"model.ckpt-{step}")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[name]) for name in names],
    )
    with open(os.path.join(directory, "checkpoint"), "w", encoding="utf-8") as handle:
        handle.write(f'model_checkpoint_path: "{os.path.basename(prefix)}"\n')
    return prefix
