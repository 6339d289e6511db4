"""TensorFlow Datasets: ``tfds:NAME`` (e.g. ``tfds:cifar10``, ``tfds:imagenet2012``,
``tfds:imagenet2012_subset/1pct``) read from an already prepared ``data_dir``.

Nothing is ever downloaded: the builder only reads what ``tfds build`` left in ``data_dir``; a
dataset that is not there is an error that says how to prepare it. Examples keep the split's file
order (``shuffle_files=False``) so that label subsets can refer to them; their keys are the
``file_name`` feature when the dataset has one (ImageNet: the names in the reference's
``1percent.txt``) and the example's position otherwise.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from tf_simclr.data.augment import to_rgb
from tf_simclr.data.source_types import Source, SourceInfo


def _missing_dataset_message(name: str, data_dir: str | None, error: Exception) -> str:
    where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
    return (
        f"TFDS dataset {name!r} is not prepared in {where} ({error}). tf-simclr never "
        f"downloads: prepare it on a machine with internet with `tfds build {name} "
        f"--data_dir DIR` (ImageNet also needs its tarballs in DIR/downloads/manual), copy DIR "
        "here and pass --data_dir=DIR."
    )


class TfdsSource(Source):
    """A split of a prepared TFDS dataset with an image feature and a ClassLabel feature."""

    def __init__(self, name: str, split: str, data_dir: str | None) -> None:
        try:
            self._builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError as error:
            raise ValueError(
                f"tfds:{name} is not a TFDS dataset name ({str(error).splitlines()[0]}); see "
                "https://www.tensorflow.org/datasets/catalog."
            ) from error
        self._name, self._split = name, split
        features = self._builder.info.features
        keys = self._builder.info.supervised_keys or ("image", "label")
        self._image_key, self._label_key = keys[0], keys[1]
        if self._image_key not in features or self._label_key not in features:
            raise ValueError(
                f"tfds:{name} has features {list(features)}; tf-simclr needs an image and a "
                "class label (supervised_keys or 'image'/'label')."
            )
        self._has_file_name = "file_name" in features
        records = self._read(decode_images=False)
        height, width, _ = features[self._image_key].shape
        self._info = SourceInfo(
            name=f"tfds:{name}",
            split=split,
            num_examples=self._count(records),
            num_classes=features[self._label_key].num_classes,
            class_names=tuple(features[self._label_key].names),
            image_shape=(height, width, 3),
            source=self,
        )

    def _read(self, decode_images: bool) -> tf.data.Dataset:
        decoders = None if decode_images else {self._image_key: tfds.decode.SkipDecoding()}
        try:
            return self._builder.as_dataset(
                split=self._split, shuffle_files=False, decoders=decoders
            )
        except AssertionError as error:  # tfds' "could not find data in data_dir"
            raise FileNotFoundError(
                _missing_dataset_message(self._name, self._builder.data_dir, error)
            ) from error

    def _count(self, records: tf.data.Dataset) -> int:
        splits = self._builder.info.splits
        if splits:
            return int(splits[self._split].num_examples)
        cardinality = int(records.cardinality())
        if cardinality >= 0:
            return cardinality
        return int(records.reduce(0, lambda count, _: count + 1))

    @property
    def info(self) -> SourceInfo:
        return self._info

    def dataset(self, positions: np.ndarray | None = None) -> tf.data.Dataset:
        image_key, label_key = self._image_key, self._label_key

        def pair(example: dict) -> tuple[tf.Tensor, tf.Tensor]:
            image = to_rgb(tf.cast(example[image_key], tf.uint8))
            return image, tf.cast(example[label_key], tf.int32)

        records = self._read(decode_images=True)
        if positions is not None:
            chosen = np.zeros(self._info.num_examples, dtype=bool)
            chosen[positions] = True
            chosen = tf.constant(chosen)
            records = records.enumerate().filter(lambda index, _: chosen[index])
            records = records.map(lambda _, example: example)
        return records.map(pair, num_parallel_calls=tf.data.AUTOTUNE)

    def index(self) -> tuple[list[str], np.ndarray]:
        label_key = self._label_key
        if self._has_file_name:
            fields = self._read(decode_images=False).map(
                lambda example: (example["file_name"], example[label_key])
            )
        else:
            fields = (
                self._read(decode_images=False)
                .enumerate()
                .map(lambda index, example: (tf.strings.as_string(index), example[label_key]))
            )
        keys: list[str] = []
        labels: list[np.ndarray] = []
        for names, batch_labels in fields.batch(8192).as_numpy_iterator():
            keys.extend(name.decode() for name in names)
            labels.append(batch_labels)
        return keys, np.concatenate(labels).astype(np.int32)
