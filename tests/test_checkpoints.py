"""tf_simclr.checkpoints: with checkpoints of the reference implementation, the door reads
their architecture and restores them wherever it takes a source (``--checkpoint``,
``--teacher``), under any strategy; its integrity checks tell which checkpoints are usable
(readable and finite), fall back to the newest usable one with a warning naming each skipped
one, and clean up saves that did not finish."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re

import numpy as np
import pytest
import reference_writer as writer
import tensorflow as tf
from binary_runs import truncate_data_file

from tf_simclr import ModelConfig, SimCLRModel, checkpoints

SK1 = writer.Architecture(50, 1 / 32, 0.0625, num_classes=4, ft_proj_selector=1)
IMAGES = np.random.default_rng(7).uniform(0.0, 1.0, (2, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory) -> tuple[str, writer.Network]:
    """A 10% fine-tune with selective kernels, as a TF1 checkpoint in its released folder."""
    network = writer.build_network(SK1, 1)
    directory = tmp_path_factory.mktemp("reference") / "finetuned_10pct" / "r50_1x_sk1"
    return writer.write_tf1_checkpoint(network, str(directory)), network


def test_the_architecture_comes_from_a_reference_checkpoint(finetuned):
    prefix, _ = finetuned
    requested = ModelConfig(num_classes=7, ft_proj_selector=2, fine_tune_after_block=4)
    config = checkpoints.source_architecture(requested, prefix)
    assert (config.resnet_depth, config.width_multiplier, config.sk_ratio) == (50, 1 / 32, 0.0625)
    assert config.reference_resnet_d and config.initial_conv_before_bn
    assert (config.num_proj_layers, config.proj_out_dim) == (3, 8)
    # What the run decides stays: its classes, selector, frozen blocks, batch norm.
    assert (config.num_classes, config.ft_proj_selector, config.fine_tune_after_block) == (7, 2, 4)
    assert config.global_bn
    assert checkpoints.source_architecture(requested, "") == requested


def test_flags_that_disagree_with_the_checkpoint_are_an_error(finetuned, tmp_path):
    prefix, _ = finetuned
    conflicts = "resnet_depth: 101 vs 50; sk_ratio: 0.125 vs 0.0625"
    with pytest.raises(ValueError, match=re.escape(conflicts)):
        checkpoints.source_architecture(ModelConfig(resnet_depth=101, sk_ratio=0.125), prefix)
    # A tf-simclr checkpoint keeps the requested architecture (checked when restoring).
    model = SimCLRModel(ModelConfig(resnet_depth=18, width_multiplier=0.125)).build_for_size(16)
    ours = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt" / "ckpt"))
    requested = ModelConfig(resnet_depth=34)
    assert checkpoints.source_architecture(requested, ours) == requested


@pytest.fixture()
def tf_simclr_run(tmp_path) -> str:
    """A model_dir as a tf-simclr run leaves it, as far as its architecture goes: a config.json
    (ResNet-18 at width 1/8, CIFAR stem, 4 classes) and a checkpoint."""
    saved = ModelConfig(resnet_depth=18, width_multiplier=0.125, cifar_stem=True, num_classes=4)
    (tmp_path / checkpoints.CONFIG_FILENAME).write_text(
        json.dumps({checkpoints.MODEL_KEY: dataclasses.asdict(saved)})
    )
    tf.train.Checkpoint(step=tf.Variable(1)).save(str(tmp_path / "ckpt" / "ckpt"))
    return str(tmp_path)


def test_the_architecture_comes_from_a_runs_config(tf_simclr_run):
    # resnet_depth=34 was not set by the user (not explicit): the run's 18 replaces it.
    requested = ModelConfig(num_classes=7, ft_proj_selector=2, resnet_depth=34)
    config = checkpoints.source_architecture(requested, tf_simclr_run, explicit={"num_classes"})
    assert (config.resnet_depth, config.width_multiplier, config.cifar_stem) == (18, 0.125, True)
    # What the run decides stays: its classes and its head selection.
    assert (config.num_classes, config.ft_proj_selector) == (7, 2)
    agreeing = ModelConfig(resnet_depth=18, cifar_stem=True)
    config = checkpoints.source_architecture(
        agreeing, tf_simclr_run, {"resnet_depth", "cifar_stem"}
    )
    assert config.width_multiplier == 0.125


def test_explicit_shape_flags_that_disagree_with_a_run_are_an_error(tf_simclr_run):
    with pytest.raises(
        ValueError, match=re.escape("resnet_depth: 50 vs 18; cifar_stem: False vs True")
    ):
        checkpoints.source_architecture(
            ModelConfig(), tf_simclr_run, explicit={"resnet_depth", "cifar_stem", "num_classes"}
        )


def test_restore_weights_under_two_replicas(finetuned, two_replica_strategy):
    """Finetuning from ``--checkpoint``: the encoder and projection head land on every replica
    of a model with synchronised batch norm, and compute the reference's endpoints."""
    prefix, network = finetuned
    config = checkpoints.source_architecture(ModelConfig(num_classes=4), prefix)
    with two_replica_strategy.scope():
        model = SimCLRModel(config).build_for_size(32)
    checkpoints.restore_weights(model, prefix, include_supervised_head=False)
    kernel = network.layers[0].weights["kernel"]
    for replica in model.encoder.stem.convs[0].conv.kernel.values:
        np.testing.assert_array_equal(replica, kernel)
    plain = SimCLRModel(dataclasses.replace(config, global_bn=False)).build_for_size(32)
    checkpoints.restore_weights(plain, prefix, include_supervised_head=False)
    expected = writer.endpoints(network, IMAGES)
    atol = writer.endpoint_tolerances(network, IMAGES)  # bound: 10x the round-off measured here
    outputs = plain(IMAGES, training=False)
    for name in ("initial_conv", "block_group4", "proj_head_output"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=0, atol=atol[name])


