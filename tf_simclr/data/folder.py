"""Image folders: ``folder:PATH`` with one subfolder per class, or one flat unlabeled folder.

Layouts: ``PATH/<split>/<class>/...`` (e.g. ``train/`` and ``test/``) or, without split
folders, ``PATH/<class>/...`` as the ``train`` split. A split folder holding images and no
subfolders (``PATH`` itself, or ``PATH/train/``) is unlabeled (label -1, for pretraining and
distillation). JPEG, PNG, BMP and GIF files are read (first frame of a
GIF); grayscale, RGBA, palette and 16-bit images become 8-bit RGB.

When the folder is indexed, files are left out, counted in ``info.skipped`` and named in the
log (a bad file never stops a run) when:

* their name is not UTF-8 (TF paths and the keys in metadata and subset files are UTF-8 text);
  they are named by their bytes, escaped (``b'bad\\xff.png'``);
* their header announces more than ``max_image_megapixels`` megapixels (read from the header
  only, see :mod:`.image_headers`): a small file can decode to gigabytes, as a 400 KB PNG of
  20000x20000 pixels does;
* neither TF nor Pillow can read them (truncated, not an image).

Every other file is decoded once, in parallel with ``tf.io.decode_image``; files TF cannot
decode get a second chance with Pillow (e.g. 1-bit BMPs) and are then kept in memory re-encoded
as PNG.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import tensorflow as tf
from PIL import Image

from tf_simclr.data.image_headers import announced_size
from tf_simclr.data.source_types import Source, SourceInfo, parse_split

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# The default of DataConfig.max_image_megapixels (and of sources opened without a config).
DEFAULT_MAX_IMAGE_MEGAPIXELS = 50.0
HEADER_THREADS = 8  # header reads are tiny; threads overlap their latency on network disks
HEADER_CHUNK = 256  # files a thread reads in one task
NAMES_SHOWN = 5  # files named per warning
logger = logging.getLogger(__name__)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _is_utf8(name: str) -> bool:
    """Whether a name read from the file system is UTF-8 (``os.listdir`` turns other bytes into
    lone surrogates, which TF strings, logs and metadata files cannot hold)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _printable(name: str) -> str:
    """``name``, or its bytes escaped (``b'bad\\xff.png'``) when it is not UTF-8."""
    return name if _is_utf8(name) else repr(os.fsencode(name))


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
    folders = sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))
    raise FileNotFoundError(
        f"folder:{path} has no {split}/ subfolder; available: {list(map(_printable, folders))}."
    )


class _Listing(NamedTuple):
    """The images of a split folder: UTF-8 relative paths with their labels (-1 unlabeled), the
    class names (sorted), and the escaped relative paths of images whose names are not UTF-8."""

    files: list[str]
    labels: list[int]
    classes: tuple[str, ...]
    not_utf8: list[str]


def _images_under(directory: str, root: str) -> list[str]:
    """Paths relative to ``root`` of the images anywhere under ``directory``, in sorted order."""
    found = []
    for current, subdirs, names in os.walk(directory):
        subdirs.sort()
        for name in sorted(filter(_is_image, names)):
            found.append(os.path.relpath(os.path.join(current, name), root))
    return found


def _list_files(root: str) -> _Listing:
    """The images under ``root``: one class per subfolder whose name is UTF-8, or unlabeled
    images when ``root`` has no subfolders."""
    entries = sorted(os.listdir(root))
    folders = [name for name in entries if os.path.isdir(os.path.join(root, name))]
    loose = [name for name in entries if _is_image(name)]
    if not folders:
        found, labels, classes = loose, [-1] * len(loose), ()
    else:
        if loose:
            logger.warning(
                "%s: ignoring %d image(s) next to the class folders (e.g. %s)",
                root,
                len(loose),
                _printable(loose[0]),
            )
        classes = tuple(filter(_is_utf8, folders))
        label_of = {name: label for label, name in enumerate(classes)}
        found, labels = [], []
        for name in folders:  # the images of a folder named in other bytes are left out below
            images = _images_under(os.path.join(root, name), root)
            found += images
            labels += [label_of.get(name, -1)] * len(images)
    named = [index for index, name in enumerate(found) if _is_utf8(name)]
    return _Listing(
        files=[found[index] for index in named],
        labels=[labels[index] for index in named],
        classes=classes,
        not_utf8=[_printable(name) for name in found if not _is_utf8(name)],
    )


