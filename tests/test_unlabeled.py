"""Unlabeled data (issue 16): a ``folder:`` source whose images sit directly in the folder (or
in its ``train/``) is unlabeled. Pretraining on it works with default flags: the on-line linear
probe, the kNN monitor and the evaluation after training turn off with one warning, or the
monitor and evaluation read a labeled ``--eval_dataset``. Fine-tuning, distilling with labels
and evaluating without any are refused with status 2 before anything is written; distillation
takes its labels from ``--label_dataset``, mixed evenly into the unlabeled images.

The phases are checked in-process (constructing a phase reads the data and settles what runs,
without building a model); a few tiny runs go through the binary (ResNet-18 at width 1/8 with
the CIFAR stem on 16x16 images, two steps of batch 8).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    SMALL_MODEL,
    binary_command,
    checkpoint_steps,
    read_events,
    read_json,
    run_all,
)
from PIL import Image

from tf_simclr.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)
from tf_simclr.data import load_source, mark_unlabeled, mix_evenly
from tf_simclr.training.phases import DistillPhase, FinetunePhase, PretrainPhase

UNLABELED, LABELED_TRAIN, LABELED_TEST = 24, 12, 6  # images, and per class of two
# Only the size of the model and images and the length of the run: every other flag (the
# linear probe, the kNN monitor, the hub export) keeps its default.
SIZE_FLAGS = (*SMALL_MODEL[1:], "--train_batch_size=8", "--eval_batch_size=8", "--train_steps=2")
WARNING = "holds unlabeled images, so"


def write_image(path: Path, seed: int) -> None:
    """A random 16x16 RGB image, saved in the format its suffix names (PNG or JPEG)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def write_unlabeled(folder: Path, count: int = UNLABELED) -> Path:
    """``count`` images directly in ``folder``, PNG and JPEG alternately."""
    for index in range(count):
        write_image(folder / f"{index}.{'png' if index % 2 else 'jpg'}", seed=index)
    return folder


def write_labeled(folder: Path) -> Path:
    """``train/`` and ``test/``, each with the class folders ``cat`` and ``dog``."""
    for split, count in (("train", LABELED_TRAIN), ("test", LABELED_TEST)):
        for label, name in enumerate(("cat", "dog")):
            for index in range(count):
                write_image(folder / split / name / f"{index}.png", seed=1000 * label + index)
    return folder


def run_config(model_dir: Path, data: DataConfig, **train: object) -> RunConfig:
    """The tiny model of the binary runs on ``data``; ``train`` sets TrainConfig fields."""
    return RunConfig(
        model=ModelConfig(resnet_depth=18, width_multiplier=0.125, cifar_stem=True),
        train=TrainConfig(model_dir=str(model_dir), train_steps=2, **train),
        optim=OptimConfig(),
        loss=LossConfig(),
        augment=AugmentConfig(image_size=16),
        data=data,
    )


