"""The binary's flags: generated from the configuration dataclasses (the same names, defaults,
help texts and choices), listed by group by ``--help``; invalid ones are rejected before any work
(exit code 2, a message naming the flag, nothing written), a non-finite loss stops the run with
exit code 3 and leaves the last good checkpoint as it was, and the speed flags (``--precision``,
``--jit_compile``) train. A recipe's shape flags give way to the architecture of ``--checkpoint``
and of the run in ``--model_dir``; typed ones that contradict it are refused (issue 28)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
import shutil
import sys
import typing
from pathlib import Path

import numpy as np
import pytest
import reference_writer
import tensorflow as tf
from absl import flags
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    REPO_ROOT,
    SMALL_DATA,
    SMALL_MODEL,
    ChildResult,
    binary_command,
    checkpoint_steps,
    child_env,
    console_script,
    model_weights,
    read_events,
    read_json,
    reference_run,
    run_all,
    run_binary,
    run_child,
    shared_runs,
)
from tolerances import ONEDNN_OFF, drift_tolerance, relative_spread

import tf_simclr
from tf_simclr import command_line, logs, run
from tf_simclr.config import (
    CHOICES,
    DTYPE_POLICIES,
    HELP,
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


def fresh_flags() -> flags.FlagValues:
    """The configuration flags, defined on a fresh FlagValues."""
    values = flags.FlagValues()
    command_line.define_flags(values)
    return values


def parse(tmp_path, *argv: str):
    """Flags -> RunConfig as the binary does it before adopting an architecture, on a fresh
    FlagValues."""
    values = fresh_flags()
    values(["tf-simclr", f"--model_dir={tmp_path / 'run'}", *argv])
    return command_line.configs_from_flags(values.flag_values_dict())


# The flags of tf-simclr before they were generated from the dataclasses (issue 13), plus
# export_hub: recipes, released flagfiles and the reference implementation's commands use these.
TODAYS_FLAGS = {
    "augment_jit_compile", "batch_norm_decay", "cache_dataset", "checkpoint", "checkpoint_epochs",
    "checkpoint_steps", "cifar_stem", "color_jitter_mode", "color_jitter_strength",
    "crop_area_min", "data_dir", "dataset", "deterministic", "distill_alpha",
    "distill_temperature", "eeta", "eval_batch_size", "eval_dataset", "eval_split", "eval_steps",
    "eval_timeout_seconds", "export_hub", "export_memory_network", "fine_tune_after_block",
    "ft_proj_selector",
    "global_bn", "hidden_norm", "hinton_tau_squared", "image_size", "jit_compile",
    "keep_checkpoint_max", "keep_hub_module_max", "knn_bank_size", "knn_k", "knn_monitor",
    "knn_temperature", "label_dataset", "label_fraction", "label_smoothing", "labels_per_class",
    "labels_subset_file", "learning_rate", "learning_rate_scaling",
    "lineareval_while_pretraining", "log_every_steps", "logical_cpu_devices", "loss_scale",
    "memory_momentum", "memory_size", "memory_warmup_steps", "mode", "model_dir", "momentum",
    "nesterov",
    "num_proj_layers", "optimizer", "precision", "proj_head_mode", "proj_out_dim",
    "resnet_depth", "se_ratio", "seed", "shuffle_buffer", "sk_ratio", "steps_per_loop",
    "strategy", "teacher", "temperature", "tpu", "train_batch_size", "train_epochs",
    "train_mode", "train_split", "train_steps", "use_blur", "warmup_epochs", "weight_decay",
    "width_multiplier", "zero_init_logits_layer",
}  # fmt: skip
# Flags of issue 30 (preemption and second thoughts): operational bounds, not the run's identity.
TODAYS_FLAGS |= {"allow_config_change", "max_image_megapixels", "worker_timeout_seconds"}
# The binary's one flag that is not a setting: an action (issue 29).
BINARY_FLAGS = TODAYS_FLAGS | {"print_config"}


def test_the_flags_keep_todays_names():
    assert set(fresh_flags()) == TODAYS_FLAGS
    generated = [flag.name for flag in command_line.FLAG_SCHEMA.flags()]
    assert len(generated) == len(set(generated))
    # Every flag is a configuration field now, the strategy's included (DistributionConfig).
    assert set(generated) == TODAYS_FLAGS
    binary = flags.FlagValues()
    run.define_binary_flags(binary)
    assert set(binary) == BINARY_FLAGS


def test_every_field_is_a_flag_or_named_as_none():
    reached = {(flag.config, flag.field.name) for flag in run.FLAG_SCHEMA.flags()}
    for config in typing.get_type_hints(RunConfig).values():
        hidden = run.FLAG_SCHEMA.not_flags.get(config, ())
        names = {field.name for field in dataclasses.fields(config)}
        assert set(hidden) <= names, (config, set(hidden) - names)
        for name in names:
            assert (name in hidden) != ((config, name) in reached), (config, name)


def test_every_flag_default_help_and_choice_is_its_fields():
    values = fresh_flags()
    for flag in run.FLAG_SCHEMA.flags():
        defined = values[flag.name]
        assert defined.default == flag.default, flag.name
        assert flag.field_value(defined.default) == flag.field.default, flag.name
        assert flag.field.metadata[HELP] in defined.help, flag.name
        choices = flag.field.metadata[CHOICES]
        if flag.alias is not None and flag.alias.values is not None:
            assert defined.parser.enum_values == list(flag.alias.values), flag.name
            assert set(flag.alias.values.values()) == set(choices), flag.name
        elif choices and isinstance(flag.default, str):
            assert defined.parser.enum_values == list(choices), flag.name
        elif choices:
            assert all(str(choice) in defined.help for choice in choices), flag.name
    assert values["precision"].default == "float32"
    assert set(command_line.PRECISIONS.values()) == set(DTYPE_POLICIES)
    assert values["crop_area_min"].default == AugmentConfig().crop_area_range[0]
    assert values["checkpoint"].default == TrainConfig.init_checkpoint == ""
    # The reference's default (sync BN across replicas), now the dataclass's too.
    assert values["global_bn"].default is True and ModelConfig().global_bn is True


def test_no_flags_give_the_dataclass_defaults(tmp_path):
    config = parse(tmp_path)
    assert config == RunConfig(
        model=ModelConfig(),
        train=TrainConfig(model_dir=str(tmp_path / "run")),
        optim=OptimConfig(),
        loss=LossConfig(),
        augment=AugmentConfig(),
        data=DataConfig(),
        memory=MemoryConfig(),
        distribution=DistributionConfig(),
    )


def existing_dir(tmp_path) -> str:
    """A model_dir holding one checkpoint in ckpt/, and an empty folder ``empty/`` inside it."""
    path = tmp_path / "some_model_dir"
    if not (path / "ckpt").exists():
        tf.train.Checkpoint(step=tf.Variable(1)).save(str(path / "ckpt" / "ckpt"))
        (path / "empty").mkdir()
    return str(path)


# (case, flags, text the message must contain). "{dir}" is a model_dir with a checkpoint.
BAD_FLAGS = [
    ("unknown dataset", ["--dataset=imagenet_foo"], "--dataset"),
    ("bad synthetic option", ["--dataset=synthetic:size=16,colour=3"], "colour"),
    (
        "ft_proj_selector beyond the head",
        ["--train_mode=finetune", "--num_proj_layers=2", "--ft_proj_selector=3"],
        "ft_proj_selector",
    ),
    (
        "negative ft_proj_selector beyond the head",
        ["--train_mode=finetune", "--num_proj_layers=2", "--ft_proj_selector=-4"],
        "ft_proj_selector",
    ),
    ("distill without a teacher", ["--train_mode=distill"], "--teacher"),
    (
        "distill with a frozen student",
        ["--train_mode=distill", "--teacher={dir}", "--fine_tune_after_block=4"],
        "fine_tune_after_block",
    ),
    ("finetune given a teacher", ["--train_mode=finetune", "--teacher={dir}"], "--teacher"),
    (
        "two ways to pick the labels",
        ["--train_mode=finetune", "--label_fraction=0.1", "--labels_per_class=5"],
        "label_fraction",
    ),
    ("label fraction above 1", ["--train_mode=finetune", "--label_fraction=10"], "label_fraction"),
    ("crop area above 1", ["--crop_area_min=1.5"], "crop_area"),
    (
        "nonexistent checkpoint",
        ["--train_mode=finetune", "--checkpoint={dir}/nowhere/ckpt-100"],
        "--checkpoint",
    ),
    ("nonexistent teacher", ["--train_mode=distill", "--teacher={dir}/nowhere"], "--teacher"),
    (
        "checkpoint folder without a checkpoint",
        ["--train_mode=finetune", "--checkpoint={dir}/empty"],
        "no checkpoint in",
    ),
    (
        "jit with cross-replica batch norm on CPU",
        ["--jit_compile", "--strategy=mirrored", "--logical_cpu_devices=2"],
        "--jit_compile",
    ),
    ("tpu address without TPU", ["--tpu=grpc://10.0.0.1:8470"], "--tpu"),
    (
        "logical CPU devices with the one-device strategy",
        ["--logical_cpu_devices=2"],
        "--strategy=mirrored",
    ),
    ("no training length", ["--train_epochs=0"], "train_epochs"),
    (
        "memory not a multiple of the batch",
        ["--memory_size=1000", "--train_batch_size=256"],
        "--memory_size=1000 must be a multiple",
    ),
    ("memory outside pretraining", ["--train_mode=finetune", "--memory_size=512"], "pretraining"),
    ("memory momentum of 1", ["--memory_size=512", "--memory_momentum=1"], "memory_momentum"),
    ("memory export without memory", ["--export_memory_network"], "memory_size"),
    ("eval with nothing to evaluate", ["--mode=eval"], "has no checkpoint to evaluate"),
]


@pytest.mark.parametrize(
    ("argv", "named"), [case[1:] for case in BAD_FLAGS], ids=[case[0] for case in BAD_FLAGS]
)
def test_configs_from_flags_rejects_with_the_flag_name(tmp_path, argv, named):
    argv = [arg.format(dir=existing_dir(tmp_path)) for arg in argv]
    with pytest.raises(ValueError, match=named):
        parse(tmp_path, *argv)
    assert not (tmp_path / "run").exists()


def test_reference_checkpoints_are_sources(tmp_path):
    """A released reference folder (holding saved_model/) and a TF1 checkpoint folder are
    taken by --checkpoint and --teacher (the architecture is read from them later)."""
    network = reference_writer.build_network(reference_writer.Architecture(18, 1 / 16), 1)
    released = tmp_path / "r18"
    reference_writer.write_tf2_saved_model(network, str(released / "saved_model"))
    tf1 = tmp_path / "tf1"
    reference_writer.write_tf1_checkpoint(network, str(tf1))
    config = parse(tmp_path, "--train_mode=finetune", f"--checkpoint={released}")
    assert config.train.init_checkpoint == str(released)
    config = parse(tmp_path, "--train_mode=distill", f"--teacher={tf1}")
    assert config.train.teacher == str(tf1)


def test_good_flags_parse_into_the_configs(tmp_path):
    config = parse(
        tmp_path,
        "--train_mode=finetune",
        f"--checkpoint={existing_dir(tmp_path)}",
        "--label_fraction=0.1",
        "--ft_proj_selector=-1",
        "--precision=bfloat16",
        "--noaugment_jit_compile",
        "--crop_area_min=0.2",
        *SMALL_MODEL,
    )
    assert config.train.train_mode == "finetune"
    assert config.train.init_checkpoint == existing_dir(tmp_path)
    assert config.data.label_fraction == 0.1
    assert config.model.ft_proj_selector == -1
    assert config.model.dtype_policy == "mixed_bfloat16"
    assert config.model.resnet_depth == 18 and config.model.cifar_stem
    assert config.augment.image_size == 16 and config.augment.use_blur is False
    assert config.augment.augment_jit_compile is False
    assert config.augment.crop_area_range == (0.2, 1.0)


# A recipe's shape flags yield to the architecture it starts from (issue 28): the flags of a
# flagfile (flags/ or the user's own) are the recipe's defaults, flags typed on the command line
# are the user's word. The recipe of the issue: ResNet-18 at width 0.25 (flags/folder/common.flags).
FOLDER_FINETUNE = REPO_ROOT / "flags" / "folder" / "finetune_10pct.flags"
OTHER_SHAPE = ModelConfig(
    resnet_depth=34, width_multiplier=0.125, cifar_stem=True, num_classes=4, ft_proj_selector=0
)


def saved_run(path: Path, model: ModelConfig) -> Path:
    """A model_dir as a run of ``model`` leaves it, as far as its architecture goes: its
    config.json and a checkpoint."""
    tf.train.Checkpoint(step=tf.Variable(1)).save(str(path / "ckpt" / "ckpt"))
    (path / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model)}))
    return path


def configured(tmp_path, *argv: str) -> RunConfig:
    """The RunConfig the binary runs with (parsed, then the architecture adopted from
    ``--checkpoint`` and the run in ``--model_dir``), on a fresh FlagValues."""
    values = fresh_flags()
    argv = ["tf-simclr", f"--model_dir={tmp_path / 'run'}", *argv]
    return command_line.resolve_flags(command_line.parse_command(values, argv)).config


def adoption_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("architecture")]


def test_a_recipes_shape_flags_yield_to_the_checkpoint(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tf_simclr")
    source = saved_run(tmp_path / "source", OTHER_SHAPE)
    recipe = (f"--flagfile={FOLDER_FINETUNE}", f"--dataset={SMALL_DATA}")
    config = configured(tmp_path, *recipe, f"--checkpoint={source}")
    model = config.model
    assert (model.resnet_depth, model.width_multiplier, model.cifar_stem) == (34, 0.125, True)
    assert model.ft_proj_selector == 1  # the recipe's choice of head input stays: not a shape
    assert adoption_lines(caplog) == [
        f"architecture from --checkpoint={source}: resnet_depth 34 (flagfile said 18), "
        "width_multiplier 0.125 (flagfile said 0.25), cifar_stem True (default False)"
    ]
    # The user's own flagfile is a recipe too; a typed flag that a later flagfile sets again
    # ends with the flagfile's value.
    mine = tmp_path / "mine.flags"
    mine.write_text(f"--flagfile={FOLDER_FINETUNE}\n--width_multiplier=0.5\n")
    for argv in (
        (f"--flagfile={mine}", f"--dataset={SMALL_DATA}"),
        ("--width_multiplier=0.5", *recipe),
    ):
        caplog.clear()
        assert configured(tmp_path, *argv, f"--checkpoint={source}").model == model
        said = "0.5" if argv[0] == f"--flagfile={mine}" else "0.25"
        (line,) = adoption_lines(caplog)
        assert f"width_multiplier 0.125 (flagfile said {said})" in line
    # Typed flags that agree are taken; nothing to adopt, nothing logged.
    caplog.clear()
    agreeing = ("--resnet_depth=34", "--width_multiplier=0.125", "--cifar_stem")
    assert configured(tmp_path, *recipe, *agreeing, f"--checkpoint={source}").model == model
    assert adoption_lines(caplog) == []


def test_a_typed_shape_flag_that_contradicts_the_checkpoint_is_refused(tmp_path):
    source = saved_run(tmp_path / "source", OTHER_SHAPE)
    recipe = (f"--flagfile={FOLDER_FINETUNE}", f"--dataset={SMALL_DATA}", f"--checkpoint={source}")
    with pytest.raises(ValueError, match=re.escape("width_multiplier: 0.25 vs 0.125")):
        configured(tmp_path, *recipe, "--width_multiplier=0.25")
    with pytest.raises(ValueError, match=re.escape("resnet_depth: 50 vs 34")) as refused:
        configured(tmp_path, "--resnet_depth=50", *recipe[1:])
    assert "width_multiplier" not in str(refused.value)  # left at its default: it yields
    assert not (tmp_path / "run").exists()


def test_a_recipe_evaluates_or_resumes_a_run_of_another_shape(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="tf_simclr")
    model_dir = saved_run(tmp_path / "run", OTHER_SHAPE)
    recipe = (f"--flagfile={FOLDER_FINETUNE}", f"--dataset={SMALL_DATA}")
    for mode in ("eval", "train"):
        caplog.clear()
        model = configured(tmp_path, *recipe, f"--mode={mode}").model
        assert (model.resnet_depth, model.width_multiplier, model.cifar_stem) == (34, 0.125, True)
        assert model.ft_proj_selector == 0  # the run's own head input
        assert adoption_lines(caplog) == [
            f"architecture from the run in {model_dir / 'config.json'}: resnet_depth 34 "
            "(flagfile said 18), width_multiplier 0.125 (flagfile said 0.25), cifar_stem True "
            "(default False), ft_proj_selector 0 (flagfile said 1)"
        ]
    for typed, named in (
        ("--width_multiplier=0.25", "--width_multiplier=0.25 vs 0.125"),
        ("--ft_proj_selector=1", "--ft_proj_selector=1 vs 0"),
    ):
        with pytest.raises(ValueError, match=re.escape(named)):
            configured(tmp_path, *recipe, "--mode=eval", typed)


@pytest.fixture(scope="module")
def recipe_finetunes(tmp_path_factory):
    """Fine-tunes with the folder recipe (ResNet-18 at width 0.25) from the shared reference
    run (width 1/8), as typed in issue 28, and with a typed width that contradicts it."""
    source = reference_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("recipe_finetunes")
    command = (
        f"--flagfile={FOLDER_FINETUNE.relative_to(REPO_ROOT)}",
        f"--dataset={SMALL_DATA}",
        "--image_size=16",
        f"--checkpoint={source}",
        "--mode=train",
        "--train_steps=2",
        "--train_batch_size=16",
        "--precision=float32",
        "--noexport_hub",
    )
    cases = {"recipe": command, "typed_width": (*command, "--width_multiplier=0.25")}
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *argv), root / f"{name}.log")
        for name, argv in cases.items()
    }
    return root, source, run_all(jobs)


@pytest.mark.slow
def test_the_binary_starts_a_recipe_from_a_checkpoint_of_another_width(recipe_finetunes):
    root, source, finished = recipe_finetunes
    result = finished["recipe"]
    assert result.returncode == 0, result.tail()
    assert (
        f"architecture from --checkpoint={source}: width_multiplier 0.125 (flagfile said 0.25), "
        "cifar_stem True (default False)"
    ) in result.output
    model = read_json(root / "recipe" / "config.json")["model"]
    assert (model["resnet_depth"], model["width_multiplier"], model["cifar_stem"]) == (
        18,
        0.125,
        True,
    )
    assert read_json(root / "recipe" / "result.json")["train"]["global_step"] == 2


@pytest.mark.slow
def test_the_binary_refuses_a_typed_width_that_contradicts_the_checkpoint(recipe_finetunes):
    root, _, finished = recipe_finetunes
    result = finished["typed_width"]
    assert result.returncode == 2, result.tail()
    assert "width_multiplier: 0.25 vs 0.125" in result.output, result.tail()
    assert "Traceback" not in result.output
    assert not (root / "typed_width").exists(), "files were written for a refused command"


# --print_config (issue 29): the configuration as the run would run it, each value with where it
# came from, read without training or writing; bad flags are still refused with status 2.
PRINTED_ARGV = (
    f"--flagfile={FOLDER_FINETUNE}",
    f"--dataset={SMALL_DATA}",
    "--train_batch_size=1024",  # typed, then capped to the labeled subset by the run
)


def printed_sections(stdout: str) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """--print_config's output read back: ``{section: {field: value}}`` and the origins noted
    after the values, ``{section: {field: origin}}`` (a value without a note has none)."""
    values: dict[str, dict] = {}
    origins: dict[str, dict[str, str]] = {}
    section = ""
    for line in stdout.splitlines():
        if line.startswith("#"):
            continue
        if not line.startswith("  "):
            section = line.split()[0].rstrip(":")
            values[section], origins[section] = {}, {}
            continue
        name, rest = line.strip().split(": ", 1)
        value, _, origin = rest.partition("  # ")
        values[section][name] = json.loads(value)
        if origin:
            origins[section][name] = origin
    return values, origins


@pytest.fixture(scope="module")
def printed_config(tmp_path_factory):
    """``tf-simclr ... --print_config`` of the folder fine-tuning recipe from a checkpoint of
    another shape, and the same command with a typed width that contradicts the checkpoint."""
    root = tmp_path_factory.mktemp("print_config")
    source = saved_run(root / "source", OTHER_SHAPE)
    argv = (*PRINTED_ARGV, f"--checkpoint={source}", f"--model_dir={root / 'run'}")
    return {
        "root": root,
        "source": source,
        "argv": argv,
        "printed": run_child(binary_command(*argv, "--print_config")),
        "refused": run_child(binary_command(*argv, "--width_multiplier=0.25", "--print_config")),
    }


@pytest.mark.slow
def test_print_config_prints_what_the_run_would_run_and_writes_nothing(printed_config):
    from tf_simclr.training import api

    result = printed_config["printed"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (printed_config["root"] / "run").exists(), "--print_config wrote the model_dir"
    values, _ = printed_sections(result.stdout)
    # Exactly what the Python entry point plans for the same command line.
    plan = api.plan(tf_simclr.config_from_flags(printed_config["argv"]))
    for section in command_line.SECTIONS.values():
        expected = json.loads(json.dumps(dataclasses.asdict(getattr(plan.config, section))))
        assert values[section] == expected, section
    (decided,) = [name for name in values if name.startswith("decided")]
    assert values[decided] == {
        "replicas": 1,
        "num_train_examples": plan.num_train_examples,
        "total_steps": plan.total_steps,
    }
    # The recipe's 10% of 256 images, class-balanced; the typed batch is capped to them.
    assert 20 <= plan.num_train_examples <= 32
    assert values["train"]["train_batch_size"] == plan.num_train_examples
    assert (values["model"]["width_multiplier"], values["model"]["num_classes"]) == (0.125, 4)


@pytest.mark.slow
def test_print_config_says_where_each_value_came_from(printed_config):
    _, origins = printed_sections(printed_config["printed"].stdout)
    source, common = printed_config["source"], FOLDER_FINETUNE.parent / "common.flags"
    assert origins["data"]["dataset"] == "command line"
    assert origins["train"]["train_mode"] == f"flagfile {FOLDER_FINETUNE}"
    assert origins["train"]["init_checkpoint"] == "command line (--checkpoint)"
    assert origins["model"]["dtype_policy"] == f"flagfile {common} (--precision)"
    assert origins["model"]["width_multiplier"] == (
        f"--checkpoint={source} (flagfile {common} said 0.25)"
    )
    assert origins["model"]["cifar_stem"] == f"--checkpoint={source} (default said false)"
    assert origins["train"]["train_batch_size"].startswith("the run, from the data")
    assert origins["train"]["train_batch_size"].endswith("(command line said 1024)")
    assert origins["model"]["num_classes"].endswith("(default said 0)")
    # Values at their defaults that no flag set carry no note.
    assert "temperature" not in origins["loss"] and "memory_size" not in origins["memory"]


@pytest.mark.slow
def test_print_config_still_refuses_bad_flags(printed_config):
    result = printed_config["refused"]
    assert result.returncode == 2, result.stderr[-3000:]
    assert "invalid flags" in result.stderr and "width_multiplier: 0.25 vs 0.125" in result.stderr
    assert not result.stdout
    assert not (printed_config["root"] / "run").exists()


# --help through both entry points, as a user runs them: ``python -m tf_simclr.run`` and the
# installed ``tf-simclr`` console script (whose ``__main__`` is not tf_simclr.run); -h and -? are
# --helpshort and --help. TF_CPP_MIN_LOG_LEVEL is left unset, as a user leaves it: the binary
# then decides what TensorFlow's start-up prints.
HELP_COMMANDS = {
    "module_helpshort": [sys.executable, "-m", "tf_simclr.run", "--helpshort"],
    "script_helpshort": [console_script("tf-simclr"), "--helpshort"],
    "script_help": [console_script("tf-simclr"), "--help"],
    "script_h": [console_script("tf-simclr"), "-h"],
    "script_question_mark": [console_script("tf-simclr"), "-?"],
}
STARTUP_NOISE = (
    "cuInit",
    "cuda_platform.cc",
    "cudart_stub.cc",
    "cpu_feature_guard.cc",
    "port.cc",
    "absl::InitializeLog",
)


def run_as_user(command: list[str]) -> ChildResult:
    """``command`` with the environment a user has: no TF_CPP_MIN_LOG_LEVEL (nor TF_CONFIG)."""
    return run_child(command, env=child_env(TF_CPP_MIN_LOG_LEVEL=None))


def startup_noise(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if any(text in line for text in STARTUP_NOISE)]


def help_sections(stdout: str) -> dict[str, str]:
    """The text under each ``tf-simclr <group>:`` heading of the help output."""
    parts = re.split(r"^(tf-simclr [a-z ]+):$", stdout, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, ChildResult]:
    return {name: run_as_user(command) for name, command in HELP_COMMANDS.items()}


@pytest.mark.parametrize("case", list(HELP_COMMANDS))
def test_help_lists_exactly_the_binarys_flags_by_group(help_outputs, case):
    result = help_outputs[case]
    assert result.returncode == 0, result.stderr  # asking for help is not an error
    assert result.stdout.startswith(run.__doc__), result.stdout[:200]
    sections = help_sections(result.stdout)
    schema = run.FLAG_SCHEMA
    assert list(sections) == [schema.module_name(title) for title, _ in schema.groups]
    listed = {
        name
        for text in sections.values()
        for name in re.findall(r"^  --(?:\[no\])?(\w+)", text, flags=re.MULTILINE)
    }
    assert listed == BINARY_FLAGS  # none of absl's or TensorFlow's own flags
    assert "tensorflow" not in result.stdout and "absl." not in result.stdout
    # Every flag in its group with its help text (absl wraps lines, also at hyphens).
    squeezed = {title: "".join(text.split()) for title, text in sections.items()}
    values = fresh_flags()
    for flag in schema.flags():
        help_text = "".join(values[flag.name].help.split())
        assert help_text in squeezed[schema.module_name(flag.group)], flag.name
    assert "--resnet_depth: ResNet depth. One of 18, 34, 50" in result.stdout
    assert "--memory_size: Queued memory-network projections" in result.stdout
    assert "--train_mode: <pretrain|finetune|distill>: Phase." in result.stdout
    assert "--strategy: <default|mirrored|multi_worker|tpu>" in result.stdout
    assert "--[no]print_config: Print the configuration this command would run" in result.stdout
    assert not startup_noise(result.stderr), result.stderr


def test_helpfull_still_lists_every_flag():
    result = run_as_user([console_script("tf-simclr"), "--helpfull"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(run.__doc__), result.stdout[:200]
    for listed in ("--resnet_depth:", "--[no]helpshort:", "--verbosity:", "--flagfile:"):
        assert listed in result.stdout
    for title, _ in run.FLAG_SCHEMA.groups:
        assert f"\n{run.FLAG_SCHEMA.module_name(title)}:\n" in result.stdout


@pytest.mark.slow
def test_tensorflow_starts_without_its_startup_logging(tmp_path):
    # Rejected after TensorFlow started and listed its devices (where cuInit is called).
    result = run_as_user(
        binary_command(f"--model_dir={tmp_path / 'run'}", "--dataset=imagenet_foo")
    )
    assert result.returncode == 2, result.stderr
    assert "invalid flags" in result.stderr
    assert not startup_noise(result.stderr), result.stderr


def test_startup_noise_filter_keeps_real_errors():
    hidden = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1796022474.321929   13054 port.cc:153] oneDNN custom operations are on.",
        "I0000 00:00:1796022474.322218   13054 cudart_stub.cc:31] Could not find cuda drivers on "
        "your machine, GPU will not be used.",
        "I0000 00:00:1796022474.366672   13054 cpu_feature_guard.cc:227] This TensorFlow binary "
        "is optimized to use available CPU instructions in performance-critical operations.",
        "To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow "
        "with the appropriate compiler flags.",
        "E0000 00:00:1796022529.450039   13617 cuda_platform.cc:52] failed call to cuInit: "
        "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
        "W0000 00:00:1796022529.450039   13617 some_file.cc:1] a warning",
    ]
    kept = [
        "E0000 00:00:1796022529.450039   13617 op_kernel.cc:1857] OP_REQUIRES failed: not found",
        "F0000 00:00:1796022529.450039   13617 check.cc:1] Check failed: x == y",
        "Traceback (most recent call last):",
        "tf-simclr: invalid flags: --dataset='x' is not a known source",
        "/path/module.py:3: UserWarning: something",
    ]
    assert all(logs.is_startup_noise(line + "\n") for line in hidden)
    assert not any(logs.is_startup_noise(line + "\n") for line in kept)


# Through the binary: exit code 2, the flag named on stderr, nothing written. All cases start
# together (each pays the TensorFlow import, nothing else).
# The binary's ways of refusing flags, once each: a flagfile that is not there, absl's parser
# (an unknown flag, a value outside a flag's choices) and the configuration checks, whose every
# case BAD_FLAGS covers in process.
BINARY_CASES = {
    "missing_flagfile": (["--flagfile=/nonexistent/recipe.flags"], "no flagfile"),
    "unknown_flag": (["--lerning_rate=0.1"], "lerning_rate"),
    "bad_enum_value": (["--precision=fp8"], "precision"),
    "unknown_dataset": (["--dataset=imagenet_foo"], "--dataset"),
    "not_a_flag": (["pretrain"], "unexpected arguments ['pretrain']"),
}


@pytest.fixture(scope="module")
def binary_rejections(tmp_path_factory):
    root = tmp_path_factory.mktemp("rejected")
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *argv), root / f"{name}.log")
        for name, (argv, _) in BINARY_CASES.items()
    }
    return root, run_all(jobs)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BINARY_CASES))
def test_binary_exits_2_before_any_work(binary_rejections, case):
    root, finished = binary_rejections
    result = finished[case]
    assert result.returncode == 2, result.tail()
    assert "invalid flags" in result.output and BINARY_CASES[case][1] in result.output
    assert "Traceback" not in result.output
    assert not (root / case).exists(), "model_dir was created for a rejected command"


def _file_digests(directory) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


@pytest.mark.long
@pytest.mark.slow
def test_non_finite_loss_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, tmp_path_factory):
    model_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory), model_dir)
    before = _file_digests(model_dir / "ckpt")
    # Four more steps with an absurd learning rate: step 13 starts from the good step-12
    # weights and blows them up, step 14's loss is no longer finite; the next checkpoint
    # would have been step 15. The change of learning rate is deliberate (a resume refuses it
    # otherwise).
    finished = run_binary(
        model_dir,
        *REFERENCE_FLAGS,
        f"--train_steps={REFERENCE_STEPS + 4}",
        "--learning_rate=1e30",
        "--allow_config_change=learning_rate",
    )
    assert finished.returncode == 3, finished.tail()
    assert "non-finite loss at step" in finished.output
    assert "Traceback" not in finished.output
    assert _file_digests(model_dir / "ckpt") == before
    assert checkpoint_steps(model_dir) == [3, 6, 9, REFERENCE_STEPS]
    latest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert latest.endswith(f"ckpt-{REFERENCE_STEPS}")
    assert all(np.all(np.isfinite(value)) for value in model_weights(latest).values())


SPEED_RUNS = {
    "bfloat16": ("--precision=bfloat16",),
    "float16": ("--precision=float16",),
    "jit": ("--jit_compile",),
}
# Unit round-off of the mixed policies' compute dtypes (8 and 11 significant bits). Both CPU
# kinds round activations and weights to the same bfloat16 values (round to nearest even) and
# accumulate their products in float32 (AVX512-BF16's VDPBF16PS, AMX's TDPBF16PS), so the
# difference from float32 is this rounding, machine independent up to float32 round-off.
UNIT_ROUNDOFF = {"bfloat16": 2.0**-8, "float16": 2.0**-11}
# The first-step loss goes through 23 rounded layers (ResNet-18's 17 convolutions and 3
# projection shortcuts, the 3-layer projection head); independent roundings add up like a random
# walk: sqrt(23) < 5 of them. Measured on an AMD EPYC: bfloat16 0.34, float16 0.75 of one.
FIRST_STEP_ROUNDINGS = 5


@pytest.fixture(scope="module")
def speed_runs(tmp_path_factory):
    short = (*REFERENCE_FLAGS, "--train_steps=3")
    runs = {name: (*short, *extra) for name, extra in SPEED_RUNS.items()}
    # "onednn_off" (the reference with Eigen's kernels) measures the float32 round-off spread
    # of the first step on this machine; test_strategy.py shares it.
    return shared_runs(
        tmp_path_factory,
        {"reference": REFERENCE_FLAGS, "onednn_off": REFERENCE_FLAGS, **runs},
        envs={"onednn_off": ONEDNN_OFF},
    )


def first_step_loss(model_dir) -> float:
    events = read_events(model_dir / "train")
    assert events.steps("train/contrast_loss")[0] == 1
    return events.values("train/contrast_loss")[0]


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize("name", list(SPEED_RUNS))
def test_speed_flags_train_with_finite_losses(speed_runs, name):
    model_dir = speed_runs[name]
    train = read_json(model_dir / "result.json")["train"]
    for key in ("total_loss", "contrast_loss", "supervised_loss", "weight_decay"):
        assert math.isfinite(train[key]) and train[key] > 0, (key, train[key])
    assert checkpoint_steps(model_dir) == [3]
    losses = read_events(model_dir / "train").values("train/contrast_loss")
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    # Reduced precision computes the same first-step loss as float32, to its rounding.
    # Bound: FIRST_STEP_ROUNDINGS roundings of the compute dtype (jit: float32, see below).
    if name in UNIT_ROUNDOFF:
        rel = FIRST_STEP_ROUNDINGS * UNIT_ROUNDOFF[name]
    else:
        rel = _float32_first_step(speed_runs)
    assert first_step_loss(model_dir) == pytest.approx(
        first_step_loss(speed_runs["reference"]), rel=rel
    )


@pytest.mark.long
@pytest.mark.slow
def test_mixed_precision_policies_and_loss_scaling(speed_runs):
    policies = {
        name: read_json(speed_runs[name] / "config.json")["model"]["dtype_policy"]
        for name in ("reference", "bfloat16", "float16")
    }
    assert policies == {
        "reference": "float32",
        "bfloat16": "mixed_bfloat16",
        "float16": "mixed_float16",
    }
    # float16 trains through a LossScaleOptimizer, whose dynamic scale is checkpointed.
    prefix = str(speed_runs["float16"] / "ckpt" / "ckpt-3")
    names = [name for name, _ in tf.train.list_variables(prefix)]
    scale_names = [name for name in names if "loss_scale" in name and "current" in name]
    assert scale_names, names[:10]
    scale = tf.train.load_checkpoint(prefix).get_tensor(scale_names[0])
    assert math.isfinite(float(scale)) and scale >= 1
    bfloat16 = str(speed_runs["bfloat16"] / "ckpt" / "ckpt-3")
    assert not [name for name, _ in tf.train.list_variables(bfloat16) if "loss_scale" in name]
    # Variables stay float32 under both mixed policies.
    for name in ("bfloat16", "float16"):
        weights = model_weights(speed_runs[name] / "ckpt" / "ckpt-3")
        assert {value.dtype.name for value in weights.values() if value.size} == {"float32"}


def _float32_first_step(speed_runs) -> float:
    """Relative tolerance of a float32 first-step loss computed by other kernels: 10x the
    spread of the oneDNN-off reference's, measured here (tests/tolerances.py)."""
    losses = [first_step_loss(speed_runs[name]) for name in ("onednn_off", "reference")]
    return drift_tolerance(relative_spread(*losses), 1, 1.0)


@pytest.mark.long
@pytest.mark.slow
def test_jit_compile_gives_the_same_first_step_loss(speed_runs):
    # XLA's kernels sum in yet another order: bound, 10x the oneDNN-vs-Eigen spread.
    assert first_step_loss(speed_runs["jit"]) == pytest.approx(
        first_step_loss(speed_runs["reference"]), rel=_float32_first_step(speed_runs)
    )
    assert read_json(speed_runs["jit"] / "config.json")["train"]["jit_compile"] is True
    assert read_json(speed_runs["reference"] / "config.json")["train"]["jit_compile"] is False
