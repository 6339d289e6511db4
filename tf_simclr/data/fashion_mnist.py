"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package.

60,000 training and 10,000 test images, 28 x 28 grayscale, 10 balanced classes (Xiao et al.
2017). The grayscale images are given 3 equal channels, as SimCLR's augmentations expect RGB.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

from tf_simclr.data.source_types import ArraySource, parse_split

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_PREFIXES = {"train": "train", "test": "t10k"}
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049


def _open_idx(directory: str, stem: str) -> bytes:
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            opener = gzip.open if name.endswith(".gz") else open
            with opener(path, "rb") as handle:
                return handle.read()
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}[.gz] not found in {directory}; install it with "
        "`apt-get install dataset-fashion-mnist` (files in /usr/share/datasets/fashion-mnist) "
        "or pass --data_dir with the four IDX files."
    )


def read_idx(data: bytes, magic: int, name: str) -> np.ndarray:
    """Parses an IDX file of unsigned bytes: big-endian magic, dimensions, then the data."""
    dims = magic & 0xFF
    header = np.frombuffer(data, dtype=">i4", count=1 + dims)
    if int(header[0]) != magic:
        raise ValueError(f"{name} is not an IDX file of the expected kind (magic {header[0]}).")
    shape = tuple(int(size) for size in header[1:])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims))
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{name} is truncated: {array.size} bytes for shape {shape}.")
    return array.reshape(shape)


def load_arrays(split: str, data_dir: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Grayscale images uint8 [N, 28, 28] and labels uint8 [N] of ``train`` or ``test``."""
    if split not in _PREFIXES:
        raise ValueError(f"Fashion-MNIST has splits 'train' and 'test', not {split!r}.")
    directory = data_dir or DEFAULT_DIR
    prefix = _PREFIXES[split]
    images = read_idx(_open_idx(directory, f"{prefix}-images-idx3-ubyte"), _IMAGES_MAGIC, "images")
    labels = read_idx(_open_idx(directory, f"{prefix}-labels-idx1-ubyte"), _LABELS_MAGIC, "labels")
    if len(images) != len(labels):
        raise ValueError(
            f"Fashion-MNIST {split}: {len(images)} images but {len(labels)} labels in "
            f"{directory}; the files are from different releases."
        )
    return images, labels


def fashion_mnist_source(split: str, data_dir: str | None = None) -> ArraySource:
    """The ``fashion_mnist`` source: RGB uint8 [N, 28, 28, 3] images, labels 0..9."""
    base, _ = parse_split(split)
    images, labels = load_arrays(base, data_dir)
    rgb = np.repeat(images[..., None], 3, axis=-1)
    return ArraySource("fashion_mnist", split, rgb, labels, CLASS_NAMES)
