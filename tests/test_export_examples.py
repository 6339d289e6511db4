"""Every consumer example in export/examples/ runs against a freshly exported tiny module.

Each example is run as a user runs it (``python export/examples/X.py MODULE``) in a fresh
process; its last output line is a JSON summary that the tests check. The Keras 3 example runs
without ``TF_USE_LEGACY_KERAS``.
"""

from __future__ import annotations

import json
import sys

import pytest
from binary_runs import REPO_ROOT, child_env, run_child

from tf_simclr import ModelConfig, SimCLRModel
from tf_simclr.hub import save_hub_module

EXAMPLES = REPO_ROOT / "export" / "examples"
SIZE = 16
CONFIG = ModelConfig(
    resnet_depth=18, width_multiplier=0.25, cifar_stem=True, proj_out_dim=16, num_classes=3
)
CHANCE = 0.25  # the examples' synthetic set has four classes
# 256 test images: chance + 0.15 is more than 5 binomial standard deviations above chance.


@pytest.fixture(scope="module")
def modules(tmp_path_factory) -> dict[str, str]:
    """A module with every part, and one with the encoder alone (for fine-tuning)."""
    root = tmp_path_factory.mktemp("example_modules")
    model = SimCLRModel(CONFIG).build_for_size(SIZE)
    return {
        "full": save_hub_module(model, str(root / "full")),
        "encoder": save_hub_module(
            model,
            str(root / "encoder"),
            include_projection_head=False,
            include_supervised_head=False,
        ),
    }


def run_example(name: str, module: str, legacy_keras: bool = True) -> dict:
    """Run ``export/examples/<name>.py`` on ``module`` at 16x16; its JSON summary."""
    result = run_child(
        [sys.executable, str(EXAMPLES / f"{name}.py"), module, "--image_size", str(SIZE)],
        env=child_env() if legacy_keras else child_env(TF_USE_LEGACY_KERAS=None),
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_feature_extraction_with_hub_load(modules):
    summary = run_example("feature_extraction", modules["full"])
    backbone = ["initial_conv", "initial_max_pool"]
    backbone += [f"block_group{i}" for i in range(1, 5)] + ["final_avg_pool"]
    heads = ["proj_head_input", "proj_head_1", "proj_head_2", "proj_head_3", "proj_head_output"]
    assert summary["signatures"] == sorted([*backbone, *heads, "logits_sup", "default"])
    # export/SIGNATURES.md for ResNet-18, width 0.25, CIFAR stem, 16x16, batch 4.
    shapes = summary["endpoint_shapes"]
    assert shapes["initial_conv"] == [4, 16, 16, 16]
    assert shapes["block_group2"] == [4, 8, 8, 32]
    assert shapes["block_group4"] == [4, 2, 2, 128]
    assert shapes["proj_head_2"] == [4, 128]
    assert shapes["proj_head_output"] == [4, 16]
    assert shapes["logits_sup"] == [4, 3]
    assert summary["default_shape"] == [4, 128]
    assert summary["default_equals_final_avg_pool"]


def test_frozen_keras_layer_feature_extractor(modules):
    summary = run_example("frozen_feature_extractor", modules["full"])
    assert summary["trainable_weights"] == 2  # the classifier's kernel and bias only
    assert summary["module_unchanged"]
    assert summary["accuracy"] > CHANCE + 0.15


def test_fine_tuning_with_trainable_keras_layer(modules):
    summary = run_example("fine_tune", modules["encoder"])
    assert summary["module_trainable_weights"] > 0
    assert summary["regularization_losses"] == 1
    assert summary["all_weights_changed"]
    assert summary["all_statistics_changed"]
    assert summary["accuracy"] > CHANCE + 0.15


def test_keras3_tfsm_layer(modules):
    summary = run_example("keras3_tfsmlayer", modules["full"], legacy_keras=False)
    assert summary["keras_version"].startswith("3.")
    assert summary["feature_shape"] == [2, 128]
    assert summary["accuracy"] > CHANCE + 0.15
