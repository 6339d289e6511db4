"""tf-simclr-export: turn a training checkpoint into a TF-Hub module (``export/SIGNATURES.md``).

The console script ``tf-simclr-export`` (also ``python -m tf_simclr.export_hub``) takes the
model_dir of any phase (pretrain, finetune, distill), its ``ckpt/`` directory or one checkpoint
prefix, rebuilds the model from the model_dir's ``config.json`` (key ``"model"``), checks that
the checkpoint holds exactly that architecture, restores it and exports it::

    tf-simclr-export --checkpoint=/tmp/simclr_run            # -> /tmp/simclr_run/hub/<step>/
    tf-simclr-export --checkpoint=/tmp/simclr_run/ckpt/ckpt-500 --export_dir=/tmp/module \\
        --include_projection_head=false

Without ``--export_dir`` the module goes to ``MODEL_DIR/hub/<step>/`` (the step read from the
checkpoint). An export never deletes a module: only a training run's own export prunes
``MODEL_DIR/hub/`` (``--keep_hub_module_max`` of ``tf-simclr``), and only modules that training
runs wrote and that are older than the one it has just written.

Every module is written to a temporary folder ``.NAME.tmp-<pid>`` beside its folder NAME, then
renamed into place, under a lock (the file ``.NAME.lock`` beside it): a reader, or an export
killed half-way, never sees part of a module. A second export into a folder that an export is
writing is refused (status 2) with a message naming the other process. What a killed export
left (a ``.NAME.tmp-*`` folder, a NAME without ``saved_model.pb``) is removed, in one warning; a
module whose replacement was cut short (``.NAME.old-*``, NAME missing) is put back.

A model_dir may be exported while it trains: its newest usable checkpoint is read, and when the
run removes it while it is being read (``--keep_checkpoint_max``), the newest one is read
instead, with a warning each time, up to three times.

A checkpoint of the reference implementation (google-research/simclr: a TF2 checkpoint
directory or SavedModel, a TF1 checkpoint prefix or directory) is converted into the same
module, its architecture read from its weights (:mod:`tf_simclr.reference`); it needs
``--export_dir``, and ``--ft_proj_selector`` when its folder name does not say which layer
feeds its supervised head::

    tf-simclr-export --checkpoint=finetuned_10pct/r50_1x_sk1/saved_model --export_dir=/tmp/m

Exit statuses: 0 when the module is written (its folder is printed). 2 when the export is refused
before the checkpoint is restored, with a message naming the checkpoint or directory: no
``--checkpoint``, a path that holds no checkpoint, an exported module (already what this binary
makes), a checkpoint that cannot be read or holds NaN (from a model_dir, the newest usable one is
exported instead, with a warning), another architecture, a target folder that is not empty
(``--overwrite`` replaces a previous module there, nothing else; without ``--export_dir`` that is
``MODEL_DIR/hub/<step>``), one that another export is writing, and a remote (``gs://``) target;
a target filled by something else while the module was written is refused the same way, at the
end. 1 on an error, in one line for a full disk while writing and for a checkpoint removed while it
was being read (a prefix, or a model_dir's newest three times in a row).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from tf_simclr.config import OptimConfig
from tf_simclr.flag_schema import FlagSchema, install_grouped_help
from tf_simclr.logs import quiet_tensorflow_logs, start_tensorflow
from tf_simclr.model_dir import first_line, is_disk_full, read_class_names

# TensorFlow and what needs it are imported inside the functions: the binary imports them only
# after :func:`start_tensorflow`, which hides TensorFlow's start-up logging.
DEFAULT_WEIGHT_DECAY = OptimConfig.weight_decay  # as tf_simclr.hub's
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"
READ_ATTEMPTS = 3  # reads of a model_dir's newest checkpoint, which its run may remove meanwhile
SOURCE = "checkpoint to export"
MODULE = "module to write"
# The flags are not configuration fields: the schema only groups them for --help.
FLAG_SCHEMA = FlagSchema(
    program="tf-simclr-export",
    groups=(
        (SOURCE, ("checkpoint", "config", "memory_network", "ft_proj_selector", "use_ema")),
        (
            MODULE,
            (
                "export_dir",
                "overwrite",
                "include_projection_head",
                "include_supervised_head",
                "weight_decay",
            ),
        ),
    ),
    not_flags={},
    aliases={},
)


class CheckpointRemovedError(RuntimeError):
    """The checkpoint being exported was removed while it was being read."""


class _CheckpointGoneError(Exception):
    """One read of ``prefix`` failed because the checkpoint is gone (or the newest changed)."""

    def __init__(self, prefix: str, error: BaseException) -> None:
        super().__init__(first_line(error))
        self.prefix = prefix


def saved_step(prefix: str) -> int | None:
    """The step a checkpoint recorded: its ``step`` variable, or the number the training loop
    saved it under (``ckpt-<step>``); None when it has neither."""
    import tensorflow as tf

    from tf_simclr.checkpoints import CKPT_SUBDIR, checkpoint_step

    reader = tf.train.load_checkpoint(prefix)
    if reader.has_tensor(STEP_KEY):
        return int(reader.get_tensor(STEP_KEY))
    name = os.path.basename(prefix)
    if name.startswith(f"{CKPT_SUBDIR}-") and name.rsplit("-", 1)[1].isdigit():
        return checkpoint_step(prefix)
    return None


def export_checkpoint(
    checkpoint: str,
    *,
    export_dir: str | None = None,
    config_path: str | None = None,
    include_projection_head: bool = True,
    include_supervised_head: bool = True,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    overwrite: bool = False,
    memory_network: bool = False,
    ft_proj_selector: int | None = None,
    use_ema: bool = False,
    overwrite_option: str = "overwrite=True",
) -> str:
    """Export the training checkpoint ``checkpoint`` as a TF-Hub module; returns its path.

    The module goes to ``export_dir``, by default ``MODEL_DIR/hub/<step>``; either must be empty,
    or hold a module and ``overwrite`` be set (``overwrite_option`` names that setting in the
    messages). ``memory_network`` exports the moving-average memory network of a pretraining run
    with SimCLRv2's memory of negatives instead of the online network. A reference checkpoint goes
    to :func:`export_reference_checkpoint` (``ft_proj_selector`` and ``use_ema`` are its).
    Everything that can be checked without the weights is checked before they are restored, and
    a model_dir's newest checkpoint removed while it is read is retried (see the module
    docstring); :class:`CheckpointRemovedError` when that does not succeed.
    """
    from tf_simclr import reference
    from tf_simclr.checkpoints import is_hub_module, is_reference_checkpoint

    if is_reference_checkpoint(checkpoint):
        if config_path or memory_network:
            raise ValueError(
                f"{checkpoint} is a checkpoint of the reference implementation: its architecture "
                "comes from its weights (no --config) and it has no memory network."
            )
        if not export_dir:
            raise ValueError(f"{checkpoint} is a reference checkpoint: pass --export_dir.")
        return export_reference_checkpoint(
            checkpoint,
            export_dir,
            ft_proj_selector=ft_proj_selector,
            use_ema=use_ema,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            overwrite=overwrite,
            overwrite_option=overwrite_option,
        )
    if ft_proj_selector is not None or use_ema:
        raise ValueError(
            "--ft_proj_selector and --use_ema are for checkpoints of the reference "
            f"implementation, and {reference.describe(checkpoint)}. A tf-simclr run's "
            "config.json holds its ft_proj_selector."
        )
    if is_hub_module(checkpoint):
        raise ValueError(
            f"{checkpoint} is already a TF-Hub module (it holds saved_model.pb); this exports "
            "training checkpoints: pass the model_dir of the run that wrote it, its ckpt/ "
            "directory or a ckpt/ckpt-<step> prefix. The module itself can be loaded with "
            "hub.load or passed to tf-simclr --checkpoint."
        )

    def export_newest() -> str:
        return _export_found_checkpoint(
            checkpoint,
            export_dir=export_dir,
            config_path=config_path,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            overwrite=overwrite,
            memory_network=memory_network,
            overwrite_option=overwrite_option,
        )

    return _retry_removed(checkpoint, export_newest)


def _retry_removed(checkpoint: str, export: Callable[[], str]) -> str:
    """``export()``, again with the newest checkpoint when a model_dir's (or ``ckpt/``'s) was
    removed while it was read, at most :data:`READ_ATTEMPTS` times in all, a warning each time."""
    import tensorflow as tf

    attempt = 1
    while True:
        try:
            return export()
        except _CheckpointGoneError as removed:
            if not tf.io.gfile.isdir(checkpoint):
                raise CheckpointRemovedError(
                    f"the checkpoint {removed.prefix} was removed while it was being read (a "
                    "training run keeps only its --keep_checkpoint_max newest); pass the "
                    "model_dir to export its newest checkpoint."
                ) from None
            if attempt == READ_ATTEMPTS:
                raise CheckpointRemovedError(
                    f"the newest checkpoint of {checkpoint} was removed while it was being read, "
                    f"{READ_ATTEMPTS} times in a row (the run training there saves faster than "
                    "it can be read): export a checkpoint prefix that it keeps, or export when "
                    "it has finished."
                ) from None
            attempt += 1
            logging.warning(
                "%s was removed while it was being read (%s); reading the newest checkpoint of "
                "%s instead (attempt %d of %d)",
                removed.prefix,
                removed,
                checkpoint,
                attempt,
                READ_ATTEMPTS,
            )


def _export_found_checkpoint(
    checkpoint: str,
    *,
    export_dir: str | None,
    config_path: str | None,
    include_projection_head: bool,
    include_supervised_head: bool,
    weight_decay: float,
    overwrite: bool,
    memory_network: bool,
    overwrite_option: str,
) -> str:
    """One attempt of :func:`export_checkpoint` for a tf-simclr checkpoint: find the newest
    usable checkpoint, lock the target, restore, write. Raises :class:`_CheckpointGoneError`
    when the checkpoint disappears on the way (or none is usable and the newest changed)."""
    import tensorflow as tf

    from tf_simclr import checkpoints, reference
    from tf_simclr.hub import ExportTarget, module_parts, write_hub_module
    from tf_simclr.models.simclr import SimCLRModel

    newest = _newest_recorded(checkpoint)
    try:
        prefix, model_dir = checkpoints.find_usable_checkpoint(checkpoint)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} Nor is it a checkpoint of the reference implementation: "
            f"{reference.describe(checkpoint)}."
        ) from error
    except ValueError as error:
        if newest is not None and _newest_recorded(checkpoint) != newest:
            raise _CheckpointGoneError(newest, error) from error
        raise
    config_path = config_path or os.path.join(model_dir, checkpoints.CONFIG_FILENAME)
    config = checkpoints.read_model_config(config_path)
    if memory_network:
        config = dataclasses.replace(config, num_classes=0, global_bn=False)
    module_parts(config, include_projection_head, include_supervised_head)
    try:
        step = saved_step(prefix)
    except tf.errors.OpError as error:
        if _gone(prefix):
            raise _CheckpointGoneError(prefix, error) from error
        raise
    if not export_dir and step is None:
        raise ValueError(f"the checkpoint {prefix} has no step; pass --export_dir.")
    target_dir = export_dir or os.path.join(model_dir, "hub", str(step))
    with ExportTarget(target_dir, overwrite, overwrite_option=overwrite_option) as target:
        model = SimCLRModel(config).build_for_size()
        try:
            checkpoints.restore_checkpoint(model, prefix, memory_network)
        except tf.errors.OpError as error:
            if _gone(prefix):
                raise _CheckpointGoneError(prefix, error) from error
            raise
        except ValueError as error:
            raise ValueError(f"{error} (architecture read from {config_path})") from error
        logging.info("Restored %s (step %s) with the architecture of %s", prefix, step, config_path)
        return write_hub_module(
            model,
            target,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            step=step,
            class_names=read_class_names(model_dir),
        )


def _newest_recorded(checkpoint: str) -> str | None:
    """The newest checkpoint that the state file of a model_dir or ``ckpt/`` directory records
    (None for a prefix, or before the first save)."""
    import tensorflow as tf

    from tf_simclr.checkpoints import CKPT_SUBDIR, recorded_checkpoints

    if not tf.io.gfile.isdir(checkpoint):
        return None
    ckpt_dir = os.path.join(checkpoint, CKPT_SUBDIR)
    recorded = recorded_checkpoints(ckpt_dir if tf.io.gfile.isdir(ckpt_dir) else checkpoint)
    return recorded[0] if recorded else None


def _gone(prefix: str) -> bool:
    """Whether the checkpoint ``prefix`` has lost its index or its data (a training run removed
    it: CheckpointManager deletes the checkpoints beyond its newest ``max_to_keep``)."""
    import tensorflow as tf

    return not (tf.io.gfile.exists(f"{prefix}.index") and tf.io.gfile.glob(f"{prefix}.data-*"))


def export_reference_checkpoint(
    checkpoint: str,
    export_dir: str,
    *,
    ft_proj_selector: int | None = None,
    use_ema: bool = False,
    include_projection_head: bool = True,
    include_supervised_head: bool = True,
    weight_decay: float = DEFAULT_WEIGHT_DECAY,
    overwrite: bool = False,
    overwrite_option: str = "overwrite=True",
) -> str:
    """Convert a checkpoint of the reference implementation into a TF-Hub module at
    ``export_dir`` (see :func:`tf_simclr.reference.load_reference_model`); returns its path.
    The target is locked and checked before the checkpoint is read."""
    from tf_simclr import reference
    from tf_simclr.hub import ExportTarget, write_hub_module

    with ExportTarget(export_dir, overwrite, overwrite_option=overwrite_option) as target:
        model, source = reference.load_reference_model(
            checkpoint,
            ft_proj_selector=ft_proj_selector,
            use_ema=use_ema,
            include_supervised_head=include_supervised_head,
        )
        logging.info("Converted %s (%s, step %s)", checkpoint, source.location.format, source.step)
        return write_hub_module(
            model,
            target,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            step=source.step,
        )


def define_flags(fv: flags.FlagValues) -> None:
    """Define the binary's flags in ``fv`` (absl's global ``flags.FLAGS`` in the binary; tests
    pass a fresh FlagValues), each filed under its group of :data:`FLAG_SCHEMA`. Defined only
    when the binary runs, so that importing this module is free."""
    source = {"flag_values": fv, "module_name": FLAG_SCHEMA.module_name(SOURCE)}
    module = {"flag_values": fv, "module_name": FLAG_SCHEMA.module_name(MODULE)}
    flags.DEFINE_string(
        "checkpoint",
        "",
        "A model_dir, its ckpt/ directory, or a checkpoint prefix; or a checkpoint of the "
        "reference implementation (TF2 checkpoint or SavedModel, TF1 checkpoint); not an "
        "exported tf-simclr module. Required.",
        **source,
    )
    flags.DEFINE_string(
        "config", "", "The run's config.json; default MODEL_DIR/config.json.", **source
    )
    flags.DEFINE_bool(
        "memory_network",
        False,
        "Export the moving-average memory network of a --memory_size pretraining run.",
        **source,
    )
    flags.DEFINE_integer(
        "ft_proj_selector",
        None,
        "Reference checkpoints: the head output feeding the supervised head (1: proj_head_1, "
        "the 1%/10% fine-tunes; 0: the encoder output). Default: from the folder name.",
        **source,
    )
    flags.DEFINE_bool(
        "use_ema",
        False,
        "Reference TF1 checkpoints: read the ema_model/ moving-average copy.",
        **source,
    )
    flags.DEFINE_string(
        "export_dir",
        "",
        "Where to write the module (a local folder); default MODEL_DIR/hub/<checkpoint step>.",
        **module,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a module in the target folder (never other files there).",
        **module,
    )
    flags.DEFINE_bool("include_projection_head", True, "Export the projection head.", **module)
    flags.DEFINE_bool(
        "include_supervised_head",
        True,
        "Export the supervised head (when the model has one).",
        **module,
    )
    flags.DEFINE_float(
        "weight_decay",
        DEFAULT_WEIGHT_DECAY,
        "Coefficient of the module's L2 regularization loss (0 disables it).",
        **module,
    )


def main(argv: list[str], values: flags.FlagValues) -> int:
    """Export as the parsed flag ``values`` say; returns the exit status (see the module
    docstring)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if not values.checkpoint:
        print(
            "tf-simclr-export: pass --checkpoint: a model_dir, its ckpt/ directory, a checkpoint "
            "prefix (MODEL_DIR/ckpt/ckpt-<step>) or a checkpoint of the reference implementation.",
            file=sys.stderr,
        )
        return 2
    start_tensorflow()
    quiet_tensorflow_logs()
    from tf_simclr.hub import ExportInProgressError

    try:
        path = export_checkpoint(
            values.checkpoint,
            export_dir=values.export_dir or None,
            config_path=values.config or None,
            include_projection_head=values.include_projection_head,
            include_supervised_head=values.include_supervised_head,
            weight_decay=values.weight_decay,
            overwrite=values.overwrite,
            memory_network=values.memory_network,
            ft_proj_selector=values.ft_proj_selector,
            use_ema=values.use_ema,
            overwrite_option="--overwrite",
        )
    except (ValueError, FileNotFoundError, FileExistsError, ExportInProgressError) as error:
        print(f"tf-simclr-export: {error}", file=sys.stderr)
        return 2
    except CheckpointRemovedError as error:
        print(f"tf-simclr-export: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"tf-simclr-export: disk full ({first_line(error)})", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_main() -> None:
    """Console-script entry point ``tf-simclr-export``."""
    flag_values = flags.FLAGS  # the entry point is the one place that reads absl's globals
    define_flags(flag_values)
    install_grouped_help(__doc__, FLAG_SCHEMA)
    app.run(lambda argv: sys.exit(main(argv, flag_values)))


if __name__ == "__main__":
    run_main()
