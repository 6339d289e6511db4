"""Feature extraction with ``hub.load``: every endpoint of a tf-simclr module, no Keras needed.

    python export/examples/feature_extraction.py MODULE_PATH [--image_size 224]

Prints each signature's output shape and, as the last line, a JSON summary.

Input contract: images are float32 RGB in [0, 1] (divide 0-255 pixels by 255; no mean/std
normalisation), any height and width; the module refuses other ranges with
"images must be float32 in [0, 1]".
"""

from __future__ import annotations

import argparse
import json

import tensorflow as tf
import tensorflow_hub as hub


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("module", help="path of the exported module (e.g. MODEL_DIR/hub/<step>)")
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=4)
    args = parser.parse_args()

    module = hub.load(args.module)
    # float32 RGB in [0, 1], any height and width; no mean/std normalisation.
    images = tf.random.uniform([args.batch_size, args.image_size, args.image_size, 3])

    # The representation h (final_avg_pool) through the "default" signature...
    features = module.signatures["default"](images=images)["default"]
    # ...or every endpoint at once through __call__ (batch norm in inference mode).
    endpoints = module(images, training=False)
    for name in sorted(module.signatures):
        output = module.signatures[name](images=images)[name]
        print(f"{name:18s} {output.shape}")

    print(
        json.dumps(
            {
                "signatures": sorted(module.signatures),
                "default_shape": features.shape.as_list(),
                "endpoint_shapes": {name: t.shape.as_list() for name, t in endpoints.items()},
                "default_equals_final_avg_pool": bool(
                    tf.reduce_all(features == endpoints["final_avg_pool"])
                ),
            }
        )
    )


if __name__ == "__main__":
    main()
