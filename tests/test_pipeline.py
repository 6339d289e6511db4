"""Input pipelines: the element contract of each phase, eval exactness, determinism, replicas."""

import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tolerances import reduction_bound

from tf_simclr.config import AugmentConfig
from tf_simclr.data import build_dataset, build_distributed_dataset, combine_streams, load_source

SYNTHETIC = "synthetic:size=16,count=64,classes=4"
IDENTITY_CROP = dict(crop_area_range=(1.0, 1.0), crop_aspect_range=(1.0, 1.0), flip_probability=0)


def labeled_constants(count: int, size: int = 16) -> tuple[tf.data.Dataset, np.ndarray]:
    """Images whose every pixel is 20 x their label, so pairing can be checked after batching."""
    labels = np.arange(count, dtype=np.int32) % 10
    images = np.broadcast_to(
        (labels * 20).astype(np.uint8)[:, None, None, None], (count, size, size, 3)
    )
    return tf.data.Dataset.from_tensor_slices((images.copy(), labels)), labels


def dynamic_shape(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """The same images with an unknown static height and width (the per-example crop path)."""
    return dataset.map(lambda image, label: (image[: tf.shape(image)[0]], label))


def test_pretrain_batches_hold_two_different_views_of_each_image():
    dataset, info = load_source(SYNTHETIC)
    batch = next(
        iter(
            build_dataset(
                dataset,
                info.num_examples,
                phase="pretrain",
                global_batch_size=8,
                augment=AugmentConfig(image_size=16),
                training=True,
                seed=1,
            )
        )
    )
    assert sorted(batch) == ["label", "view1", "view2"]
    for key in ("view1", "view2"):
        assert batch[key].shape == (8, 16, 16, 3) and batch[key].dtype == tf.float32
        assert float(tf.reduce_min(batch[key])) >= 0.0 and float(tf.reduce_max(batch[key])) <= 1.0
    assert batch["label"].shape == (8,) and batch["label"].dtype == tf.int32
    differences = tf.reduce_mean(tf.abs(batch["view1"] - batch["view2"]), axis=[1, 2, 3])
    # Bound: two independent augmentations differ by ~0.1 per pixel; equal views by 0.
    assert bool(tf.reduce_all(differences > 1e-3))


@pytest.mark.parametrize("dynamic", [False, True])
def test_finetune_batches_keep_images_and_labels_together(dynamic):
    dataset, labels = labeled_constants(50)
    if dynamic:
        dataset = dynamic_shape(dataset)
    stream = build_dataset(
        dataset,
        50,
        phase="finetune",
        global_batch_size=10,
        augment=AugmentConfig(image_size=16, **IDENTITY_CROP),
        training=True,
        seed=2,
        deterministic=True,  # otherwise batches of epochs 2 and 3 may swap places in the stream
    )
    seen = []
    for batch in stream.take(10):  # two epochs: the stream repeats
        assert sorted(batch) == ["image", "label"] and batch["image"].shape == (10, 16, 16, 3)
        means = tf.reduce_mean(batch["image"], axis=[1, 2, 3]).numpy()
        # Bound: a float32 mean of 16 * 16 * 3 values <= 1, reduction_bound(768, 768) / 768,
        # times 255 (labels are 20 apart).
        atol = 255.0 * reduction_bound(768, 768.0) / 768
        np.testing.assert_allclose(means * 255.0, batch["label"].numpy() * 20.0, atol=atol)
        seen.extend(batch["label"].numpy())
    np.testing.assert_array_equal(np.bincount(seen), 2 * np.bincount(labels))


def test_distill_batches_carry_has_label():
    dataset, _ = labeled_constants(40)
    pairs = build_dataset(
        dataset,
        40,
        phase="distill",
        global_batch_size=8,
        augment=AugmentConfig(image_size=16),
        training=True,
    )
    batch = next(iter(pairs))
    assert sorted(batch) == ["has_label", "image", "label"]
    assert batch["has_label"].dtype == tf.bool and bool(tf.reduce_all(batch["has_label"]))

    unlabeled = dataset.map(lambda image, label: (image, label + 100))
    mixed = combine_streams(dataset, unlabeled, labeled_weight=0.3, seed=4)
    stream = build_dataset(
        mixed,
        80,
        phase="distill",
        global_batch_size=16,
        augment=AugmentConfig(image_size=16),
        training=True,
        seed=5,
    )
    flags, labels = [], []
    for batch in stream.take(25):
        flags.extend(batch["has_label"].numpy())
        labels.extend(batch["label"].numpy())
    flags, labels = np.array(flags), np.array(labels)
    trials = len(flags)
    # Bound: 5 binomial standard deviations (false alarm rate < 1e-6); exact integer counts.
    assert abs(flags.sum() - 0.3 * trials) <= 5 * np.sqrt(trials * 0.3 * 0.7)
    assert (labels[~flags] == -1).all() and (labels[flags] < 10).all()


@pytest.mark.parametrize("dynamic", [False, True])
def test_eval_reads_every_example_once_in_order_and_keeps_the_last_batch(dynamic):
    dataset, info = load_source("synthetic:size=16,count=70,classes=4")
    images = np.stack([image for image, _ in dataset.as_numpy_iterator()])
    labels = np.array([label for _, label in dataset.as_numpy_iterator()])
    source = dynamic_shape(dataset) if dynamic else dataset
    batches = list(
        build_dataset(
            source,
            info.num_examples,
            phase="eval",
            global_batch_size=32,
            augment=AugmentConfig(image_size=16),
            training=False,
        )
    )
    assert [len(batch["label"]) for batch in batches] == [32, 32, 6]
    assert all(sorted(batch) == ["image", "label"] for batch in batches)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels)
    got = np.concatenate([b["image"] for b in batches])
    # Bound: one float32 division of values <= 1, eps/2 = 6e-8 (within 1e-6).
    np.testing.assert_allclose(got, images / 255.0, atol=1e-6)


