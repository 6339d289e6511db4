"""tf-simclr's command line: its flags and how a command line becomes the configuration of a run.

Every flag is a field of a configuration dataclass (:mod:`tf_simclr.flag_schema`): the schema
below says which dataclasses the binary exposes, how the flags are grouped and the three that
keep the reference implementation's names. A command line becomes a
:class:`~tf_simclr.config.RunConfig` in two steps, the same for the binary and for Python
(:func:`config_from_flags`):

1. :func:`parse_command` expands the flagfiles (:mod:`tf_simclr.flagfiles`: an include is found
   beside the flagfile that names it) and parses the flags, remembering where each came from:
   typed on the command line, or read from which flagfile.
2. :func:`resolve_flags` builds the configuration (every dataclass validates itself, and
   :func:`check_run` what a run needs besides, the file system included) and adopts the
   architecture of what the command starts from. ``--checkpoint`` (a run, a hub module or a
   reference checkpoint) decides the shape flags (resnet_depth, width_multiplier, sk_ratio,
   se_ratio, cifar_stem, proj_head_mode, num_proj_layers, proj_out_dim); the run already in
   ``--model_dir``, when the command evaluates or resumes it, decides them and ft_proj_selector.
   A flag typed on the command line is the user's word: one that contradicts that architecture
   is refused (``ValueError`` naming both values). A flag read from a flagfile is a recipe's
   default and gives way, as a flag left at its default does; one log line names what was
   taken. A flag counts as typed when its last occurrence, the one whose value absl keeps, is
   on the command line outside any flagfile.

What a resume may change is decided here, field by field (:data:`RUN_IDENTITY`,
:data:`RUN_ARCHITECTURE`, :data:`RESUME_LENGTH`, :data:`RESUME_FREE`, one set per rule; the
runner applies them against the run's ``config.json``), and ``--allow_config_change`` names the
identity settings a resume may change after all (:func:`allowed_changes`, checked by
:func:`check_run`); :class:`Change` names a changed setting by its flag, with both values.

:func:`describe_config` is what ``tf-simclr --print_config`` prints: the resolved configuration,
each value not at its default with where it came from. :func:`flags_of` is what a run records in
``MODEL_DIR/flags.json``. Nothing here reads absl's global ``flags.FLAGS``: the binary passes it
in, :func:`config_from_flags` parses into a private ``FlagValues``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from collections.abc import Collection, Mapping, Sequence

from absl import flags

from tf_simclr.config import (
    AugmentConfig,
    DataConfig,
    DistributionConfig,
    LossConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from tf_simclr.flag_schema import Alias, ConfigFlag, FlagSchema
from tf_simclr.flagfiles import COMMAND_LINE, expand_argv

PROGRAM = "tf-simclr"
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
PHASE = "phase and training"
# Every field of the configuration dataclasses is a flag, with the field's default, help text and
# choices, but those named in not_flags: the runner sets them (num_classes and the supervised
# head's pretraining settings) or they keep the paper's values. Three flags keep the reference
# implementation's names.
FLAG_SCHEMA = FlagSchema(
    program=PROGRAM,
    groups=(
        ("model", (ModelConfig,)),
        ("data and augmentation", (DataConfig, AugmentConfig)),
        ("optimisation and loss", (OptimConfig, LossConfig)),
        (PHASE, (TrainConfig,)),
        ("memory of negatives", (MemoryConfig,)),
        ("distribution and speed", (DistributionConfig, "precision", "jit_compile")),
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
# The field of RunConfig that holds each configuration dataclass: {ModelConfig: "model", ...}.
SECTIONS: dict[type, str] = {kind: name for name, kind in typing.get_type_hints(RunConfig).items()}


def define_flags(flag_values: flags.FlagValues) -> None:
    """Define every flag of ``tf-simclr`` in ``flag_values`` (the binary passes absl's global
    ``flags.FLAGS``; a fresh ``flags.FlagValues()`` keeps them private)."""
    FLAG_SCHEMA.define(flag_values)


@dataclasses.dataclass(frozen=True)
class ParsedFlags:
    """A parsed command line: ``values`` (absl's, defined by :func:`define_flags`) and the
    origin of every flag the command line sets, by flag name: ``COMMAND_LINE`` when typed,
    else the path of the flagfile its value was read from."""

    values: flags.FlagValues
    origins: Mapping[str, str]

    @property
    def typed(self) -> frozenset[str]:
        """The flags typed on the command line itself (their last occurrence)."""
        return frozenset(name for name, origin in self.origins.items() if origin == COMMAND_LINE)


def parse_command(flag_values: flags.FlagValues, argv: Sequence[str]) -> ParsedFlags:
    """Parse ``argv`` (``argv[0]``: the program) into ``flag_values``, flagfiles expanded so
    that their includes resolve beside them. Raises ValueError naming what is wrong: an unknown
    flag, a bad value, a missing flagfile, an argument that is not a flag (every setting is
    one). A help flag the binary defined prints and exits while parsing, as absl's do."""
    try:
        expanded = expand_argv(list(argv))
        args = flag_values(list(expanded.argv))
    except (flags.Error, FileNotFoundError) as error:
        raise ValueError(str(error)) from error
    if args[1:]:
        raise ValueError(
            f"unexpected arguments {args[1:]}: every setting is a flag (--name=value)."
        )
    return ParsedFlags(flag_values, expanded.flag_origins(flag_values))


def parse_flags(flag_values: flags.FlagValues, argv: Sequence[str]) -> frozenset[str]:
    """:func:`parse_command`, for callers that need only the names of the typed flags."""
    return parse_command(flag_values, argv).typed


def configs_from_flags(values: Mapping[str, object]) -> RunConfig:
    """The RunConfig of parsed flag ``values`` (``FlagValues.flag_values_dict()``), without
    adopting any architecture; raises ValueError naming the bad flag (:func:`check_run`
    included)."""
    from tf_simclr.data import validate_dataset_name

    if not values.get("model_dir"):
        raise ValueError("--model_dir is required: where checkpoints and logs go.")
    for name in ("dataset", "eval_dataset", "label_dataset"):
        if name == "dataset" or values[name]:
            validate_dataset_name(values[name], name)
    config = RunConfig(
        **{section: FLAG_SCHEMA.build(kind, values) for kind, section in SECTIONS.items()}
    )
    check_run(config)
    return config


def check_run(config: RunConfig) -> None:
    """What a run of ``config`` needs beyond what the dataclasses check, checked before anything
    is read or written: the settings only one phase uses belong to that phase (the memory of
    negatives to pretraining, a teacher to distillation, which trains its student), the memory
    holds whole batches, ``--checkpoint`` and ``--teacher`` are a hub module, a reference
    checkpoint or hold a usable tf-simclr checkpoint, ``--allow_config_change`` names settings a
    resume can change (:func:`allowed_changes`), and ``--mode=eval`` has something to evaluate.
    Raises ValueError naming the flag."""
    from tf_simclr import checkpoints

    train, memory_size = config.train, config.memory.memory_size
    if train.train_mode == "distill" and config.model.fine_tune_after_block == 4:
        raise ValueError("--fine_tune_after_block=4 freezes the student; distill trains it.")
    if memory_size and train.train_mode != "pretrain":
        raise ValueError(
            f"--memory_size is a pretraining setting (got --train_mode={train.train_mode}); "
            "drop it."
        )
    if memory_size % train.train_batch_size:
        raise ValueError(
            f"--memory_size={memory_size} must be a multiple of --train_batch_size="
            f"{train.train_batch_size}: every step writes one projection per image."
        )
    if train.teacher and train.train_mode != "distill":
        raise ValueError(
            f"--teacher is only used by --train_mode=distill (got --train_mode="
            f"{train.train_mode}); drop it, or use --checkpoint to start from weights."
        )
    for name, path in (("checkpoint", train.init_checkpoint), ("teacher", train.teacher)):
        if path and not (
            checkpoints.is_reference_checkpoint(path) or checkpoints.is_hub_module(path)
        ):
            try:
                checkpoints.find_usable_checkpoint(path)
            except (FileNotFoundError, ValueError) as error:
                raise ValueError(f"--{name}: {error}") from error
    allowed_changes(train.allow_config_change)
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


# -- what a resume may change (issue 30) ---------------------------------------------------
#
# A run is one run: config.json is its identity, and a command that resumes it (its model_dir
# has a checkpoint and a config.json) must ask for the same run. Every field of RunConfig's
# sections is in exactly one of these sets (tests/test_resume_identity.py checks it, so a new
# field cannot slip through unclassified), keyed "section.field":
#
# - RUN_IDENTITY: what the run computes (data, batch, image size and augmentation, optimizer,
#   learning rate and schedule, weight decay, loss, memory, precision, phase, starting weights
#   and teacher). A resume that changes one is refused before anything is written, unless
#   --allow_config_change names it; a permitted change is logged and recorded as a segment.
# - RUN_ARCHITECTURE: the model's shape and head selection, and what the data and the phase
#   decide of it (num_classes, the supervised head's input). remembered_architecture adopts
#   them from config.json; they can never change (train a new run).
# - RESUME_LENGTH: how long the run trains. A resume may lengthen it; a shorter run is refused
#   unless --allow_config_change names train_steps or train_epochs, and never shorter than the
#   step of the checkpoint it resumes from.
# - RESUME_FREE: how and where it computes, logs, checkpoints, exports and monitors; free on
#   every resume (recorded in the new segment when changed). global_bn goes with the strategy:
#   with one replica the runner builds plain batch norm, so config.json cannot tell it apart.


def _fields(**sections: str) -> frozenset[str]:
    """``_fields(optim="learning_rate momentum")`` -> ``{"optim.learning_rate", ...}``."""
    return frozenset(
        f"{section}.{name}" for section, names in sections.items() for name in names.split()
    )


RUN_IDENTITY = _fields(
    model="batch_norm_decay zero_init_logits_layer fine_tune_after_block dtype_policy",
    train="train_mode train_batch_size init_checkpoint teacher lineareval_while_pretraining",
    optim="optimizer learning_rate learning_rate_scaling momentum nesterov eeta weight_decay "
    "warmup_epochs",
    loss="temperature hidden_norm loss_scale label_smoothing distill_temperature distill_alpha "
    "hinton_tau_squared",
    augment="image_size color_jitter_strength color_jitter_mode use_blur crop_area_range "
    "crop_aspect_range flip_probability color_jitter_probability grayscale_probability "
    "blur_probability blur_sigma_range eval_crop_proportion",
    data="dataset eval_dataset label_dataset data_dir train_split eval_split shuffle_buffer seed "
    "deterministic label_fraction labels_per_class labels_subset_file",
    memory="memory_size memory_momentum memory_warmup_steps export_memory_network",
)
RUN_ARCHITECTURE = _fields(
    model="resnet_depth width_multiplier sk_ratio se_ratio cifar_stem batch_norm_epsilon "
    "initial_conv_before_bn reference_resnet_d proj_head_mode num_proj_layers proj_out_dim "
    "truncated_proj_head ft_proj_selector supervised_head_batch_norm num_classes "
    "supervised_head_stop_gradient"
)
RESUME_LENGTH = _fields(train="train_epochs train_steps")
RESUME_FREE = _fields(
    model="global_bn",
    train="mode model_dir eval_batch_size eval_steps eval_timeout_seconds steps_per_loop "
    "log_every_steps checkpoint_epochs checkpoint_steps keep_checkpoint_max keep_hub_module_max "
    "knn_monitor knn_k knn_temperature knn_bank_size jit_compile export_hub allow_config_change",
    augment="augment_jit_compile",
    data="cache_dataset max_image_megapixels",
    distribution="strategy tpu logical_cpu_devices worker_timeout_seconds",
)


def setting_names() -> dict[str, str]:
    """Every name :func:`allowed_changes` understands, with the field it names: each flag's
    name (``checkpoint``, ``precision``, ``learning_rate``) and each field's own name
    (``init_checkpoint``, ``dtype_policy``, ``crop_area_range``)."""
    names = {
        field.name: f"{section}.{field.name}"
        for kind, section in SECTIONS.items()
        for field in dataclasses.fields(kind)
    }
    names.update({flag.name: _key(flag) for flag in FLAG_SCHEMA.flags()})
    return names


def _key(flag: ConfigFlag) -> str:
    """``"section.field"`` of the field ``flag`` sets."""
    return f"{SECTIONS[flag.config]}.{flag.field.name}"


def allowed_changes(allow_config_change: str) -> frozenset[str]:
    """The fields (``"optim.learning_rate"``) that ``--allow_config_change`` (comma-separated
    flag names) lets a resume change. Raises ValueError for an unknown name and for a field of
    the architecture, which no resume can change."""
    names = setting_names()
    requested = [name.strip() for name in allow_config_change.split(",") if name.strip()]
    unknown = [name for name in requested if name not in names]
    if unknown:
        raise ValueError(
            f"--allow_config_change names settings tf-simclr does not have: {unknown}; name "
            "flags, comma-separated, e.g. --allow_config_change=learning_rate,train_batch_size."
        )
    fixed = [name for name in requested if names[name] in RUN_ARCHITECTURE]
    if fixed:
        raise ValueError(
            f"--allow_config_change={allow_config_change}: {fixed} belong to the run's "
            "architecture, which its checkpoints hold and no resume can change; train a new run "
            "in another --model_dir (--checkpoint=THIS_RUN starts it from these weights)."
        )
    return frozenset(names[name] for name in requested)


@dataclasses.dataclass(frozen=True)
class Change:
    """A setting that differs between the run's ``config.json`` (``saved``) and this command
    (``now``): ``key`` is ``"section.field"``, the values are config.json's (JSON) values."""

    key: str
    saved: object
    now: object

    @property
    def name(self) -> str:
        """The name ``--allow_config_change`` takes for it: its flag's, else its field's."""
        flag = self.flag
        return flag.removeprefix("--") if flag.startswith("--") else self.key.split(".", 1)[1]

    @property
    def flag(self) -> str:
        """How the command line names it: ``--learning_rate``, ``--precision``; a field
        without a flag of its own (or set in part by one) by its key."""
        for flag in FLAG_SCHEMA.flags():
            if _key(flag) == self.key and (flag.alias is None or flag.alias.index is None):
                return f"--{flag.name}"
        return self.key

    def _shown(self, value: object) -> str:
        for flag in FLAG_SCHEMA.flags():
            if _key(flag) == self.key and flag.alias is not None and flag.alias.values:
                mapped = [name for name, field in flag.alias.values.items() if field == value]
                return json.dumps(mapped[0] if mapped else value)
        return json.dumps(value)

    def describe(self) -> str:
        """``--learning_rate=5.0 (config.json: 0.3)``."""
        return f"{self.flag}={self._shown(self.now)} (config.json: {self._shown(self.saved)})"


def setting_changes(saved: Mapping[str, object], now: Mapping[str, object]) -> list[Change]:
    """Every field of the configuration sections whose value in ``now`` (a run's
    ``config.json`` payload: ``RunConfig.to_json()`` with the model the run builds) differs from
    ``saved`` (the ``config.json`` of the run in the model_dir). A field that ``saved`` lacks
    (written by an older tf-simclr) counts as its default; values are compared as JSON."""
    changes = []
    for kind, section in SECTIONS.items():
        saved_section = saved.get(section) or {}
        for field in dataclasses.fields(kind):
            before = _as_json(saved_section.get(field.name, field.default))
            after = _as_json(now[section][field.name])
            if before != after:
                changes.append(Change(f"{section}.{field.name}", before, after))
    return changes


def _as_json(value: object) -> object:
    """``value`` as config.json holds it (tuples as lists)."""
    return json.loads(json.dumps(value))


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
    flags typed on the command line (:attr:`ParsedFlags.typed`)."""
    given = [
        flag
        for flag in FLAG_SCHEMA.flags()
        if flag.config is ModelConfig and flag_values[flag.name].present
    ]
    return ModelFlags(
        typed=frozenset(flag.field.name for flag in given if flag.name in typed),
        recipe=frozenset(flag.field.name for flag in given if flag.name not in typed),
    )


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


@dataclasses.dataclass(frozen=True)
class ResolvedFlags:
    """What a command line asks for: ``config``, the flags' configuration with the architecture
    adopted from ``--checkpoint`` or the run in ``--model_dir``, and ``origins``: for every
    field (``"model.resnet_depth"``) that a flag set or the adoption changed, where its value
    came from (``"flagfile /path/common.flags"``, ``"command line"``, ``"--checkpoint=PATH
    (flagfile ... said 0.25)"``)."""

    config: RunConfig
    origins: Mapping[str, str]


def resolve_flags(parsed: ParsedFlags) -> ResolvedFlags:
    """The configuration of a parsed command line (see the module docstring). Raises
    ValueError naming a bad flag, or a typed flag that contradicts an adopted architecture."""
    given = model_flags(parsed.values, parsed.typed)
    try:
        requested = configs_from_flags(parsed.values.flag_values_dict())
        remembered = remembered_architecture(requested, given)
        config = source_architecture(remembered, given)
    except FileNotFoundError as error:
        raise ValueError(str(error)) from error
    origins = {}
    for flag in FLAG_SCHEMA.flags():
        origin = parsed.origins.get(flag.name)
        if origin is None:
            continue
        where = "command line" if origin == COMMAND_LINE else f"flagfile {origin}"
        renamed = f" (--{flag.name})" if flag.name != flag.field.name else ""
        origins[f"{SECTIONS[flag.config]}.{flag.field.name}"] = where + renamed
    from tf_simclr.checkpoints import CONFIG_FILENAME

    saved_run = os.path.join(config.train.model_dir, CONFIG_FILENAME)
    for before, after, source in (
        (requested, remembered, f"the run in {saved_run}"),
        (remembered, config, f"--checkpoint={config.train.init_checkpoint}"),
    ):
        for name, value in dataclasses.asdict(after.model).items():
            old = getattr(before.model, name)
            if value != old:
                said = origins.get(f"model.{name}", "default")
                origins[f"model.{name}"] = f"{source} ({said} said {json.dumps(old)})"
    return ResolvedFlags(config, origins)


def config_from_flags(argv: Sequence[str]) -> RunConfig:
    """The RunConfig that ``tf-simclr ARGV`` runs with, ``argv`` without the program name::

        config_from_flags(["--flagfile=flags/folder/pretrain.flags", "--dataset=folder:photos",
                           "--model_dir=runs/p"])

    The same parsing, validation and adoption as the binary's (see the module docstring), on a
    private ``FlagValues``. Raises ValueError naming a bad flag, a missing flagfile, a missing
    ``--checkpoint`` or ``--teacher``, or a typed flag that contradicts the architecture of
    ``--checkpoint`` or of the run in ``--model_dir``. ``--print_config`` is the binary's
    action, not a setting: here it is an unknown flag."""
    flag_values = flags.FlagValues()
    define_flags(flag_values)
    return resolve_flags(parse_command(flag_values, [PROGRAM, *argv])).config


def flags_of(config: RunConfig) -> dict[str, object]:
    """Every flag of ``tf-simclr`` with the value that gives ``config``: what a run records in
    ``MODEL_DIR/flags.json``. A field without a flag, and ``crop_area_range`` beyond its lower
    end, is recorded in ``config.json`` only."""
    return FLAG_SCHEMA.values_of(getattr(config, section) for section in SECTIONS.values())


def describe_config(resolved: ResolvedFlags, run: RunConfig, decided: Mapping[str, object]) -> str:
    """What ``tf-simclr --print_config`` prints: ``run``, the configuration as the run would
    run it (``resolved.config`` after what the runner decides from the data: a batch capped to
    a small training set, the number of classes, what unlabeled data cannot serve, plain batch
    norm on one replica), section by section, every field as its JSON value, followed by where
    it came from when a flag set it or something changed it (every value not at its default
    did). Then ``decided``: the numbers read from the data (replicas, training examples, total
    steps)."""
    lines = [
        f"# {PROGRAM} --print_config: the configuration this command runs with; nothing was "
        "trained or written.",
        "# After a value: where it came from (a flagfile, the command line, --checkpoint, the "
        "run in --model_dir, or the run itself, from the data).",
    ]
    for section in SECTIONS.values():
        lines.append(f"{section}:")
        configured = dataclasses.asdict(getattr(resolved.config, section))
        for name, value in dataclasses.asdict(getattr(run, section)).items():
            origin = resolved.origins.get(f"{section}.{name}")
            if value != configured[name]:
                origin = (
                    "the run, from the data, the phase or the replicas "
                    f"({origin or 'default'} said {json.dumps(configured[name])})"
                )
            lines.append(f"  {name}: {json.dumps(value)}" + (f"  # {origin}" if origin else ""))
    lines.append("decided from the data (its size and classes were read, nothing trained):")
    lines.extend(f"  {name}: {json.dumps(value)}" for name, value in decided.items())
    return "\n".join(lines)
