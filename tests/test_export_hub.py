"""tf-simclr-export converts checkpoints of the reference implementation (google-research/simclr)
in each of its formats into the usual TF-Hub module, which computes the reference's endpoints
and fine-tunes with ``hub.KerasLayer(trainable=True)``.

The checkpoints are written by ``tests/reference_writer.py`` (random weights, the reference's
names); the binary runs as a user runs it, in child processes (``tests/binary_runs.py``).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
import reference_writer as writer
import tensorflow as tf
import tensorflow_hub as hub
import tf_keras as keras
from binary_runs import assert_succeeded, run_all

from tf_simclr.hub import read_module_info

# A 10% fine-tune (its supervised head reads proj_head_1) of a ResNet-18 with the ResNet-D
# stem and shortcuts: small, so that five exports run quickly side by side.
ARCHITECTURE = writer.Architecture(18, 1 / 16, 0.0625, num_classes=4, ft_proj_selector=1)
IMAGES = np.random.default_rng(3).uniform(0.0, 1.0, (4, 32, 32, 3)).astype(np.float32)
LABELS = np.array([0, 1, 2, 3])


def export_command(*flags: str) -> list[str]:
    """``python -m tf_simclr.export_hub FLAGS...`` (the ``tf-simclr-export`` entry point)."""
    return [sys.executable, "-m", "tf_simclr.export_hub", *flags]


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
            np.testing.assert_allclose(served, expected[endpoint], rtol=1e-4, atol=1e-4)
        loss, change = one_training_step(path)
        assert np.isfinite(loss) and change > 0, (name, loss, change)