def test_images_of_different_sizes_and_grayscale_streams_work(tmp_path):
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(30, 50, 3), (64, 20, 3), (40, 40, 3), (21, 33, 3)]):
        path = tmp_path / "tree" / f"class{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, shape, np.uint8)).save(path)
    dataset, info = load_source(f"folder:{tmp_path / 'tree'}")
    for phase, training, keys in (
        ("pretrain", True, ("view1", "view2")),
        ("eval", False, ("image",)),
    ):
        batch = next(
            iter(
                build_dataset(
                    dataset,
                    info.num_examples,
                    phase=phase,
                    global_batch_size=4,
                    augment=AugmentConfig(image_size=48),
                    training=training,
                )
            )
        )
        for key in keys:
            assert batch[key].shape == (4, 48, 48, 3)
    gray = tf.data.Dataset.from_tensor_slices(
        (np.zeros((6, 20, 20, 1), np.uint8) + 99, np.zeros(6))
    )
    batch = next(
        iter(
            build_dataset(
                gray,
                6,
                phase="eval",
                global_batch_size=6,
                augment=AugmentConfig(image_size=20),
                training=False,
            )
        )
    )
    assert batch["image"].shape == (6, 20, 20, 3) and batch["label"].dtype == tf.int32
    # Bound: one float32 division (and a resize of a constant image), eps/2 of values <= 1.
    np.testing.assert_allclose(batch["image"].numpy(), 99 / 255.0, atol=1e-6)


def first_batches(count: int, **kwargs) -> list[np.ndarray]:
    dataset, info = load_source(SYNTHETIC)
    stream = build_dataset(
        dataset,
        info.num_examples,
        phase="pretrain",
        global_batch_size=8,
        augment=AugmentConfig(image_size=16, augment_jit_compile=False),
        training=True,
        deterministic=True,
        **kwargs,
    )
    return [batch["view1"].numpy() for batch in stream.take(count)]


def test_deterministic_runs_repeat_and_seeds_change_the_stream():
    reference = first_batches(2, seed=7)
    for again in (first_batches(2, seed=7), first_batches(2, seed=7, cache=True)):
        for a, b in zip(reference, again, strict=True):
            np.testing.assert_array_equal(a, b)
    for other in (first_batches(1, seed=8), first_batches(1, seed=7, start_step=100)):
        assert not np.allclose(reference[0], other[0])  # other crops: differences of ~0.1


