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
* a batch of 0 images gives every endpoint with batch dimension 0 (a one-image batch of zeros
  goes through the network in inference mode to shape them, and is sliced away);
* ``model_variables``: the same variables keyed by their object path in the model
  (``encoder.stem.convs.0.conv.kernel``), read back by :func:`load_module_weights`;
* the asset ``tf_simclr_module.json``: the ``ModelConfig``, the exported parts and endpoints,
  who wrote it (``written_by``: ``"training run"`` or ``"export"``), and, in a module with a
  supervised head, ``class_names`` (entry i names logit i; empty when the training data had no
  names), also written one per line to the asset ``classes.txt``.

A module is never written in place: :class:`ExportTarget` locks the target folder, the module
is saved to a temporary folder beside it and renamed into place, so a reader (or an export killed
half-way) sees the whole module or none, and two exports into one folder cannot mix. Only a
training run's own export (:func:`export_to_model_dir`) removes modules, and only older ones
that training runs wrote.

The module is exported with plain batch norm: a copy of the model with ``global_bn=False`` (and
float32, nothing frozen) receives the weights, so no cross-replica op or custom gradient of
synchronised batch norm ends up in the graph. The source model may live under any
``tf.distribute`` strategy; its variables are read in cross-replica context.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable

import tensorflow as tf
from absl import logging

from tf_simclr.config import ModelConfig, OptimConfig
from tf_simclr.logs import SAVE_NOISE, dropped
from tf_simclr.model_dir import CLASSES_FILENAME, FileLock, LockHeldError, write_class_names
from tf_simclr.models.simclr import SimCLRModel
from tf_simclr.objectives.weight_decay import weight_decay_loss

DEFAULT_SIGNATURE = "default"
DEFAULT_ENDPOINTS = {DEFAULT_SIGNATURE: "final_avg_pool"}
DEFAULT_WEIGHT_DECAY = OptimConfig.weight_decay
METADATA_FILENAME = "tf_simclr_module.json"
METADATA_FORMAT = "tf-simclr-hub-module"
METADATA_VERSION = 1
# Who wrote a module (metadata "written_by"): only a training run's modules are ever pruned.
WRITTEN_BY_TRAINING = "training run"
WRITTEN_BY_EXPORT = "export"
# Beside a target folder NAME: the lock of its exports, the folder a module is written to before
# it is renamed to NAME, and where a module being replaced waits until the new one is in place.
LOCK_SUFFIX = ".lock"
TEMPORARY_INFIX = ".tmp-"
REPLACED_INFIX = ".old-"
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
    written_by: str = ""  # WRITTEN_BY_TRAINING or WRITTEN_BY_EXPORT; "" in older modules


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


class ExportInProgressError(RuntimeError):
    """Another process is writing a module to the same folder."""


def _beside(export_dir: str, suffix: str) -> str:
    """``.NAME<suffix>`` in the folder that holds ``export_dir`` (whose name is NAME)."""
    parent, name = os.path.split(os.path.normpath(export_dir))
    return os.path.join(parent, f".{name}{suffix}")


def _is_module(path: str) -> bool:
    """Whether ``path`` holds a whole SavedModel (its graph is the last file a save writes)."""
    return any(
        os.path.isfile(os.path.join(path, name)) for name in ("saved_model.pb", "saved_model.pbtxt")
    )