def test_a_teacher_reads_the_folders_choice_of_head_input(finetuned, tmp_path):
    """Distillation's teacher: load_model_config + restore_weights with the supervised head,
    reading proj_head_1 because the folder is finetuned_10pct."""
    prefix, network = finetuned
    config = checkpoints.load_model_config(prefix)
    assert (config.num_classes, config.ft_proj_selector) == (4, 1)
    teacher = SimCLRModel(config).build_for_size(32)
    checkpoints.restore_weights(teacher, prefix, include_supervised_head=True)
    expected = writer.endpoints(network, IMAGES)["logits_sup"]
    atol = writer.endpoint_tolerances(network, IMAGES)["logits_sup"]  # bound: as above
    outputs = teacher(IMAGES, training=False)["logits_sup"]
    np.testing.assert_allclose(outputs, expected, rtol=0, atol=atol)
    unsettled = writer.write_tf1_checkpoint(network, str(tmp_path / "somewhere"))
    with pytest.raises(ValueError, match="ft_proj_selector"):
        checkpoints.load_model_config(unsettled)


# ------------------------------------------------------- integrity of tf-simclr checkpoints


@pytest.fixture
def model_dir(tmp_path):
    """A model_dir with checkpoints 1 (finite), 2 (one variable NaN) and 3 (truncated)."""
    weights = tf.Variable(np.ones(2000, np.float32))
    scale = tf.Variable(1.0)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(weights=weights, scale=scale), str(tmp_path / "ckpt"), max_to_keep=9
    )
    manager.save(checkpoint_number=1)
    scale.assign(np.nan)
    manager.save(checkpoint_number=2)
    scale.assign(2.0)
    truncate_data_file(manager.save(checkpoint_number=3))
    return tmp_path


def test_problems_name_the_reason(model_dir):
    ckpt = model_dir / "ckpt"
    assert checkpoints.checkpoint_problem(str(ckpt / "ckpt-1")) is None
    assert checkpoints.checkpoint_problem(str(ckpt / "ckpt-2")) == (
        "has 1 variables holding NaN or Inf (scale)"
    )
    assert "Read less bytes than requested" in checkpoints.checkpoint_problem(str(ckpt / "ckpt-3"))
    assert "cannot be read" in checkpoints.checkpoint_problem(str(ckpt / "ckpt-9"))


