"""tf-simclr-export (``python -m tf_simclr.export_hub``) as a user meets it.

It converts checkpoints of the reference implementation (google-research/simclr) in each of its
formats into the usual TF-Hub module, which computes the reference's endpoints and fine-tunes
with ``hub.KerasLayer(trainable=True)``; the checkpoints are written by
``tests/reference_writer.py`` (random weights, the reference's names).

Everything that can be checked without the weights is refused before they are restored, with
exit status 2 and a message naming the checkpoint or the directory; ``--overwrite`` replaces a
previous module and never unrelated files; a truncated newest checkpoint of a model_dir gives way
to the newest readable one. Those checkpoints are written in this process (a tiny ResNet-18, no
training), so the only cost is the binary's start-up and export.

The binary runs in child processes (``tests/binary_runs.py``), every case of a test at once.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys

import numpy as np
import pytest
import reference_writer as writer
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras as keras
from absl import flags
from binary_runs import assert_succeeded, console_script, run_all, run_child, truncate_data_file

from tf_simclr import ModelConfig, SimCLRModel, export_hub
from tf_simclr.hub import read_module_info, save_hub_module

# A 10% fine-tune (its supervised head reads proj_head_1) of a ResNet-18 with the ResNet-D
# stem and shortcuts: small, so that five exports run quickly side by side.
ARCHITECTURE = writer.Architecture(18, 1 / 16, 0.0625, num_classes=4, ft_proj_selector=1)
IMAGES = np.random.default_rng(3).uniform(0.0, 1.0, (4, 32, 32, 3)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3])


def export_command(*flags: str) -> list[str]:
    """``python -m tf_simclr.export_hub FLAGS...`` (the ``tf-simclr-export`` entry point)."""
    return [sys.executable, "-m", "tf_simclr.export_hub", *flags]


# ------------------------------------------------------------------------------------- --help

# The binary's flags: their names are part of its contract (export/SIGNATURES.md, the README).
EXPORT_FLAGS = {
    "checkpoint", "config", "memory_network", "ft_proj_selector", "use_ema", "export_dir",
    "overwrite", "include_projection_head", "include_supervised_head", "weight_decay",
}  # fmt: skip
# --help as a user asks for it: the installed console script (whose ``__main__`` is not
# tf_simclr.export_hub) and ``python -m``; -h and -? are --helpshort and --help.
EXPORT_HELP_COMMANDS = {
    "script_help": [console_script("tf-simclr-export"), "--help"],
    "script_h": [console_script("tf-simclr-export"), "-h"],
    "script_question_mark": [console_script("tf-simclr-export"), "-?"],
    "module_helpshort": export_command("--helpshort"),
}


def export_help_sections(stdout: str) -> dict[str, str]:
    """The text under each ``tf-simclr-export <group>:`` heading of the help output."""
    parts = re.split(r"^(tf-simclr-export [a-z ]+):$", stdout, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.mark.parametrize("case", list(EXPORT_HELP_COMMANDS))
def test_help_lists_the_export_flags_by_group(case):
    result = run_child(EXPORT_HELP_COMMANDS[case])
    assert result.returncode == 0, result.stderr  # asking for help is not an error
    assert result.stdout.startswith(export_hub.__doc__), result.stdout[:200]
    sections = export_help_sections(result.stdout)
    schema = export_hub.FLAG_SCHEMA
    assert list(sections) == [schema.module_name(title) for title, _ in schema.groups]
    values = flags.FlagValues()
    export_hub.define_flags(values)
    assert set(values) == EXPORT_FLAGS
    for title, members in schema.groups:
        text = sections[schema.module_name(title)]
        listed = re.findall(r"^  --(?:\[no\])?(\w+)", text, flags=re.MULTILINE)
        assert sorted(listed) == sorted(members), title
        squeezed = "".join(text.split())  # absl wraps the help texts
        for name in members:
            assert "".join(values[name].help.split()) in squeezed, name
    assert "--checkpoint: A model_dir, its ckpt/ directory" in result.stdout
    assert "tensorflow" not in result.stdout and "absl." not in result.stdout
    assert "Try --helpfull" in result.stdout


def test_export_helpfull_lists_every_flag():
    result = run_child([console_script("tf-simclr-export"), "--helpfull"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(export_hub.__doc__), result.stdout[:200]
    for listed in ("--checkpoint:", "--[no]overwrite:", "--[no]helpshort:", "--flagfile:"):
        assert listed in result.stdout
    for title, _ in export_hub.FLAG_SCHEMA.groups:
        assert f"\n{export_hub.FLAG_SCHEMA.module_name(title)}:\n" in result.stdout


def one_training_step(path: str) -> tuple[float, float]:
    """One SGD step of the module's classifier through ``hub.KerasLayer(trainable=True)``;
    the loss before, and the largest change of a module weight."""
    layer = hub.KerasLayer(path, trainable=True, output_key="logits_sup")
    model = keras.Sequential([keras.Input((32, 32, 3)), layer])
    before = [variable.numpy() for variable in layer.trainable_variables]
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        logits = model(IMAGES, training=True)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(LABELS, logits, from_logits=True)
        ) + tf.add_n(model.losses)
    gradients = tape.gradient(loss, layer.trainable_variables)
    assert all(gradient is not None for gradient in gradients)
    optimizer.apply_gradients(zip(gradients, layer.trainable_variables, strict=True))
    change = max(
        float(np.max(np.abs(variable.numpy() - value)))
        for variable, value in zip(layer.trainable_variables, before, strict=True)
    )
    return float(loss), change


@pytest.mark.long
@pytest.mark.slow
def test_every_reference_format_exports_a_fine_tunable_module(tmp_path):
    network = writer.build_network(ARCHITECTURE, 1)
    released = tmp_path / "finetuned_10pct" / "r50_1x_sk1"
    sources = {
        "tf2_checkpoint": writer.write_tf2_checkpoint(network, str(released / "tf2")),
        "saved_model": writer.write_tf2_saved_model(network, str(released / "saved_model")),
        "tf1_checkpoint": writer.write_tf1_checkpoint(network, str(released / "tf1"), memory=True),
        "chosen_selector": writer.write_tf1_checkpoint(network, str(tmp_path / "elsewhere")),
    }
    jobs = {
        name: (
            export_command(f"--checkpoint={path}", f"--export_dir={tmp_path / 'out' / name}"),
            tmp_path / f"{name}.log",
        )
        for name, path in sources.items()
    }
    jobs["chosen_selector"][0].append("--ft_proj_selector=1")
    jobs["unsettled"] = (
        export_command(
            f"--checkpoint={sources['chosen_selector']}", f"--export_dir={tmp_path / 'unused'}"
        ),
        tmp_path / "unsettled.log",
    )
    finished = run_all(jobs)
    unsettled = finished.pop("unsettled")
    assert unsettled.returncode != 0
    assert "near-chance accuracy" in unsettled.output
    assert "--ft_proj_selector" in unsettled.output
    expected = writer.endpoints(network, IMAGES)
    atol = writer.endpoint_tolerances(network, IMAGES)  # bound: 10x the round-off measured here
    for name, result in finished.items():
        assert_succeeded(result)
        path = str(tmp_path / "out" / name)
        info = read_module_info(path)
        assert info.parts == ("encoder", "projection_head", "supervised_head")
        assert info.config.ft_proj_selector == 1 and info.config.reference_resnet_d
        assert "logits_sup" in info.signatures and "proj_head_1" in info.signatures
        module = hub.load(path)
        for endpoint in ("initial_conv", "block_group4", "proj_head_output", "logits_sup"):
            served = module.signatures[endpoint](images=tf.constant(IMAGES))[endpoint]
            np.testing.assert_allclose(served, expected[endpoint], rtol=0, atol=atol[endpoint])
        loss, change = one_training_step(path)
        assert np.isfinite(loss) and change > 0, (name, loss, change)


# ------------------------------------------- refusals and fall-back with tf-simclr checkpoints

CONFIG = ModelConfig(resnet_depth=18, width_multiplier=0.125, cifar_stem=True, num_proj_layers=2)
NOTES = "my notes, not a module\n"


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """A model_dir with checkpoints 1 and 2, a copy whose ckpt-2 is truncated, a module exported
    from step 1, and the finished export runs of every case, by name."""
    root = tmp_path_factory.mktemp("export")
    model = SimCLRModel(CONFIG).build_for_size(16)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(root / "run" / "ckpt"), max_to_keep=5
    )
    manager.save(checkpoint_number=1)
    old_module = save_hub_module(model, str(root / "old_module"), step=1)
    manager.save(checkpoint_number=2)
    (root / "run" / "config.json").write_text(json.dumps({"model": dataclasses.asdict(CONFIG)}))
    shutil.copytree(root / "run", root / "truncated")
    truncate_data_file(root / "truncated" / "ckpt" / "ckpt-2")
    for name in ("notes", "notes_overwrite"):
        (root / name).mkdir()
        (root / name / "notes.txt").write_text(NOTES)
    for name in ("module", "module_overwrite"):
        shutil.copytree(old_module, root / name)

    run = f"--checkpoint={root / 'run'}"
    cases = {
        "notes": (run, f"--export_dir={root / 'notes'}"),
        "notes_overwrite": (run, f"--export_dir={root / 'notes_overwrite'}", "--overwrite"),
        "module": (run, f"--export_dir={root / 'module'}"),
        "module_overwrite": (run, f"--export_dir={root / 'module_overwrite'}", "--overwrite"),
        "hub_module_as_checkpoint": (
            f"--checkpoint={old_module}",
            f"--export_dir={root / 'from_module'}",
        ),
        "truncated_model_dir": (f"--checkpoint={root / 'truncated'}",),
        "truncated_prefix": (
            f"--checkpoint={root / 'truncated' / 'ckpt' / 'ckpt-2'}",
            f"--export_dir={root / 'from_truncated'}",
        ),
    }
    jobs = {name: (export_command(*flags), root / f"{name}.log") for name, flags in cases.items()}
    return root, run_all(jobs)


def assert_refused(finished, *phrases: str) -> None:
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output
    assert "Restored" not in finished.output, "refused only after restoring the checkpoint"
    for phrase in phrases:
        assert phrase in finished.output, finished.tail()


@pytest.mark.slow
def test_a_folder_with_other_files_is_refused_even_with_overwrite(exports):
    root, finished = exports
    for name in ("notes", "notes_overwrite"):
        assert_refused(finished[name], str(root / name), "notes.txt", "--overwrite")
        assert "overwrite=True" not in finished[name].output
        assert sorted(path.name for path in (root / name).iterdir()) == ["notes.txt"]
        assert (root / name / "notes.txt").read_text() == NOTES


@pytest.mark.slow
def test_a_previous_module_is_replaced_only_with_overwrite(exports):
    root, finished = exports
    assert_refused(finished["module"], str(root / "module"), "pass --overwrite")
    assert read_module_info(str(root / "module")).step == 1
    replaced = finished["module_overwrite"]
    assert replaced.returncode == 0, replaced.tail()
    assert read_module_info(str(root / "module_overwrite")).step == 2


@pytest.mark.slow
def test_a_hub_module_passed_as_checkpoint_is_refused_clearly(exports):
    root, finished = exports
    result = finished["hub_module_as_checkpoint"]
    assert_refused(result, str(root / "old_module"), "already a TF-Hub module", "ckpt/ckpt-<step>")
    assert "neither a model_dir" not in result.output
    assert not (root / "from_module").exists()


@pytest.mark.slow
def test_a_truncated_newest_checkpoint_gives_way_to_the_newest_readable_one(exports):
    root, finished = exports
    fallback = finished["truncated_model_dir"]
    assert fallback.returncode == 0, fallback.tail()
    truncated = root / "truncated" / "ckpt" / "ckpt-2"
    assert f"skipping checkpoint {truncated}: it cannot be read" in fallback.output
    assert "Read less bytes than requested" in fallback.output
    assert read_module_info(str(root / "truncated" / "hub" / "1")).step == 1
    assert not (root / "truncated" / "hub" / "2").exists()


@pytest.mark.slow
def test_a_truncated_checkpoint_prefix_is_refused_by_name(exports):
    root, finished = exports
    assert_refused(
        finished["truncated_prefix"],
        f"the checkpoint {root / 'truncated' / 'ckpt' / 'ckpt-2'} cannot be read",
        "Read less bytes than requested",
    )
    assert not (root / "from_truncated").exists()
