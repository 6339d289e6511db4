"""Where google-research/simclr keeps each weight of a SimCLRv2 network, and which network a
checkpoint holds.

The reference builds the same ResNet v1 (+ selective kernels and ResNet-D) and heads as
:mod:`tf_simclr.models`, under other names:

* its TF2 code (``tf2/resnet.py``, ``tf2/model.py``) names a weight by its object path in the
  Keras model: ``resnet_model/initial_conv_relu_max_pool/<i>``,
  ``resnet_model/block_groups/<g>/layers/<b>/{projection_layers, conv_relu_dropblock_layers,
  shortcut_layers, conv2d_bn_layers}/<i>``, ``_projection_head/linear_layers/<j>``,
  ``supervised_head/linear_layer``. The list indices count layers without weights too (fixed
  padding, identity, pooling, DropBlock), so they are fixed by the architecture;
* its TF1 code (``resnet.py``, ``model_util.py``) names them as ``tf.layers`` does: scope
  ``base_model`` with ``conv2d``, ``conv2d_1``, ... and ``batch_normalization``,
  ``batch_normalization_1``, ... in the order the layers are created, ``head_contrastive/nl_<j>``
  (``l_0`` for a linear head) and ``head_supervised/linear_layer``, each with ``dense`` and
  ``batch_normalization`` inside.

A :class:`Unit` is one layer with weights: its object path in :class:`tf_simclr.SimCLRModel`,
its name in the reference's checkpoint and its variables with their shapes. The ``*_units``
functions list them for a configuration, in the reference's creation order; the ``infer_*``
functions find the configuration whose units are exactly the weights a checkpoint holds.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator

from tf_simclr.config import RESNET_DEPTHS, ModelConfig
from tf_simclr.models.resnet import (
    BLOCKS_PER_GROUP,
    BOTTLENECK_EXPANSION,
    GROUP_FILTERS,
    GROUP_STRIDES,
    SK_MIN_DIM,
)

TF2 = "tf2"
TF1 = "tf1"
PAPER_SK_RATIO = 0.0625
Shape = tuple[int, ...]
# ``key(name)``: the checkpoint key of the reference's variable ``name`` (None when absent).
KeyOf = Callable[[str], str | None]
ShapeOf = Callable[[str], Shape]


@dataclasses.dataclass(frozen=True)
class Unit:
    """One layer with weights: ``ours`` is its object path in a SimCLRModel (as
    :func:`tf_simclr.hub.variable_paths` spells it), ``reference`` its name in the reference's
    checkpoint, ``variables`` the ``(name, shape)`` of each weight (Keras names: ``kernel``,
    ``bias``, ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``, in both)."""

    ours: str
    reference: str
    variables: tuple[tuple[str, Shape], ...]

    def weights(self) -> Iterator[tuple[str, str, Shape]]:
        """``(our variable path, the reference's variable name, shape)`` of every weight."""
        for name, shape in self.variables:
            yield f"{self.ours}.{name}", f"{self.reference}/{name}", shape


def _batch_norm(ours: str, reference: str, channels: int, center: bool = True) -> Unit:
    """A batch norm's unit: gamma, beta (unless not ``center``), moving mean and variance."""
    names = ("gamma", "beta", "moving_mean", "moving_variance")
    return Unit(
        ours, reference, tuple((name, (channels,)) for name in names if center or name != "beta")
    )


class _Units:
    """Collects units in creation order; names TF1 layers as ``tf.layers`` does."""

    def __init__(self, fmt: str, tf1_scope: str) -> None:
        self.fmt = fmt
        self.tf1_scope = tf1_scope
        self.counts: collections.Counter[str] = collections.Counter()
        self.units: list[Unit] = []

    def _name(self, tf2_path: str, tf1_layer: str) -> str:
        if self.fmt == TF2:
            return tf2_path
        count = self.counts[tf1_layer]
        self.counts[tf1_layer] += 1
        return f"{self.tf1_scope}/{tf1_layer}" + (f"_{count}" if count else "")

    def conv(
        self, ours: str, tf2_path: str, size: int, channels_in: int, channels_out: int
    ) -> None:
        name = self._name(tf2_path, "conv2d")
        shape = (size, size, channels_in, channels_out)
        self.units.append(Unit(ours, name, (("kernel", shape),)))

    def batch_norm(self, ours: str, tf2_path: str, channels: int) -> None:
        self.units.append(_batch_norm(ours, self._name(tf2_path, "batch_normalization"), channels))


def encoder_units(config: ModelConfig, fmt: str) -> list[Unit]:
    """The encoder's units for ``config`` (``tf2/resnet.py`` and ``resnet.py`` of the
    reference: stem, then every block's projection shortcut before its main path)."""
    if config.se_ratio > 0:
        raise ValueError(
            "squeeze-excitation (se_ratio > 0) is not supported for reference checkpoints: the "
            "reference sizes its SE layers differently; none of the released checkpoints has SE."
        )
    units = _Units(fmt, "base_model")
    width = int(64 * config.width_multiplier)
    stem = "resnet_model/initial_conv_relu_max_pool"
    if config.cifar_stem:
        units.conv("encoder.stem.convs.0.conv", f"{stem}/0/conv2d", 3, 3, width)
        units.batch_norm("encoder.stem.convs.0.bn", f"{stem}/2/bn", width)
    elif config.sk_ratio > 0:
        half = max(width // 2, 1)
        stem_channels = ((3, half), (half, half), (half, width))
        # Identity and max-pool layers sit at indices 5, 7, 8 of the stem's list.
        for i, ((channels_in, channels_out), conv, bn) in enumerate(
            zip(stem_channels, (0, 2, 4), (1, 3, 6), strict=True)
        ):
            ours = f"encoder.stem.convs.{i}"
            units.conv(f"{ours}.conv", f"{stem}/{conv}/conv2d", 3, channels_in, channels_out)
            units.batch_norm(f"{ours}.bn", f"{stem}/{bn}/bn", channels_out)
    else:
        units.conv("encoder.stem.convs.0.conv", f"{stem}/0/conv2d", 7, 3, width)
        units.batch_norm("encoder.stem.convs.0.bn", f"{stem}/2/bn", width)
    channels = width
    for g, (filters, blocks, stride) in enumerate(
        zip(GROUP_FILTERS, BLOCKS_PER_GROUP[config.resnet_depth], GROUP_STRIDES, strict=True)
    ):
        filters = int(filters * config.width_multiplier)
        for b in range(blocks):
            ours = f"encoder.block_groups.{g}.blocks.{b}"
            theirs = f"resnet_model/block_groups/{g}/layers/{b}"
            strides = stride if b == 0 else 1
            if config.uses_bottleneck:
                channels = _bottleneck(
                    units, config, ours, theirs, channels, filters, strides, b == 0
                )
            else:
                channels = _basic(units, config, ours, theirs, channels, filters, strides, b == 0)
    return units.units


def _shortcut(
    units: _Units,
    config: ModelConfig,
    ours: str,
    theirs: str,
    channels: int,
    out: int,
    strides: int,
) -> None:
    """The projection shortcut: the conv follows padding and pooling layers with ResNet-D."""
    index = (2 if strides > 1 else 1) if config.sk_ratio > 0 else 0
    units.conv(f"{ours}.shortcut.proj.conv", f"{theirs}/{index}/conv2d", 1, channels, out)
    units.batch_norm(f"{ours}.shortcut.proj.bn", f"{theirs}/{index + 1}/bn", out)


def _bottleneck(
    units: _Units,
    config: ModelConfig,
    ours: str,
    theirs: str,
    channels: int,
    filters: int,
    strides: int,
    projection: bool,
) -> int:
    """A bottleneck block's units (its main path is ``conv_relu_dropblock_layers``, where every
    conv + batch norm is followed by a DropBlock layer); returns its output channels."""
    out = BOTTLENECK_EXPANSION * filters
    if projection:
        _shortcut(units, config, ours, f"{theirs}/projection_layers", channels, out, strides)
    main = f"{theirs}/conv_relu_dropblock_layers"
    units.conv(f"{ours}.conv1.conv", f"{main}/0/conv2d", 1, channels, filters)
    units.batch_norm(f"{ours}.conv1.bn", f"{main}/1/bn", filters)
    if config.sk_ratio > 0:
        squeezed = max(int(filters * config.sk_ratio), SK_MIN_DIM)
        sk, mine = f"{main}/3", f"{ours}.conv2"
        paths = f"{sk}/conv2d_fixed_padding/conv2d"
        units.conv(f"{mine}.paths.conv", paths, 3, filters, 2 * filters)
        units.batch_norm(f"{mine}.paths.bn", f"{sk}/batch_norm_relu/bn", 2 * filters)
        units.conv(f"{mine}.squeeze.conv", f"{sk}/conv2d_0", 1, filters, squeezed)
        units.batch_norm(f"{mine}.squeeze.bn", f"{sk}/batch_norm_relu_1/bn", squeezed)
        units.conv(f"{mine}.mixing", f"{sk}/conv2d_1", 1, squeezed, 2 * filters)
        last = 5
    else:
        units.conv(f"{ours}.conv2.conv", f"{main}/3/conv2d", 3, filters, filters)
        units.batch_norm(f"{ours}.conv2.bn", f"{main}/4/bn", filters)
        last = 6
    units.conv(f"{ours}.conv3.conv", f"{main}/{last}/conv2d", 1, filters, out)
    units.batch_norm(f"{ours}.conv3.bn", f"{main}/{last + 1}/bn", out)
    return out


def _basic(
    units: _Units,
    config: ModelConfig,
    ours: str,
    theirs: str,
    channels: int,
    filters: int,
    strides: int,
    projection: bool,
) -> int:
    """A basic block's units (``shortcut_layers``, ``conv2d_bn_layers``); returns its width."""
    if projection:
        _shortcut(units, config, ours, f"{theirs}/shortcut_layers", channels, filters, strides)
    main = f"{theirs}/conv2d_bn_layers"
    units.conv(f"{ours}.conv1.conv", f"{main}/0/conv2d", 3, channels, filters)
    units.batch_norm(f"{ours}.conv1.bn", f"{main}/1/bn", filters)
    units.conv(f"{ours}.conv2.conv", f"{main}/2/conv2d", 3, filters, filters)
    units.batch_norm(f"{ours}.conv2.bn", f"{main}/3/bn", filters)
    return filters


def _head_layer(fmt: str, mode: str, j: int) -> tuple[str, str]:
    """The reference's names of head layer ``j``'s dense layer and batch norm."""
    if fmt == TF2:
        layer = f"_projection_head/linear_layers/{j}"
        return f"{layer}/dense", f"{layer}/bn_relu/bn"
    layer = "head_contrastive/" + ("l_0" if mode == "linear" else f"nl_{j}")
    return f"{layer}/dense", f"{layer}/batch_normalization"


def head_units(config: ModelConfig, fmt: str) -> list[Unit]:
    """The projection head's units: a dense layer without bias and a batch norm per layer, the
    batch norm without beta in the output layer (``tf2/model.py`` ``ProjectionHead``,
    ``model_util.py`` ``projection_head``)."""
    units = []
    widths = head_output_dims(config)
    for j in range(config.num_head_layers):
        dense, bn = _head_layer(fmt, config.proj_head_mode, j)
        output = j == config.num_head_layers - 1 and not config.truncated_proj_head
        ours = f"projection_head.layers_list.{j}"
        units.append(Unit(f"{ours}.dense", dense, (("kernel", (widths[j], widths[j + 1])),)))
        units.append(_batch_norm(f"{ours}.bn", bn, widths[j + 1], center=not output))
    return units


def supervised_units(fmt: str, input_dim: int, num_classes: int) -> list[Unit]:
    """The supervised head: one dense layer with bias (``LinearLayer`` / ``linear_layer``)."""
    theirs = "supervised_head" if fmt == TF2 else "head_supervised"
    shapes = (("kernel", (input_dim, num_classes)), ("bias", (num_classes,)))
    return [Unit("supervised_head.dense", f"{theirs}/linear_layer/dense", shapes)]


def head_output_dims(config: ModelConfig) -> list[int]:
    """Widths of ``[proj_head_input, proj_head_1, ..., proj_head_N]``."""
    layers = config.num_head_layers
    width = config.encoder_output_dim
    if layers == 0:
        return [width]
    hidden = layers if config.truncated_proj_head else layers - 1
    return [width] * (hidden + 1) + [config.proj_out_dim] * (layers - hidden)


def _resolve(units: list[Unit], key: KeyOf) -> dict[str, str] | None:
    """``{our variable path: checkpoint key}`` when every weight of ``units`` exists."""
    keys = {}
    for ours, theirs, _ in (weight for unit in units for weight in unit.weights()):
        found = key(theirs)
        if found is None:
            return None
        keys[ours] = found
    return keys


def _shape_problems(units: list[Unit], key: KeyOf, shape: ShapeOf) -> list[str]:
    return [
        f"{theirs} {shape(key(theirs))} vs {expected}"
        for unit in units
        for _, theirs, expected in unit.weights()
        if shape(key(theirs)) != expected
    ]


def _sk_ratio(units: list[Unit], key: KeyOf, shape: ShapeOf) -> float | None:
    """An ``sk_ratio`` giving every selective kernel the squeeze width the checkpoint holds:
    the paper's 0.0625 when it does (all widths are at least 32, so several ratios may)."""
    pairs = [
        (unit.variables[0][1][2], shape(key(f"{unit.reference}/kernel"))[-1])
        for unit in units
        if unit.ours.endswith(".squeeze.conv")
    ]
    widest = max(pairs, key=lambda pair: (pair[1], pair[0]))
    for ratio in (PAPER_SK_RATIO, widest[1] / widest[0], (widest[1] + 0.5) / widest[0]):
        if all(max(int(filters * ratio), SK_MIN_DIM) == width for filters, width in pairs):
            return ratio
    return None


def infer_encoder(
    fmt: str, key: KeyOf, shape: ShapeOf, encoder_keys: set[str]
) -> tuple[ModelConfig, dict[str, str]]:
    """The encoder configuration whose weights are exactly ``encoder_keys`` (depth, width,
    selective kernels and their ratio, stem), and ``{our variable path: checkpoint key}``."""
    tried, nearest = [], (-1, "")
    for depth in RESNET_DEPTHS:
        for sk in (False, True):
            for cifar in (False, True):
                probe = ModelConfig(
                    resnet_depth=depth, sk_ratio=PAPER_SK_RATIO if sk else 0.0, cifar_stem=cifar
                )
                units = encoder_units(probe, fmt)
                keys = _resolve(units, key)
                if keys is None or set(keys.values()) != encoder_keys:
                    names = [theirs for unit in units for _, theirs, _ in unit.weights()]
                    found = {key(name) for name in names} - {None}
                    if len(found & encoder_keys) > nearest[0]:
                        missing = [name for name in names if key(name) is None]
                        extra = sorted(encoder_keys - found)
                        nearest = (
                            len(found & encoder_keys),
                            f"ResNet-{depth} sk={sk} cifar_stem={cifar} lacks "
                            f"{len(missing)} weights ({', '.join(missing[:3])}) and has no "
                            f"place for {len(extra)} ({', '.join(extra[:3])})",
                        )
                    continue
                stem = [u for u in units if u.ours.startswith("encoder.stem.convs")]
                width = shape(key(f"{stem[-2].reference}/kernel"))[-1] / 64
                ratio = _sk_ratio(units, key, shape) if sk and probe.uses_bottleneck else None
                config = ModelConfig(
                    resnet_depth=depth,
                    width_multiplier=width,
                    sk_ratio=(ratio or PAPER_SK_RATIO) if sk else 0.0,
                    cifar_stem=cifar,
                    batch_norm_epsilon=1e-5,
                    initial_conv_before_bn=True,
                    reference_resnet_d=sk,
                    global_bn=False,
                )
                units = encoder_units(config, fmt)
                problems = _shape_problems(units, key, shape)
                if not problems:
                    return config, _resolve(units, key)
                tried.append(f"ResNet-{depth} sk={sk} cifar_stem={cifar}: {problems[:3]}")
    raise ValueError(
        f"the {len(encoder_keys)} encoder weights match no ResNet the reference builds (depths "
        f"{RESNET_DEPTHS}, with or without selective kernels, ImageNet or CIFAR stem)"
        + (f"; nearest: {'; '.join(tried)}" if tried else f"; nearest: {nearest[1]}")
    )


def infer_head(
    fmt: str, key: KeyOf, shape: ShapeOf, head_keys: set[str], encoder: ModelConfig
) -> tuple[ModelConfig, dict[str, str]]:
    """``encoder`` with the projection head the checkpoint holds, and ``{our variable path:
    checkpoint key}``: its layers, its output width, and whether it is truncated (its last
    layer has a beta, so it is a hidden layer whose successors are absent)."""
    width = encoder.encoder_output_dim
    linear = _head_layer(fmt, "linear", 0)[0] + "/kernel"
    if fmt == TF1 and key(linear) is not None:
        config = dataclasses.replace(
            encoder, proj_head_mode="linear", proj_out_dim=shape(key(linear))[-1]
        )
    else:
        layers = 0
        while key(_head_layer(fmt, "nonlinear", layers)[0] + "/kernel") is not None:
            layers += 1
        if layers == 0:
            config = dataclasses.replace(encoder, proj_head_mode="none", num_proj_layers=1)
        else:
            dense, bn = _head_layer(fmt, "nonlinear", layers - 1)
            truncated = key(f"{bn}/beta") is not None
            config = dataclasses.replace(
                encoder,
                proj_head_mode="nonlinear",
                num_proj_layers=layers,
                proj_out_dim=width if truncated else shape(key(f"{dense}/kernel"))[-1],
                truncated_proj_head=truncated,
            )
    units = head_units(config, fmt)
    keys = _resolve(units, key)
    problems = _shape_problems(units, key, shape) if keys is not None else []
    if keys is None or set(keys.values()) != head_keys or problems:
        raise ValueError(
            f"the {len(head_keys)} projection-head weights are not a head the reference builds "
            f"(a dense layer and a batch norm per layer, {width} wide but the output layer)"
            + (f": {'; '.join(problems[:3])}" if problems else "")
        )
    return config, keys


def infer_supervised(
    fmt: str, key: KeyOf, shape: ShapeOf, supervised_keys: set[str]
) -> tuple[int, int, dict[str, str]]:
    """``(number of classes, input width, {our variable path: checkpoint key})`` of the
    supervised head; ``(0, 0, {})`` when the checkpoint has none."""
    if not supervised_keys:
        return 0, 0, {}
    kernel = key(supervised_units(fmt, 0, 0)[0].reference + "/kernel")
    input_dim, num_classes = shape(kernel) if kernel is not None else (0, 0)
    units = supervised_units(fmt, input_dim, num_classes)
    keys = _resolve(units, key)
    problems = _shape_problems(units, key, shape) if keys is not None else []
    if keys is None or set(keys.values()) != supervised_keys or problems:
        raise ValueError(
            f"the {len(supervised_keys)} supervised-head weights are not the reference's "
            "supervised head (one dense layer with a bias)"
            + (f": {'; '.join(problems[:3])}" if problems else "")
        )
    return num_classes, input_dim, keys