@pytest.mark.parametrize("size", [16, 96], ids=["per-batch", "per-example"])
def test_deterministic_resume_replays_the_uninterrupted_stream(size):
    dataset, info = load_source(f"synthetic:size={size},count=64,classes=4")

    def batches(start_step: int, count: int) -> list[np.ndarray]:
        stream = build_dataset(
            dataset,
            info.num_examples,
            phase="pretrain",
            global_batch_size=8,
            augment=AugmentConfig(image_size=size, augment_jit_compile=False),
            training=True,
            seed=3,
            deterministic=True,
            start_step=start_step,
        )
        return [b["view2"].numpy() for b in stream.take(count)]

    uninterrupted = batches(0, 12)  # 12 batches of 8 cross the 64-image epoch boundary
    resumed = batches(7, 5)
    for expected, got in zip(uninterrupted[7:], resumed, strict=True):
        np.testing.assert_array_equal(got, expected)


def test_each_replica_gets_its_share_of_the_global_batch(two_replica_strategy):
    dataset, info = load_source(SYNTHETIC)
    stream = build_distributed_dataset(
        two_replica_strategy,
        dataset,
        info.num_examples,
        phase="pretrain",
        global_batch_size=8,
        augment=AugmentConfig(image_size=16),
        training=True,
        seed=1,
    )
    batch = next(iter(stream))
    for key, shape in (("view1", (4, 16, 16, 3)), ("label", (4,))):
        parts = two_replica_strategy.experimental_local_results(batch[key])
        assert len(parts) == 2 and all(part.shape == shape for part in parts)


def test_distributed_eval_sees_every_example_exactly_once(two_replica_strategy):
    dataset, labels = labeled_constants(13)
    stream = build_distributed_dataset(
        two_replica_strategy,
        dataset,
        13,
        phase="eval",
        global_batch_size=8,
        augment=AugmentConfig(image_size=16),
        training=False,
    )
    seen = []
    for batch in stream:
        for part in two_replica_strategy.experimental_local_results(batch["label"]):
            assert part.shape[0] <= 4
            seen.extend(part.numpy())
    np.testing.assert_array_equal(np.sort(seen), np.sort(labels))


def test_bad_arguments_are_clear_errors(two_replica_strategy):
    dataset, _ = load_source(SYNTHETIC)
    common = dict(augment=AugmentConfig(image_size=16), global_batch_size=8)
    with pytest.raises(ValueError, match="multiple of 2"):
        build_distributed_dataset(
            two_replica_strategy,
            dataset,
            64,
            phase="pretrain",
            training=True,
            augment=common["augment"],
            global_batch_size=7,
        )
    with pytest.raises(ValueError, match="phase="):
        build_dataset(dataset, 64, phase="linear", training=True, **common)
    with pytest.raises(ValueError, match="training=False"):
        build_dataset(dataset, 64, phase="eval", training=True, **common)
    with pytest.raises(ValueError, match="uint8"):
        floats = dataset.map(lambda image, label: (tf.cast(image, tf.float32), label))
        build_dataset(floats, 64, phase="finetune", training=True, **common)
    with pytest.raises(ValueError, match="empty"):
        build_dataset(dataset, 0, phase="finetune", training=True, **common)


def test_training_on_a_single_image_warns_and_runs_on_copies_of_it(one_device_strategy, caplog):
    image = np.arange(16 * 16 * 3, dtype=np.uint8).reshape(1, 16, 16, 3)
    dataset = tf.data.Dataset.from_tensor_slices((image, np.zeros(1, np.int32)))
    settings = dict(global_batch_size=4, augment=AugmentConfig(image_size=16, **IDENTITY_CROP))
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        stream = build_distributed_dataset(
            one_device_strategy, dataset, 1, phase="finetune", training=True, **settings
        )
    assert "the training data holds a single image" in caplog.text
    assert "training will see only copies of it" in caplog.text
    batch = next(iter(stream))
    expected = np.broadcast_to(image / np.float32(255), (4, 16, 16, 3))
    # Bound: one float32 division of uint8 values (the identity crop resizes nothing).
    np.testing.assert_allclose(batch["image"].numpy(), expected, atol=1e-6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tf_simclr"):
        build_distributed_dataset(
            one_device_strategy, dataset, 1, phase="eval", training=False, **settings
        )
    assert "single image" not in caplog.text  # evaluating one image is fine