class ExportTarget:
    """One export's hold on the folder ``export_dir`` it writes a module to (local disks only).

    Entering takes the lock ``.NAME.lock`` beside the folder (NAME is the folder's name). When
    another export holds it, it raises :class:`ExportInProgressError` naming that process, or with
    ``wait`` logs that it waits for it and waits. Under the lock it cleans what an export killed
    half-way left, in one warning: ``.NAME.tmp-*`` folders, a NAME without ``saved_model.pb``
    (parts of a SavedModel only) and ``.NAME.old-*`` folders (one is renamed back to NAME when
    NAME is missing: a module whose replacement was cut short). Then it checks the folder
    (:meth:`check`). The module is written to :attr:`temporary` (``.NAME.tmp-<pid>``), then
    :meth:`commit` checks the folder again and renames the temporary folder to it. Leaving removes
    an uncommitted temporary folder and releases the lock.
    """

    def __init__(
        self,
        export_dir: str,
        overwrite: bool = False,
        *,
        overwrite_option: str = "overwrite=True",
        wait: bool = False,
    ) -> None:
        self.export_dir = export_dir
        self.overwrite = overwrite
        self.overwrite_option = overwrite_option
        self.wait = wait
        self.temporary = _beside(export_dir, f"{TEMPORARY_INFIX}{os.getpid()}")
        self._lock = FileLock(_beside(export_dir, LOCK_SUFFIX))

    def __enter__(self) -> ExportTarget:
        if "://" in self.export_dir:
            raise ValueError(
                f"{self.export_dir}: modules are written to local folders only (they are locked "
                "and renamed into place); export locally, then copy the folder."
            )
        os.makedirs(os.path.dirname(self._lock.path), exist_ok=True)
        try:
            self._lock.acquire()
        except LockHeldError as error:
            if not self.wait:
                raise ExportInProgressError(
                    f"another export (process id {error.holder}) is writing a module to "
                    f"{self.export_dir}; wait for it to finish, or choose another export "
                    "directory."
                ) from None
            logging.warning(
                "waiting for another export (process id %s) to finish writing %s",
                error.holder,
                self.export_dir,
            )
            self._lock.acquire(wait=True)
        try:
            self._clean_leftovers()
            self.check()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        shutil.rmtree(self.temporary, ignore_errors=True)
        self._lock.release()

    def _clean_leftovers(self) -> None:
        """Remove (or put back) what exports killed half-way left; one warning for all of it."""
        cleaned = self._beside_all(TEMPORARY_INFIX)
        for folder in cleaned:
            shutil.rmtree(folder)
        if os.path.isdir(self.export_dir) and not _is_module(self.export_dir):
            entries = os.listdir(self.export_dir)
            if entries and set(entries) <= SAVED_MODEL_ENTRIES:
                shutil.rmtree(self.export_dir)
                cleaned.append(f"{self.export_dir} (no saved_model.pb)")
        restored = None
        for folder in self._beside_all(REPLACED_INFIX):
            if restored is None and not os.path.exists(self.export_dir) and _is_module(folder):
                os.rename(folder, self.export_dir)
                restored = folder
            else:
                shutil.rmtree(folder)
                cleaned.append(folder)
        if cleaned:
            logging.warning(
                "removed what an interrupted export to %s left: %s",
                self.export_dir,
                ", ".join(cleaned),
            )
        if restored:
            logging.warning(
                "put back %s as %s: its replacement by another module was interrupted",
                restored,
                self.export_dir,
            )

    def _beside_all(self, infix: str) -> list[str]:
        """Every ``.NAME<infix>*`` folder beside the target, sorted."""
        return sorted(glob.glob(glob.escape(_beside(self.export_dir, infix)) + "*"))

    def check(self) -> bool:
        """Whether the export replaces a module in the folder (call it under the lock).

        A missing or empty folder is fine. One that holds a SavedModel and nothing else is
        replaced with ``overwrite`` and refused without it; one that holds anything else is
        always refused, so that ``overwrite`` never deletes unrelated files. The
        ``FileExistsError`` names ``overwrite_option`` (the binary's ``--overwrite``).
        """
        path = self.export_dir
        if not os.path.isdir(path):
            if os.path.exists(path):
                raise FileExistsError(f"{path} is a file; choose a directory to export to.")
            return False
        entries = sorted(os.listdir(path))
        if not entries:
            return False
        others = [name for name in entries if name not in SAVED_MODEL_ENTRIES]
        if others:
            listed = ", ".join(others[:5]) + (" ..." if len(others) > 5 else "")
            raise FileExistsError(
                f"{path} holds files that are not part of a SavedModel ({listed}); export into a "
                f"new or empty directory ({self.overwrite_option} only replaces a previous "
                "module)."
            )
        if not self.overwrite:
            raise FileExistsError(
                f"{path} holds a SavedModel already; pass {self.overwrite_option} to replace it, "
                "or choose another export directory."
            )
        return True

    def commit(self) -> None:
        """Check the folder again, then rename :attr:`temporary` to it (a module it holds is
        moved to ``.NAME.old-<pid>`` first, and deleted once the new one is in place)."""
        if not self._lock.held:
            raise RuntimeError(f"commit of {self.export_dir} outside its lock")
        if self.check():
            replaced = _beside(self.export_dir, f"{REPLACED_INFIX}{os.getpid()}")
            os.rename(self.export_dir, replaced)
            os.rename(self.temporary, self.export_dir)
            shutil.rmtree(replaced)
        else:
            os.replace(self.temporary, self.export_dir)  # a missing or empty folder


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
    set, which replaces it, and while another export writes there (see :class:`ExportTarget`).
    Returns ``export_dir``.
    """
    with ExportTarget(export_dir, overwrite) as target:
        return write_hub_module(
            model,
            target,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            step=step,
            class_names=class_names,
        )


def write_hub_module(
    model: SimCLRModel,
    target: ExportTarget,
    *,
    include_projection_head: bool = True,
    include_supervised_head: bool = True,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    step: int | None = None,
    class_names: Iterable[str] = (),
    written_by: str = WRITTEN_BY_EXPORT,
) -> str:
    """:func:`save_hub_module` into an entered :class:`ExportTarget` (held, for instance, while
    the weights are read); ``written_by`` goes into the metadata. Returns the module's folder."""
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 disables weight decay).")
    if not model.built:
        raise ValueError(
            "the model has no variables yet; build it first (model.build_for_size(...)) "
            "or restore a checkpoint into a built model."
        )
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
        "written_by": written_by,
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
            tf.saved_model.save(root, target.temporary, signatures=signatures)
    size = _folder_bytes(target.temporary)
    target.commit()
    logging.info(
        "exported hub module to %s (%s; %d variables, %d signatures, %.1f MB)",
        target.export_dir,
        ", ".join(parts),
        len(root.variables),
        len(signatures),
        size / 1e6,
    )
    return target.export_dir


