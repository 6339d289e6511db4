"""One interface to every image source, chosen by a ``--dataset`` string.

``load_source(name, split, data_dir)`` returns ``(dataset, info)``: a ``tf.data.Dataset`` of
``(image, label)`` pairs (uint8 [H, W, 3], int32; label -1 for unlabeled images) in a fixed order,
and a :class:`SourceInfo` with ``num_examples``, ``num_classes`` and ``skipped`` (files left
out: unreadable, too large, or named in bytes that are not UTF-8). Names:

* ``fashion_mnist`` -- Debian's IDX files (``/usr/share/datasets/fashion-mnist``);
* ``synthetic[:size=32,count=1024,classes=4,seed=0,test_count=256]`` -- procedural images;
* ``tfds:NAME`` -- a TFDS dataset already prepared in ``data_dir`` (never downloads);
* ``folder:PATH`` -- class-per-subfolder image trees (or one flat folder of unlabeled images).

``max_image_megapixels`` is for ``folder:`` sources: images whose header announces more
megapixels are skipped (and counted) before anything decodes them.

Splits are ``train`` / ``test`` (any split TFDS knows for ``tfds:``), optionally sliced like TFDS:
``train[:10%]``, ``train[1000:]``.
"""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.data.fashion_mnist import fashion_mnist_source
from tf_simclr.data.folder import DEFAULT_MAX_IMAGE_MEGAPIXELS, FolderSource
from tf_simclr.data.source_types import Source, SourceInfo
from tf_simclr.data.synthetic import parse_options, synthetic_source
from tf_simclr.data.tfds_source import TfdsSource

SOURCE_FORMS = (
    "fashion_mnist",
    "synthetic",
    "synthetic:size=32,count=1024,classes=4",
    "tfds:NAME (e.g. tfds:cifar10)",
    "folder:PATH",
)


def _split_name(name: str) -> tuple[str, str]:
    kind, _, argument = name.partition(":")
    return kind.strip().lower(), argument.strip()


def validate_dataset_name(name: str, setting: str = "dataset") -> None:
    """Raises ValueError unless ``name`` has one of the forms in :data:`SOURCE_FORMS`; the
    message calls it ``--<setting>``."""
    kind, argument = _split_name(name)
    if kind == "synthetic":
        parse_options(argument)
        return
    if (kind == "fashion_mnist" and not argument) or (kind in ("tfds", "folder") and argument):
        return
    raise ValueError(
        f"--{setting}={name!r} is not a known source; use one of: {', '.join(SOURCE_FORMS)}."
    )


def open_source(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    *,
    max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
) -> Source:
    """The :class:`Source` for a ``--dataset`` string and split (see the module docstring)."""
    validate_dataset_name(name)
    kind, argument = _split_name(name)
    if kind == "fashion_mnist":
        return fashion_mnist_source(split, data_dir)
    if kind == "synthetic":
        return synthetic_source(argument, split)
    if kind == "tfds":
        return TfdsSource(argument, split, data_dir)
    return FolderSource(argument, split, max_image_megapixels)


def load_source(
    name: str,
    split: str = "train",
    data_dir: str | None = None,
    *,
    supervised: bool = False,
    max_image_megapixels: float = DEFAULT_MAX_IMAGE_MEGAPIXELS,
) -> tuple[tf.data.Dataset, SourceInfo]:
    """``(dataset of (uint8 [H, W, 3] image, int32 label), info)`` for a ``--dataset`` string.

    ``supervised=True`` (fine-tuning, linear evaluation) requires at least two classes.
    """
    source = open_source(name, split, data_dir, max_image_megapixels=max_image_megapixels)
    info = source.info
    if supervised and info.num_classes < 2:
        found = "no class subfolders" if info.num_classes == 0 else "a single class"
        raise ValueError(
            f"{name} split {split!r} has {found}; supervised training needs labeled images "
            "in at least two classes (one subfolder per class)."
        )
    return source.dataset(), info
