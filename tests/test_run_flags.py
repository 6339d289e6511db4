"""The binary's flags: invalid ones are rejected before any work (exit code 2, a message naming
the flag, nothing written), a non-finite loss stops the run with exit code 3 and leaves the last
good checkpoint as it was, and the speed flags (``--precision``, ``--jit_compile``) train."""

from __future__ import annotations

import hashlib
import math
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    SMALL_MODEL,
    binary_command,
    checkpoint_steps,
    model_weights,
    read_events,
    read_json,
    reference_run,
    run_all,
    run_binary,
    shared_runs,
)

from tf_simclr import run


def parse(tmp_path, *argv: str):
    """Flags -> RunConfig exactly as the binary does it, on a fresh FlagValues."""
    values = flags.FlagValues()
    run.define_flags(values)
    values(["tf-simclr", f"--model_dir={tmp_path / 'run'}", *argv])
    return run.configs_from_flags(values.flag_values_dict())


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
    ("no training length", ["--train_epochs=0"], "train_epochs"),
    (
        "memory not a multiple of the batch",
        ["--memory_size=1000", "--train_batch_size=256"],
        "--memory_size=1000 must be a multiple",
    ),
    ("memory outside pretraining", ["--train_mode=finetune", "--memory_size=512"], "pretraining"),
    ("memory momentum of 1", ["--memory_size=512", "--memory_momentum=1"], "memory_momentum"),
    ("memory export without memory", ["--export_memory_network"], "memory_size"),
]


@pytest.mark.parametrize(
    ("argv", "named"), [case[1:] for case in BAD_FLAGS], ids=[case[0] for case in BAD_FLAGS]
)
def test_configs_from_flags_rejects_with_the_flag_name(tmp_path, argv, named):
    argv = [arg.format(dir=existing_dir(tmp_path)) for arg in argv]
    with pytest.raises(ValueError, match=named):
        parse(tmp_path, *argv)
    assert not (tmp_path / "run").exists()


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


# Through the binary: exit code 2, the flag named on stderr, nothing written. All cases start
# together (each pays the TensorFlow import, nothing else).
BINARY_CASES = {
    "unknown_dataset": (["--dataset=imagenet_foo"], "--dataset"),
    "selector": (
        ["--train_mode=finetune", "--num_proj_layers=2", "--ft_proj_selector=3"],
        "ft_proj_selector",
    ),
    "distill_without_teacher": (["--train_mode=distill"], "--teacher"),
    "missing_checkpoint": (
        ["--train_mode=finetune", "--checkpoint=/nonexistent/x"],
        "--checkpoint",
    ),
    "unknown_flag": (["--lerning_rate=0.1"], "lerning_rate"),
    "bad_enum_value": (["--precision=fp8"], "precision"),
    "memory_not_a_batch_multiple": (
        ["--memory_size=1000", "--train_batch_size=256"],
        "--memory_size",
    ),
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


@pytest.mark.slow
def test_non_finite_loss_exits_3_and_keeps_the_last_good_checkpoint(tmp_path, tmp_path_factory):
    model_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory), model_dir)
    before = _file_digests(model_dir / "ckpt")
    # Four more steps with an absurd learning rate: step 13 starts from the good step-12
    # weights and blows them up, step 14's loss is no longer finite; the next checkpoint
    # would have been step 15.
    finished = run_binary(
        model_dir, *REFERENCE_FLAGS, f"--train_steps={REFERENCE_STEPS + 4}", "--learning_rate=1e30"
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


@pytest.fixture(scope="module")
def speed_runs(tmp_path_factory):
    short = (*REFERENCE_FLAGS, "--train_steps=3")
    runs = {name: (*short, *extra) for name, extra in SPEED_RUNS.items()}
    return shared_runs(tmp_path_factory, {"reference": REFERENCE_FLAGS, **runs})


def first_step_loss(model_dir) -> float:
    events = read_events(model_dir / "train")
    assert events.steps("train/contrast_loss")[0] == 1
    return events.values("train/contrast_loss")[0]


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
    assert first_step_loss(model_dir) == pytest.approx(
        first_step_loss(speed_runs["reference"]), rel=2e-2
    )


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


@pytest.mark.slow
def test_jit_compile_gives_the_same_first_step_loss(speed_runs):
    assert first_step_loss(speed_runs["jit"]) == pytest.approx(
        first_step_loss(speed_runs["reference"]), rel=1e-4
    )
    assert read_json(speed_runs["jit"] / "config.json")["train"]["jit_compile"] is True
    assert read_json(speed_runs["reference"] / "config.json")["train"]["jit_compile"] is False
