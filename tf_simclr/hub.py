"""The TF-Hub module: export a SimCLRModel as a reusable SavedModel and load it back.

The module implements TF-Hub's *reusable SavedModel* interface, so every consumption path works:
``hub.load`` / ``tf.saved_model.load``, ``hub.KerasLayer`` (frozen or ``trainable=True``, with
``output_key`` or with a ``signature``) and Keras 3's ``keras.layers.TFSMLayer``. The contract
(endpoints, shapes, batch-norm behaviour) is written down in ``export/SIGNATURES.md``:

* ``__call__(images, training=False)`` traced for ``training=True`` and ``training=False``,
  returning the endpoint dict of the design (SimCLRv2 section 2);
* ``variables``, ``trainable_variables`` and ``regularization_losses`` (one zero-argument function:
  ``weight_decay * sum(l2_loss(v))`` over the trainable variables that are not batch-norm
  gamma/beta, biases or the supervised head, as in SimCLR appendix B.1);
* one inference signature per endpoint plus ``default`` (= ``final_avg_pool``), input key
  ``images``, float32 ``[None, None, None, 3]`` in [0, 1], which every call checks (a batch
  outside [0, 1] by more than :data:`IMAGE_RANGE_TOLERANCE` fails with "images must be float32
  in [0, 1]");
* ``model_variables``: the same variables keyed by their object path in the model
  (``encoder.stem.convs.0.conv.kernel``), read back by :func:`load_module_weights`;
* the asset ``tf_simclr_module.json``: the ``ModelConfig``, the exported parts and endpoints,
  and, in a module with a supervised head, ``class_names`` (entry i names logit i; empty when the
  training data had no names), also written one per line to the asset ``classes.txt``.

The module is exported with plain batch norm: a copy of the model with ``global_bn=False`` (and
float32, nothing frozen) receives the weights, so no cross-replica op or custom gradient of
synchronised batch norm ends up in the graph. The source model may live under any
``tf.distribute`` strategy; its variables are read in cross-replica context.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import tempfile
from collections.abc import Callable, Iterable

import tensorflow as tf
from absl import logging

from tf_simclr.config import ModelConfig, OptimConfig
from tf_simclr.logs import SAVE_NOISE, dropped
from tf_simclr.model_dir import CLASSES_FILENAME, write_class_names
from tf_simclr.models.simclr import SimCLRModel
from tf_simclr.objectives.weight_decay import weight_decay_loss

DEFAULT_SIGNATURE = "default"
DEFAULT_ENDPOINTS = {DEFAULT_SIGNATURE: "final_avg_pool"}
DEFAULT_WEIGHT_DECAY = OptimConfig.weight_decay
METADATA_FILENAME = "tf_simclr_module.json"
METADATA_FORMAT = "tf-simclr-hub-module"
METADATA_VERSION = 1
IMAGE_SPEC = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")
# What a SavedModel directory holds; an export may replace a directory holding only these.
SAVED_MODEL_ENTRIES = frozenset(
    {"saved_model.pb", "saved_model.pbtxt", "variables", "assets", "fingerprint.pb"}
)
# Inputs outside [-tolerance, 1 + tolerance] are refused. The tolerance admits the overshoot of
# bicubic or Lanczos resizing of [0, 1] images (a few percent) and catches the usual mistakes:
# 0-255 pixels and mean/std-standardised ones (about -2 to 2.6).
IMAGE_RANGE_TOLERANCE = 0.1
IMAGE_RANGE_MESSAGE = "images must be float32 in [0, 1]"
BUILD_IMAGE_SIZE = 32
BACKBONE_ENDPOINTS = (
    "initial_conv",
    "initial_max_pool",
    "block_group1",
    "block_group2",
    "block_group3",
    "block_group4",
    "final_avg_pool",
)


@dataclasses.dataclass(frozen=True)
class HubModuleInfo:
    """What a tf-simclr TF-Hub module holds (read from its ``tf_simclr_module.json`` asset)."""

    config: ModelConfig
    parts: tuple[str, ...]
    signatures: tuple[str, ...]
    weight_decay: float
    step: int | None
    class_names: tuple[str, ...] = ()


def export_config(config: ModelConfig) -> ModelConfig:
    """The configuration a module is exported with: same architecture, consumer-friendly.

    Plain batch norm (no cross-replica ops or custom gradients), float32, nothing frozen and no
    stop-gradient before the supervised head: what to freeze is the consumer's decision.
    """
    return dataclasses.replace(
        config,
        global_bn=False,
        dtype_policy="float32",
        fine_tune_after_block=-1,
        supervised_head_stop_gradient=False,
    )


def module_parts(
    config: ModelConfig, include_projection_head: bool, include_supervised_head: bool
) -> tuple[str, ...]:
    """The parts a module of ``config`` holds; the encoder always, the heads when asked and present.

    Raises ``ValueError`` when the supervised head is wanted without the projection head but reads
    one of the projection head's layers.
    """
    parts = ["encoder"]
    if include_projection_head:
        parts.append("projection_head")
    if include_supervised_head and config.num_classes > 0:
        if not include_projection_head and config.selected_head_output > 0:
            raise ValueError(
                f"the supervised head reads proj_head_{config.selected_head_output} "
                f"(ft_proj_selector={config.ft_proj_selector}), so it cannot be exported without "
                "the projection head: include the projection head or exclude the supervised head."
            )
        parts.append("supervised_head")
    return tuple(parts)


def endpoint_names(config: ModelConfig, parts: Iterable[str]) -> tuple[str, ...]:
    """Endpoints a module with ``parts`` returns, in the order of the design's contract."""
    parts = tuple(parts)
    names = list(BACKBONE_ENDPOINTS)
    if "projection_head" in parts:
        names.append("proj_head_input")
        names.extend(f"proj_head_{i + 1}" for i in range(config.num_head_layers))
        names.append("proj_head_output")
    if "supervised_head" in parts:
        names.append("logits_sup")
    return tuple(names)


