"""tf-simclr: the SimCLRv2 binary (pretrain, finetune, distill; train, eval, train_then_eval).

Flags keep the names of google-research/simclr where the meaning is the same, so its recipes
translate directly; recipes for this project live in ``flags/`` and are passed with
``--flagfile`` from any directory (an include inside a flagfile is found beside it). Every flag
is validated (by the configuration dataclasses and the checks below) before any data is read or
any model is built; the data, the batch split over the replicas and the model_dir's lock are
checked before any file is written.

    tf-simclr --flagfile=flags/fashion_mnist/pretrain.flags --model_dir=/tmp/run/pretrain

The architecture comes from what a command starts from: ``--checkpoint`` (a run, a hub module
or a reference checkpoint) decides the shape flags (resnet_depth, width_multiplier, sk_ratio,
se_ratio, cifar_stem, proj_head_mode, num_proj_layers, proj_out_dim), and the run already in
``--model_dir``, when the command evaluates or resumes it, decides them and ft_proj_selector.
A flag typed on the command line is the user's word: when it contradicts that architecture the
command is refused (status 2, naming both values) before anything is written. A flag read from
a flagfile (a recipe of ``flags/`` or the user's own, included or not) is a recipe's default:
it gives way, and one log line names what was taken, e.g. ``architecture from
--checkpoint=PATH: width_multiplier 1.0 (flagfile said 0.25)``. A flag counts as typed when its
last occurrence, the one whose value absl keeps, is on the command line outside any flagfile
(``--width_multiplier=1 --flagfile=recipe.flags`` leaves the recipe's value, a flagfile's).

Exit status: 0 done (also when the run had already finished: nothing is changed), 1 an error
(a full disk in one line), 2 refused before any work (bad flags or data, the model_dir in use by
another run), 3 stopped on NaN or Inf, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from collections.abc import Collection

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app, flags

from tf_simclr.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from tf_simclr.flag_schema import Alias, FlagSchema, install_grouped_help
from tf_simclr.flagfiles import expand_argv
from tf_simclr.logs import quiet_tensorflow_logs, start_tensorflow

PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
DISTRIBUTION = "distribution and speed"
# Every flag but strategy, tpu and logical_cpu_devices is a field of a configuration dataclass,
# with the field's default, help text and choices. Fields without a flag are set by the runner
# (num_classes and the supervised head's pretraining settings) or keep the paper's
# values; three flags keep the reference implementation's names.
FLAG_SCHEMA = FlagSchema(
    program="tf-simclr",
    groups=(
        ("model", (ModelConfig,)),
        ("data and augmentation", (DataConfig, AugmentConfig)),
        ("optimisation and loss", (OptimConfig, LossConfig)),
        ("phase and training", (TrainConfig,)),
        ("memory of negatives", (MemoryConfig,)),
        (DISTRIBUTION, ("precision", "jit_compile")),
    ),
    not_flags={
        ModelConfig: (
            "batch_norm_epsilon",
            "initial_conv_before_bn",
            "reference_resnet_d",
            "truncated_proj_head",
            "num_classes",
            "supervised_head_stop_gradient",
            "supervised_head_batch_norm",
        ),
        AugmentConfig: (
            "crop_aspect_range",
            "flip_probability",
            "color_jitter_probability",
            "grayscale_probability",
            "blur_probability",
            "blur_sigma_range",
            "eval_crop_proportion",
        ),
    },
    aliases={
        "checkpoint": Alias(TrainConfig, "init_checkpoint"),
        "precision": Alias(ModelConfig, "dtype_policy", values=PRECISIONS),
        "crop_area_min": Alias(AugmentConfig, "crop_area_range", index=0),
    },
)


def define_flags(flag_values: flags.FlagValues | None = None) -> None:
    """Define every flag of the binary (names of the reference implementation where shared)
    in ``flag_values`` (default: the global ``flags.FLAGS``; tests pass a fresh FlagValues)."""
    fv = flags.FLAGS if flag_values is None else flag_values
    FLAG_SCHEMA.define(fv)
    where = {"flag_values": fv, "module_name": FLAG_SCHEMA.module_name(DISTRIBUTION)}
    flags.DEFINE_enum(
        "strategy",
        "default",
        ["default", "mirrored", "multi_worker", "tpu"],
        "tf.distribute strategy: one device, all local devices, TF_CONFIG's cluster or a TPU.",
        **where,
    )
    flags.DEFINE_string("tpu", "", "TPU address for --strategy=tpu.", **where)
    flags.DEFINE_integer(
        "logical_cpu_devices", 0, "Split the CPU into N devices (testing).", **where
    )


def configs_from_flags(values: dict) -> RunConfig:
    """Turn flag values into a RunConfig; raises ValueError naming the bad flag."""
    from tf_simclr.data import validate_dataset_name

    if not values.get("model_dir"):
        raise ValueError("--model_dir is required: where checkpoints and logs go.")
    for name in ("dataset", "eval_dataset", "label_dataset"):
        if name == "dataset" or values[name]:
            validate_dataset_name(values[name], name)
    config = RunConfig(
        model=FLAG_SCHEMA.build(ModelConfig, values),
        train=FLAG_SCHEMA.build(TrainConfig, values),
        optim=FLAG_SCHEMA.build(OptimConfig, values),
        loss=FLAG_SCHEMA.build(LossConfig, values),
        augment=FLAG_SCHEMA.build(AugmentConfig, values),
        data=FLAG_SCHEMA.build(DataConfig, values),
        memory=FLAG_SCHEMA.build(MemoryConfig, values),
    )
    _check_combinations(config, values)
    return config


@dataclasses.dataclass(frozen=True)
class ModelFlags:
    """The ModelConfig fields whose flags the user gave, by where: ``typed`` on the command line
    (the user's word: each must agree with the architecture of ``--checkpoint`` and of the run
    in ``--model_dir``) or read from a flagfile (``recipe``: a recipe's defaults, which yield
    to that architecture). The fields of neither kept their defaults, which yield too."""

    typed: frozenset[str]
    recipe: frozenset[str]


def model_flags(flag_values: flags.FlagValues, typed: Collection[str]) -> ModelFlags:
    """Where the ModelConfig flags of the parsed ``flag_values`` came from; ``typed`` names the
    flags typed on the command line (:func:`parse_flags`)."""
    given = [
        flag
        for flag in FLAG_SCHEMA.flags()
        if flag.config is ModelConfig and flag_values[flag.name].present
    ]
    return ModelFlags(
        typed=frozenset(flag.field.name for flag in given if flag.name in typed),
        recipe=frozenset(flag.field.name for flag in given if flag.name not in typed),
    )


def run_config(flag_values: flags.FlagValues, typed: Collection[str]) -> RunConfig:
    """The RunConfig of the parsed ``flag_values`` (``typed``: the flags typed on the command
    line, :func:`parse_flags`): the flags' configuration with the architecture of the run in
    ``--model_dir`` (when this command continues it) and of ``--checkpoint``. Raises ValueError
    (or FileNotFoundError) naming a bad flag, or a typed flag that contradicts either
    architecture."""
    given = model_flags(flag_values, typed)
    config = configs_from_flags(flag_values.flag_values_dict())
    return source_architecture(remembered_architecture(config, given), given)


def remembered_architecture(config: RunConfig, given: ModelFlags) -> RunConfig:
    """``config`` with the architecture and head selection of the run already in its
    model_dir, when this command evaluates it (``--mode=eval``) or resumes it (it has a
    checkpoint); unchanged for a new run. A field the user typed must agree with the saved run
    (``ValueError`` naming both values otherwise); one from a flagfile or left at its default
    yields (see :class:`ModelFlags`)."""
    from tf_simclr import checkpoints

    train = config.train
    config_path = os.path.join(train.model_dir, checkpoints.CONFIG_FILENAME)
    continues = train.mode == "eval" or checkpoints.latest_checkpoint(train.model_dir)
    if not (continues and os.path.exists(config_path)):
        return config
    saved = checkpoints.read_model_config(config_path)
    model = checkpoints.adopt_run_architecture(
        config.model, saved, given.typed, config_path, recipe=given.recipe
    )
    return dataclasses.replace(config, model=model)


def source_architecture(config: RunConfig, given: ModelFlags) -> RunConfig:
    """``config`` with the encoder and projection head of ``--checkpoint`` (a run, a hub module
    or a reference checkpoint), checked before anything is written. Of the fields that shape
    the encoder or projection head, one the user typed must agree with the source
    (``ValueError`` naming both values otherwise), one from a flagfile or left at its default
    yields (see :class:`ModelFlags`); the fields that do not shape them are free. An evaluation
    of the source as it is also takes the input of its supervised head, unless
    ``--ft_proj_selector`` is typed."""
    from tf_simclr import checkpoints

    source = config.train.init_checkpoint
    model = checkpoints.source_architecture(
        config.model,
        source,
        given.typed,
        recipe=given.recipe,
        described_as=f"--checkpoint={source}",
    )
    if checkpoints.evaluates_source(config.train) and "ft_proj_selector" not in given.typed:
        found = checkpoints.load_model_config(source)  # --mode=eval reads the source's head
        if found.num_classes:
            model = dataclasses.replace(model, ft_proj_selector=found.ft_proj_selector)
    return dataclasses.replace(config, model=model)


def _check_combinations(config: RunConfig, values: dict) -> None:
    """Checks that involve more than one configuration or the file system."""
    if config.train.train_mode == "distill" and config.model.fine_tune_after_block == 4:
        raise ValueError("--fine_tune_after_block=4 freezes the student; distill trains it.")
    memory_size = config.memory.memory_size
    if memory_size and config.train.train_mode != "pretrain":
        raise ValueError(
            f"--memory_size is a pretraining setting (got --train_mode="
            f"{config.train.train_mode}); drop it."
        )
    if memory_size % config.train.train_batch_size:
        raise ValueError(
            f"--memory_size={memory_size} must be a multiple of --train_batch_size="
            f"{config.train.train_batch_size}: every step writes one projection per image."
        )
    if values["teacher"] and config.train.train_mode != "distill":
        raise ValueError(
            f"--teacher is only used by --train_mode=distill (got --train_mode="
            f"{config.train.train_mode}); drop it, or use --checkpoint to start from weights."
        )
    from tf_simclr import checkpoints

    for name in ("checkpoint", "teacher"):
        path = values[name]
        if path and not (
            checkpoints.is_reference_checkpoint(path) or checkpoints.is_hub_module(path)
        ):
            try:
                checkpoints.find_usable_checkpoint(path)
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"--{name}: {error}") from error
    train = config.train
    if (
        train.mode == "eval"
        and not (train.init_checkpoint or train.eval_timeout_seconds)
        and not checkpoints.latest_checkpoint(train.model_dir)
    ):
        raise ValueError(
            f"--mode=eval: {train.model_dir} has no checkpoint to evaluate; pass "
            "--checkpoint=<model_dir, hub module or reference checkpoint> to evaluate that, or "
            "--eval_timeout_seconds=N to wait for the checkpoints of a training run."
        )
    devices = values["logical_cpu_devices"]
    if devices > 1 and values["strategy"] == "default":
        raise ValueError(
            f"--logical_cpu_devices={devices} splits the CPU into {devices} devices, but "
            "--strategy=default trains on one of them; add --strategy=mirrored to train on all "
            f"{devices}, or drop --logical_cpu_devices."
        )
    if values["strategy"] != "tpu" and values["tpu"]:
        raise ValueError("--tpu is only used with --strategy=tpu.")
    if (
        values["jit_compile"]
        and config.model.global_bn
        and values["strategy"] != "tpu"
        and (values["logical_cpu_devices"] > 1 or values["strategy"] == "multi_worker")
    ):
        raise ValueError(
            "--jit_compile with --global_bn needs cross-replica collectives inside XLA, which "
            "only TPUs provide here; use --noglobal_bn or --nojit_compile."
        )


def _refuse(reason: str, error: BaseException) -> int:
    print(f"tf-simclr: {reason}: {error}", file=sys.stderr)
    return 2


def main(typed: frozenset[str]) -> int:
    """Run the phase the parsed global flags ask for (``typed``: the flags typed on the command
    line); returns the exit status."""
    start_tensorflow()
    quiet_tensorflow_logs()
    values = flags.FLAGS.flag_values_dict()
    try:
        config = run_config(flags.FLAGS, typed)
    except (ValueError, FileNotFoundError) as error:
        return _refuse("invalid flags", error)
    from tf_simclr.training.strategy import (
        check_batch_sizes,
        configure_logical_cpus,
        create_strategy,
        make_deterministic,
    )

    configure_logical_cpus(values["logical_cpu_devices"])
    if values["deterministic"]:
        make_deterministic(values["seed"])
    strategy = create_strategy(values["strategy"], values["tpu"])
    train = config.train
    try:
        evaluates = train.mode != "train"
        check_batch_sizes(
            strategy, train.train_batch_size, train.eval_batch_size if evaluates else None
        )
    except ValueError as error:
        return _refuse("invalid flags", error)
    from tf_simclr import checkpoints
    from tf_simclr.model_dir import ModelDirInUseError, first_line, is_disk_full
    from tf_simclr.training.loop import NonFiniteLossError

    try:
        return _run(config, values, strategy)
    except ModelDirInUseError as error:
        print(f"tf-simclr: {error}", file=sys.stderr)
        return 2
    except NonFiniteLossError as error:
        logging.getLogger("tf_simclr").error("%s", error)
        return 3
    except KeyboardInterrupt:
        latest = checkpoints.latest_checkpoint(train.model_dir)
        where = f"resumes from {latest}" if latest else "starts over (no checkpoint yet)"
        if train.mode == "eval":
            where = "evaluates again"
        print(f"tf-simclr: interrupted; the same command {where}.", file=sys.stderr)
        return 130
    except Exception as error:
        if not is_disk_full(error):
            raise
        latest = checkpoints.latest_checkpoint(train.model_dir)
        print(
            f"tf-simclr: disk full while writing to {train.model_dir} ({first_line(error)}); "
            f"free some space, then the same command resumes from {latest or 'the start'}.",
            file=sys.stderr,
        )
        return 1


def _run(config: RunConfig, values: dict, strategy) -> int:
    """Check the data, lock the model_dir (training only), then run the phase, unless it has
    already finished; returns the exit status."""
    from tf_simclr.model_dir import ModelDirLock, write_json_atomically
    from tf_simclr.training.runner import PhaseRunner
    from tf_simclr.training.strategy import is_chief

    model_dir = config.train.model_dir
    chief = is_chief(strategy)  # other workers of a multi-worker run share the chief's model_dir
    lock = ModelDirLock(model_dir)
    trains = chief and config.train.mode != "eval"  # evaluation may follow a training run
    try:
        if trains and os.path.isdir(model_dir):
            lock.acquire()  # a second run on a model_dir stops here, before reading data
        try:
            runner = PhaseRunner(config, strategy)
        except (ValueError, FileNotFoundError) as error:
            return _refuse("cannot start", error)
        os.makedirs(model_dir, exist_ok=True)
        if trains:
            lock.acquire()
        recorded = runner.recorded_result()
        if recorded is not None:
            print(
                f"tf-simclr: {model_dir} has already finished (step {runner.total_steps}); "
                "nothing was changed. Its recorded results (result.json):",
                file=sys.stderr,
            )
            result = recorded
        else:
            if trains:  # an evaluation leaves the flags of the run it evaluates
                write_json_atomically(os.path.join(model_dir, "flags.json"), values)
            result = runner.run()
    finally:
        lock.release()
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    return 0


def parse_flags(flag_values: flags.FlagValues, argv: list[str]) -> frozenset[str]:
    """Parse ``argv`` into ``flag_values`` (defined by :func:`define_flags`), flagfiles
    expanded so that their includes resolve beside them (:mod:`tf_simclr.flagfiles`); returns
    the names of the flags typed on the command line itself (not read from a flagfile).
    Raises ValueError for an argument that is not a flag: every setting is one."""
    expanded = expand_argv(argv)
    args = flag_values(list(expanded.argv))
    if args[1:]:
        raise ValueError(
            f"unexpected arguments {args[1:]}: every setting is a flag (--name=value)."
        )
    return expanded.typed_flags(flag_values)


def _parse_flags(argv: list[str]) -> frozenset[str]:
    """:func:`parse_flags` on the global flags; an unknown flag, a bad value or a missing
    flagfile exits with 2 like every invalid flag."""
    try:
        return parse_flags(flags.FLAGS, argv)
    except (flags.Error, FileNotFoundError, ValueError) as error:
        print(f"tf-simclr: invalid flags: {error}", file=sys.stderr)
        sys.exit(2)


def run_main() -> None:
    """Console-script entry point (``tf-simclr``)."""
    define_flags()
    install_grouped_help(__doc__, FLAG_SCHEMA)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    # absl hands what the parser returns (the typed flags) to main untouched.
    app.run(lambda typed: sys.exit(main(typed)), flags_parser=_parse_flags)


if __name__ == "__main__":
    run_main()
