"""`make demo`: build the default model and print its endpoints and parameter count."""

from __future__ import annotations

import tf_simclr  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow loads)
from tf_simclr.config import ModelConfig
from tf_simclr.models import SimCLRModel


def main() -> None:
    config = ModelConfig(resnet_depth=18, width_multiplier=0.5, cifar_stem=True, num_classes=10)
    model = SimCLRModel(config).build_for_size(28)
    import tensorflow as tf

    outputs = model(tf.zeros([1, 28, 28, 3]), training=False)
    for name, value in outputs.items():
        print(f"{name:18s} {tuple(value.shape)}")
    print(f"encoder parameters: {model.encoder.count_params():,}")
    print(f"total parameters:   {model.count_params():,}")


if __name__ == "__main__":
    main()
