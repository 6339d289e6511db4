"""The Python training entry point (issue 29): ``tf_simclr.config_from_flags`` builds the
configuration of a ``tf-simclr`` command line with the binary's validation and adoption rules,
``tf_simclr.train`` runs it in this process and returns what the run records in
``result.json``; a finished run returns its record without training, and a configuration that
cannot run is refused before anything is written."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import re
from pathlib import Path

import pytest
from absl import flags
from binary_runs import REPO_ROOT, SMALL_DATA, TINY_FLAGS, read_json

import tf_simclr
from tf_simclr import checkpoints, command_line, run
from tf_simclr.config import DataConfig, DistributionConfig, ModelConfig
from tf_simclr.model_dir import ModelDirLock

FOLDER = REPO_ROOT / "flags" / "folder"


def tree_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny pretraining run through ``tf_simclr.train``, in this process."""
    model_dir = tmp_path_factory.mktemp("train_api") / "run"
    config = tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={model_dir}"])
    return model_dir, config, tf_simclr.train(config)


def test_train_returns_what_result_json_records(trained):
    model_dir, config, result = trained
    assert result == read_json(model_dir / "result.json")
    assert result["train_mode"] == "pretrain" and result["train"]["global_step"] == 2
    assert math.isfinite(result["train"]["contrast_loss"])
    # flags.json holds the flags that give the configuration; config.json every field, the
    # strategy's included, and its readers still read it.
    assert read_json(model_dir / "flags.json") == command_line.flags_of(config)
    saved = read_json(model_dir / "config.json")
    assert saved["distribution"] == dataclasses.asdict(DistributionConfig())
    model = checkpoints.read_model_config(str(model_dir / "config.json"))
    assert (model.resnet_depth, model.width_multiplier, model.num_classes) == (18, 0.125, 4)


def test_train_on_a_finished_model_dir_returns_the_recorded_result(trained, caplog):
    model_dir, config, result = trained
    before = tree_digests(model_dir)
    caplog.set_level(logging.INFO, logger="tf_simclr")
    assert tf_simclr.train(config) == result
    assert tree_digests(model_dir) == before  # nothing trained, nothing rewritten
    assert f"{model_dir} has already finished (step 2); nothing was changed" in caplog.text


def binary_config(argv: list[str]):
    """The configuration the binary resolves for ``tf-simclr ARGV``: its own flags (the
    configuration's and ``--print_config``) parsed, then resolved."""
    values = flags.FlagValues()
    run.define_binary_flags(values)
    parsed = command_line.parse_command(values, ["tf-simclr", *argv])
    return command_line.resolve_flags(parsed).config


def saved_run(path: Path, model: ModelConfig) -> Path:
    """A model_dir as a run of ``model`` leaves it, as far as its architecture goes."""
    import tensorflow as tf

    tf.train.Checkpoint(step=tf.Variable(1)).save(str(path / "ckpt" / "ckpt"))
    (path / "config.json").write_text(json.dumps({"model": dataclasses.asdict(model)}))
    return path


def test_config_from_flags_is_the_binarys_config_adoption_included(tmp_path):
    other = ModelConfig(resnet_depth=34, width_multiplier=0.125, num_classes=4)
    source = saved_run(tmp_path / "source", other)
    recipe = [f"--flagfile={FOLDER / 'finetune_10pct.flags'}", f"--dataset={SMALL_DATA}"]
    argv = [*recipe, f"--checkpoint={source}", f"--model_dir={tmp_path / 'run'}", "--seed=3"]
    config = tf_simclr.config_from_flags(argv)
    assert config == binary_config(argv)
    # The recipe's shape flags gave way to the checkpoint; its other flags and the typed seed
    # stayed.
    assert (config.model.resnet_depth, config.model.width_multiplier) == (34, 0.125)
    assert (config.model.ft_proj_selector, config.data.seed) == (1, 3)
    # A typed shape flag is the user's word: contradicting the checkpoint, it is refused.
    with pytest.raises(ValueError, match=re.escape("width_multiplier: 0.25 vs 0.125")):
        tf_simclr.config_from_flags([*argv, "--width_multiplier=0.25"])
    # Resuming the run in --model_dir adopts its architecture and head selection.
    resumed = saved_run(tmp_path / "resumed", other)  # its head reads proj_head_input (0)
    argv = [*recipe, f"--model_dir={resumed}"]
    config = tf_simclr.config_from_flags(argv)
    assert config == binary_config(argv)
    assert (config.model.resnet_depth, config.model.ft_proj_selector) == (34, 0)


