"""SimCLRv2's three phases end to end through the binary, as a user runs them: pretraining
(train_then_eval), fine-tuning from the exported TF-Hub module on 25% of the labels, distillation
from the fine-tuned model_dir, then ``--mode=eval`` of the student. Checks the model_dir layout,
the TensorBoard summaries (read back with TensorBoard's event reader) and that the contrastive
loss falls. Fine-tuning and distillation also start from checkpoints of the reference
implementation (written by ``tests/reference_writer.py``)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference_writer
from absl import flags
from binary_runs import (
    SMALL_DATA,
    SMALL_MODEL,
    Events,
    assert_succeeded,
    binary_command,
    checkpoint_steps,
    model_weights,
    read_events,
    read_json,
    run_all,
    run_binary,
)

from tf_simclr import run

PRETRAIN_STEPS, FINETUNE_STEPS, DISTILL_STEPS = 24, 8, 8
TEST_EXAMPLES, LABELED = 64, 64  # synthetic test_count; 25% of 256 training images
EVAL_BATCH = 48  # 64 = 48 + a remainder batch of 16, which must be counted


def pretrain_flags() -> tuple[str, ...]:
    return (
        "--train_mode=pretrain",
        "--mode=train_then_eval",
        *SMALL_MODEL,
        "--train_batch_size=32",
        f"--eval_batch_size={EVAL_BATCH}",
        f"--train_steps={PRETRAIN_STEPS}",
        "--steps_per_loop=4",
        "--checkpoint_steps=12",
        "--learning_rate=0.3",
        "--warmup_epochs=0.25",
        "--knn_k=20",
        "--deterministic",
        "--seed=1",
    )


def finetune_flags(hub_module) -> tuple[str, ...]:
    return (
        "--train_mode=finetune",
        "--mode=train_then_eval",
        *SMALL_MODEL,
        f"--checkpoint={hub_module}",
        "--label_fraction=0.25",
        "--ft_proj_selector=1",
        "--train_batch_size=16",
        f"--eval_batch_size={EVAL_BATCH}",
        f"--train_steps={FINETUNE_STEPS}",
        "--steps_per_loop=4",
        "--checkpoint_steps=8",
        "--optimizer=momentum",
        "--learning_rate=0.1",
        "--warmup_epochs=0",
        "--seed=1",
    )


def distill_flags(teacher, mode: str) -> tuple[str, ...]:
    return (
        "--train_mode=distill",
        f"--mode={mode}",
        *SMALL_MODEL,
        f"--teacher={teacher}",
        "--label_fraction=0.25",
        "--distill_alpha=0.5",
        "--train_batch_size=32",
        f"--eval_batch_size={EVAL_BATCH}",
        f"--train_steps={DISTILL_STEPS}",
        "--steps_per_loop=4",
        "--checkpoint_steps=4",
        "--learning_rate=0.3",
        "--warmup_epochs=0",
        "--seed=1",
    )


@pytest.fixture(scope="module")
def phases(tmp_path_factory):
    root = tmp_path_factory.mktemp("end_to_end")
    dirs = {name: root / name for name in ("pretrain", "finetune", "distill")}
    pretrain = run_binary(dirs["pretrain"], *pretrain_flags())
    assert_succeeded(pretrain)
    hub_module = dirs["pretrain"] / "hub" / str(PRETRAIN_STEPS)
    finetune = run_binary(dirs["finetune"], *finetune_flags(hub_module))
    assert_succeeded(finetune)
    distill = run_binary(dirs["distill"], *distill_flags(dirs["finetune"], "train"))
    assert_succeeded(distill)
    evaluation = run_binary(dirs["distill"], *distill_flags(dirs["finetune"], "eval"))
    assert_succeeded(evaluation)
    logs = {"pretrain": pretrain, "finetune": finetune, "distill": distill, "eval": evaluation}
    return dirs, logs


COMMON_FILES = {"ckpt", "train", "hub", "flags.json", "config.json", "classes.txt", "result.json"}


@pytest.mark.slow
def test_model_dirs_hold_the_documented_layout(phases):
    dirs, _ = phases
    expected = {
        "pretrain": (COMMON_FILES | {"eval"}, [12, 24], PRETRAIN_STEPS),
        "finetune": (COMMON_FILES | {"eval", "labels_subset.txt"}, [8], FINETUNE_STEPS),
        "distill": (COMMON_FILES | {"eval", "labels_subset.txt"}, [4, 8], DISTILL_STEPS),
    }
    for name, (files, steps, final) in expected.items():
        model_dir = dirs[name]
        assert {path.name for path in model_dir.iterdir()} == files, name
        assert checkpoint_steps(model_dir) == steps, name
        assert [path.name for path in (model_dir / "hub").iterdir()] == [str(final)], name
        assert (model_dir / "hub" / str(final) / "saved_model.pb").is_file()
        assert list((model_dir / "train").glob("events.out.tfevents.*")), name
        assert list((model_dir / "eval").glob("events.out.tfevents.*")), name


@pytest.mark.slow
def test_json_files_describe_each_phase(phases):
    dirs, _ = phases
    all_flags = set(_fresh_flag_names())
    for name in ("pretrain", "finetune", "distill"):
        saved_flags = read_json(dirs[name] / "flags.json")
        assert all_flags <= saved_flags.keys(), all_flags - saved_flags.keys()
        assert saved_flags["train_mode"] == name
        assert saved_flags["model_dir"] == str(dirs[name])
        config = read_json(dirs[name] / "config.json")
        assert config["train"]["train_mode"] == name
        assert config["model"]["resnet_depth"] == 18 and config["model"]["num_classes"] == 4
        assert config["model"]["supervised_head_stop_gradient"] is (name == "pretrain")
    assert read_json(dirs["finetune"] / "config.json")["model"]["ft_proj_selector"] == 1

    pretrain = read_json(dirs["pretrain"] / "result.json")
    assert pretrain["train_mode"] == "pretrain"
    assert pretrain["eval"]["global_step"] == PRETRAIN_STEPS
    assert pretrain["eval"]["num_examples"] == TEST_EXAMPLES
    for key in ("label_top_1_accuracy", "label_top_5_accuracy", "knn_top_1_accuracy"):
        assert 0.0 <= pretrain["eval"][key] <= 1.0, key
    assert pretrain["eval"]["label_top_5_accuracy"] == 1.0  # 4 classes: top-5 always right
    finetune = read_json(dirs["finetune"] / "result.json")
    assert finetune["eval"]["num_examples"] == TEST_EXAMPLES
    assert math.isfinite(finetune["train"]["supervised_loss"])
    # --mode=eval replaced the eval section of the student's result.json with the evaluation of
    # its newest checkpoint and kept the train section.
    student = read_json(dirs["distill"] / "result.json")
    assert set(student) == {"train_mode", "train", "eval"}
    assert math.isfinite(student["train"]["distill_loss"])
    assert student["eval"]["global_step"] == DISTILL_STEPS
    assert student["eval"]["num_examples"] == TEST_EXAMPLES


def _fresh_flag_names() -> list[str]:
    values = flags.FlagValues()
    run.define_flags(values)
    return list(values)


@pytest.mark.slow
def test_fine_tuning_and_distillation_use_the_same_labeled_subset(phases):
    dirs, logs = phases
    subsets = [
        [
            line
            for line in (dirs[name] / "labels_subset.txt").read_text().splitlines()
            if line and not line.startswith("#")
        ]
        for name in ("finetune", "distill")
    ]
    assert subsets[0] == subsets[1]
    assert len(subsets[0]) == LABELED == len(set(subsets[0]))
    assert f"initialised from {dirs['pretrain'] / 'hub' / str(PRETRAIN_STEPS)}" in (
        logs["finetune"].output
    )


def _assert_scalar_tags(events: Events, tags: set[str], where: str) -> None:
    missing = tags - events.scalars.keys()
    assert not missing, f"{where} lacks {sorted(missing)}; has {sorted(events.scalars)}"
    for tag in tags:
        assert all(math.isfinite(value) for value in events.values(tag)), (where, tag)


@pytest.mark.slow
def test_pretraining_summaries(phases):
    dirs, _ = phases
    train = read_events(dirs["pretrain"] / "train")
    losses = {
        "train/contrast_loss",
        "train/contrast_acc",
        "train/contrast_entropy",
        "train/supervised_loss",
        "train/supervised_acc",
        "train/weight_decay",
        "train/total_loss",
    }
    _assert_scalar_tags(
        train, losses | {"learning_rate", "train/images_per_second"}, "pretrain/train"
    )
    for tag in losses | {"learning_rate", "train/images_per_second"}:
        assert train.steps(tag) == [4, 8, 12, 16, 20, 24], tag
    assert all(value > 0 for value in train.values("train/images_per_second"))
    rates = train.values("learning_rate")
    # Exact in effect: cos(float32(pi)) rounds to -1 in float32, so the last rate is 0.
    assert max(rates) > 0 and rates[-1] == pytest.approx(0.0, abs=1e-9)  # cosine decay to 0
    # The on-line kNN monitor runs at every checkpoint.
    _assert_scalar_tags(train, {"eval/knn_top_1_accuracy"}, "pretrain/train")
    assert train.steps("eval/knn_top_1_accuracy") == [0, 12, 24]
    # The view pairs: 8 images, each the two 16x16 views side by side.
    assert train.images["train/augmented_view_pairs"] == [(0, 32, 16, 8)]

    evaluation = read_events(dirs["pretrain"] / "eval")
    eval_tags = {
        "eval/label_top_1_accuracy",
        "eval/label_top_5_accuracy",
        "eval/knn_top_1_accuracy",
    }
    _assert_scalar_tags(evaluation, eval_tags, "pretrain/eval")
    for tag in eval_tags:
        assert evaluation.steps(tag) == [PRETRAIN_STEPS], tag


@pytest.mark.slow
def test_contrastive_loss_falls(phases):
    dirs, _ = phases
    losses = read_events(dirs["pretrain"] / "train").values("train/contrast_loss")
    # Each value is the mean over 4 steps; at initialisation the projections are nearly
    # collinear and the loss is far above log(2 * 32 - 1) * 2 = 8.3.
    assert losses[-1] < losses[0] - 0.5, losses
    assert min(losses[1:]) < losses[0], losses


@pytest.mark.slow
def test_fine_tuning_and_distillation_summaries(phases):
    dirs, _ = phases
    finetune = read_events(dirs["finetune"] / "train")
    common = {"train/weight_decay", "train/total_loss", "learning_rate", "train/images_per_second"}
    _assert_scalar_tags(
        finetune, common | {"train/supervised_loss", "train/supervised_acc"}, "finetune/train"
    )
    assert "train/contrast_loss" not in finetune.scalars
    assert finetune.steps("train/supervised_loss") == [4, 8]
    distill = read_events(dirs["distill"] / "train")
    _assert_scalar_tags(
        distill,
        common | {"train/distill_loss", "train/teacher_agreement", "train/supervised_loss"},
        "distill/train",
    )
    assert distill.steps("train/distill_loss") == [4, 8]
    for name in ("finetune", "distill"):
        evaluation = read_events(dirs[name] / "eval")
        tags = {"eval/label_top_1_accuracy", "eval/label_top_5_accuracy"}
        _assert_scalar_tags(evaluation, tags, f"{name}/eval")
        assert "eval/knn_top_1_accuracy" not in evaluation.scalars
        assert evaluation.steps("eval/label_top_1_accuracy")[-1] == (
            FINETUNE_STEPS if name == "finetune" else DISTILL_STEPS
        )


# A reference 10% fine-tune (a ResNet-18 with the ResNet-D stem and shortcuts) for 4 classes.
REFERENCE = reference_writer.Architecture(18, 1 / 16, 0.0625, num_classes=4, ft_proj_selector=1)
REFERENCE_DATA = (f"--dataset={SMALL_DATA}", "--image_size=16", "--nouse_blur")


@pytest.mark.slow
def test_training_starts_from_reference_checkpoints(tmp_path):
    """``--checkpoint`` and ``--teacher`` take the reference implementation's checkpoints as
    they are: fine-tuning then evaluation from a TF2 SavedModel (no architecture flags: they come
    from the checkpoint), distillation from a TF1 fine-tune in its released folder (whose name
    says its supervised head reads proj_head_1)."""
    network = reference_writer.build_network(REFERENCE, 1)
    pretrained = tmp_path / "pretrained" / "r18_sk1"
    reference_writer.write_tf2_saved_model(network, str(pretrained / "saved_model"))
    teacher = tmp_path / "finetuned_10pct" / "r18_sk1"
    reference_writer.write_tf1_checkpoint(network, str(teacher))
    common = (*REFERENCE_DATA, "--train_batch_size=16", "--eval_batch_size=64", "--train_steps=2")
    common += ("--steps_per_loop=1", "--checkpoint_steps=2", "--warmup_epochs=0", "--seed=1")
    runs = {
        "finetune": (
            "--train_mode=finetune",
            "--mode=train_then_eval",
            f"--checkpoint={pretrained}",
            "--ft_proj_selector=1",
            "--optimizer=momentum",
            "--learning_rate=1e-9",
        ),
        "distill": (
            "--train_mode=distill",
            "--mode=train",
            f"--teacher={teacher}",
            f"--checkpoint={pretrained}",
            "--learning_rate=0.1",
        ),
    }
    finished = run_all(
        {
            name: (
                binary_command(f"--model_dir={tmp_path / name}", *flags, *common),
                tmp_path / f"{name}.log",
            )
            for name, flags in runs.items()
        }
    )
    for name in runs:
        assert_succeeded(finished[name])
        model = read_json(tmp_path / name / "config.json")["model"]
        assert (model["resnet_depth"], model["width_multiplier"]) == (18, 1 / 16)
        assert model["sk_ratio"] == 0.0625 and model["reference_resnet_d"]
        assert model["initial_conv_before_bn"] and model["num_classes"] == 4
    result = read_json(tmp_path / "finetune" / "result.json")
    assert result["eval"]["num_examples"] == 64
    assert 0.0 <= result["eval"]["label_top_1_accuracy"] <= 1.0
    # The fine-tuned encoder started from the reference's weights (the learning rate is ~0).
    trained = model_weights(tmp_path / "finetune" / "ckpt" / "ckpt-2")
    kernel = trained["model/encoder/stem/convs/0/conv/kernel/.ATTRIBUTES/VARIABLE_VALUE"]
    # Bound: two steps at --learning_rate=1e-9 move a weight by ~1e-9 (gradients ~1) plus its
    # float32 rounding (eps/2 of |w| < 1); another layer's weights would differ by ~0.1.
    np.testing.assert_allclose(kernel, network.layers[0].weights["kernel"], atol=1e-6)
    student = read_json(tmp_path / "distill" / "result.json")
    assert math.isfinite(student["train"]["distill_loss"])
    assert "initialised from" in finished["distill"].output
