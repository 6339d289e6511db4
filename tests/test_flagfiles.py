"""Every recipe in ``flags/`` parses into a valid RunConfig through the binary's own flag
definitions and checks (nothing is run), and says what its file name promises."""

from __future__ import annotations

import re

import pytest
import tensorflow as tf
from absl import flags
from binary_runs import REPO_ROOT

from tf_simclr import run
from tf_simclr.flagfiles import expand_argv, expand_flagfiles

FLAGFILES = sorted(path.relative_to(REPO_ROOT) for path in REPO_ROOT.glob("flags/**/*.flags"))


def parse_flagfile(flagfile, tmp_path):
    """The RunConfig of ``--flagfile=...`` plus the flags its header says to pass."""
    source = (tmp_path / "previous_phase").resolve()
    if not (source / "ckpt").exists():  # a finished phase: a model_dir with a checkpoint
        tf.train.Checkpoint(step=tf.Variable(1)).save(str(source / "ckpt" / "ckpt"))
    values = flags.FlagValues()
    run.define_flags(values)
    argv = ["tf-simclr", f"--flagfile={REPO_ROOT / flagfile}", f"--model_dir={tmp_path / 'run'}"]
    text = (REPO_ROOT / flagfile).read_text(encoding="utf-8")
    if "Pass --dataset=folder:PATH" in text:
        argv.append(f"--dataset=folder:{tmp_path / 'images'}")
    if "Pass --checkpoint" in text:
        argv.append(f"--checkpoint={source}")
    if "Pass --teacher" in text:
        argv.append(f"--teacher={source}")
    run.parse_flags(values, argv)
    return run.configs_from_flags(values.flag_values_dict()), text


def test_there_are_recipes_for_every_dataset():
    folders = {path.parent.name for path in FLAGFILES}
    assert {"fashion_mnist", "cifar10", "imagenet"} <= folders
    assert len(FLAGFILES) >= 15


