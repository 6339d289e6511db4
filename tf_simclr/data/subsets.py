"""Labeled subsets for semi-supervised fine-tuning and distillation (SimCLRv2 section 4).

SimCLRv2 fine-tunes on 1% or 10% of ImageNet's labels. A subset here is drawn per class
(stratified: ``round(fraction * n_c)`` or ``labels_per_class`` examples of each class ``c``), so a
balanced split gives a balanced subset. Each class's examples are put in an order that depends only
on the seed and the class, and a subset takes a prefix of it: with the same seed, the 1% subset is
inside the 10% subset. The chosen examples are written one key per line to
``model_dir/labels_subset.txt`` and can be read back with ``labels_subset_file`` -- the same format
as the reference's ``1percent.txt`` / ``10percent.txt`` ImageNet lists (file names), which can be
passed directly for ``tfds:imagenet2012`` or a folder of ImageNet images.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow as tf

from tf_simclr.config import DataConfig
from tf_simclr.data.source_types import SourceInfo

SUBSET_FILE_NAME = "labels_subset.txt"
logger = logging.getLogger(__name__)


def select_subset(
    labels: np.ndarray,
    *,
    label_fraction: float = 0.0,
    labels_per_class: int = 0,
    seed: int = 0,
    num_classes: int | None = None,
) -> np.ndarray:
    """Sorted positions of a class-stratified, seeded, nested subset of ``labels``.

    Exactly one of ``label_fraction`` (in (0, 1]) and ``labels_per_class`` (>= 1) is set. Every
    class in ``range(num_classes)`` (default: the classes present) must keep at least one
    example, otherwise this raises with the smallest setting that works.
    """
    if bool(label_fraction) == bool(labels_per_class):
        raise ValueError("set exactly one of label_fraction and labels_per_class.")
    if label_fraction and not 0.0 < label_fraction <= 1.0:
        raise ValueError(f"label_fraction={label_fraction} must be in (0, 1].")
    labels = np.asarray(labels)
    if np.any(labels < 0):
        raise ValueError(
            "some examples have no label (-1); a labeled subset needs a labeled split "
            "(one subfolder per class)."
        )
    classes = range(num_classes) if num_classes else np.unique(labels)
    chosen = []
    for label in classes:
        members = np.flatnonzero(labels == label)
        count = len(members)
        take = int(np.floor(label_fraction * count + 0.5)) if label_fraction else labels_per_class
        if count == 0:
            raise ValueError(
                f"class {label} has 0 examples in this split, so no subset can label it; add "
                "examples of it or leave it out of the dataset."
            )
        if not 0 < take <= count:
            wanted = f"label_fraction={label_fraction}" if label_fraction else f"{take} per class"
            minimum = f"{0.5 / count:.4g}"
            raise ValueError(
                f"class {label} has {count} example(s), so {wanted} leaves it without labels or "
                f"asks for too many; use label_fraction >= {minimum} or labels_per_class <= "
                f"{count}."
            )
        order = np.random.default_rng([seed, int(label)]).permutation(count)
        chosen.append(members[order[:take]])
    return np.sort(np.concatenate(chosen))


def write_subset_file(path: str, keys: list[str], header: str = "") -> None:
    """One key per line; ``header`` lines are written as ``#`` comments."""
    with open(path, "w", encoding="utf-8") as handle:
        for line in filter(None, header.splitlines()):
            handle.write(f"# {line}\n")
        handle.writelines(f"{key}\n" for key in keys)


