"""Every recipe in ``flags/`` parses into a valid RunConfig through the binary's own flag
definitions and checks (nothing is run), and says what its file name promises."""

from __future__ import annotations

import re

import pytest
import tensorflow as tf
from absl import flags
from binary_runs import REPO_ROOT

from tf_simclr import run

FLAGFILES = sorted(path.relative_to(REPO_ROOT) for path in REPO_ROOT.glob("flags/**/*.flags"))


def parse_flagfile(flagfile, tmp_path):
    """The RunConfig of ``--flagfile=...`` plus the flags its header says to pass."""
    source = (tmp_path / "previous_phase").resolve()
    if not (source / "ckpt").exists():  # a finished phase: a model_dir with a checkpoint
        tf.train.Checkpoint(step=tf.Variable(1)).save(str(source / "ckpt" / "ckpt"))
    values = flags.FlagValues()
    run.define_flags(values)
    argv = ["tf-simclr", f"--flagfile={flagfile}", f"--model_dir={tmp_path / 'run'}"]
    text = (REPO_ROOT / flagfile).read_text(encoding="utf-8")
    if "Pass --checkpoint" in text:
        argv.append(f"--checkpoint={source}")
    if "Pass --teacher" in text:
        argv.append(f"--teacher={source}")
    values(argv)
    return run.configs_from_flags(values.flag_values_dict()), text


def test_there_are_recipes_for_every_dataset():
    folders = {path.parent.name for path in FLAGFILES}
    assert {"fashion_mnist", "cifar10", "imagenet"} <= folders
    assert len(FLAGFILES) >= 15


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=str)
def test_flagfile_parses_into_a_valid_config(flagfile, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # recipes include flags/<dataset>/common.flags by relative path
    config, text = parse_flagfile(flagfile, tmp_path)
    name = flagfile.stem
    expected_mode = (
        "distill"
        if "distill" in name
        else "finetune"
        if re.search(r"finetune|linear_eval|supervised", name)
        else "pretrain"
    )
    assert config.train.train_mode == expected_mode
    assert config.train.model_dir == str(tmp_path / "run")
    if expected_mode == "distill":
        assert config.train.teacher, "a distillation recipe must ask for --teacher"
    if "linear_eval" in name:
        assert config.model.fine_tune_after_block == 4
    percent = re.search(r"_(\d+)pct", name)
    if percent and int(percent.group(1)) < 100:
        assert config.data.label_fraction == pytest.approx(int(percent.group(1)) / 100)
    if "supervised" in name:
        assert not config.train.init_checkpoint, "a supervised baseline starts from scratch"
    if flagfile.parent.name == "fashion_mnist":
        # Sized for the 2-core demo: ResNet-18 at width 0.25 on 28x28 images.
        assert config.model.resnet_depth == 18 and config.augment.image_size == 28
        assert config.data.dataset == "fashion_mnist"
    if "Needs imagenet2012" in text:
        assert config.data.dataset == "tfds:imagenet2012"
        if expected_mode == "pretrain":  # SimCLRv2 section 2: MoCo's memory, 64K, 0.999
            assert config.memory.memory_size == 65536
            assert config.memory.memory_momentum == 0.999


def test_later_flags_override_the_flagfile(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    values = flags.FlagValues()
    run.define_flags(values)
    values(
        [
            "tf-simclr",
            "--flagfile=flags/fashion_mnist/pretrain.flags",
            f"--model_dir={tmp_path}",
            "--train_steps=7",
            "--precision=float32",
        ]
    )
    config = run.configs_from_flags(values.flag_values_dict())
    assert config.train.train_steps == 7
    assert config.model.dtype_policy == "float32"
    assert config.train.train_batch_size == 256  # from pretrain.flags
    assert config.model.width_multiplier == 0.25  # from common.flags, included by pretrain.flags


def test_define_flags_leaves_the_global_flags_alone():
    globally_defined = set(flags.FLAGS)
    first, second = flags.FlagValues(), flags.FlagValues()
    run.define_flags(first)
    run.define_flags(second)  # a second, independent set: no DuplicateFlagError
    first(["tf-simclr", "--train_mode=distill"])
    second(["tf-simclr"])
    assert first.train_mode == "distill" and second.train_mode == "pretrain"
    assert set(flags.FLAGS) == globally_defined
