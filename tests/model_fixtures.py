"""Small SimCLR models for in-process tests of the training code (phases, evaluation)."""

from __future__ import annotations

from tf_simclr.config import ModelConfig


def tiny_model_config(**overrides) -> ModelConfig:
    """ResNet-18 at width 1/8 with the CIFAR stem, a two-layer head of 16 and 4 classes (for
    16x16 images); ``overrides`` replace fields."""
    values = dict(
        resnet_depth=18,
        width_multiplier=0.125,
        cifar_stem=True,
        num_proj_layers=2,
        proj_out_dim=16,
        num_classes=4,
    )
    values.update(overrides)
    return ModelConfig(**values)
