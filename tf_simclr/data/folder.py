"""Image folders: ``folder:PATH`` with one subfolder per class, or one flat unlabeled folder.

Layouts: ``PATH/<split>/<class>/...`` (e.g. ``train/`` and ``test/``) or, without split
folders, ``PATH/<class>/...`` as the ``train`` split. A split folder holding images and no
subfolders (``PATH`` itself, or ``PATH/train/``) is unlabeled (label -1, for pretraining and
distillation). JPEG, PNG, BMP and GIF files are read (first frame of a
GIF); grayscale, RGBA, palette and 16-bit images become 8-bit RGB.

Every file is decoded once when the folder is indexed, in parallel with ``tf.io.decode_image``;
files TF cannot decode get a second chance with Pillow (e.g. 1-bit BMPs) and are then kept in
memory re-encoded as PNG. Files neither can read (truncated, not an image) are left out and
counted in ``info.skipped`` and the log, so a bad file never stops a run.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_simclr.data.source_types import Source, SourceInfo, parse_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
logger = logging.getLogger(__name__)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _split_root(path: str, split: str) -> str:
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"folder:{path} does not exist or is not a directory; pass folder:PATH with one "
            "subfolder per class (optionally under train/ and test/)."
        )
    candidate = os.path.join(path, split)
    if os.path.isdir(candidate):
        return candidate
    has_split_folders = any(os.path.isdir(os.path.join(path, name)) for name in ("train", "test"))
    if split == "train" and not has_split_folders:
        return path
    raise FileNotFoundError(
        f"folder:{path} has no {split}/ subfolder; available: "
        f"{sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))}."
    )


def _list_files(root: str) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Relative paths, labels and class names (sorted) under ``root``."""
    entries = sorted(os.listdir(root))
    classes = tuple(name for name in entries if os.path.isdir(os.path.join(root, name)))
    if not classes:
        files = [name for name in entries if _is_image(name)]
        return files, [-1] * len(files), ()
    loose = [name for name in entries if _is_image(name)]
    if loose:
        logger.warning(
            "%s: ignoring %d image(s) next to the class folders (e.g. %s)",
            root,
            len(loose),
            loose[0],
        )
    files, labels = [], []
    for label, name in enumerate(classes):
        for directory, subdirs, names in os.walk(os.path.join(root, name)):
            subdirs.sort()
            for file_name in sorted(filter(_is_image, names)):
                files.append(os.path.relpath(os.path.join(directory, file_name), root))
                labels.append(label)
    return files, labels, classes


def _decodes_with_tf(paths: list[str]) -> np.ndarray:
    """Bool per path: whether ``tf.io.decode_image`` reads it (decoded in parallel)."""

    def decode(index: tf.Tensor, path: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return index, tf.shape(image)  # the shape is only known once the image is decoded

    indices = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    indices = indices.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    readable = np.zeros(len(paths), dtype=bool)
    for batch, _ in indices.ignore_errors().batch(4096).as_numpy_iterator():
        readable[batch] = True
    return readable


def pil_to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 [H, W, 3] from any Pillow image: 16/32-bit gray scaled to 8 bits, alpha dropped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        pixels = np.asarray(image, dtype=np.int64)
    elif image.mode == "I":
        pixels = np.clip(np.asarray(image, dtype=np.int64), 0, 65535)
    else:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    return np.repeat((pixels >> 8).astype(np.uint8)[..., None], 3, axis=2)


def _png_with_pil(path: str) -> bytes | None:
    """The file re-encoded as PNG if Pillow can read it completely, else None."""
    try:
        with Image.open(path) as image:
            pixels = pil_to_rgb(image)
    except Exception:  # whatever Pillow raises, the file is unreadable and gets skipped
        return None
    return tf.io.encode_png(pixels).numpy()


def _check_every_class_has_images(
    path: str, root: str, classes: tuple[str, ...], readable_labels: np.ndarray
) -> None:
    """Raises ValueError naming the class folders under ``root`` without a readable image."""
    empty = [name for label, name in enumerate(classes) if not np.any(readable_labels == label)]
    if empty:
        listed = ", ".join(os.path.join(root, name) for name in empty)
        raise ValueError(
            f"folder:{path}: {len(empty)} class folder(s) hold no readable image: {listed}. "
            "Every subfolder is a class; put images of that class in it, or move it out of "
            f"{root}."
        )


class FolderSource(Source):
    """A split of an image folder (see the module docstring); images keep their own sizes."""

    def __init__(self, path: str, split: str) -> None:
        base, _ = parse_split(split)
        root = _split_root(path, base)
        files, labels, classes = _list_files(root)
        if not files:
            raise ValueError(
                f"folder:{path} split {split!r} ({root}) holds no images with extensions "
                f"{IMAGE_EXTENSIONS}; put one subfolder of images per class there."
            )
        paths = [os.path.join(root, name) for name in files]
        readable = _decodes_with_tf(paths)
        inline = [b""] * len(paths)
        for index in np.flatnonzero(~readable):
            png = _png_with_pil(paths[index])
            if png is not None:
                inline[index], readable[index] = png, True
        bad = [files[index] for index in np.flatnonzero(~readable)]
        if bad:
            logger.warning(
                "folder:%s split %s: skipped %d unreadable file(s) of %d: %s%s",
                path,
                split,
                len(bad),
                len(files),
                ", ".join(bad[:5]),
                " ..." if len(bad) > 5 else "",
            )
        _check_every_class_has_images(path, root, classes, np.asarray(labels)[readable])
        keep = np.flatnonzero(readable)
        keep = keep[parse_split(split, len(keep))[1]]
        if len(keep) == 0:
            raise ValueError(f"folder:{path} split {split!r}: no readable image is left.")
        self._keys = [files[index] for index in keep]
        self._paths = np.array([paths[index] for index in keep])
        self._inline = np.array([inline[index] for index in keep], dtype=object)
        self._labels = np.array([labels[index] for index in keep], dtype=np.int32)
        self._info = SourceInfo(
            name=f"folder:{path}",
            split=split,
            num_examples=len(keep),
            num_classes=len(classes),
            skipped=len(bad),
            class_names=classes,
            source=self,
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    def dataset(self, positions: np.ndarray | None = None) -> tf.data.Dataset:
        selected = slice(None) if positions is None else positions
        paths = self._paths[selected]
        inline = tf.constant(list(self._inline[selected]), dtype=tf.string)
        files = tf.data.Dataset.from_tensor_slices((paths, inline, self._labels[selected]))

        def decode(
            path: tf.Tensor, png: tf.Tensor, label: tf.Tensor
        ) -> tuple[tf.Tensor, tf.Tensor]:
            data = tf.cond(tf.strings.length(png) > 0, lambda: png, lambda: tf.io.read_file(path))
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            return tf.ensure_shape(image, [None, None, 3]), label

        return files.map(decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def index(self) -> tuple[list[str], np.ndarray]:
        return list(self._keys), self._labels.copy()
