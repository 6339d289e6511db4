"""A run is one run (issue 30): a resume that would change what the run computes is refused
before anything is written (status 2, each flag with both values), a change that
``--allow_config_change`` permits is logged and appended to ``config.json`` as a segment (a
memory added that way starts from the online network), a ``config.json`` that cannot be read or
does not match the checkpoints is named before anything is written, ``--mode=eval`` falls back
over a checkpoint the index names but whose files are gone, ``result.json`` records training
before the export and an interruption as such, and a finished run whose export was cut short
only exports again.

The binary tests resume or evaluate copies of the shared tiny reference pretraining of
``binary_runs`` (12 steps, checkpoints every 3)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    EVAL_FLAGS,
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    TINY_FLAGS,
    assert_succeeded,
    binary_command,
    checkpoint_steps,
    read_json,
    reference_run,
    run_all,
    run_binary,
)
from tolerances import EPS32

import tf_simclr
from tf_simclr import command_line
from tf_simclr.config import RunConfig
from tf_simclr.hub import read_module_info
from tf_simclr.training import loop
from tf_simclr.training.runner import PhaseRunner

RECORDS = ("config.json", "flags.json", "result.json")
ARCHITECTURE_FLAGS = ("--cifar_stem", "--resnet_depth=18", "--width_multiplier=0.125")
# The reference pretraining two steps longer, without its architecture flags (the run's).
RESUME_FLAGS = (
    *(flag for flag in REFERENCE_FLAGS if flag not in ARCHITECTURE_FLAGS),
    f"--train_steps={REFERENCE_STEPS + 2}",
)
KERNEL_SUFFIX = "/kernel/.ATTRIBUTES/VARIABLE_VALUE"  # not the optimizer's slots of a kernel


def digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory`` (the lock file aside), by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and path.name != ".lock"
    }


def copy_of_reference(tmp_path_factory, destination: Path) -> Path:
    shutil.copytree(reference_run(tmp_path_factory), destination)
    return destination


# ---------------------------------------------------------------------- the classification


def test_every_config_field_has_one_rule_on_resume():
    fields = {
        f"{section}.{field.name}"
        for kind, section in command_line.SECTIONS.items()
        for field in dataclasses.fields(kind)
    }
    assert set(command_line.SECTIONS.values()) == {f.name for f in dataclasses.fields(RunConfig)}
    rules = {
        "identity": command_line.RUN_IDENTITY,
        "architecture": command_line.RUN_ARCHITECTURE,
        "length": command_line.RESUME_LENGTH,
        "free": command_line.RESUME_FREE,
    }
    classified = set().union(*rules.values())
    assert fields - classified == set(), "fields without a rule on resume"
    assert classified - fields == set(), "rules for fields that do not exist"
    assert sum(len(keys) for keys in rules.values()) == len(fields), "a field has two rules"
    from tf_simclr import checkpoints

    adopted = {f"model.{name}" for name in checkpoints.RUN_ARCHITECTURE_FIELDS}
    assert adopted <= command_line.RUN_ARCHITECTURE
    # The brief's operational settings are free, its identity settings are not.
    for key in ("train.mode", "train.steps_per_loop", "distribution.strategy", "train.knn_k"):
        assert key in command_line.RESUME_FREE, key
    for key in ("data.seed", "optim.learning_rate", "memory.memory_size", "model.dtype_policy"):
        assert key in command_line.RUN_IDENTITY, key


def test_allow_config_change_names_flags_and_refuses_others(tmp_path):
    allowed = command_line.allowed_changes("learning_rate, precision,checkpoint,crop_area_range")
    assert allowed == {
        "optim.learning_rate",
        "model.dtype_policy",
        "train.init_checkpoint",
        "augment.crop_area_range",
    }
    argv = [*TINY_FLAGS, f"--model_dir={tmp_path / 'run'}"]
    with pytest.raises(ValueError, match=r"does not have: \['lerning_rate'\]"):
        tf_simclr.config_from_flags([*argv, "--allow_config_change=learning_rate,lerning_rate"])
    with pytest.raises(ValueError, match=r"\['resnet_depth'\] belong to the run's architecture"):
        tf_simclr.config_from_flags([*argv, "--allow_config_change=resnet_depth"])
    assert not (tmp_path / "run").exists()


def test_changes_are_named_by_flag_with_both_values():
    change = command_line.Change("model.dtype_policy", "float32", "mixed_bfloat16")
    assert change.describe() == '--precision="bfloat16" (config.json: "float32")'
    assert change.name == "precision"
    crop = command_line.Change("augment.crop_area_range", [0.08, 1.0], [0.2, 1.0])
    assert crop.describe() == "augment.crop_area_range=[0.2, 1.0] (config.json: [0.08, 1.0])"
    assert crop.name == "crop_area_range"


# ------------------------------------------------------ in process: interrupted training


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny two-step pretraining through ``tf_simclr.train``, in this process."""
    model_dir = tmp_path_factory.mktemp("identity") / "run"
    tf_simclr.train(tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={model_dir}"]))
    return model_dir


def test_an_interrupted_training_is_recorded_and_not_taken_for_finished(
    trained, tmp_path, monkeypatch
):
    model_dir = tmp_path / "run"
    shutil.copytree(trained, model_dir)
    finished = read_json(model_dir / "result.json")["train"]
    checkpoint = str(model_dir / "ckpt" / "ckpt-2")

    def interrupted(*args, **kwargs):
        raise loop.TrainingInterruptedError("SIGTERM", 2, checkpoint)

    monkeypatch.setattr(loop, "train", interrupted)
    longer = tf_simclr.config_from_flags(
        [*TINY_FLAGS, f"--model_dir={model_dir}", "--train_steps=4"]
    )
    with pytest.raises(loop.TrainingInterruptedError):
        tf_simclr.train(longer)
    recorded = read_json(model_dir / "result.json")
    stopped = {"interrupted_by": "SIGTERM", "step": 2, "checkpoint": checkpoint}
    assert recorded["train"] == {**finished, **stopped}
    assert recorded["train_mode"] == "pretrain"
    # Interrupted at the step its checkpoint holds, the run is not finished.
    recorded["train"]["global_step"] = 2
    (model_dir / "result.json").write_text(json.dumps(recorded))
    same = tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={model_dir}"])
    runner = PhaseRunner(same, tf.distribute.get_strategy())
    assert runner.total_steps == 2 and runner.resume_point == checkpoint
    assert runner.recorded_result() is None
    del recorded["train"]["interrupted_by"]
    (model_dir / "result.json").write_text(json.dumps(recorded))
    assert runner.recorded_result() == recorded


# ------------------------------------------------------------ through the binary: resumes


@pytest.mark.slow
@pytest.mark.parametrize("action", [(), ("--print_config",)])
def test_a_resume_that_changes_the_run_is_refused_before_writing(
    tmp_path, tmp_path_factory, action
):
    """Also by ``--print_config``, which prints what the command would run."""
    model_dir = copy_of_reference(tmp_path_factory, tmp_path / "run")
    before = digests(model_dir)
    changed = ("--train_batch_size=64", "--learning_rate=5", "--image_size=64", "--memory_size=64")
    finished = run_binary(model_dir, *RESUME_FLAGS, *changed, *action)  # two steps longer
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output
    for named in (
        "--train_batch_size=64 (config.json: 32)",
        "--learning_rate=5.0 (config.json: 0.02)",
        "--image_size=64 (config.json: 16)",
        "--memory_size=64 (config.json: 0)",
        "--allow_config_change=train_batch_size,learning_rate,image_size,memory_size",
    ):
        assert named in finished.output, named
    assert digests(model_dir) == before  # config.json, flags.json, result.json, checkpoints


def kernels(prefix: Path, root: str) -> dict[str, np.ndarray]:
    """The kernels under ``root`` (``model`` or ``memory/network``) of a checkpoint, by their
    path below it (encoder and projection head: what the memory network mirrors)."""
    reader = tf.train.load_checkpoint(str(prefix))
    found = {}
    for name, _ in tf.train.list_variables(str(prefix)):
        inner = name.removeprefix(f"{root}/")
        if (
            inner != name
            and name.endswith(KERNEL_SUFFIX)
            and not inner.startswith("supervised_head/")
        ):
            found[inner] = reader.get_tensor(name)
    return found


@pytest.mark.slow
def test_a_permitted_change_is_logged_and_recorded_and_a_new_memory_starts_online(
    tmp_path, tmp_path_factory
):
    model_dir = copy_of_reference(tmp_path_factory, tmp_path / "run")
    first = read_json(model_dir / "config.json")
    finished = run_binary(
        model_dir,
        *RESUME_FLAGS,
        "--memory_size=64",
        "--learning_rate=0.03",
        "--allow_config_change=memory_size,learning_rate",
        "--checkpoint_steps=1",  # free: a checkpoint at step 13 too
    )
    assert_succeeded(finished)
    allowed = "changed from step 12 on, as --allow_config_change allows"
    assert f"--memory_size=64 (config.json: 0): {allowed}" in finished.output
    assert f"--learning_rate=0.03 (config.json: 0.02): {allowed}" in finished.output
    saved = read_json(model_dir / "config.json")
    assert saved["memory"]["memory_size"] == 64 and saved["optim"]["learning_rate"] == 0.03
    first_segment, second_segment = saved["segments"]
    # The first segment's settings are those of the run as it was.
    settings = {key: value for key, value in first.items() if key != "segments"}
    assert first_segment == {"step": 0, "settings": settings} == first["segments"][0]
    assert settings["memory"]["memory_size"] == 0 and settings["optim"]["learning_rate"] == 0.02
    assert second_segment["step"] == REFERENCE_STEPS
    assert second_segment["changes"] == {
        "memory.memory_size": {"from": 0, "to": 64},
        "optim.learning_rate": {"from": 0.02, "to": 0.03},
        "train.train_steps": {"from": REFERENCE_STEPS, "to": REFERENCE_STEPS + 2},
        "train.checkpoint_steps": {"from": 3, "to": 1},
        "train.allow_config_change": {"from": "", "to": "memory_size,learning_rate"},
        "train.model_dir": {"from": first["train"]["model_dir"], "to": str(model_dir)},  # a copy
    }
    # The memory network started as the online network of step 12 and followed it for two
    # steps: m = memory_momentum, its kernels after step 14 are
    # m * (m * w12 + (1 - m) * w12) + (1 - m) * w13 = w12 + (1 - m) (w13 - w12).
    ckpt = model_dir / "ckpt"
    w12, w13 = kernels(ckpt / "ckpt-12", "model"), kernels(ckpt / "ckpt-13", "model")
    memory = kernels(ckpt / "ckpt-14", "memory/network")
    assert memory.keys() == w12.keys() and len(memory) > 20
    momentum = 0.999
    for name, value in memory.items():
        expected = w12[name] + (1 - momentum) * (w13[name] - w12[name])
        # Bound: two float32 moving-average updates and this expression, each a few roundings
        # of values no larger than max |w| (a unit round-off, EPS32 / 2, each).
        bound = 8 * EPS32 * float(np.max(np.abs(w12[name])))
        np.testing.assert_allclose(value, expected, rtol=0, atol=bound, err_msg=name)


# ----------------------------------------------------------------- through the binary: records


@pytest.mark.slow
def test_a_finished_run_whose_export_was_cut_short_only_exports_again(tmp_path, tmp_path_factory):
    # The reference run exports no module: with --export_hub it is a finished run whose export
    # was killed after the training record (which now comes first).
    model_dir = copy_of_reference(tmp_path_factory, tmp_path / "run")
    recorded = read_json(model_dir / "result.json")
    assert recorded["train"]["global_step"] == REFERENCE_STEPS
    checkpoints_before = digests(model_dir / "ckpt")
    flags = (*REFERENCE_FLAGS, "--export_hub")
    finished = run_binary(model_dir, *flags)
    assert_succeeded(finished)
    module = model_dir / "hub" / str(REFERENCE_STEPS)
    assert f"has already finished (step {REFERENCE_STEPS}), but its hub module {module} is " in (
        finished.output
    )
    assert "resumed from" not in finished.output and "step 12/12" not in finished.output
    assert read_module_info(str(module)).step == REFERENCE_STEPS
    assert read_json(model_dir / "result.json") == recorded
    assert digests(model_dir / "ckpt") == checkpoints_before

    # An earlier version left "train": {} after such a kill, and every rerun resumed again: the
    # rerun records the last step, and the next one says the run has finished.
    shutil.rmtree(model_dir / "hub")
    (model_dir / "result.json").write_text(json.dumps({"train_mode": "pretrain", "train": {}}))
    assert_succeeded(run_binary(model_dir, *flags))
    assert read_json(model_dir / "result.json")["train"] == {"global_step": REFERENCE_STEPS}
    assert read_module_info(str(module)).step == REFERENCE_STEPS
    again = run_binary(model_dir, *flags)
    assert_succeeded(again)
    assert f"has already finished (step {REFERENCE_STEPS}); nothing was changed" in again.output
    assert digests(model_dir / "ckpt") == checkpoints_before


# ------------------------------------------------- through the binary: what the model_dir holds


@pytest.fixture(scope="module")
def model_dir_cases(tmp_path_factory):
    """Copies of the reference run, each spoilt one way, each resumed or evaluated by one
    command, all at once: ``{name: (model_dir, digests before, finished)}``."""
    root = tmp_path_factory.mktemp("model_dir_cases")
    cases = {
        "other_architecture": RESUME_FLAGS,
        "other_architecture_eval": EVAL_FLAGS,
        "invalid_json": RESUME_FLAGS,
        "missing_newest": EVAL_FLAGS,
        "missing_newest_waiting": (*EVAL_FLAGS, "--eval_timeout_seconds=1"),
    }
    before = {}
    for name in cases:
        model_dir = copy_of_reference(tmp_path_factory, root / name)
        config = model_dir / "config.json"
        if name.startswith("other_architecture"):
            saved = read_json(config)
            saved["model"]["width_multiplier"] = 0.25  # another run's config.json
            config.write_text(json.dumps(saved))
        elif name == "invalid_json":
            config.write_text(config.read_text()[:100])  # cut short
        else:  # missing_newest*: the index names ckpt-12, whose files are gone
            for path in (model_dir / "ckpt").glob(f"ckpt-{REFERENCE_STEPS}.*"):
                path.unlink()
        before[name] = digests(model_dir)
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *flags), root / f"{name}.log")
        for name, flags in cases.items()
    }
    finished = run_all(jobs)
    return {name: (root / name, before[name], finished[name]) for name in cases}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["other_architecture", "other_architecture_eval"])
