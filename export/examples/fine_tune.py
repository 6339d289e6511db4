"""Fine-tuning a tf-simclr module with ``hub.KerasLayer(trainable=True)`` in a tf_keras model.

    python export/examples/fine_tune.py MODULE_PATH [--image_size 32]

Every weight of the module trains, its batch-norm statistics update in training mode, and its
L2 regularization loss (weight decay chosen at export) joins ``model.losses``. For features of
``final_avg_pool``, export the encoder alone (``--include_projection_head=false
--include_supervised_head=false``) so that every weight gets a gradient. Prints a JSON summary as
the last line.

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
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)

    inputs = keras.Input((args.image_size, args.image_size, 3))
    encoder = hub.KerasLayer(args.module, trainable=True, output_key="final_avg_pool")
    logits = keras.layers.Dense(NUM_CLASSES)(encoder(inputs))
    model = keras.Model(inputs, logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    weights_before = [w.numpy() for w in encoder.trainable_weights]
    statistics_before = [w.numpy() for w in encoder.non_trainable_weights]
    train_images, train_labels = coloured_squares(128, args.image_size, seed=0)
    test_images, test_labels = coloured_squares(256, args.image_size, seed=1)
    model.fit(train_images, train_labels, batch_size=16, epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)

    def changed(weights, before) -> bool:
        return all(not np.array_equal(w.numpy(), b) for w, b in zip(weights, before, strict=True))

    print(
        json.dumps(
            {
                "accuracy": accuracy,
                "module_trainable_weights": len(encoder.trainable_weights),
                "regularization_losses": len(model.losses),
                "all_weights_changed": changed(encoder.trainable_weights, weights_before),
                "all_statistics_changed": changed(encoder.non_trainable_weights, statistics_before),
            }
        )
    )


if __name__ == "__main__":
    main()