# (case, flags, text the ValueError must contain); --model_dir is added unless the case is its.
BAD_FLAGS = [
    ("unknown flag", ["--lerning_rate=0.1"], "lerning_rate"),
    ("value outside the choices", ["--precision=fp8"], "precision"),
    ("missing flagfile", ["--flagfile=/nonexistent/recipe.flags"], "no flagfile"),
    ("not a flag", ["pretrain"], "unexpected arguments ['pretrain']"),
    ("unknown dataset", ["--dataset=imagenet_foo"], "--dataset"),
    ("the binary's action", ["--print_config"], "print_config"),
    ("a split CPU on one device", ["--logical_cpu_devices=2"], "--strategy=mirrored"),
    ("no model_dir", [], "--model_dir is required"),
]


@pytest.mark.parametrize(
    ("argv", "named"), [case[1:] for case in BAD_FLAGS], ids=[case[0] for case in BAD_FLAGS]
)
def test_bad_flags_raise_value_error_naming_the_flag(tmp_path, argv, named):
    model_dir = [] if named.startswith("--model_dir") else [f"--model_dir={tmp_path / 'run'}"]
    with pytest.raises(ValueError, match=re.escape(named)):
        tf_simclr.config_from_flags([*argv, *model_dir])
    assert not (tmp_path / "run").exists()


def flag_arguments(values: dict[str, object]) -> list[str]:
    """Command-line flags that set ``values`` (flags.json's form); None leaves a default."""
    arguments = []
    for name, value in values.items():
        if isinstance(value, bool):
            arguments.append(f"--{name}" if value else f"--no{name}")
        elif value is not None:
            arguments.append(f"--{name}={value}")
    return arguments


def test_the_strategy_is_configured_and_flags_json_gives_the_config_back(tmp_path):
    argv = [
        f"--flagfile={FOLDER / 'pretrain.flags'}",
        f"--dataset={SMALL_DATA}",
        "--strategy=mirrored",
        "--logical_cpu_devices=2",
        "--crop_area_min=0.2",
        f"--model_dir={tmp_path / 'run'}",
    ]
    config = tf_simclr.config_from_flags(argv)
    assert config.distribution == DistributionConfig(strategy="mirrored", logical_cpu_devices=2)
    assert config.model.dtype_policy == "mixed_bfloat16"  # the recipe's --precision=bfloat16
    assert config.to_json()["distribution"]["strategy"] == "mirrored"
    recorded = command_line.flags_of(config)
    assert set(recorded) == {flag.name for flag in command_line.FLAG_SCHEMA.flags()}
    assert tf_simclr.config_from_flags(flag_arguments(recorded)) == config


def test_a_strategy_that_cannot_run_the_config_is_refused_when_it_is_built(tmp_path):
    config = tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={tmp_path / 'run'}"])
    split = DistributionConfig(strategy="mirrored", logical_cpu_devices=2)
    assert dataclasses.replace(config, distribution=split).distribution == split
    jit = dataclasses.replace(config.train, jit_compile=True)
    with pytest.raises(ValueError, match="--jit_compile with --global_bn"):
        dataclasses.replace(config, train=jit, distribution=split)
    with pytest.raises(ValueError, match=re.escape("--tpu=grpc://10.0.0.1:8470 is only used")):
        DistributionConfig(tpu="grpc://10.0.0.1:8470")


def test_train_refuses_a_config_that_cannot_run_before_writing(tmp_path):
    config = tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={tmp_path / 'run'}"])
    missing = dataclasses.replace(config, data=DataConfig(dataset=f"folder:{tmp_path / 'none'}"))
    finetune = dataclasses.replace(config.train, train_mode="finetune", teacher=str(tmp_path))
    for refused, named in (
        (missing, str(tmp_path / "none")),
        (dataclasses.replace(config, train=finetune), "--teacher is only used"),
    ):
        with pytest.raises(tf_simclr.InvalidConfigError, match=re.escape(named)):
            tf_simclr.train(refused)
    assert issubclass(tf_simclr.InvalidConfigError, ValueError)
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_model_dir_in_use(tmp_path):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    config = tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={model_dir}"])
    holder = ModelDirLock(str(model_dir))
    holder.acquire()
    try:
        with pytest.raises(tf_simclr.ModelDirInUseError, match="is in use by another"):
            tf_simclr.train(config)
    finally:
        holder.release()
    assert list(model_dir.iterdir()) == []
