"""The configuration dataclasses (tf_simclr.config) on their own, without flags: each one's
validation names the field to change, ``ModelConfig.from_dict`` reads back what a run or a hub
module stored and refuses fields it does not know, ``RunConfig.to_json`` round-trips, and
DataConfig picks the sources of labels and evaluation. The flags generated from them:
tests/test_run.py.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest

from tf_simclr.config import (
    AugmentConfig,
    DataConfig,
    LossConfig,
    MemoryConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    TrainConfig,
)

MODEL_DIR = "/tmp/tf_simclr_config_test"  # TrainConfig requires one; nothing is written there

# -------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"resnet_depth": 42},
        {"width_multiplier": 0},
        {"sk_ratio": -0.1},
        {"sk_ratio": 1.5},
        {"se_ratio": 2.0},
        {"proj_head_mode": "mlp"},
        {"batch_norm_decay": 1.0},
        {"dtype_policy": "float64"},
    ],
)
def test_invalid_configs_raise_clear_errors(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        ModelConfig(**kwargs)


@pytest.mark.parametrize(
    ("mode", "selector"), [("nonlinear", 4), ("nonlinear", -5), ("linear", 2), ("none", 1)]
)
def test_ft_proj_selector_out_of_range_is_rejected(mode, selector):
    with pytest.raises(ValueError, match="ft_proj_selector"):
        ModelConfig(proj_head_mode=mode, ft_proj_selector=selector)


def test_optim_config_defaults_and_validation() -> None:
    config = OptimConfig()
    assert (config.optimizer, config.learning_rate, config.momentum, config.eeta) == (
        "lars",
        0.3,
        0.9,
        0.001,
    )
    for bad, message in [
        ({"optimizer": "sgd"}, "optimizer"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate_scaling": "log"}, "learning_rate_scaling"),
        ({"momentum": 1.0}, "momentum"),
        ({"eeta": 0.0}, "eeta"),
        ({"weight_decay": -1.0}, "weight_decay"),
        ({"warmup_epochs": -1.0}, "warmup_epochs"),
    ]:
        with pytest.raises(ValueError, match=message):
            OptimConfig(**bad)


def test_loss_config_validates_its_fields() -> None:
    config = LossConfig()
    assert (config.temperature, config.hidden_norm, config.loss_scale) == (0.1, True, "reference")
    for bad, message in [
        ({"temperature": 0.0}, "temperature"),
        ({"loss_scale": "mean"}, "loss_scale"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"distill_temperature": -1.0}, "distill_temperature"),
        ({"distill_alpha": 2.0}, "distill_alpha"),
    ]:
        with pytest.raises(ValueError, match=message):
            LossConfig(**bad)


# (config class, keyword arguments with one bad value, the field the message names).
BAD_VALUES = [
    (ModelConfig, {"num_classes": -1}, "num_classes"),
    (ModelConfig, {"fine_tune_after_block": 5}, "fine_tune_after_block"),
    (ModelConfig, {"batch_norm_epsilon": 0.0}, "batch_norm_epsilon"),
    (ModelConfig, {"truncated_proj_head": True, "proj_out_dim": 128}, "truncated_proj_head"),
    (TrainConfig, {"model_dir": ""}, "model_dir"),
    (TrainConfig, {"model_dir": MODEL_DIR, "train_mode": "linear_eval"}, "train_mode"),
    (TrainConfig, {"model_dir": MODEL_DIR, "mode": "predict"}, "mode"),
    (TrainConfig, {"model_dir": MODEL_DIR, "train_batch_size": 0}, "train_batch_size"),
    (TrainConfig, {"model_dir": MODEL_DIR, "train_epochs": 0}, "train_epochs"),
    (TrainConfig, {"model_dir": MODEL_DIR, "steps_per_loop": 0}, "steps_per_loop"),
    (TrainConfig, {"model_dir": MODEL_DIR, "keep_checkpoint_max": 0}, "keep_checkpoint_max"),
    (TrainConfig, {"model_dir": MODEL_DIR, "knn_temperature": 0.0}, "knn_temperature"),
    (TrainConfig, {"model_dir": MODEL_DIR, "train_mode": "distill"}, "teacher"),
    (AugmentConfig, {"image_size": 4}, "image_size"),
    (AugmentConfig, {"color_jitter_mode": "simclrv3"}, "color_jitter_mode"),
    (AugmentConfig, {"crop_area_range": (0.5, 0.2)}, "crop_area_range"),
    (AugmentConfig, {"crop_aspect_range": (1.5, 2.0)}, "crop_aspect_range"),
    (AugmentConfig, {"grayscale_probability": 1.5}, "grayscale_probability"),
    (AugmentConfig, {"blur_sigma_range": (2.0, 0.1)}, "blur_sigma_range"),
    (AugmentConfig, {"eval_crop_proportion": 0.0}, "eval_crop_proportion"),
    (DataConfig, {"dataset": ""}, "dataset"),
    (DataConfig, {"eval_split": ""}, "eval_split"),
    (DataConfig, {"shuffle_buffer": -1}, "shuffle_buffer"),
    (DataConfig, {"label_fraction": 1.5}, "label_fraction"),
    (DataConfig, {"labels_per_class": -1}, "labels_per_class"),
    (DataConfig, {"label_fraction": 0.1, "labels_subset_file": "subset.txt"}, "labels_subset_file"),
    (MemoryConfig, {"memory_size": -1}, "memory_size"),
    (MemoryConfig, {"memory_momentum": 1.0}, "memory_momentum"),
    (MemoryConfig, {"memory_warmup_steps": -1}, "memory_warmup_steps"),
    (MemoryConfig, {"export_memory_network": True}, "memory_size"),
]


def case_id(kwargs: dict) -> str:
    """``name=value`` of the values a case sets (the model_dir TrainConfig needs left out)."""
    return ",".join(f"{k}={v}" for k, v in kwargs.items() if k != "model_dir") or "model_dir="


@pytest.mark.parametrize(
    ("config_class", "kwargs", "field"),
    BAD_VALUES,
    ids=[f"{case[0].__name__}-{case_id(case[1])}" for case in BAD_VALUES],
)
def test_a_bad_value_is_refused_naming_the_field(config_class, kwargs, field):
    with pytest.raises(ValueError) as refused:
        config_class(**kwargs)
    assert re.search(rf"(?<![a-z_]){field}(?![a-z_])", str(refused.value)), str(refused.value)


def test_the_defaults_are_valid_and_frozen():
    configs = [
        ModelConfig(),
        TrainConfig(model_dir=MODEL_DIR),
        OptimConfig(),
        LossConfig(),
        AugmentConfig(),
        DataConfig(),
        MemoryConfig(),
    ]
    for config in configs:
        first = dataclasses.fields(config)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, first, getattr(config, first))


def test_label_dataset_outside_distillation_is_refused():
    sections = dict(
        model=ModelConfig(),
        optim=OptimConfig(),
        loss=LossConfig(),
        augment=AugmentConfig(),
        data=DataConfig(dataset="folder:/photos", label_dataset="fashion_mnist"),
    )
    for train_mode in ("pretrain", "finetune"):
        train = TrainConfig(model_dir=MODEL_DIR, train_mode=train_mode)
        expected = (
            f"label_dataset is distillation's source of labels (got train_mode='{train_mode}')"
        )
        with pytest.raises(ValueError, match=re.escape(expected)):
            RunConfig(train=train, **sections)
    distill = TrainConfig(model_dir=MODEL_DIR, train_mode="distill", teacher="teacher_dir")
    assert RunConfig(train=distill, **sections).data.label_dataset == "fashion_mnist"


# ---------------------------------------------------------------------------- stored configs


def test_model_config_from_dict_reads_back_what_asdict_stored():
    config = ModelConfig(resnet_depth=18, width_multiplier=0.5, num_classes=10, sk_ratio=0.0625)
    stored = json.loads(json.dumps(dataclasses.asdict(config)))
    assert ModelConfig.from_dict(stored, "run/config.json") == config


def test_model_config_from_dict_refuses_fields_it_does_not_know():
    stored = {**dataclasses.asdict(ModelConfig()), "zeta": 1, "alpha_head": True}
    expected = (
        "module/assets/info.json has ModelConfig fields this tf-simclr does not know: "
        "['alpha_head', 'zeta']; it was written by another version of tf-simclr."
    )
    with pytest.raises(ValueError, match=re.escape(expected)):
        ModelConfig.from_dict(stored, "module/assets/info.json")


def test_model_config_from_dict_validates_the_stored_values():
    with pytest.raises(ValueError, match="resnet_depth=42"):
        ModelConfig.from_dict({"resnet_depth": 42}, "run/config.json")


def test_run_config_to_json_round_trips():
    config = RunConfig(
        model=ModelConfig(resnet_depth=18, cifar_stem=True, num_classes=10),
        train=TrainConfig(model_dir=MODEL_DIR, train_mode="distill", teacher="teacher_dir"),
        optim=OptimConfig(optimizer="momentum", learning_rate=0.1),
        loss=LossConfig(distill_temperature=2.0),
        augment=AugmentConfig(image_size=32, crop_area_range=(0.2, 1.0), use_blur=False),
        data=DataConfig(dataset="folder:/photos", label_dataset="fashion_mnist", seed=3),
        memory=MemoryConfig(memory_size=64),
    )
    stored = json.loads(json.dumps(config.to_json()))
    names = [field.name for field in dataclasses.fields(RunConfig)]
    assert list(stored) == names
    # JSON has no tuples: the (low, high) ranges come back as lists.
    sections = {
        name: type(getattr(config, name))(
            **{
                key: tuple(value) if isinstance(value, list) else value
                for key, value in stored[name].items()
            }
        )
        for name in names
    }
    assert RunConfig(**sections) == config
    assert ModelConfig.from_dict(stored["model"], "config.json") == config.model


# ---------------------------------------------------------------------------- derived values


def test_labels_and_evaluation_read_the_dataset_by_default():
    data = DataConfig(dataset="folder:/photos")
    assert data.labels_source == data.evaluation_source == "folder:/photos"
    data = DataConfig(dataset="folder:/photos", label_dataset="fashion_mnist")
    assert data.labels_source == data.evaluation_source == "fashion_mnist"
    data = DataConfig(dataset="folder:/photos", eval_dataset="synthetic")
    assert (data.labels_source, data.evaluation_source) == ("folder:/photos", "synthetic")
    data = DataConfig(dataset="folder:/photos", label_dataset="tfds:a", eval_dataset="tfds:b")
    assert (data.labels_source, data.evaluation_source) == ("tfds:a", "tfds:b")
    assert DataConfig().dataset == "fashion_mnist" and not DataConfig().uses_label_subset
    assert DataConfig(labels_per_class=5).uses_label_subset


def test_blur_and_centre_crop_are_on_above_the_cifar_size():
    assert not AugmentConfig(image_size=32).blur_enabled
    assert not AugmentConfig(image_size=32).eval_center_crop
    assert (
        AugmentConfig(image_size=33).blur_enabled and AugmentConfig(image_size=33).eval_center_crop
    )
    assert not AugmentConfig(image_size=224, use_blur=False).blur_enabled
    assert AugmentConfig(image_size=16, use_blur=True).blur_enabled
