"""Using a tf-simclr module from Keras 3 through ``keras.layers.TFSMLayer``.

    python export/examples/keras3_tfsmlayer.py MODULE_PATH [--image_size 32]

Run it *without* ``TF_USE_LEGACY_KERAS`` (Keras 3 and tf_keras do not share a process cleanly).
``TFSMLayer`` serves one inference signature (``call_endpoint``): batch norm in inference mode,
features as a dict keyed by the signature's name. Here a linear classifier is trained on top of
the frozen ``default`` features. Prints a JSON summary as the last line.

Input contract: images are float32 RGB in [0, 1] (divide 0-255 pixels by 255; no mean/std
normalisation), any height and width; the module refuses other ranges with
"images must be float32 in [0, 1]".
"""

from __future__ import annotations

import argparse
import json

import keras
from synthetic_data import NUM_CLASSES, coloured_squares


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="path of the exported module (e.g. MODEL_DIR/hub/<step>)")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0, help="seed of weights and data order")
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    if not keras.version().startswith("3."):
        raise SystemExit(f"this example needs Keras 3, found {keras.version()}")

    inputs = keras.Input((args.image_size, args.image_size, 3))
    encoder = keras.layers.TFSMLayer(args.module, call_endpoint="default", trainable=False)
    features = encoder(inputs)["default"]
    model = keras.Model(inputs, keras.layers.Dense(NUM_CLASSES)(features))
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    train_images, train_labels = coloured_squares(256, args.image_size, seed=0)
    test_images, test_labels = coloured_squares(256, args.image_size, seed=1)
    model.fit(train_images, train_labels, batch_size=32, epochs=args.epochs, verbose=2)
    _, accuracy = model.evaluate(test_images, test_labels, verbose=0)

    print(
        json.dumps(
            {
                "keras_version": keras.version(),
                "feature_shape": list(encoder(test_images[:2])["default"].shape),
                "accuracy": accuracy,
            }
        )
    )


if __name__ == "__main__":
    main()