def signature_names(config: ModelConfig, parts: Iterable[str]) -> tuple[str, ...]:
    """Every signature of a module: one per endpoint, then ``default`` (= ``final_avg_pool``)."""
    return (*endpoint_names(config, parts), DEFAULT_SIGNATURE)


def model_parts(model: SimCLRModel) -> dict[str, tf.Module]:
    """The parts ``model`` has, by name (no supervised head without classes)."""
    parts = {"encoder": model.encoder, "projection_head": model.projection_head}
    if model.supervised_head is not None:
        parts["supervised_head"] = model.supervised_head
    return parts


def trackable_variables(
    *roots: tuple[tuple[str, ...], object],
) -> dict[tuple[str, ...], tf.Variable]:
    """Every variable reachable from the ``(path, trackable)`` roots, keyed by the path of child
    names by which a breadth-first walk (root by root, in order) first reaches it: the walk
    ``tf.train.Checkpoint`` makes when it saves, so a path names a variable by what it is in the
    object graph, independently of Keras's global name counters and of ``trainable`` flags."""
    found: dict[tuple[str, ...], tf.Variable] = {}
    seen: set[int] = set()
    for root in roots:
        queue = collections.deque([root])
        while queue:
            path, trackable = queue.popleft()
            if id(trackable) in seen:
                continue
            seen.add(id(trackable))
            if isinstance(trackable, tf.Variable):
                found[path] = trackable
                continue
            for name, child in tf.train.TrackableView.children(trackable).items():
                queue.append(((*path, name), child))
    return found


def variable_paths(model: SimCLRModel, parts: Iterable[str]) -> dict[str, tf.Variable]:
    """Variables of ``parts`` keyed by object path, e.g. ``encoder.stem.convs.0.conv.kernel``:
    the :func:`trackable_variables` path under ``tf.train.Checkpoint(model=model)``, with ``.``
    between steps."""
    available = model_parts(model)
    found = trackable_variables(*(((part,), available[part]) for part in parts))
    return {".".join(path): variable for path, variable in found.items()}


