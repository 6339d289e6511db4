"""The one door for saved models: find what a phase left behind (``MODEL_DIR/ckpt/``
checkpoints, the ModelConfig in its ``config.json``, an exported TF-Hub module), compare its
architecture with a model's, and restore a ``SimCLRModel`` (or some of its parts) from it, with
the same checks and the same messages for every kind of source. Checkpoints of the reference
implementation (google-research/simclr: TF2 checkpoints and SavedModels, TF1 checkpoints) come
in here too, read by :mod:`tf_simclr.reference`, their architecture read from their weights.
Used by the training binary (``--checkpoint``, ``--teacher``, evaluation) and the export
binary; ``hub.py`` only writes and reads the SavedModels themselves.

A checkpoint is *usable* when every one of its tensors can be read and every floating-point
variable is finite. Resuming, evaluating and exporting from a model_dir take the newest usable
checkpoint, naming each newer one they skip and why (a save cut short by a full disk or a kill,
NaN weights written by an older version); an explicit checkpoint prefix that is not usable is
refused with the same reason. A checkpoint the ``checkpoint`` state file names but whose files
are gone is passed over everywhere (:func:`latest_checkpoint`). A ``config.json`` that cannot be
read is named with what is wrong (:func:`read_run_config`).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
from collections.abc import Collection, Iterable

import numpy as np
import tensorflow as tf

from tf_simclr import hub, reference
from tf_simclr.config import ModelConfig, TrainConfig
from tf_simclr.models import SimCLRModel

logger = logging.getLogger("tf_simclr")

CKPT_SUBDIR = "ckpt"
CONFIG_FILENAME = "config.json"
MODEL_KEY = "model"
MEMORY_NETWORK_KEY = "memory/network"
VALUE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
# tf.train.Checkpoint writes a save's shards into "<prefix>_temp/" before merging them.
TEMP_SUFFIX = "_temp"
MAX_LISTED = 5
# ModelConfig fields that decide the variables and the forward pass of each part.
ARCHITECTURE_FIELDS = {
    "encoder": (
        "resnet_depth",
        "width_multiplier",
        "sk_ratio",
        "se_ratio",
        "cifar_stem",
        "batch_norm_epsilon",
        "initial_conv_before_bn",
        "reference_resnet_d",
    ),
    "projection_head": ("proj_head_mode", "num_proj_layers", "proj_out_dim", "truncated_proj_head"),
    "supervised_head": ("num_classes", "ft_proj_selector", "supervised_head_batch_norm"),
}


def is_hub_module(path: str) -> bool:
    """True for an exported TF-Hub module (a SavedModel directory)."""
    return tf.io.gfile.exists(os.path.join(path, "saved_model.pb"))


def checkpoint_step(prefix: str) -> int:
    """The step in a checkpoint prefix written by the loop (``.../ckpt/ckpt-<step>``)."""
    return int(prefix.rsplit("-", 1)[1])


def latest_checkpoint(model_dir: str) -> str | None:
    """The newest checkpoint prefix in ``model_dir/ckpt`` (None before the first save): of the
    checkpoints its ``checkpoint`` state file records, the newest whose index file exists. One
    whose files are gone (deleted by hand, missed by a copy) is passed over, as resuming passes
    it over (:func:`newest_usable_checkpoint`); its tensors are not read."""
    return newest_existing_in(os.path.join(model_dir, CKPT_SUBDIR))


def newest_existing_in(ckpt_dir: str) -> str | None:
    """The newest checkpoint recorded in ``ckpt_dir`` whose index file exists (None: none)."""
    for prefix in recorded_checkpoints(ckpt_dir):
        if tf.io.gfile.exists(prefix + ".index"):
            return prefix
    return None


def find_checkpoint(path: str) -> tuple[str, str]:
    """``(checkpoint prefix, model_dir)`` for a model_dir, its ``ckpt/`` dir or a prefix."""
    if tf.io.gfile.isdir(path):
        if tf.io.gfile.isdir(os.path.join(path, CKPT_SUBDIR)):
            ckpt_dir, model_dir = os.path.join(path, CKPT_SUBDIR), path
        else:
            ckpt_dir, model_dir = path, os.path.dirname(os.path.normpath(path))
        prefix = newest_existing_in(ckpt_dir)
        if prefix is None:
            raise FileNotFoundError(
                f"no checkpoint in {ckpt_dir} (no 'checkpoint' file of tf.train.CheckpointManager);"
                " pass a model_dir that has been trained, its ckpt/ directory, a checkpoint "
                "prefix such as MODEL_DIR/ckpt/ckpt-500, or an exported hub/<step> module."
            )
        return prefix, model_dir
    if tf.io.gfile.exists(path + ".index"):
        return path, os.path.dirname(os.path.dirname(os.path.normpath(path)))
    raise FileNotFoundError(
        f"{path} is neither a model_dir, a checkpoint directory nor a checkpoint prefix "
        f"(there is no {path}.index)."
    )


def read_run_config(config_path: str) -> dict:
    """The JSON object of a model_dir's ``config.json``. Raises ``ValueError`` naming the file
    when it is not a JSON object (cut short, edited by hand, another file), and
    ``FileNotFoundError`` when there is none."""
    if not tf.io.gfile.exists(config_path):
        raise FileNotFoundError(
            f"no model configuration at {config_path}; pass --config=PATH/config.json (the "
            "config.json of the run that wrote the checkpoint)."
        )
    with tf.io.gfile.GFile(config_path) as handle:
        text = handle.read()
    try:
        values = json.loads(text)
    except ValueError as error:
        raise ValueError(
            f"{config_path} is not valid JSON ({error}): it is the configuration of the run in "
            "its folder, needed to resume or evaluate it; put back the run's own config.json "
            "(its flags.json holds the flags it was started with)."
        ) from error
    if not isinstance(values, dict) or not isinstance(values.get(MODEL_KEY), dict):
        raise ValueError(
            f"{config_path} is not the configuration of a tf-simclr run: it has no {MODEL_KEY!r} "
            "object holding the ModelConfig."
        )
    return values


def read_model_config(config_path: str) -> ModelConfig:
    """The ``ModelConfig`` stored under key ``"model"`` of a model_dir's ``config.json``
    (errors as :func:`read_run_config`'s)."""
    values = read_run_config(config_path)
    return ModelConfig.from_dict(values[MODEL_KEY], config_path)


def load_model_config(source: str) -> ModelConfig:
    """The ModelConfig of a hub module, of the run that wrote a model_dir / checkpoint, or read
    from a reference checkpoint (its supervised head's ``ft_proj_selector`` from its folder
    name, see :meth:`tf_simclr.reference.ReferenceCheckpoint.ft_proj_selector`)."""
    if is_reference_checkpoint(source):
        return reference.read_reference_checkpoint(source).model_config()
    if is_hub_module(source):
        return hub.load_config_from_hub(source)
    _, model_dir = find_checkpoint(source)
    return read_model_config(os.path.join(model_dir, CONFIG_FILENAME))


def evaluates_source(train: TrainConfig) -> bool:
    """Whether ``--mode=eval`` evaluates ``--checkpoint`` as it is: the model_dir has no
    checkpoint of its own to evaluate."""
    return bool(
        train.mode == "eval" and train.init_checkpoint and not latest_checkpoint(train.model_dir)
    )


def architecture_mismatches(
    expected: ModelConfig, actual: ModelConfig, parts: Iterable[str]
) -> list[str]:
    """``field: expected vs actual`` for every architecture field of ``parts`` that differs.

    ``ft_proj_selector`` is compared as the head output it selects (-1 and N are the same).
    """
    mismatches = []
    for part in parts:
        for field in ARCHITECTURE_FIELDS[part]:
            wanted, found = _architecture_value(expected, field), _architecture_value(actual, field)
            if wanted != found:
                mismatches.append(f"{field}: {wanted!r} vs {found!r}")
    return mismatches


def _architecture_value(config: ModelConfig, field: str) -> object:
    if field == "ft_proj_selector":
        return config.selected_head_output
    return getattr(config, field)


def _same_architecture_value(config: ModelConfig, field: str, value: object) -> bool:
    """Whether ``config`` with ``field`` set to ``value`` has the same architecture (a value the
    config rejects, e.g. a selector out of its head's range, is not the same)."""
    try:
        changed = dataclasses.replace(config, **{field: value})
    except ValueError:
        return False
    return _architecture_value(changed, field) == _architecture_value(config, field)


def _check(source: str, saved: ModelConfig, model: SimCLRModel, parts: Iterable[str]) -> None:
    """The one architecture check of every restore: the message names each differing field."""
    mismatches = architecture_mismatches(saved, model.config, parts)
    if mismatches:
        raise ValueError(
            f"{source} holds a different architecture (saved vs requested): "
            f"{'; '.join(mismatches)}. Build the model from the source's configuration "
            "(tf_simclr.checkpoints.load_model_config), or leave out the mismatching part."
        )


def checkpoint_mismatches(model: SimCLRModel, prefix: str, root: str = MODEL_KEY) -> list[str]:
    """Every way the model under ``root`` in the training checkpoint at ``prefix`` differs from
    the built ``model``, variable by variable (shapes, missing, unexpected)."""
    found = {
        key[len(root) + 1 : -len(VALUE_SUFFIX)].replace("/", "."): tuple(shape)
        for key, shape in tf.train.list_variables(prefix)
        if key.startswith(root + "/") and key.endswith(VALUE_SUFFIX)
    }
    expected = {
        path: tuple(variable.shape)
        for path, variable in hub.variable_paths(model, hub.model_parts(model)).items()
    }
    problems = []
    reshaped = sorted(
        path for path in expected.keys() & found.keys() if expected[path] != found[path]
    )
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    if reshaped:
        listed = ", ".join(
            f"{path} checkpoint {found[path]} vs config {expected[path]}"
            for path in reshaped[:MAX_LISTED]
        )
        problems.append(f"{len(reshaped)} variables have other shapes ({listed})")
    if missing:
        problems.append(
            f"{len(missing)} variables of the configured model are not in the checkpoint "
            f"({', '.join(missing[:MAX_LISTED])})"
        )
    if unexpected:
        problems.append(
            f"{len(unexpected)} checkpoint variables have no place in the configured model "
            f"({', '.join(unexpected[:MAX_LISTED])})"
        )
    return problems


def restore_checkpoint(model: SimCLRModel, prefix: str, memory_network: bool = False) -> None:
    """Restore the whole ``model`` from the training checkpoint ``prefix`` (with
    ``memory_network``, the checkpoint's memory network), after checking every variable."""
    root = MEMORY_NETWORK_KEY if memory_network else MODEL_KEY
    problems = checkpoint_mismatches(model, prefix, root)
    if problems:
        raise ValueError(
            f"the checkpoint {prefix} does not hold this architecture: {'; '.join(problems)}. "
            "Build the model from the config.json of the run that wrote it"
            + (" (a pretraining run with --memory_size)." if memory_network else ".")
        )
    if memory_network:
        holder = tf.train.Checkpoint(memory=tf.train.Checkpoint(network=model))
    else:
        holder = tf.train.Checkpoint(model=model)
    status = holder.restore(prefix)
    status.expect_partial()
    status.assert_existing_objects_matched()


def _escaped(name: str) -> str:
    """A child's name as ``tf.train.Checkpoint`` writes it in a key ('.' and '/' escaped)."""
    return name.replace(".", "..").replace("/", "./")


def variable_keys(root: tf.train.Checkpoint) -> set[str]:
    """The checkpoint keys (without :data:`VALUE_SUFFIX`) of every variable reachable from
    ``root``: its :func:`hub.trackable_variables` paths, escaped and joined as
    ``tf.train.Checkpoint`` writes them."""
    return {
        "/".join(_escaped(name) for name in path) for path in hub.trackable_variables(((), root))
    }


def restore_summary(root: tf.train.Checkpoint, prefix: str) -> str:
    """What restoring ``prefix`` into ``root`` did, in one phrase: how many variables were
    restored, which of ``root``'s variables the checkpoint lacks (they keep the values set before
    the restore: initialised, or a memory network copied from the online one) and which of its
    values nothing in ``root`` uses (TensorFlow's restore warnings, counted)."""
    saved = {
        key[: -len(VALUE_SUFFIX)]
        for key, _ in tf.train.list_variables(prefix)
        if key.endswith(VALUE_SUFFIX)
    }
    live = variable_keys(root)
    summary = f"restored {len(live & saved)} variables"
    for what, keys in (
        ("not in the checkpoint (values set before the restore kept)", live - saved),
        ("in the checkpoint not used", saved - live),
    ):
        if keys:
            listed = ", ".join(sorted(keys)[:MAX_LISTED]) + (
                " ..." if len(keys) > MAX_LISTED else ""
            )
            summary += f"; {len(keys)} {what}: {listed}"
    return summary


def restore_model_from_hub(
    model: SimCLRModel,
    path: str,
    *,
    require_all_parts: bool = False,
    parts: Iterable[str] | None = None,
) -> tuple[str, ...]:
    """Load the module's weights into the built ``model``; returns the parts restored.

    Parts the module has but the model has not are ignored; parts the model has but the module
    has not keep their current values (logged), unless ``require_all_parts`` (e.g. a distillation
    teacher), which raises instead. Works for models under any strategy. Raises ``ValueError``
    naming every architecture field that differs between the module and the model. ``parts``
    limits the restore to those parts (e.g. ``("encoder", "projection_head")`` to start
    fine-tuning with a fresh classifier).
    """
    info = hub.read_module_info(path)
    if not model.built:
        raise ValueError(
            "the model has no variables yet; build it first (model.build_for_size(...), inside "
            "the strategy scope it trains under) so that the module's weights can be loaded."
        )
    available = tuple(part for part in hub.model_parts(model) if parts is None or part in parts)
    missing = [part for part in available if part not in info.parts]
    if require_all_parts and missing:
        raise ValueError(
            f"the hub module {path} has no {', '.join(missing)} (it holds "
            f"{', '.join(info.parts)}); export it with the missing parts included."
        )
    restored = tuple(part for part in available if part in info.parts)
    _check(f"the hub module {path}", info.config, model, restored)
    hub.load_module_weights(model, path, restored)
    if missing:
        logger.info("Hub module %s has no %s; those keep their values.", path, ", ".join(missing))
    logger.info("Restored %s from hub module %s", ", ".join(restored), path)
    return restored


def restore_weights(model: SimCLRModel, source: str, include_supervised_head: bool) -> None:
    """Load the encoder and projection head (and optionally the supervised head) of ``model``
    from ``source``: a hub module, a model_dir or a checkpoint prefix. The source's
    architecture is checked against ``model``'s first, with the same message for every kind."""
    parts = ["encoder", "projection_head"]
    if include_supervised_head and model.supervised_head is not None:
        parts.append("supervised_head")
    if is_reference_checkpoint(source):
        checkpoint = reference.read_reference_checkpoint(source)
        with_head = "supervised_head" in parts
        selector = model.config.ft_proj_selector if with_head and checkpoint.num_classes else None
        _check(repr(source), checkpoint.model_config(with_head, selector), model, parts)
        reference.restore_reference_weights(model, checkpoint, parts)
        logger.info("Restored %s from %s", ", ".join(parts), source)
        return
    if is_hub_module(source):
        restore_model_from_hub(
            model, source, require_all_parts=include_supervised_head, parts=parts
        )
        return
    prefix, model_dir = find_usable_checkpoint(source)
    saved = read_model_config(os.path.join(model_dir, CONFIG_FILENAME))
    _check(repr(source), saved, model, parts)
    layers = hub.model_parts(model)
    holder = tf.train.Checkpoint(**{part: layers[part] for part in parts})
    status = tf.train.Checkpoint(model=holder).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()


def is_reference_checkpoint(path: str) -> bool:
    """True for a checkpoint of the reference implementation (:func:`tf_simclr.reference.locate`:
    a TF2 training checkpoint, a TF2 SavedModel or a TF1 checkpoint, as a directory or prefix).
    False for a checkpoint that cannot be read (e.g. truncated): the tf-simclr path then names
    it and the reason (:func:`find_usable_checkpoint`)."""
    try:
        return reference.locate(path) is not None
    except Exception:  # whatever the reader raises, the checkpoint cannot be read
        return False


def source_architecture(
    requested: ModelConfig,
    source: str,
    explicit: Collection[str] | None = None,
    *,
    recipe: Collection[str] = (),
    described_as: str = "",
) -> ModelConfig:
    """``requested`` with the encoder and projection head of ``source``: read from the weights of
    a reference checkpoint, from a hub module's configuration asset, or from the ``config.json``
    of the run that wrote a model_dir or checkpoint (a tf-simclr checkpoint without one keeps
    ``requested``, whose architecture is checked when restoring). Without a source,
    ``requested`` unchanged.

    Only shape decides: the fields this run chooses (classes, ``ft_proj_selector``, frozen
    blocks, batch norm, precision) stay as requested. Fields named in ``explicit`` (those the
    user typed; default: those ``requested`` sets to a value other than the default) must agree
    with the source, else ``ValueError`` names each with both values. The others yield to the
    source: those named in ``recipe`` (set by a flagfile) and those left at their defaults. One
    log line names what was taken (``architecture from <described_as or source>: resnet_depth
    50 (flagfile said 18), cifar_stem True (default False)``).
    """
    if not source:
        return requested
    if is_reference_checkpoint(source):
        found = reference.read_reference_checkpoint(source).config
    else:
        try:
            found = load_model_config(source)
        except FileNotFoundError:
            return requested
    fields = ARCHITECTURE_FIELDS["encoder"] + ARCHITECTURE_FIELDS["projection_head"]
    default = ModelConfig()
    if explicit is None:
        explicit = [
            field for field in fields if getattr(requested, field) != getattr(default, field)
        ]
    conflicts = [
        f"{field}: {getattr(requested, field)!r} vs {getattr(found, field)!r}"
        for field in fields
        if field in explicit and getattr(requested, field) != getattr(found, field)
    ]
    if conflicts:
        raise ValueError(
            f"{source} holds another architecture than the flags ask for (flags vs source): "
            f"{'; '.join(conflicts)}. Leave these flags out (a flagfile's shape flags give way "
            "to the source, typed ones do not): the architecture is read from the source."
        )
    adopted = {field: getattr(found, field) for field in fields}
    result = dataclasses.replace(requested, **adopted)
    taken = adoption_summary(requested, result, fields, explicit, recipe)
    if taken:
        logger.info("architecture from %s: %s", described_as or source, taken)
    return result


def adoption_summary(
    requested: ModelConfig,
    adopted: ModelConfig,
    fields: Iterable[str],
    explicit: Collection[str],
    recipe: Collection[str],
) -> str:
    """What adopting a source's architecture changed: ``field value (flagfile said X)`` (a field
    in ``recipe``), ``(command line said X)`` (in ``explicit``: a value that selects the same
    head output) or ``(default X)`` for each of ``fields`` that changed, comma-separated; empty
    when none did."""
    changes = []
    for field in fields:
        before, after = getattr(requested, field), getattr(adopted, field)
        if before == after:
            continue
        said = (
            "command line said"
            if field in explicit
            else "flagfile said"
            if field in recipe
            else "default"
        )
        changes.append(f"{field} {after} ({said} {before})")
    return ", ".join(changes)


# ModelConfig fields a run keeps for its whole life: what its checkpoints hold and which head
# output its supervised head reads. num_classes is left out (the data decides it).
# The log line of an adoption names the flags among them; supervised_head_batch_norm has no
# flag (the phase sets it), so taking it back from the run is not news to the user.
RUN_ARCHITECTURE_FLAGS = (
    ARCHITECTURE_FIELDS["encoder"] + ARCHITECTURE_FIELDS["projection_head"] + ("ft_proj_selector",)
)
RUN_ARCHITECTURE_FIELDS = (*RUN_ARCHITECTURE_FLAGS, "supervised_head_batch_norm")


def adopt_run_architecture(
    requested: ModelConfig,
    saved: ModelConfig,
    explicit: Collection[str],
    source: str,
    *,
    recipe: Collection[str] = (),
) -> ModelConfig:
    """``requested`` with the architecture and head selection of ``saved`` (the ModelConfig of
    the run in ``source``, its config.json), for evaluating or resuming that run.

    Fields named in ``explicit`` (those the user typed) must agree with ``saved``;
    ``ft_proj_selector`` agrees when it selects the same head output (-1 and N alike). Raises
    ``ValueError`` naming each conflicting field with both values. The others yield: those
    named in ``recipe`` (set by a flagfile) and those left at their defaults; one log line names
    what was taken (``architecture from the run in <source>: ...``, as
    :func:`source_architecture`'s).
    """
    conflicts = []
    for field in RUN_ARCHITECTURE_FIELDS:
        if field not in explicit:
            continue
        if not _same_architecture_value(saved, field, getattr(requested, field)):
            conflicts.append(
                f"--{field}={getattr(requested, field)!r} vs {getattr(saved, field)!r}"
            )
    if conflicts:
        raise ValueError(
            f"the run in {source} was trained with another architecture (flag vs saved): "
            f"{'; '.join(conflicts)}. Leave these flags out (a flagfile's give way to the run, "
            "typed ones do not): a run's architecture and head selection are read from its "
            "config.json; train a new run in another --model_dir to change them."
        )
    adopted = dataclasses.replace(
        requested, **{field: getattr(saved, field) for field in RUN_ARCHITECTURE_FIELDS}
    )
    taken = adoption_summary(requested, adopted, RUN_ARCHITECTURE_FLAGS, explicit, recipe)
    if taken:
        logger.info("architecture from the run in %s: %s", source, taken)
    return adopted


# -- integrity: usable checkpoints, interrupted saves -----------------------------------------


def checkpoint_problem(prefix: str) -> str | None:
    """Why the checkpoint at ``prefix`` is not usable, or None when it is: a file that cannot be
    read (missing, truncated, corrupt), or floating-point variables holding NaN or Inf (named).

    Reads every tensor once, one at a time.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"cannot be read (its files are gone: there is no {prefix}.index)"
    try:
        reader = tf.train.load_checkpoint(prefix)
        non_finite = [
            name.removesuffix(VALUE_SUFFIX)
            for name, dtype in sorted(reader.get_variable_to_dtype_map().items())
            if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(name)))
        ]
    except Exception as error:  # whatever the reader raises, the checkpoint cannot be read
        return f"cannot be read ({type(error).__name__}: {error})"
    if non_finite:
        listed = ", ".join(non_finite[:MAX_LISTED])
        more = " ..." if len(non_finite) > MAX_LISTED else ""
        return f"has {len(non_finite)} variables holding NaN or Inf ({listed}{more})"
    return None


def recorded_checkpoints(ckpt_dir: str) -> list[str]:
    """The checkpoint prefixes the ``checkpoint`` state file of ``ckpt_dir`` records, newest
    first (the order they were saved in, which a resumed run may make differ from their steps)."""
    state = tf.train.get_checkpoint_state(ckpt_dir)
    if state is None:
        return []
    latest = state.model_checkpoint_path
    older = [path for path in state.all_model_checkpoint_paths if path and path != latest]
    return ([latest] if latest else []) + older[::-1]


def newest_usable_in(ckpt_dir: str) -> str | None:
    """The newest usable checkpoint recorded in ``ckpt_dir`` (None when there is none); every
    newer one is skipped with a warning naming it and the reason."""
    for prefix in recorded_checkpoints(ckpt_dir):
        problem = checkpoint_problem(prefix)
        if problem is None:
            return prefix
        logger.warning("skipping checkpoint %s: it %s", prefix, problem)
    return None


def newest_usable_checkpoint(model_dir: str) -> str | None:
    """The newest usable checkpoint in ``model_dir/ckpt`` (what a run resumes from)."""
    return newest_usable_in(os.path.join(model_dir, CKPT_SUBDIR))


def find_usable_checkpoint(path: str) -> tuple[str, str]:
    """:func:`find_checkpoint`, but only usable checkpoints: a model_dir or ``ckpt/`` directory
    gives its newest usable one (skipping newer ones with a warning), a checkpoint prefix must be
    usable itself. Raises ``ValueError`` naming the checkpoint and the reason otherwise."""
    prefix, model_dir = find_checkpoint(path)
    if not tf.io.gfile.isdir(path):
        problem = checkpoint_problem(prefix)
        if problem:
            raise ValueError(f"the checkpoint {prefix} {problem}; pass another checkpoint.")
        return prefix, model_dir
    ckpt_dir = os.path.dirname(prefix)
    usable = newest_usable_in(ckpt_dir)
    if usable is None:
        raise ValueError(
            f"no usable checkpoint in {ckpt_dir}: every recorded one is unreadable or holds NaN "
            "or Inf (each is named in the warnings above)."
        )
    return usable, model_dir


def remove_stale_temp_folders(model_dir: str) -> list[str]:
    """Remove the ``ckpt-<step>_temp`` folders that saves killed half-way left in
    ``model_dir/ckpt``; returns them. Only for the run that holds the model_dir's lock."""
    stale = sorted(
        glob.glob(glob.escape(os.path.join(model_dir, CKPT_SUBDIR)) + f"/*{TEMP_SUFFIX}")
    )
    for folder in stale:
        shutil.rmtree(folder, ignore_errors=True)
        logger.warning("removed %s, left by a checkpoint save that did not finish", folder)
    return stale


def remove_unfinished_save(prefix: str) -> None:
    """After a save of ``prefix`` failed (full disk, interruption): remove what it wrote, unless
    the state file already records it as the newest checkpoint (then the save was complete)."""
    ckpt_dir = os.path.dirname(prefix)
    state = tf.train.get_checkpoint_state(ckpt_dir)
    if state is not None and state.model_checkpoint_path == prefix:
        return
    shutil.rmtree(prefix + TEMP_SUFFIX, ignore_errors=True)
    for path in glob.glob(glob.escape(prefix) + ".*"):
        os.remove(path)
