"""Image sources: counts, shapes, labels, bad files and clear errors (no download, ever)."""

import gzip
import logging
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from tf_simclr.data import load_source, open_source, validate_dataset_name
from tf_simclr.data.fashion_mnist import DEFAULT_DIR
from tf_simclr.data.source_types import parse_split
from tf_simclr.data.synthetic import generate, parse_options


def all_labels(dataset: tf.data.Dataset) -> np.ndarray:
    return np.concatenate([labels for _, labels in dataset.batch(20000).as_numpy_iterator()])


def independent_idx(path: str) -> np.ndarray:
    """A second reading of an IDX file: big-endian header, then bytes."""
    with gzip.open(path, "rb") as handle:
        data = handle.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data[4 + 4 * dims :], np.uint8).reshape(shape)


def test_fashion_mnist_counts_shapes_and_label_histogram():
    for split, count, prefix in (("train", 60000, "train"), ("test", 10000, "t10k")):
        dataset, info = load_source("fashion_mnist", split=split)
        assert (info.num_examples, info.num_classes, info.skipped) == (count, 10, 0)
        assert dataset.element_spec[0].shape == (28, 28, 3)
        assert dataset.element_spec[0].dtype == tf.uint8
        labels = all_labels(dataset)
        np.testing.assert_array_equal(np.bincount(labels), [count // 10] * 10)
        expected = independent_idx(os.path.join(DEFAULT_DIR, f"{prefix}-labels-idx1-ubyte.gz"))
        np.testing.assert_array_equal(labels, expected)
    images = independent_idx(os.path.join(DEFAULT_DIR, "t10k-images-idx3-ubyte.gz"))
    first = np.stack([image for image, _ in dataset.take(3).as_numpy_iterator()])
    np.testing.assert_array_equal(first, np.repeat(images[:3, :, :, None], 3, axis=3))


def test_fashion_mnist_missing_files_say_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_source("fashion_mnist", data_dir=str(tmp_path))


def test_split_slices_follow_tfds_syntax():
    assert parse_split("train[:10%]", 60000) == ("train", slice(None, 6000))
    assert parse_split("test[100:200]", 10000) == ("test", slice(100, 200))
    _, info = load_source("fashion_mnist", split="test[:10%]")
    assert info.num_examples == 1000
    with pytest.raises(ValueError, match="not understood"):
        parse_split("train[::2]")


def test_synthetic_is_deterministic_sized_and_learnable():
    dataset, info = load_source("synthetic:size=16,count=600,classes=4", split="train")
    assert (info.num_examples, info.num_classes) == (600, 4)
    assert dataset.element_spec[0].shape == (16, 16, 3)
    again, _ = load_source("synthetic:size=16,count=600,classes=4", split="train")
    first = np.stack([x for x, _ in dataset.take(5).as_numpy_iterator()])
    np.testing.assert_array_equal(
        first, np.stack([x for x, _ in again.take(5).as_numpy_iterator()])
    )
    np.testing.assert_array_equal(np.bincount(all_labels(dataset)), [150] * 4)
    options = parse_options("size=16,count=600,classes=4")
    train, test = generate(options, "train"), generate(options, "test")
    assert len(test[0]) == 150 and not np.array_equal(train[0][:150], test[0])

    def edges(images):  # a linear model on gradient magnitudes must beat chance by far
        gray = images.astype(np.float32).mean(-1) / 255.0
        rows, cols = np.abs(np.diff(gray, axis=1)), np.abs(np.diff(gray, axis=2))
        flat = [rows.reshape(len(gray), -1), cols.reshape(len(gray), -1), np.ones((len(gray), 1))]
        return np.concatenate(flat, axis=1)

    x, y = edges(train[0]), np.eye(4)[train[1]]
    weights = np.linalg.solve(x.T @ x + 10.0 * np.eye(x.shape[1]), x.T @ y)
    accuracy = np.mean(np.argmax(edges(test[0]) @ weights, axis=1) == test[1])
    assert accuracy > 0.5  # chance is 0.25


def test_dataset_names_are_validated():
    for good in ("fashion_mnist", "synthetic", "synthetic:size=8", "tfds:cifar10", "folder:/x"):
        validate_dataset_name(good)
    for bad in ("mnist", "tfds:", "folder:", "synthetic:size=big", "synthetic:colour=1"):
        with pytest.raises(ValueError):
            validate_dataset_name(bad)


def save(path, array, mode=None, **kwargs):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, **kwargs)


@pytest.fixture
def image_tree(tmp_path):
    """train/{cat,dog} with good images of many kinds and sizes plus two bad files; test/."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    save(str(cat / "photo.jpg"), rng.integers(0, 255, (20, 30, 3), np.uint8), quality=90)
    save(str(cat / "alpha.png"), rng.integers(0, 255, (10, 11, 4), np.uint8), "RGBA")
    save(str(cat / "gray.png"), rng.integers(0, 255, (9, 8), np.uint8), "L")
    save(str(cat / "deep" / "deep16.png"), rng.integers(0, 65535, (12, 14), np.uint16))
    save(str(dog / "palette.gif"), rng.integers(0, 255, (7, 9, 3), np.uint8))
    save(str(dog / "bitmap.bmp"), rng.integers(0, 255, (13, 5, 3), np.uint8))
    Image.fromarray(rng.integers(0, 255, (6, 6), np.uint8), "L").convert("1").save(dog / "1bit.bmp")
    jpeg = (cat / "photo.jpg").read_bytes()
    (dog / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (dog / "notes.png").write_text("this is not an image")
    (dog / "readme.txt").write_text("ignored: not an image extension")
    save(str(root / "test" / "cat" / "a.png"), rng.integers(0, 255, (8, 8, 3), np.uint8))
    save(str(root / "test" / "dog" / "b.png"), rng.integers(0, 255, (8, 8, 3), np.uint8))
    return root


def test_folder_loads_good_images_and_counts_the_bad_ones(image_tree, caplog):
    with caplog.at_level(logging.WARNING):
        dataset, info = load_source(f"folder:{image_tree}", split="train", supervised=True)
    assert (info.num_examples, info.num_classes, info.skipped) == (7, 2, 2)
    assert info.class_names == ("cat", "dog")
    assert "truncated.jpg" in caplog.text and "notes.png" in caplog.text
    examples = list(dataset.as_numpy_iterator())
    shapes = [image.shape for image, _ in examples]
    cats = [(10, 11, 3), (9, 8, 3), (20, 30, 3), (12, 14, 3)]
    assert shapes == [*cats, (6, 6, 3), (13, 5, 3), (7, 9, 3)]
    assert [label for _, label in examples] == [0, 0, 0, 0, 1, 1, 1]
    deep = Image.open(image_tree / "train" / "cat" / "deep" / "deep16.png")
    # Bound: a 16-bit value / 257 rounded or truncated to 8 bits, within one level.
    np.testing.assert_allclose(
        examples[3][0][..., 0], np.asarray(deep, np.float64) / 257.0, atol=1.0
    )
    rgba = np.asarray(Image.open(image_tree / "train" / "cat" / "alpha.png"))
    np.testing.assert_array_equal(examples[0][0], rgba[..., :3])
    gray = examples[1][0]
    np.testing.assert_array_equal(gray[..., 0], gray[..., 2])
    keys, labels = open_source(f"folder:{image_tree}").index()
    assert keys[4] == os.path.join("dog", "1bit.bmp") and list(labels) == [0] * 4 + [1] * 3
    _, test_info = load_source(f"folder:{image_tree}", split="test")
    assert test_info.num_examples == 2


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        load_source(f"folder:{tmp_path / 'empty'}")
    save(str(tmp_path / "one" / "only" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    _, info = load_source(f"folder:{tmp_path / 'one'}")
    assert info.num_classes == 1
    with pytest.raises(ValueError, match="at least two classes"):
        load_source(f"folder:{tmp_path / 'one'}", supervised=True)
    with pytest.raises(FileNotFoundError, match="no test/ subfolder"):
        load_source(f"folder:{tmp_path / 'one'}", split="test")


def test_flat_folder_is_unlabeled_for_pretraining(tmp_path):
    for i in range(3):
        save(str(tmp_path / "flat" / f"{i}.png"), np.full((5, 6, 3), i, np.uint8))
    dataset, info = load_source(f"folder:{tmp_path / 'flat'}")
    assert (info.num_examples, info.num_classes) == (3, 0)
    assert [label for _, label in dataset.as_numpy_iterator()] == [-1, -1, -1]
    with pytest.raises(ValueError, match="no class subfolders"):
        load_source(f"folder:{tmp_path / 'flat'}", supervised=True)


def test_tfds_source_reads_prepared_data_as_rgb_pairs():
    with tfds.testing.mock_data(num_examples=12):
        dataset, info = load_source("tfds:mnist", split="train", data_dir="/nonexistent")
        assert (info.num_examples, info.num_classes) == (12, 10)
        assert info.image_shape == (28, 28, 3)
        images, labels = next(dataset.batch(12).as_numpy_iterator())
        assert images.shape == (12, 28, 28, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], images[..., 1])
        assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() < 10
        keys, index_labels = info.source.index()
        assert keys == [str(i) for i in range(12)]
        np.testing.assert_array_equal(index_labels, labels)
        subset = next(info.source.dataset(np.array([1, 5])).batch(12).as_numpy_iterator())
        np.testing.assert_array_equal(subset[1], labels[[1, 5]])


def test_tfds_never_downloads_and_says_how_to_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
        load_source("tfds:cifar10", split="train", data_dir=str(tmp_path))
    assert not (tmp_path / "downloads").exists()
    with pytest.raises(ValueError, match="not a TFDS dataset"):
        load_source("tfds:no_such_dataset_here", data_dir=str(tmp_path))