def save_hub_module(
    model: SimCLRModel,
    export_dir: str,
    *,
    include_projection_head: bool = True,
    include_supervised_head: bool = True,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    step: int | None = None,
    overwrite: bool = False,
    class_names: Iterable[str] = (),
) -> str:
    """Write ``model`` (built, under any strategy) as a TF-Hub module to ``export_dir``.

    ``weight_decay`` is the coefficient of the module's regularization loss. ``class_names``
    (one per logit, or none) travel with a module that has the supervised head. Refuses to write
    into an existing non-empty directory unless it holds a previous module and ``overwrite`` is
    set, which replaces it (see :func:`check_export_dir`). Returns ``export_dir``.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 disables weight decay).")
    if not model.built:
        raise ValueError(
            "the model has no variables yet; build it first (model.build_for_size(...)) "
            "or restore a checkpoint into a built model."
        )
    if check_export_dir(export_dir, overwrite):
        tf.io.gfile.rmtree(export_dir)
    parts = module_parts(model.config, include_projection_head, include_supervised_head)
    names = list(class_names) if "supervised_head" in parts else []
    if names and len(names) != model.config.num_classes:
        raise ValueError(
            f"{len(names)} class names for a supervised head of {model.config.num_classes} "
            "classes; pass one name per class."
        )
    plain = _plain_copy(model, parts)
    root = _build_module(plain, parts, weight_decay)
    signatures = {
        name: _signature(root.__call__, name, DEFAULT_ENDPOINTS.get(name, name))
        for name in signature_names(plain.config, parts)
    }
    metadata = {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "model_config": dataclasses.asdict(plain.config),
        "parts": list(parts),
        "signatures": list(signatures),
        "weight_decay": weight_decay,
        "step": step,
        "class_names": names,
    }
    with tempfile.TemporaryDirectory() as scratch:
        metadata_path = os.path.join(scratch, METADATA_FILENAME)
        with open(metadata_path, "w", encoding="utf-8") as handle:
            json.dump(metadata, handle, indent=2, sort_keys=True)
        root.metadata = tf.saved_model.Asset(metadata_path)
        if names:
            write_class_names(scratch, names)
            root.class_names = tf.saved_model.Asset(os.path.join(scratch, CLASSES_FILENAME))
        with dropped(SAVE_NOISE):
            tf.saved_model.save(root, export_dir, signatures=signatures)
    logging.info(
        "exported hub module to %s (%s; %d variables, %d signatures, %.1f MB)",
        export_dir,
        ", ".join(parts),
        len(root.variables),
        len(signatures),
        _folder_bytes(export_dir) / 1e6,
    )
    return export_dir


def _folder_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    return sum(
        tf.io.gfile.stat(os.path.join(folder, name)).length
        for folder, _, names in tf.io.gfile.walk(path)
        for name in names
    )


def check_export_dir(
    export_dir: str, overwrite: bool, overwrite_option: str = "overwrite=True"
) -> bool:
    """Whether exporting to ``export_dir`` first removes a previous module there.

    A missing or empty directory is fine. One that holds a SavedModel (or part of one, from an
    export cut short) and nothing else is replaced with ``overwrite`` and refused without it; one
    that holds anything else is always refused, so that ``overwrite`` never deletes unrelated
    files. The ``FileExistsError`` names ``overwrite_option`` (the binary's ``--overwrite``).
    """
    if not tf.io.gfile.isdir(export_dir):
        if tf.io.gfile.exists(export_dir):
            raise FileExistsError(f"{export_dir} is a file; choose a directory to export to.")
        return False
    entries = sorted(name.rstrip("/") for name in tf.io.gfile.listdir(export_dir))
    if not entries:
        return False
    others = [name for name in entries if name not in SAVED_MODEL_ENTRIES]
    if others:
        listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
        raise FileExistsError(
            f"{export_dir} holds files that are not part of a SavedModel ({listed}); export "
            f"into a new or empty directory ({overwrite_option} only replaces a previous module)."
        )
    if not overwrite:
        raise FileExistsError(
            f"{export_dir} holds a SavedModel already; pass {overwrite_option} to replace it, "
            "or choose another export directory."
        )
    return True


def export_to_model_dir(
    model: SimCLRModel,
    model_dir: str,
    step: int,
    keep_hub_module_max: int,
    include_projection_head: bool = True,
    include_supervised_head: bool = True,
    *,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    class_names: Iterable[str] = (),
) -> str:
    """Export ``model`` to ``model_dir/hub/<step>/`` and keep the ``keep_hub_module_max`` newest.

    Called at the end of every phase. An existing module of the same step is replaced;
    ``keep_hub_module_max <= 0`` keeps every module. Returns the module's path. Under
    ``MultiWorkerMirroredStrategy`` reading synchronised variables is collective: call it on every
    worker, with a scratch ``model_dir`` on the non-chief ones.
    """
    hub_dir = os.path.join(model_dir, "hub")
    export_dir = os.path.join(hub_dir, str(int(step)))
    save_hub_module(
        model,
        export_dir,
        include_projection_head=include_projection_head,
        include_supervised_head=include_supervised_head,
        weight_decay=weight_decay,
        step=int(step),
        overwrite=True,
        class_names=class_names,
    )
    _prune_old_modules(hub_dir, keep_hub_module_max)
    return export_dir


def read_module_info(path: str) -> HubModuleInfo:
    """Read what the tf-simclr TF-Hub module at ``path`` holds, without loading its graph."""
    if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
        raise FileNotFoundError(
            f"no TF-Hub module at {path}: expected {path}/saved_model.pb; pass the directory "
            "written by the export (e.g. MODEL_DIR/hub/<step>)."
        )
    metadata_path = os.path.join(path, "assets", METADATA_FILENAME)
    if not tf.io.gfile.exists(metadata_path):
        raise ValueError(
            f"{path} is a SavedModel but not a tf-simclr TF-Hub module (no "
            f"assets/{METADATA_FILENAME}); export it with tf_simclr.hub or tf-simclr-export."
        )
    with tf.io.gfile.GFile(metadata_path) as handle:
        metadata = json.load(handle)
    if metadata.get("format") != METADATA_FORMAT or metadata.get("version") != METADATA_VERSION:
        raise ValueError(
            f"{metadata_path} has format {metadata.get('format')!r} version "
            f"{metadata.get('version')!r}; this tf-simclr reads {METADATA_FORMAT!r} version "
            f"{METADATA_VERSION}."
        )
    return HubModuleInfo(
        config=ModelConfig.from_dict(metadata["model_config"], metadata_path),
        parts=tuple(metadata["parts"]),
        signatures=tuple(metadata["signatures"]),
        weight_decay=float(metadata["weight_decay"]),
        step=metadata["step"],
        class_names=tuple(metadata.get("class_names", ())),
    )


def load_config_from_hub(path: str) -> ModelConfig:
    """The ``ModelConfig`` of the module at ``path`` (plain batch norm, float32, nothing frozen).

    Replace the training-only fields (``global_bn``, ``dtype_policy``, ``fine_tune_after_block``,
    ...) with ``dataclasses.replace`` before building the model you train.
    """
    return read_module_info(path).config


def load_module_weights(model: SimCLRModel, path: str, parts: Iterable[str]) -> None:
    """Read the variables of ``parts`` of the module at ``path`` into the built ``model``, by
    object path (``model_variables``). Architecture checks are the caller's:
    :func:`tf_simclr.checkpoints.restore_model_from_hub`."""
    checkpoint = tf.train.Checkpoint()
    checkpoint.model_variables = variable_paths(model, parts)
    status = checkpoint.restore(os.path.join(path, "variables", "variables"))
    status.expect_partial()
    status.assert_existing_objects_matched()


def _plain_copy(model: SimCLRModel, parts: tuple[str, ...]) -> SimCLRModel:
    """A plain-BN float32 SimCLRModel holding the current values of ``model``'s ``parts``."""
    plain = SimCLRModel(export_config(model.config)).build_for_size(BUILD_IMAGE_SIZE)
    sources = variable_paths(model, parts)
    targets = variable_paths(plain, parts)
    if sorted(sources) != sorted(targets):
        raise ValueError(
            "the model's variables differ from those of a freshly built model of its "
            f"ModelConfig: {sorted(set(sources) ^ set(targets))[:5]}; build the whole model "
            "(model.build_for_size(...)) before exporting."
        )
    for path, target in targets.items():
        target.assign(tf.cast(sources[path], target.dtype))
    return plain


def _build_module(
    plain: SimCLRModel, parts: tuple[str, ...], weight_decay: float
) -> tf.train.Checkpoint:
    """The reusable-SavedModel root object: functions traced, variables and losses attached."""
    layers = [model_parts(plain)[part] for part in parts]
    trainable = [variable for layer in layers for variable in layer.trainable_variables]
    non_trainable = [variable for layer in layers for variable in layer.non_trainable_variables]
    excluded = plain.excluded_variables()

    @tf.function(autograph=False)
    def call(images: tf.Tensor, training: bool = False) -> dict[str, tf.Tensor]:
        return plain.endpoints(checked_images(images), training=training, parts=parts)

    call.get_concrete_function(IMAGE_SPEC, training=True)
    call.get_concrete_function(IMAGE_SPEC, training=False)

    @tf.function(input_signature=[], autograph=False)
    def regularization_loss() -> tf.Tensor:
        return weight_decay_loss(trainable, weight_decay, excluded)

    regularization_loss.get_concrete_function()

    root = tf.train.Checkpoint()
    root.__call__ = call
    root.variables = trainable + non_trainable
    root.trainable_variables = trainable
    root.regularization_losses = [regularization_loss]
    root.model_variables = variable_paths(plain, parts)
    return root


def checked_images(images: tf.Tensor) -> tf.Tensor:
    """``images``, once a ``tf.debugging.Assert`` has checked that they lie in [0, 1] (within
    :data:`IMAGE_RANGE_TOLERANCE`); otherwise the call fails with an ``InvalidArgumentError``
    saying "images must be float32 in [0, 1]" and the range found. One min and one max over the
    batch (cost measured by ``bench/hub_input_check.py``)."""
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    inside = tf.logical_and(low >= -IMAGE_RANGE_TOLERANCE, high <= 1.0 + IMAGE_RANGE_TOLERANCE)
    check = tf.debugging.Assert(
        inside,
        [
            f"{IMAGE_RANGE_MESSAGE} (RGB, no mean/std normalisation; divide 0-255 pixels by "
            "255); got values from",
            low,
            "to",
            high,
        ],
    )
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _signature(
    call: Callable[..., dict[str, tf.Tensor]], name: str, endpoint: str
) -> tf.types.experimental.GenericFunction:
    """An inference signature returning ``{name: endpoint}`` for input ``images``."""

    @tf.function(input_signature=[IMAGE_SPEC], autograph=False)
    def signature(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {name: call(images, training=False)[endpoint]}

    return signature


def _prune_old_modules(hub_dir: str, keep_hub_module_max: int) -> None:
    """Delete all but the ``keep_hub_module_max`` newest ``hub_dir/<step>`` modules."""
    if keep_hub_module_max <= 0:
        return
    steps = sorted(
        int(name.rstrip("/")) for name in tf.io.gfile.listdir(hub_dir) if name.rstrip("/").isdigit()
    )
    for step in steps[:-keep_hub_module_max]:
        tf.io.gfile.rmtree(os.path.join(hub_dir, str(step)))
        logging.debug("Removed old TF-Hub module %s", os.path.join(hub_dir, str(step)))