def _announced_sizes(paths: list[str]) -> list[tuple[int, int] | None]:
    """Each file's ``(width, height)`` as its header announces it (None: none announced), read
    by threads in chunks (a task per file would hold a future per file of a large dataset)."""
    chunks = [paths[start : start + HEADER_CHUNK] for start in range(0, len(paths), HEADER_CHUNK)]

    def read(chunk: list[str]) -> list[tuple[int, int] | None]:
        return [announced_size(path) for path in chunk]

    with ThreadPoolExecutor(HEADER_THREADS) as pool:
        return [size for sizes in pool.map(read, chunks) for size in sizes]


def _decodes_with_tf(paths: list[str]) -> np.ndarray:
    """Bool per path: whether ``tf.io.decode_image`` reads it (decoded in parallel)."""
    if not paths:
        return np.zeros(0, dtype=bool)

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


def _png_with_pil(path: str, max_pixels: float) -> bytes | None:
    """The file re-encoded as PNG if Pillow can read it completely, else None; also None,
    before decoding, when Pillow's header reading finds more than ``max_pixels`` pixels."""
    try:
        with Image.open(path) as image:
            if image.width * image.height > max_pixels:
                return None
            pixels = pil_to_rgb(image)
    except Exception:  # whatever Pillow raises, the file is unreadable and gets skipped
        return None
    return tf.io.encode_png(pixels).numpy()


def _log_skipped(where: str, why: str, names: list[str], total: int) -> None:
    """One warning: ``names`` (the first few shown) were left out of ``total`` image files."""
    if names:
        shown = ", ".join(names[:NAMES_SHOWN]) + (" ..." if len(names) > NAMES_SHOWN else "")
        logger.warning(
            "%s: skipped %d of %d image files %s: %s", where, len(names), total, why, shown
        )


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
    """A split of an image folder (see the module docstring); images keep their own sizes.

    Images whose header announces more than ``max_image_megapixels`` megapixels are skipped.
    """

    def __init__(
        self,
        path: str,
        split: str,
        max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
    ) -> None:
        base, _ = parse_split(split)
        root = _split_root(path, base)
        files, labels, classes, not_utf8 = _list_files(root)
        total = len(files) + len(not_utf8)
        if not total:
            raise ValueError(
                f"folder:{path} split {split!r} ({root}) holds no images with extensions "
                f"{IMAGE_EXTENSIONS}; put one subfolder of images per class there."
            )
        where = f"folder:{path} split {split}"
        _log_skipped(where, "whose names are not UTF-8 (rename them to read them)", not_utf8, total)
        paths = [os.path.join(root, name) for name in files]
        max_pixels = max_image_megapixels * 1e6
        sizes = _announced_sizes(paths)
        small = np.array(
            [size is None or size[0] * size[1] <= max_pixels for size in sizes], dtype=bool
        )
        large = [f"{files[i]} ({sizes[i][0]}x{sizes[i][1]})" for i in np.flatnonzero(~small)]
        _log_skipped(
            where,
            f"whose header announces more than {max_image_megapixels:g} megapixels (raise "
            "--max_image_megapixels to read them)",
            large,
            total,
        )
        readable = np.zeros(len(paths), dtype=bool)
        candidates = np.flatnonzero(small)
        readable[candidates] = _decodes_with_tf([paths[index] for index in candidates])
        inline = [b""] * len(paths)
        for index in np.flatnonzero(small & ~readable):
            png = _png_with_pil(paths[index], max_pixels)
            if png is not None:
                inline[index], readable[index] = png, True
        bad = [files[index] for index in np.flatnonzero(small & ~readable)]
        _log_skipped(where, "that neither TF nor Pillow can read", bad, total)
        _check_every_class_has_images(path, root, classes, np.asarray(labels)[readable])
        keep = np.flatnonzero(readable)
        keep = keep[parse_split(split, len(keep))[1]]
        if len(keep) == 0:
            raise ValueError(
                f"folder:{path} split {split!r}: no image is left of {total} (see the skipped "
                "files above, or widen the slice)."
            )
        self._keys = [files[index] for index in keep]
        self._paths = np.array([paths[index] for index in keep])
        self._inline = np.array([inline[index] for index in keep], dtype=object)
        self._labels = np.array([labels[index] for index in keep], dtype=np.int32)
        self._info = SourceInfo(
            name=f"folder:{path}",
            split=split,
            num_examples=len(keep),
            num_classes=len(classes),
            skipped=total - len(files) + len(large) + len(bad),
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
