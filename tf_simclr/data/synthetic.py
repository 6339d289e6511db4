"""Deterministic procedural images whose class can be learned, for tests and offline runs.

A class is a (shape, texture) pair: disk, square, triangle, cross, ring or diamond, filled solid,
with horizontal or vertical stripes, or a checkerboard (up to 24 classes). Position, size, colours
and pixel noise are random, so colour alone never gives the class away -- the same reason SimCLR
needs colour distortion (SimCLR section 3). Everything is a function of the options and the split,
so two loads give the same images. Options come from the dataset name:
``synthetic:size=32,count=1024,classes=4,seed=0,test_count=256``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_simclr.data.source_types import ArraySource, parse_split

SHAPES = ("disk", "square", "triangle", "cross", "ring", "diamond")
TEXTURES = ("solid", "hstripes", "vstripes", "checker")
_SPLIT_STREAMS = {"train": 0, "test": 1}


@dataclasses.dataclass(frozen=True)
class SyntheticOptions:
    """Image side, number of training images, classes, seed and test images (0 = count // 4)."""

    size: int = 32
    count: int = 1024
    classes: int = 4
    seed: int = 0
    test_count: int = 0

    def __post_init__(self) -> None:
        limit = len(SHAPES) * len(TEXTURES)
        if not 8 <= self.size <= 1024:
            raise ValueError(f"synthetic size={self.size} must be in [8, 1024].")
        if not 2 <= self.classes <= limit:
            raise ValueError(f"synthetic classes={self.classes} must be in [2, {limit}].")
        if self.count < self.classes or self.test_count < 0:
            raise ValueError(
                f"synthetic count={self.count} must be >= classes={self.classes} and "
                f"test_count={self.test_count} >= 0."
            )

    def split_count(self, split: str) -> int:
        if split == "train":
            return self.count
        return self.test_count or max(self.count // 4, self.classes)


def parse_options(text: str) -> SyntheticOptions:
    """``"size=32,count=512"`` -> SyntheticOptions; an empty string gives the defaults."""
    fields = {field.name for field in dataclasses.fields(SyntheticOptions)}
    values: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        if key not in fields or not value.strip().isdigit():
            raise ValueError(
                f"synthetic option {item!r} is not understood; use key=integer with keys "
                f"{sorted(fields)}, e.g. synthetic:size=32,count=512,classes=4."
            )
        values[key] = int(value)
    return SyntheticOptions(**values)


def _shape_mask(shape: str, dy: np.ndarray, dx: np.ndarray, radius: float) -> np.ndarray:
    distance = np.hypot(dy, dx)
    if shape == "disk":
        return distance < radius
    if shape == "square":
        return np.maximum(np.abs(dy), np.abs(dx)) < 0.8 * radius
    if shape == "triangle":
        return (dy < 0.7 * radius) & (np.abs(dx) < 0.5 * (dy + radius))
    if shape == "cross":
        arm = radius / 3.0
        return ((np.abs(dx) < arm) & (np.abs(dy) < radius)) | (
            (np.abs(dy) < arm) & (np.abs(dx) < radius)
        )
    if shape == "ring":
        return (distance < radius) & (distance > 0.55 * radius)
    return np.abs(dy) + np.abs(dx) < radius  # diamond


def _texture(texture: str, y: np.ndarray, x: np.ndarray, period: float) -> np.ndarray:
    if texture == "solid":
        return np.ones_like(y)
    if texture == "hstripes":
        return (np.floor(y / period) % 2).astype(np.float32)
    if texture == "vstripes":
        return (np.floor(x / period) % 2).astype(np.float32)
    return ((np.floor(y / period) + np.floor(x / period)) % 2).astype(np.float32)


def generate(options: SyntheticOptions, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, S, S, 3] and balanced labels int32 [N] of ``train`` or ``test``."""
    if split not in _SPLIT_STREAMS:
        raise ValueError(f"synthetic data has splits 'train' and 'test', not {split!r}.")
    count, size = options.split_count(split), options.size
    rng = np.random.default_rng([options.seed, _SPLIT_STREAMS[split]])
    labels = rng.permutation(np.arange(count) % options.classes).astype(np.int32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    for index, label in enumerate(labels):
        shape = SHAPES[label % len(SHAPES)]
        texture = TEXTURES[label // len(SHAPES)]
        radius = size * rng.uniform(0.25, 0.4)
        center = size / 2 + rng.uniform(-0.15, 0.15, size=2) * size
        mask = _shape_mask(shape, y - center[0], x - center[1], radius)
        background, foreground = rng.uniform(0.0, 1.0, size=(2, 3))
        foreground = np.where(np.abs(foreground - background) < 0.3, 1.0 - background, foreground)
        fill = _texture(texture, y, x, max(size / 8.0, 1.0))[..., None]
        shaded = foreground * (0.45 + 0.55 * fill)
        image = np.where(mask[..., None], shaded, background)
        image = image + rng.normal(0.0, 0.03, size=image.shape)
        images[index] = np.clip(np.round(image * 255.0), 0, 255).astype(np.uint8)
    return images, labels


def synthetic_source(argument: str, split: str) -> ArraySource:
    """The ``synthetic[:options]`` source for ``split`` (``train``, ``test``, or a slice)."""
    options = parse_options(argument)
    base, _ = parse_split(split)
    images, labels = generate(options, base)
    names = tuple(
        f"{SHAPES[label % len(SHAPES)]}-{TEXTURES[label // len(SHAPES)]}"
        for label in range(options.classes)
    )
    name = f"synthetic:{argument}" if argument else "synthetic"
    return ArraySource(name, split, images, labels, names)