def read_subset_file(path: str) -> list[str]:
    """The keys of a subset file (blank lines and ``#`` comments ignored)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"labels_subset_file {path} does not exist.")
    with open(path, encoding="utf-8") as handle:
        keys = [line.strip() for line in handle]
    return [key for key in keys if key and not key.startswith("#")]


def resolve_keys(all_keys: list[str], wanted: list[str], path: str = "") -> np.ndarray:
    """Sorted positions of ``wanted`` keys in ``all_keys``; a key also matches by base name
    (``n01440764_10026.JPEG`` matches ``n01440764/n01440764_10026.JPEG``)."""
    lookup = {key: position for position, key in enumerate(all_keys)}
    for position, key in enumerate(all_keys):
        lookup.setdefault(os.path.basename(key), position)
    missing = [key for key in wanted if key not in lookup]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(wanted)} keys in {path or 'the subset file'} are not in the "
            f"split (e.g. {missing[:3]}); the file must list keys of this dataset and split."
        )
    return np.unique(np.array([lookup[key] for key in wanted], dtype=np.int64))


@dataclasses.dataclass(frozen=True)
class LabelSubset:
    """The labeled part of a training split.

    ``labeled``: ``(image, label)`` of the subset only (fine-tuning); ``with_label_mask``: every
    example of the split as ``(image, label, has_label)`` with label -1 outside the subset
    (distillation's labeled and unlabeled stream together). ``positions`` is None when every
    label is used.
    """

    labeled: tf.data.Dataset
    num_labeled: int
    with_label_mask: tf.data.Dataset
    positions: np.ndarray | None
    path: str | None


def _mask_stream(dataset: tf.data.Dataset, chosen: np.ndarray | None) -> tf.data.Dataset:
    if chosen is None:
        return dataset.map(lambda image, label: (image, label, tf.constant(True)))
    mask = tf.constant(chosen)

    def attach(index: tf.Tensor, pair: tuple[tf.Tensor, tf.Tensor]):
        image, label = pair
        has_label = mask[index]
        return image, tf.where(has_label, label, -1), has_label

    return dataset.enumerate().map(attach, num_parallel_calls=tf.data.AUTOTUNE)


def label_subset(
    dataset: tf.data.Dataset, info: SourceInfo, config: DataConfig, model_dir: str | None
) -> LabelSubset:
    """The labeled subset ``config`` asks for, of the split ``load_source`` gave as
    ``(dataset, info)``; a drawn subset is written to ``model_dir/labels_subset.txt`` (not
    with ``model_dir=None``: :func:`write_label_subset` writes it later)."""
    if not config.uses_label_subset:
        return LabelSubset(dataset, info.num_examples, _mask_stream(dataset, None), None, None)
    source = info.source
    if source is None:
        raise ValueError("info must come from load_source; it carries the split's index.")
    keys, labels = source.index()
    path = None
    if config.labels_subset_file:
        path = config.labels_subset_file
        positions = resolve_keys(keys, read_subset_file(path), path)
    else:
        positions = select_subset(
            labels,
            label_fraction=config.label_fraction,
            labels_per_class=config.labels_per_class,
            seed=config.seed,
            num_classes=info.num_classes or None,
        )
    counts = np.bincount(labels[positions], minlength=max(info.num_classes, 1))
    logger.info(
        "labeled subset of %s %s: %d examples (%d-%d per class)%s",
        info.name,
        info.split,
        len(positions),
        counts.min(),
        counts.max(),
        f", listed in {path}" if path else "",
    )
    chosen = np.zeros(info.num_examples, dtype=bool)
    chosen[positions] = True
    subset = LabelSubset(
        labeled=source.dataset(positions),
        num_labeled=len(positions),
        with_label_mask=_mask_stream(dataset, chosen),
        positions=positions,
        path=path,
    )
    if model_dir and not config.labels_subset_file:
        subset = dataclasses.replace(
            subset, path=write_label_subset(subset, info, config, model_dir)
        )
    return subset


def write_label_subset(
    subset: LabelSubset, info: SourceInfo, config: DataConfig, model_dir: str
) -> str:
    """Write the drawn ``subset`` of ``info``'s split to ``model_dir/labels_subset.txt`` (one key
    per line after a comment saying how it was drawn); returns the file's path."""
    keys, _ = info.source.index()
    os.makedirs(model_dir, exist_ok=True)
    path = os.path.join(model_dir, SUBSET_FILE_NAME)
    write_subset_file(
        path,
        [keys[position] for position in subset.positions],
        header=(
            f"tf-simclr labeled subset of {info.name} split {info.split}: "
            f"{subset.num_labeled} of {info.num_examples} examples\n"
            f"label_fraction={config.label_fraction} "
            f"labels_per_class={config.labels_per_class} seed={config.seed}"
        ),
    )
    logger.info("labeled subset listed in %s", path)
    return path