def test_the_newest_usable_checkpoint_is_found_with_a_warning_per_skipped_one(model_dir, caplog):
    ckpt = model_dir / "ckpt"
    assert checkpoints.recorded_checkpoints(str(ckpt)) == [
        str(ckpt / f"ckpt-{step}") for step in (3, 2, 1)
    ]
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        assert checkpoints.newest_usable_checkpoint(str(model_dir)) == str(ckpt / "ckpt-1")
    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert f"{ckpt / 'ckpt-3'}: it cannot be read" in warnings[0]
    assert "Read less bytes" in warnings[0]
    assert f"{ckpt / 'ckpt-2'}: it has 1 variables holding NaN or Inf (scale)" in warnings[1]
    assert checkpoints.find_usable_checkpoint(str(model_dir)) == (
        str(ckpt / "ckpt-1"),
        str(model_dir),
    )


def test_an_unusable_checkpoint_prefix_is_refused_by_name(model_dir):
    prefix = str(model_dir / "ckpt" / "ckpt-3")
    with pytest.raises(
        ValueError, match=rf"the checkpoint {re.escape(prefix)} cannot be read .*Read less"
    ):
        checkpoints.find_usable_checkpoint(prefix)
    os.remove(str(model_dir / "ckpt" / "ckpt-1.index"))
    with pytest.raises(ValueError, match=r"no usable checkpoint in .*ckpt"):
        checkpoints.find_usable_checkpoint(str(model_dir))
    assert checkpoints.newest_usable_checkpoint(str(model_dir / "nothing")) is None


def test_stale_temp_folders_are_removed(model_dir):
    stale = model_dir / "ckpt" / "ckpt-4_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
    assert checkpoints.remove_stale_temp_folders(str(model_dir)) == [str(stale)]
    assert not stale.exists()
    assert sorted(os.listdir(model_dir / "ckpt"))[0] == "checkpoint"


def test_an_unfinished_save_is_removed_unless_it_was_recorded(model_dir):
    ckpt = model_dir / "ckpt"
    (ckpt / "ckpt-4_temp").mkdir()
    (ckpt / "ckpt-4.data-00000-of-00001").write_bytes(b"half")
    checkpoints.remove_unfinished_save(str(ckpt / "ckpt-4"))
    assert not [name for name in os.listdir(ckpt) if name.startswith("ckpt-4")]
    recorded = sorted(os.listdir(ckpt))
    checkpoints.remove_unfinished_save(str(ckpt / "ckpt-3"))  # the newest recorded: complete
    assert sorted(os.listdir(ckpt)) == recorded


def test_a_checkpoint_whose_data_is_gone_is_named_not_probed(model_dir):
    # The reference-format probe reads the object graph from the data file; an empty data file
    # must still reach the usable-checkpoint door, which names it.
    prefix = model_dir / "ckpt" / "ckpt-1"
    (data,) = (model_dir / "ckpt").glob("ckpt-1.data-*")
    data.write_bytes(b"")
    assert not checkpoints.is_reference_checkpoint(str(prefix))
    with pytest.raises(ValueError, match=r"ckpt-1 cannot be read"):
        checkpoints.find_usable_checkpoint(str(prefix))


def test_the_latest_checkpoint_passes_over_one_whose_files_are_gone(model_dir):
    ckpt = model_dir / "ckpt"
    assert checkpoints.latest_checkpoint(str(model_dir)) == str(ckpt / "ckpt-3")
    for path in ckpt.glob("ckpt-3.*"):
        path.unlink()  # the state file still names ckpt-3 as the newest
    assert tf.train.latest_checkpoint(str(ckpt)) is None
    assert checkpoints.latest_checkpoint(str(model_dir)) == str(ckpt / "ckpt-2")
    assert checkpoints.checkpoint_problem(str(ckpt / "ckpt-3")) == (
        f"cannot be read (its files are gone: there is no {ckpt / 'ckpt-3'}.index)"
    )
    assert checkpoints.find_checkpoint(str(model_dir)) == (str(ckpt / "ckpt-2"), str(model_dir))
    assert checkpoints.latest_checkpoint(str(model_dir / "nothing")) is None


@pytest.mark.parametrize(
    ("text", "named"),
    [('{"model": {"resnet_depth": 18', "is not valid JSON"), ('{"train": {}}', "no 'model'")],
)
def test_a_config_json_that_cannot_be_read_is_named(tmp_path, text, named):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path} ") + ".*" + re.escape(named)):
        checkpoints.read_model_config(str(path))
