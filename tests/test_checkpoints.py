"""tf_simclr.checkpoints with checkpoints of the reference implementation: the door reads
their architecture and restores them wherever it takes a source (``--checkpoint``,
``--teacher``), under any strategy."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
import reference_writer as writer
import tensorflow as tf

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
    outputs = plain(IMAGES, training=False)
    for name in ("initial_conv", "block_group4", "proj_head_output"):
        np.testing.assert_allclose(outputs[name], expected[name], rtol=1e-4, atol=1e-4)


def test_a_teacher_reads_the_folders_choice_of_head_input(finetuned, tmp_path):
    """Distillation's teacher: load_model_config + restore_weights with the supervised head,
    reading proj_head_1 because the folder is finetuned_10pct."""
    prefix, network = finetuned
    config = checkpoints.load_model_config(prefix)
    assert (config.num_classes, config.ft_proj_selector) == (4, 1)
    teacher = SimCLRModel(config).build_for_size(32)
    checkpoints.restore_weights(teacher, prefix, include_supervised_head=True)
    expected = writer.endpoints(network, IMAGES)["logits_sup"]
    outputs = teacher(IMAGES, training=False)["logits_sup"]
    np.testing.assert_allclose(outputs, expected, rtol=1e-4, atol=1e-4)
    unsettled = writer.write_tf1_checkpoint(network, str(tmp_path / "somewhere"))
    with pytest.raises(ValueError, match="ft_proj_selector"):
        checkpoints.load_model_config(unsettled)
