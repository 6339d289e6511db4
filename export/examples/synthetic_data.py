"""Offline stand-in for a labelled dataset, shared by the examples: coloured squares.

Each image is grey noise with a square of its class's colour at a random place; float32 RGB in
[0, 1], the input range every tf-simclr module expects (and checks: other ranges fail with
"images must be float32 in [0, 1]"). Replace it with your own data, scaled the same way.
"""

from __future__ import annotations

import numpy as np

COLOURS = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], np.float32)
NUM_CLASSES = len(COLOURS)


def coloured_squares(count: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` images ``[count, image_size, image_size, 3]`` in [0, 1] and int32 labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, NUM_CLASSES, count).astype(np.int32)
    images = rng.uniform(0.3, 0.6, (count, image_size, image_size, 3)).astype(np.float32)
    side = max(image_size // 2, 1)
    for image, label in zip(images, labels, strict=True):
        top, left = rng.integers(0, image_size - side + 1, 2)
        image[top : top + side, left : left + side] = COLOURS[label]
    return images, labels
