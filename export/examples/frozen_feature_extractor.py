"""A frozen ``hub.KerasLayer`` feature extractor with a linear classifier on top (tf_keras).

    python export/examples/frozen_feature_extractor.py MODULE_PATH [--image_size 32]

Only the classifier trains; the module's weights and batch-norm statistics stay as exported.
Prints a JSON summary as the last line.

Input contract: images are float32 RGB in [0, 1] (divide 0-255 pixels by 255; no mean/std
normalisation), any height and width; the module refuses other ranges with
"images must be float32 in [0, 1]".
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf.keras = tf_keras, which hub.KerasLayer is

import argparse
import json

import numpy as np
import tensorflow_hub as hub
import tf_keras as keras
from synthetic_data import NUM_CLASSES, coloured_squares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="path of the exported module (e.g. MODEL_DIR/hub/<step>)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    features = hub.KerasLayer(args.module, trainable=False, output_key="final_avg_pool")
    model = keras.Sequential(
        [
            keras.Input((args.image_size, args.image_size, 3)),
            features,
            keras.layers.Dense(NUM_CLASSES),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    module_before = [w.numpy() for w in features.weights]
    train_images, train_labels = coloured_squares(256, args.image_size, seed=0)
    test_images, test_labels = coloured_squares(256, args.image_size, seed=1)
    model.fit(train_images, train_labels, batch_size=32, epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)

    print(
        json.dumps(
            {
                "accuracy": accuracy,
                "trainable_weights": len(model.trainable_weights),
                "module_unchanged": all(
                    np.array_equal(w.numpy(), before)
                    for w, before in zip(features.weights, module_before, strict=True)
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