def warnings_of(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """An unlabeled folder (images directly in it) and a labeled one (train/ and test/)."""
    return write_unlabeled(tmp_path / "unlabeled"), write_labeled(tmp_path / "labeled")


# ------------------------------------------------------------------------------ in-process


def test_folder_detects_unlabeled_layouts_counts_images_and_skips_bad_ones(tmp_path, caplog):
    flat = write_unlabeled(tmp_path / "flat", count=5)
    (flat / "corrupt.png").write_bytes(b"not an image")
    jpeg = (flat / "0.jpg").read_bytes()
    (flat / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    with caplog.at_level(logging.WARNING):
        dataset, info = load_source(f"folder:{flat}")
    assert (info.num_examples, info.num_classes, info.skipped) == (5, 0, 2)
    assert "corrupt.png" in caplog.text and "truncated.jpg" in caplog.text
    examples = list(dataset.as_numpy_iterator())
    assert [label for _, label in examples] == [-1] * 5
    assert all(image.shape == (16, 16, 3) for image, _ in examples)

    split = tmp_path / "split"
    write_unlabeled(split / "train", count=4)
    write_unlabeled(split / "test", count=3)
    _, train = load_source(f"folder:{split}", split="train")
    _, test = load_source(f"folder:{split}", split="test")
    assert (train.num_examples, train.num_classes) == (4, 0)
    assert (test.num_examples, test.num_classes) == (3, 0)


def test_mix_evenly_spreads_the_labeled_examples_through_one_pass():
    labeled = tf.data.Dataset.from_tensor_slices((np.full((3, 2, 2, 3), 7, np.uint8), [0, 1, 2]))
    images = np.arange(9, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    unlabeled = tf.data.Dataset.from_tensor_slices((images, np.full(9, 5)))
    mixed = list(mix_evenly(labeled, 3, unlabeled, 9).as_numpy_iterator())
    assert len(mixed) == 12
    assert [index for index, (_, _, has_label) in enumerate(mixed) if has_label] == [3, 7, 11]
    assert [label for _, label, has_label in mixed if has_label] == [0, 1, 2]
    assert [label for _, label, has_label in mixed if not has_label] == [-1] * 9
    assert [image[0, 0, 0] for image, _, has_label in mixed if not has_label] == list(range(9))
    marked = list(mark_unlabeled(unlabeled).as_numpy_iterator())
    assert [(label, has_label) for _, label, has_label in marked] == [(-1, False)] * 9


def test_pretraining_unlabeled_images_turns_off_what_needs_labels_with_one_warning(
    folders, tmp_path, caplog, one_device_strategy
):
    unlabeled, _ = folders
    config = run_config(
        tmp_path / "run", DataConfig(dataset=f"folder:{unlabeled}"), mode="train_then_eval"
    )
    with caplog.at_level(logging.INFO):
        phase = PretrainPhase(config, one_device_strategy)
    train = phase.config.train
    assert (train.lineareval_while_pretraining, train.knn_monitor, train.mode) == (
        False,
        False,
        "train",
    )
    assert phase.model_config().num_classes == 0
    (warning,) = warnings_of(caplog)
    for part in ("on-line linear probe", "kNN monitor", "evaluation after training"):
        assert part in warning, warning
    assert "--eval_dataset" in warning
    assert phase.describe_data() == f"data folder:{unlabeled}: train: {UNLABELED} images; unlabeled"


def test_a_labeled_eval_dataset_keeps_the_knn_monitor_and_evaluation(
    folders, tmp_path, caplog, one_device_strategy
):
    unlabeled, labeled = folders
    data = DataConfig(dataset=f"folder:{unlabeled}", eval_dataset=f"folder:{labeled}")
    config = run_config(tmp_path / "run", data, mode="train_then_eval")
    with caplog.at_level(logging.WARNING):
        phase = PretrainPhase(config, one_device_strategy)
    train = phase.config.train
    assert (train.lineareval_while_pretraining, train.knn_monitor, train.mode) == (
        False,
        True,
        "train_then_eval",
    )
    (warning,) = warnings_of(caplog)
    assert "the on-line linear probe is off" in warning and "kNN" not in warning
    _, bank_size = phase.knn_bank()
    assert bank_size == 2 * LABELED_TRAIN
    eval_info = phase.eval_examples()[1]
    assert (eval_info.num_examples, eval_info.class_names) == (2 * LABELED_TEST, ("cat", "dog"))


def test_what_cannot_run_without_labels_is_refused_before_any_work(
    folders, tmp_path, one_device_strategy
):
    unlabeled, labeled = folders
    data = DataConfig(dataset=f"folder:{unlabeled}")
    with pytest.raises(ValueError, match="finetune learns labels"):
        FinetunePhase(run_config(tmp_path, data, train_mode="finetune"), one_device_strategy)
    with pytest.raises(ValueError, match="--mode=eval measures accuracy with labels"):
        PretrainPhase(run_config(tmp_path, data, mode="eval"), one_device_strategy)
    unlabeled_test = write_unlabeled(tmp_path / "unlabeled_test" / "test", count=2).parent
    evaluated_without_labels = DataConfig(
        dataset=f"folder:{labeled}", eval_dataset=f"folder:{unlabeled_test}"
    )
    with pytest.raises(ValueError, match="evaluation needs labels"):
        PretrainPhase(
            run_config(tmp_path, evaluated_without_labels, mode="train_then_eval"),
            one_device_strategy,
        )
    other_classes = DataConfig(
        dataset=f"folder:{labeled}", eval_dataset="synthetic:size=16,count=32,classes=4"
    )
    with pytest.raises(ValueError, match=r"has 4 classes .* but the model predicts 2 classes"):
        PretrainPhase(
            run_config(tmp_path, other_classes, mode="train_then_eval"), one_device_strategy
        )
    missing = dataclasses.replace(data, eval_dataset=f"folder:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match=r"--eval_dataset=folder:.* cannot be read"):
        PretrainPhase(run_config(tmp_path, missing), one_device_strategy)
    with pytest.raises(ValueError, match="label_dataset is distillation's source of labels"):
        run_config(tmp_path, dataclasses.replace(data, label_dataset=f"folder:{labeled}"))


# ------------------------------------------------------------------ through the binary


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The binary runs, two batches run concurrently: pretraining on an unlabeled folder with
    default flags, pretraining monitored by a labeled --eval_dataset and a fine-tuned teacher;
    then distillation with --label_dataset, fine-tuning unlabeled images and a missing folder."""
    root = tmp_path_factory.mktemp("unlabeled")
    unlabeled = write_unlabeled(root / "data" / "unlabeled")
    nested = write_unlabeled(root / "data" / "nested" / "train")
    labeled = write_labeled(root / "data" / "labeled")
    first = {
        "pretrain": (*SIZE_FLAGS, f"--dataset=folder:{unlabeled}"),
        "monitored": (
            *SIZE_FLAGS,
            f"--dataset=folder:{nested.parent}",
            f"--eval_dataset=folder:{labeled}",
            "--mode=train_then_eval",
            "--knn_k=5",
            "--noexport_hub",
        ),
        "teacher": (
            *SIZE_FLAGS,
            "--train_mode=finetune",
            f"--dataset=folder:{labeled}",
            "--noexport_hub",
        ),
    }
    second = {
        "distill": (
            *SIZE_FLAGS,
            "--train_mode=distill",
            f"--teacher={root / 'teacher'}",
            f"--dataset=folder:{unlabeled}",
            f"--label_dataset=folder:{labeled}",
            "--distill_alpha=0.5",
            "--mode=train_then_eval",
            "--noexport_hub",
        ),
        "finetune_unlabeled": (
            *SIZE_FLAGS,
            "--train_mode=finetune",
            f"--dataset=folder:{unlabeled}",
        ),
        "missing": (*SIZE_FLAGS, f"--dataset=folder:{root / 'data' / 'missing'}"),
    }
    finished = {}
    for cases in (first, second):
        jobs = {
            name: (binary_command(f"--model_dir={root / name}", *flags), root / f"{name}.log")
            for name, flags in cases.items()
        }
        finished.update(run_all(jobs))
    return root, finished


def assert_ran(finished) -> None:
    assert finished.returncode == 0, finished.tail()


def assert_refused(finished, model_dir: Path, phrase: str) -> None:
    """Status 2 with ``phrase`` in the message, no traceback, nothing written."""
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output, finished.tail()
    assert phrase in finished.output, finished.tail()
    assert not model_dir.exists(), "files were written for a refused command"


@pytest.mark.slow
def test_pretraining_an_unlabeled_folder_with_default_flags(runs):
    root, finished = runs
    run = finished["pretrain"]
    assert_ran(run)
    assert run.output.count(WARNING) == 1, run.tail()
    assert "the on-line linear probe and the kNN monitor are off" in run.output
    model_dir = root / "pretrain"
    assert checkpoint_steps(model_dir) == [2]
    assert (model_dir / "hub" / "2" / "saved_model.pb").exists()
    config = read_json(model_dir / "config.json")
    assert config["train"]["lineareval_while_pretraining"] is False
    assert config["train"]["knn_monitor"] is False
    assert "contrast_loss" in read_json(model_dir / "result.json")["train"]
    assert not (model_dir / "classes.txt").exists()


@pytest.mark.slow
def test_a_labeled_eval_dataset_monitors_and_evaluates_unlabeled_pretraining(runs):
    root, finished = runs
    run = finished["monitored"]
    assert_ran(run)
    assert run.output.count(WARNING) == 1, run.tail()
    model_dir = root / "monitored"
    result = read_json(model_dir / "result.json")
    assert 0.0 <= result["eval"]["knn_top_1_accuracy"] <= 1.0
    assert "eval/knn_top_1_accuracy" in result["train"]
    assert "label_top_1_accuracy" not in result["eval"]  # no probe: no supervised head
    assert read_events(model_dir / "eval").steps("eval/knn_top_1_accuracy") == [2]


@pytest.mark.slow
def test_distillation_takes_its_labels_from_label_dataset(runs, one_device_strategy):
    root, finished = runs
    assert_ran(finished["teacher"])
    run = finished["distill"]
    assert_ran(run)
    model_dir = root / "distill"
    result = read_json(model_dir / "result.json")
    assert "supervised_loss" in result["train"]
    assert result["eval"]["num_examples"] == 2 * LABELED_TEST
    assert (model_dir / "classes.txt").read_text().splitlines() == ["cat", "dog"]
    labeled = root / "data" / "labeled"
    assert f"labels folder:{labeled}: train: {2 * LABELED_TRAIN} images" in run.output
    # The stream: every unlabeled image and every labeled one, labels only on the latter.
    config = read_json(model_dir / "config.json")
    data = DataConfig(**config["data"])
    phase = DistillPhase(
        run_config(root / "unused", data, train_mode="distill", teacher=str(root / "teacher")),
        one_device_strategy,
    )
    stream, count = phase.training_examples()
    marks = [has_label for _, _, has_label in stream.as_numpy_iterator()]
    total = UNLABELED + 2 * LABELED_TRAIN
    assert (count, len(marks), sum(marks)) == (total, total, 2 * LABELED_TRAIN)
    unlabeled_only = dataclasses.replace(data, label_dataset="")
    with pytest.raises(ValueError, match=r"--distill_alpha=0\.5 weighs labels into the loss"):
        DistillPhase(
            dataclasses.replace(
                run_config(
                    root / "unused",
                    unlabeled_only,
                    train_mode="distill",
                    teacher=str(root / "teacher"),
                ),
                loss=LossConfig(distill_alpha=0.5),
            ),
            one_device_strategy,
        )


@pytest.mark.slow
def test_fine_tuning_unlabeled_images_and_a_missing_folder_are_refused(runs):
    root, finished = runs
    assert_refused(
        finished["finetune_unlabeled"],
        root / "finetune_unlabeled",
        "--train_mode=finetune learns labels",
    )
    assert_refused(finished["missing"], root / "missing", str(root / "data" / "missing"))
