"""Runs remember what they are (issue 16), through the ``tf-simclr`` binary: ``--mode=eval``
takes the architecture and head selection from the model_dir's ``config.json``, refuses a flag
that contradicts it with status 2 naming both values, never rewrites ``config.json`` or
``flags.json``, and adds its result to ``result.json`` beside the train section. A resumed
training run takes the saved architecture too. Starting from anything without retyping it:
``--checkpoint`` takes the encoder and projection head from a hub module or a run, refusing an
explicit shape flag that contradicts it before writing anything. Class names travel with the
run: logged at start with the images per split, written to ``classes.txt`` and into the
exported module.

Every run evaluates or resumes a copy of the shared tiny pretraining of ``binary_runs``
(ResNet-18 at width 1/8 with the CIFAR stem on 16x16 synthetic images).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from binary_runs import (
    EVAL_FLAGS,
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    SMALL_DATA,
    binary_command,
    read_json,
    reference_run,
    run_all,
    shared_runs,
)

from tf_simclr.data import load_source
from tf_simclr.hub import read_module_info

ARCHITECTURE_FLAGS = ("--cifar_stem", "--resnet_depth=18", "--width_multiplier=0.125")
# The reference pretraining, two steps longer, without its architecture flags.
RESUME_FLAGS = (
    *(flag for flag in REFERENCE_FLAGS if flag not in ARCHITECTURE_FLAGS),
    f"--train_steps={REFERENCE_STEPS + 2}",
)


def digests(model_dir: Path, *names: str) -> dict[str, str]:
    """sha256 of the named files of ``model_dir``."""
    return {name: hashlib.sha256((model_dir / name).read_bytes()).hexdigest() for name in names}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """Copies of the reference run, each evaluated (or resumed) by one command, all at once."""
    reference = reference_run(tmp_path_factory)
    root = tmp_path_factory.mktemp("run_memory")
    cases = {
        "no_architecture_flags": EVAL_FLAGS,
        "conflicting_flags": (*EVAL_FLAGS, "--resnet_depth=50", "--ft_proj_selector=2"),
        "agreeing_flags": (*EVAL_FLAGS, "--resnet_depth=18", "--ft_proj_selector=-4"),
        "resumed": RESUME_FLAGS,
    }
    before = {}
    for name in cases:
        shutil.copytree(reference, root / name)
        before[name] = digests(root / name, "config.json", "flags.json", "result.json")
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *flags), root / f"{name}.log")
        for name, flags in cases.items()
    }
    return root, before, run_all(jobs)


@pytest.mark.long
@pytest.mark.slow
def test_eval_without_architecture_flags_takes_the_saved_config(evaluations):
    root, before, finished = evaluations
    run = finished["no_architecture_flags"]
    assert run.returncode == 0, run.tail()
    model_dir = root / "no_architecture_flags"
    after = digests(model_dir, "config.json", "flags.json")
    assert after == {name: before["no_architecture_flags"][name] for name in after}
    result = read_json(model_dir / "result.json")
    assert result["train"]["global_step"] == REFERENCE_STEPS, result
    assert result["eval"]["global_step"] == REFERENCE_STEPS, result
    assert 0.0 <= result["eval"]["label_top_1_accuracy"] <= 1.0, result
    assert not list(model_dir.glob(".*.tmp")), "a temporary JSON file was left behind"
    # An evaluation reads, and logs, both splits.
    assert "train: 256 images, test: 64 images; 4 classes (" in run.output, run.tail()


@pytest.mark.long
@pytest.mark.slow
def test_eval_with_a_contradicting_flag_is_refused_naming_both_values(evaluations):
    root, before, finished = evaluations
    run = finished["conflicting_flags"]
    assert run.returncode == 2, run.tail()
    assert "Traceback" not in run.output, run.tail()
    assert "--resnet_depth=50 vs 18" in run.output, run.tail()
    assert "--ft_proj_selector=2 vs 0" in run.output, run.tail()
    model_dir = root / "conflicting_flags"
    assert digests(model_dir, *before["conflicting_flags"]) == before["conflicting_flags"]
    assert not (model_dir / "eval").exists(), "a refused evaluation wrote events"


@pytest.mark.long
@pytest.mark.slow
def test_eval_with_flags_that_agree_with_the_saved_config_runs(evaluations):
    # -4 selects the same head output as the saved 0 (the encoder's, of a 3-layer head).
    root, _, finished = evaluations
    run = finished["agreeing_flags"]
    assert run.returncode == 0, run.tail()
    result = read_json(root / "agreeing_flags" / "result.json")
    assert result["eval"]["global_step"] == REFERENCE_STEPS, result


@pytest.mark.long
@pytest.mark.slow
def test_a_resumed_run_takes_the_saved_architecture(evaluations):
    root, _, finished = evaluations
    run = finished["resumed"]
    assert run.returncode == 0, run.tail()
    model_dir = root / "resumed"
    assert read_json(model_dir / "result.json")["train"]["global_step"] == REFERENCE_STEPS + 2
    saved = read_json(model_dir / "config.json")["model"]
    assert (saved["resnet_depth"], saved["width_multiplier"], saved["cifar_stem"]) == (
        18,
        0.125,
        True,
    )


# Fine-tuning as a user would type it with a source to start from: no architecture flag, but
# the run's own choices (the head input, the image size), which are free.
FINETUNE_FLAGS = (
    "--train_mode=finetune",
    f"--dataset={SMALL_DATA}",
    "--image_size=24",
    "--nouse_blur",
    "--ft_proj_selector=1",
    "--train_batch_size=32",
    "--train_steps=2",
    "--noexport_hub",
)


@pytest.fixture(scope="module")
def started_from_sources(tmp_path_factory):
    """Fine-tunes from the hub module and from the model_dir of a short pretraining, one with a
    contradicting shape flag and a distillation from a teacher of other classes, all at once."""
    source = shared_runs(
        tmp_path_factory,
        {"hub_source": (*REFERENCE_FLAGS, "--train_steps=2", "--export_hub")},
    )["hub_source"]
    root = tmp_path_factory.mktemp("from_sources")
    module = source / "hub" / "2"
    cases = {
        "from_hub": (*FINETUNE_FLAGS, f"--checkpoint={module}", "--export_hub"),
        "from_run": (*FINETUNE_FLAGS, f"--checkpoint={source}"),
        "hub_conflict": (*FINETUNE_FLAGS, f"--checkpoint={module}", "--resnet_depth=50"),
        "teacher_classes": (
            "--train_mode=distill",
            f"--dataset={SMALL_DATA.replace('classes=4', 'classes=3')}",
            "--image_size=16",
            f"--teacher={module}",
        ),
    }
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *flags), root / f"{name}.log")
        for name, flags in cases.items()
    }
    return root, run_all(jobs)


@pytest.mark.long
@pytest.mark.slow
@pytest.mark.parametrize("name", ["from_hub", "from_run"])
def test_finetuning_takes_the_architecture_from_its_checkpoint(started_from_sources, name):
    root, finished = started_from_sources
    assert finished[name].returncode == 0, finished[name].tail()
    model = read_json(root / name / "config.json")["model"]
    shape = (model["resnet_depth"], model["width_multiplier"], model["cifar_stem"])
    assert shape == (18, 0.125, True), model
    assert (model["ft_proj_selector"], model["num_classes"]) == (1, 4), model
    assert read_json(root / name / "result.json")["train"]["global_step"] == 2


@pytest.mark.long
@pytest.mark.slow
def test_a_shape_flag_that_contradicts_the_checkpoint_is_refused_before_writing(
    started_from_sources,
):
    root, finished = started_from_sources
    run = finished["hub_conflict"]
    assert run.returncode == 2, run.tail()
    assert "Traceback" not in run.output, run.tail()
    assert "resnet_depth: 50 vs 18" in run.output, run.tail()
    assert not (root / "hub_conflict").exists(), "files were written for a refused command"


@pytest.mark.long
@pytest.mark.slow
def test_a_teacher_of_other_classes_is_refused_before_writing(started_from_sources):
    root, finished = started_from_sources
    run = finished["teacher_classes"]
    assert run.returncode == 2, run.tail()
    assert "Traceback" not in run.output, run.tail()
    assert "predicts 4 classes but the dataset has 3" in run.output, run.tail()
    assert not (root / "teacher_classes").exists(), "files were written for a refused command"


@pytest.mark.long
@pytest.mark.slow
def test_class_names_are_logged_and_written_to_classes_txt(started_from_sources):
    root, finished = started_from_sources
    names = load_source(SMALL_DATA, split="train")[1].class_names
    assert len(names) == 4 and len(set(names)) == 4, names
    lines = (root / "from_hub" / "classes.txt").read_text(encoding="utf-8").splitlines()
    assert lines == list(names)
    # The fine-tuned module carries them, in its config JSON and as an asset.
    module = root / "from_hub" / "hub" / "2"
    assert read_module_info(str(module)).class_names == names
    assert (module / "assets" / "classes.txt").read_text(encoding="utf-8").splitlines() == lines
    # A training run without evaluation reads only the training split.
    names_listed = ", ".join(names)
    data_line = f"data {SMALL_DATA}: train: 256 images; 4 classes ({names_listed})"
    assert data_line in finished["from_hub"].output, finished["from_hub"].tail()