@pytest.mark.parametrize("flagfile", FLAGFILES, ids=str)
def test_flagfile_parses_into_a_valid_config(flagfile, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # recipes work from any directory: includes resolve beside them
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
        # Bound: a decimal fraction read from text vs one float64 division (rel 1e-6).
        assert config.data.label_fraction == pytest.approx(int(percent.group(1)) / 100)
    if "supervised" in name:
        assert not config.train.init_checkpoint, "a supervised baseline starts from scratch"
    if flagfile.parent.name == "fashion_mnist":
        # Sized for the 2-core demo: ResNet-18 at width 0.25 on 28x28 images.
        assert config.model.resnet_depth == 18 and config.augment.image_size == 28
        assert config.data.dataset == "fashion_mnist"
    if flagfile.parent.name == "folder":
        assert config.data.dataset == f"folder:{tmp_path / 'images'}"
        assert config.augment.image_size == 64
    if "Needs imagenet2012" in text:
        assert config.data.dataset == "tfds:imagenet2012"
        if expected_mode == "pretrain":  # SimCLRv2 section 2: MoCo's memory, 64K, 0.999
            assert config.memory.memory_size == 65536
            assert config.memory.memory_momentum == 0.999


def test_later_flags_override_the_flagfile(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)
    values = flags.FlagValues()
    run.define_flags(values)
    run.parse_flags(
        values,
        [
            "tf-simclr",
            "--flagfile=flags/fashion_mnist/pretrain.flags",
            f"--model_dir={tmp_path}",
            "--train_steps=7",
            "--precision=float32",
        ],
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


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_flagfile_includes_resolve_beside_the_including_file(tmp_path, monkeypatch):
    recipes = tmp_path / "recipes"
    _write(recipes / "base.flags", "# shared\n--train_steps=3\n  --seed=5  \n")
    _write(recipes / "sub" / "leaf.flags", "// leaf\n\n--temperature=0.3\n")
    top = _write(
        recipes / "top.flags",
        "--flagfile=base.flags\n--flagfile=sub/leaf.flags\n--train_steps=4\n",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    argv = ["tf-simclr", f"--flagfile={top}", "--seed=6"]
    assert expand_flagfiles(argv) == [
        "tf-simclr",
        "--train_steps=3",
        "--seed=5",
        "--temperature=0.3",
        "--train_steps=4",
        "--seed=6",
    ]
    # The same values as absl's own flagfile reading, run where absl finds the includes.
    ours, absl_own = flags.FlagValues(), flags.FlagValues()
    run.define_flags(ours)
    run.define_flags(absl_own)
    run.parse_flags(ours, argv)
    monkeypatch.chdir(recipes)
    _write(recipes / "absl_top.flags", "--flagfile=base.flags\n--flagfile=sub/leaf.flags\n")
    absl_own(["tf-simclr", "--flagfile=absl_top.flags", "--train_steps=4", "--seed=6"])
    for name in ("train_steps", "seed", "temperature"):
        assert ours[name].value == absl_own[name].value, name
    # An include that is not beside its file is looked up from the working directory, as absl does.
    _write(recipes / "legacy.flags", "--flagfile=sub/leaf.flags\n")
    _write(tmp_path / "old.flags", "--flagfile=recipes/legacy.flags\n")
    monkeypatch.chdir(tmp_path)
    assert expand_flagfiles(["x", "--flagfile=old.flags"]) == ["x", "--temperature=0.3"]


def test_missing_or_circular_flagfiles_are_named(tmp_path):
    outer = _write(tmp_path / "outer.flags", "--flagfile=missing.flags\n")
    with pytest.raises(FileNotFoundError, match=r"missing.flags \(included by .*outer.flags\)"):
        expand_flagfiles(["x", f"--flagfile={outer}"])
    _write(tmp_path / "a.flags", "--flagfile=b.flags\n")
    _write(tmp_path / "b.flags", "--flagfile=a.flags\n")
    with pytest.raises(
        ValueError, match=r"include each other: .*a\.flags -> .*b\.flags -> .*a\.flags"
    ):
        expand_flagfiles(["x", f"--flagfile={tmp_path / 'a.flags'}"])


def test_command_line_flagfiles_resolve_against_a_given_directory(tmp_path, monkeypatch):
    _write(tmp_path / "recipes" / "common.flags", "--image_size=28\n")
    _write(tmp_path / "recipes" / "top.flags", "--flagfile=common.flags\n--seed=3\n")
    monkeypatch.chdir(tmp_path / "recipes")  # a different working directory is not used
    argv = ["x", "--flagfile=recipes/top.flags"]
    assert expand_flagfiles(argv, str(tmp_path)) == ["x", "--image_size=28", "--seed=3"]
    with pytest.raises(FileNotFoundError, match=r"recipes/recipes/top\.flags"):
        expand_flagfiles(argv)


def test_the_flags_typed_on_the_command_line_are_told_apart(tmp_path):
    """A flag is typed when the value it ends with was typed on the command line itself, outside
    any flagfile: a recipe's flags and those of the user's own flagfile alike are not."""
    _write(tmp_path / "recipes" / "common.flags", "--resnet_depth=18\n--width_multiplier=0.25\n")
    mine = _write(
        tmp_path / "mine.flags",
        "--flagfile=recipes/common.flags\n--seed=1\n--nouse_blur\n--sk_ratio=0.0625\n",
    )
    argv = [
        "tf-simclr",
        "--seed=4",  # the flagfile that follows sets it again: its value is the flagfile's
        f"--flagfile={mine}",
        "--width_multiplier=0.125",
        "--noknn_monitor",
        "--temperature",  # absl's two-argument form
        "0.5",
        "--",
        "--resnet_depth=50",  # not a flag after --
    ]
    expanded = expand_argv(argv)
    assert list(expanded.argv) == expand_flagfiles(argv)
    values = flags.FlagValues()
    run.define_flags(values)
    assert expanded.typed_flags(values) == {"width_multiplier", "knn_monitor", "temperature"}
    with pytest.raises(ValueError, match=re.escape("unexpected arguments ['--resnet_depth=50']")):
        run.parse_flags(values, argv)  # every setting is a flag
    typed = run.parse_flags(values, argv[:-2])
    assert typed == {"width_multiplier", "knn_monitor", "temperature"}
    # The values are absl's: the last occurrence wins, wherever it is.
    assert (values.seed, values.resnet_depth, values.width_multiplier) == (1, 18, 0.125)
    assert (values.use_blur, values.sk_ratio, values.temperature) == (False, 0.0625, 0.5)