def _folder_bytes(path: str) -> int:
    """Total size of the files under ``path``."""
    return sum(
        os.path.getsize(os.path.join(folder, name))
        for folder, _, names in os.walk(path)
        for name in names
    )


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
    """A training run's export: ``model`` to ``model_dir/hub/<step>/``, then the run's older
    modules pruned to the ``keep_hub_module_max`` newest (:func:`prune_modules`).

    Called at the end of every phase. An existing module of the same step is replaced; while
    another export writes that folder, this one waits for it (a run must not fail at its end).
    Returns the module's path. Under ``MultiWorkerMirroredStrategy`` reading synchronised
    variables is collective: call it on every worker, with a scratch ``model_dir`` on the
    non-chief ones.
    """
    hub_dir = os.path.join(model_dir, "hub")
    export_dir = os.path.join(hub_dir, str(int(step)))
    with ExportTarget(export_dir, overwrite=True, wait=True) as target:
        write_hub_module(
            model,
            target,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            step=int(step),
            class_names=class_names,
            written_by=WRITTEN_BY_TRAINING,
        )
    prune_modules(hub_dir, keep_hub_module_max, int(step))
    return export_dir


def prune_modules(hub_dir: str, keep_hub_module_max: int, written_step: int) -> list[str]:
    """Delete the modules of ``hub_dir/<step>`` that training runs wrote, but the
    ``keep_hub_module_max`` newest of them (<= 0 keeps all); returns the deleted folders.

    Never deletes the module of ``written_step`` (the one just written) or a newer one, a module
    that ``tf-simclr-export`` wrote, or one that an export is writing (its lock is held).
    """
    if keep_hub_module_max <= 0:
        return []
    steps = sorted(
        int(name)
        for name in os.listdir(hub_dir)
        if name.isdigit() and _written_by(os.path.join(hub_dir, name)) != WRITTEN_BY_EXPORT
    )
    removed = []
    for step in steps[:-keep_hub_module_max]:
        if step >= written_step:
            continue
        folder = os.path.join(hub_dir, str(step))
        lock = FileLock(_beside(folder, LOCK_SUFFIX))
        try:
            lock.acquire()
        except LockHeldError as error:
            logging.info("kept %s: process id %s is writing it", folder, error.holder)
            continue
        try:
            shutil.rmtree(folder)
        finally:
            lock.release()
        removed.append(folder)
        logging.debug(
            "removed the older module %s (keep_hub_module_max=%d)", folder, keep_hub_module_max
        )
    return removed


def _written_by(folder: str) -> str:
    """``written_by`` of the module in ``folder``; "" for older modules and other folders."""
    try:
        with open(os.path.join(folder, "assets", METADATA_FILENAME), encoding="utf-8") as handle:
            return str(json.load(handle).get("written_by", ""))
    except (OSError, ValueError):
        return ""


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
        written_by=metadata.get("written_by", ""),
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
        images = checked_images(images)
        return tf.cond(
            tf.shape(images)[0] > 0,
            lambda: plain.endpoints(images, training=training, parts=parts),
            lambda: _empty_endpoints(plain, images, parts),
        )

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


def _empty_endpoints(
    plain: SimCLRModel, images: tf.Tensor, parts: tuple[str, ...]
) -> dict[str, tf.Tensor]:
    """The endpoints of an empty batch: batch dimension 0, the other dimensions those of a
    batch of ``images``'s height and width. Convolutions given no images fail with errors about
    channel counts; one image of zeros through the network in inference mode (so no batch-norm
    statistic moves) gives the shapes. No gradient goes through it: there is nothing to learn
    from no images (and oneDNN's gradients of a one-image batch corrupt memory in TF 2.21)."""
    one = tf.zeros(tf.concat([[1], tf.shape(images)[1:]], axis=0), images.dtype)
    outputs = plain.endpoints(one, training=False, parts=parts)
    return {name: tf.stop_gradient(value[:0]) for name, value in outputs.items()}


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
