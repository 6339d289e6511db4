"""tf-simclr-export: turn a training checkpoint into a TF-Hub module (``export/SIGNATURES.md``).

The console script ``tf-simclr-export`` (also ``python -m tf_simclr.export_hub``) takes the
model_dir of any phase (pretrain, finetune, distill), its ``ckpt/`` directory or one checkpoint
prefix, rebuilds the model from the model_dir's ``config.json`` (key ``"model"``), checks that
the checkpoint holds exactly that architecture, restores it and exports it::

    tf-simclr-export --checkpoint=/tmp/simclr_run            # -> /tmp/simclr_run/hub/<step>/
    tf-simclr-export --checkpoint=/tmp/simclr_run/ckpt/ckpt-500 --export_dir=/tmp/module \\
        --include_projection_head=false

Without ``--export_dir`` the module goes to ``MODEL_DIR/hub/<step>/`` (the step read from the
checkpoint), keeping the ``--keep_hub_module_max`` newest modules, as at the end of a phase.

A checkpoint of the reference implementation (google-research/simclr: a TF2 checkpoint
directory or SavedModel, a TF1 checkpoint prefix or directory) is converted into the same
module, its architecture read from its weights (:mod:`tf_simclr.reference`); it needs
``--export_dir``, and ``--ft_proj_selector`` when its folder name does not say which layer
feeds its supervised head::

    tf-simclr-export --checkpoint=finetuned_10pct/r50_1x_sk1/saved_model --export_dir=/tmp/m

Everything is checked before the checkpoint is restored, and refused with exit status 2 and a
message naming the checkpoint or directory: a path that holds no checkpoint, an exported module
(already what this binary makes), a checkpoint that cannot be read or holds NaN (from a model_dir,
the newest usable one is exported instead, with a warning), another architecture, and an
``--export_dir`` that is not empty (``--overwrite`` replaces a previous module there, nothing
else). A full disk while writing is one line and exit status 1.
"""

from __future__ import annotations

import dataclasses
import os
import sys

from absl import app, flags, logging

from tf_simclr.config import OptimConfig
from tf_simclr.flag_schema import FlagSchema, install_grouped_help
from tf_simclr.logs import quiet_tensorflow_logs, start_tensorflow
from tf_simclr.model_dir import first_line, is_disk_full, read_class_names