def test_a_config_json_of_another_architecture_is_named_before_writing(model_dir_cases, name):
    model_dir, before, finished = model_dir_cases[name]
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output
    assert f"does not hold the model that {model_dir / 'config.json'} describes" in (
        finished.output
    )
    assert "variables have other shapes" in finished.output
    assert digests(model_dir) == before  # config.json and flags.json byte for byte


@pytest.mark.slow
def test_a_config_json_that_does_not_parse_is_named_before_writing(model_dir_cases):
    model_dir, before, finished = model_dir_cases["invalid_json"]
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output
    assert f"{model_dir / 'config.json'} is not valid JSON" in finished.output
    assert digests(model_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize("name", ["missing_newest", "missing_newest_waiting"])
def test_eval_falls_back_over_a_checkpoint_whose_files_are_gone(model_dir_cases, name):
    """Also while waiting for new checkpoints: the newest usable one is evaluated at once."""
    model_dir, _, finished = model_dir_cases[name]
    assert_succeeded(finished)
    gone = model_dir / "ckpt" / f"ckpt-{REFERENCE_STEPS}"
    assert f"skipping checkpoint {gone}: it cannot be read (its files are gone" in finished.output
    assert read_json(model_dir / "result.json")["eval"]["global_step"] == 9
    assert checkpoint_steps(model_dir) == [3, 6, 9]


def test_a_resume_may_lengthen_the_run_but_shortens_it_only_when_allowed(
    trained, tmp_path, monkeypatch, caplog
):
    model_dir = tmp_path / "run"
    shutil.copytree(trained, model_dir)

    def stopped_at_step_2(*args, **kwargs):
        raise loop.TrainingInterruptedError("SIGTERM", 2, str(model_dir / "ckpt" / "ckpt-2"))

    def command(*flags: str):
        return tf_simclr.config_from_flags([*TINY_FLAGS, f"--model_dir={model_dir}", *flags])

    with monkeypatch.context() as patched:  # lengthened to 6 steps, stopped at step 2
        patched.setattr(loop, "train", stopped_at_step_2)
        with pytest.raises(loop.TrainingInterruptedError):
            tf_simclr.train(command("--train_steps=6"))
    before = digests(model_dir)
    for flags, named in (
        (("--train_steps=1",), "ends the run at step 1, before step 2, which it has reached"),
        (("--train_steps=1", "--allow_config_change=train_steps"), "before step 2"),
        (("--train_steps=3",), "shortens the run from 6 to 3 steps"),
    ):
        with pytest.raises(tf_simclr.InvalidConfigError, match=named):
            tf_simclr.train(command(*flags))
    assert digests(model_dir) == before
    caplog.set_level(logging.WARNING, logger="tf_simclr")
    result = tf_simclr.train(command("--train_steps=3", "--allow_config_change=train_steps"))
    assert result["train"]["global_step"] == 3
    assert (
        "--train_steps=3 (config.json: 6): the run now ends at step 3 instead of 6, as "
        "--allow_config_change allows" in caplog.text
    )
    segments = read_json(model_dir / "config.json")["segments"]
    assert [segment["step"] for segment in segments] == [0, 2, 2]
    assert segments[2]["changes"]["train.train_steps"] == {"from": 6, "to": 3}
