"""The types every image source shares: :class:`SourceInfo`, :class:`Source`, in-memory splits.

Split strings are ``train`` / ``test`` (or any split name), optionally sliced like TFDS:
``train[:10%]``, ``train[1000:]``.
"""

from __future__ import annotations

import abc
import dataclasses
import re

import numpy as np
import tensorflow as tf

_SPLIT_PATTERN = re.compile(r"^([A-Za-z0-9_]+)(?:\[(-?\d*%?):(-?\d*%?)\])?$")


@dataclasses.dataclass(frozen=True)
class SourceInfo:
    """What a source holds. ``keys`` and ``labels`` (via :meth:`Source.index`) follow the order
    of the dataset; ``skipped`` counts files left out: unreadable, announcing more than
    ``max_image_megapixels`` in their header, or named in bytes that are not UTF-8."""

    name: str
    split: str
    num_examples: int
    num_classes: int
    skipped: int = 0
    class_names: tuple[str, ...] = ()
    image_shape: tuple[int | None, int | None, int] = (None, None, 3)
    source: Source | None = dataclasses.field(default=None, repr=False, compare=False)


class Source(abc.ABC):
    """A split of an image collection: its examples in a fixed order, and their identities."""

    @property
    @abc.abstractmethod
    def info(self) -> SourceInfo:
        """Counts and shape of the split."""

    @abc.abstractmethod
    def dataset(self, positions: np.ndarray | None = None) -> tf.data.Dataset:
        """``(image uint8 [H, W, 3], label int32)`` pairs, all or those at sorted ``positions``."""

    @abc.abstractmethod
    def index(self) -> tuple[list[str], np.ndarray]:
        """Stable keys (file names, or indices in the unsliced split) and int labels, in order."""


def parse_split(split: str, num_examples: int | None = None) -> tuple[str, slice]:
    """``"train[:10%]"`` -> ``("train", slice(0, n // 10))`` for a split of ``num_examples``.

    Percent bounds are rounded to the nearest example, like TFDS. Without ``num_examples`` only
    the syntax is checked and percentages are not resolved.
    """
    match = _SPLIT_PATTERN.match(split.replace(" ", ""))
    if not match:
        raise ValueError(
            f"split {split!r} is not understood; use a name like 'train' or 'test', optionally "
            "sliced like 'train[:10%]' or 'train[1000:2000]'."
        )
    base, start, stop = match.groups()

    def bound(text: str | None) -> int | None:
        if not text:
            return None
        if text.endswith("%"):
            if num_examples is None:
                return None
            return round(num_examples * int(text[:-1]) / 100.0)
        return int(text)

    return base, slice(bound(start), bound(stop))


class ArraySource(Source):
    """A split held in memory as uint8 [N, H, W, 3] images and int labels (after slicing)."""

    def __init__(
        self,
        name: str,
        split: str,
        images: np.ndarray,
        labels: np.ndarray,
        class_names: tuple[str, ...],
    ) -> None:
        _, selection = parse_split(split, len(images))
        self._keys = np.arange(len(images))[selection]
        self._images = images[selection]
        self._labels = labels[selection].astype(np.int32)
        if len(self._images) == 0:
            raise ValueError(f"split {split!r} of {name} is empty; widen the slice.")
        self._info = SourceInfo(
            name=name,
            split=split,
            num_examples=len(self._images),
            num_classes=len(class_names),
            class_names=class_names,
            image_shape=tuple(self._images.shape[1:]),
            source=self,
        )

    @property
    def info(self) -> SourceInfo:
        return self._info

    def dataset(self, positions: np.ndarray | None = None) -> tf.data.Dataset:
        if positions is None:
            return tf.data.Dataset.from_tensor_slices((self._images, self._labels))
        return tf.data.Dataset.from_tensor_slices(
            (self._images[positions], self._labels[positions])
        )

    def index(self) -> tuple[list[str], np.ndarray]:
        return [str(key) for key in self._keys], self._labels.copy()