# TensorFlow and what needs it are imported inside the functions: the binary imports them only
# after :func:`start_tensorflow`, which hides TensorFlow's start-up logging.
DEFAULT_WEIGHT_DECAY = OptimConfig.weight_decay  # as tf_simclr.hub's
STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"
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
                "keep_hub_module_max",
                "include_projection_head",
                "include_supervised_head",
                "weight_decay",
            ),
        ),
    ),
    not_flags={},
    aliases={},
)


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
    keep_hub_module_max: int = 1,
    overwrite: bool = False,
    memory_network: bool = False,
    ft_proj_selector: int | None = None,
    use_ema: bool = False,
) -> str:
    """Export the training checkpoint ``checkpoint`` as a TF-Hub module; returns its path.

    ``memory_network`` exports the moving-average memory network of a pretraining run with
    SimCLRv2's memory of negatives instead of the online network. A reference checkpoint goes
    to :func:`export_reference_checkpoint` (``ft_proj_selector`` and ``use_ema`` are its).
    Everything that can be checked without the weights is checked before they are restored (see
    the module docstring).
    """
    from tf_simclr import reference
    from tf_simclr.checkpoints import (
        CONFIG_FILENAME,
        find_usable_checkpoint,
        is_hub_module,
        is_reference_checkpoint,
        read_model_config,
        restore_checkpoint,
    )
    from tf_simclr.hub import (
        check_export_dir,
        export_to_model_dir,
        module_parts,
        save_hub_module,
    )
    from tf_simclr.models.simclr import SimCLRModel

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
    try:
        prefix, model_dir = find_usable_checkpoint(checkpoint)
    except FileNotFoundError as error:
        raise FileNotFoundError(
            f"{error} Nor is it a checkpoint of the reference implementation: "
            f"{reference.describe(checkpoint)}."
        ) from error
    config_path = config_path or os.path.join(model_dir, CONFIG_FILENAME)
    config = read_model_config(config_path)
    if memory_network:
        config = dataclasses.replace(config, num_classes=0, global_bn=False)
    module_parts(config, include_projection_head, include_supervised_head)
    step = saved_step(prefix)
    if export_dir:
        check_export_dir(export_dir, overwrite)
    elif step is None:
        raise ValueError(f"the checkpoint {prefix} has no step; pass --export_dir.")
    else:
        check_export_dir(os.path.join(model_dir, "hub", str(step)), overwrite=True)
    model = SimCLRModel(config).build_for_size()
    try:
        restore_checkpoint(model, prefix, memory_network)
    except ValueError as error:
        raise ValueError(f"{error} (architecture read from {config_path})") from error
    logging.info("Restored %s (step %s) with the architecture of %s", prefix, step, config_path)
    class_names = read_class_names(model_dir)
    if export_dir:
        return save_hub_module(
            model,
            export_dir,
            include_projection_head=include_projection_head,
            include_supervised_head=include_supervised_head,
            weight_decay=weight_decay,
            step=step,
            overwrite=overwrite,
            class_names=class_names,
        )
    return export_to_model_dir(
        model,
        model_dir,
        step,
        keep_hub_module_max,
        include_projection_head,
        include_supervised_head,
        weight_decay=weight_decay,
        class_names=class_names,
    )


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
) -> str:
    """Convert a checkpoint of the reference implementation into a TF-Hub module at
    ``export_dir`` (see :func:`tf_simclr.reference.load_reference_model`); returns its path."""
    from tf_simclr import reference
    from tf_simclr.hub import save_hub_module

    model, source = reference.load_reference_model(
        checkpoint,
        ft_proj_selector=ft_proj_selector,
        use_ema=use_ema,
        include_supervised_head=include_supervised_head,
    )
    logging.info("Converted %s (%s, step %s)", checkpoint, source.location.format, source.step)
    return save_hub_module(
        model,
        export_dir,
        include_projection_head=include_projection_head,
        include_supervised_head=include_supervised_head,
        weight_decay=weight_decay,
        step=source.step,
        overwrite=overwrite,
    )


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Define the binary's flags in ``flag_values`` (default: the global ``flags.FLAGS``; tests
    pass a fresh FlagValues), each filed under its group of :data:`FLAG_SCHEMA`. Defined only
    when the binary runs, so that importing this module is free."""
    fv = flags.FLAGS if flag_values is None else flag_values
    source = {"flag_values": fv, "module_name": FLAG_SCHEMA.module_name(SOURCE)}
    module = {"flag_values": fv, "module_name": FLAG_SCHEMA.module_name(MODULE)}
    flags.DEFINE_string(
        "checkpoint",
        None,
        "A model_dir, its ckpt/ directory, or a checkpoint prefix; or a checkpoint of the "
        "reference implementation (TF2 checkpoint or SavedModel, TF1 checkpoint); not an "
        "exported tf-simclr module.",
        required=True,
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
        "Where to write the module; default MODEL_DIR/hub/<checkpoint step>.",
        **module,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a module in --export_dir (never other files there).",
        **module,
    )
    flags.DEFINE_integer(
        "keep_hub_module_max",
        1,
        "Modules kept in MODEL_DIR/hub/ when --export_dir is not given (<= 0 keeps all).",
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


def main(argv: list[str]) -> int:
    """Export as the flags say; returns the exit status (see the module docstring)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    start_tensorflow()
    quiet_tensorflow_logs()
    from tf_simclr.hub import check_export_dir

    values = flags.FLAGS
    try:
        if values.export_dir:
            check_export_dir(values.export_dir, values.overwrite, "--overwrite")
        path = export_checkpoint(
            values.checkpoint,
            export_dir=values.export_dir or None,
            config_path=values.config or None,
            include_projection_head=values.include_projection_head,
            include_supervised_head=values.include_supervised_head,
            weight_decay=values.weight_decay,
            keep_hub_module_max=values.keep_hub_module_max,
            overwrite=values.overwrite,
            memory_network=values.memory_network,
            ft_proj_selector=values.ft_proj_selector,
            use_ema=values.use_ema,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"tf-simclr-export: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        if not is_disk_full(error):
            raise
        print(f"tf-simclr-export: disk full ({first_line(error)})", file=sys.stderr)
        return 1
    print(path)
    return 0


def run_main() -> None:
    """Console-script entry point ``tf-simclr-export``."""
    define_flags()
    install_grouped_help(__doc__, FLAG_SCHEMA)
    app.run(lambda argv: sys.exit(main(argv)))


if __name__ == "__main__":
    run_main()
