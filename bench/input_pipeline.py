"""Input-pipeline throughput: pretraining views per second (SimCLR appendix A augmentations).

Compares ``tf_simclr.data.build_dataset(phase="pretrain")`` with a straightforward reference-style
pipeline (one ``tf.data`` map per example: ``sample_distorted_bounding_box`` crop, bicubic
resize, flip, colour jitter in random order with ``tf.image`` ops, grayscale, and per-example
blur), on in-memory uint8 images of the output size. A view is one augmented image; a pretraining
example yields two. With ``--form_sides`` it also times the two forms of the augmentation (per
example, per batch) at other sides, which places ``augment.BATCHED_MAX_SIDE``.

    .venv/bin/python bench/input_pipeline.py --sizes 32,224 --seconds 20 --form_sides 32,64,96
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from tf_simclr.config import AugmentConfig
from tf_simclr.data import build_dataset
from tf_simclr.data.augment import Augmenter
from tf_simclr.data.blur import blur_depthwise, blur_radius


def reference_view(image: tf.Tensor, size: int, strength: float, blur: bool) -> tf.Tensor:
    """One pretraining view, op by op, as a per-example map would do it."""
    image = tf.image.convert_image_dtype(image, tf.float32)
    begin, extent, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        tf.zeros([1, 0, 4]),
        min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, extent)
    image = tf.image.resize(image[None], [size, size], method="bicubic")[0]
    image = tf.image.random_flip_left_right(image)
    delta = 0.8 * strength

    def jitter(x: tf.Tensor) -> tf.Tensor:
        ops = [
            lambda x: x * tf.random.uniform([], max(0.0, 1 - delta), 1 + delta),
            lambda x: tf.image.random_contrast(x, max(0.0, 1 - delta), 1 + delta),
            lambda x: tf.image.random_saturation(x, max(0.0, 1 - delta), 1 + delta),
            lambda x: tf.image.random_hue(x, 0.2 * strength),
        ]
        for position in tf.unstack(tf.random.shuffle(tf.range(4))):
            x = tf.switch_case(position, [lambda op=op, x=x: op(x) for op in ops])
            x = tf.clip_by_value(x, 0.0, 1.0)
        return x

    def maybe(probability: float, transform, x: tf.Tensor) -> tf.Tensor:
        return tf.cond(tf.random.uniform([]) < probability, lambda: transform(x), lambda: x)

    image = maybe(0.8, jitter, image)
    image = maybe(0.2, lambda x: tf.tile(tf.image.rgb_to_grayscale(x), [1, 1, 3]), image)
    if blur:
        sigma = tf.random.uniform([1], 0.1, 2.0)
        radius = blur_radius(size)
        image = maybe(0.5, lambda x: blur_depthwise(x[None], sigma, radius)[0], image)
    return tf.clip_by_value(tf.reshape(image, [size, size, 3]), 0.0, 1.0)


def reference_pipeline(images: np.ndarray, size: int, batch: int, blur: bool) -> tf.data.Dataset:
    def two_views(image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return reference_view(image, size, 1.0, blur), reference_view(image, size, 1.0, blur)

    dataset = tf.data.Dataset.from_tensor_slices(images).shuffle(1024).repeat()
    dataset = dataset.map(two_views, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def tf_simclr_pipeline(images: np.ndarray, size: int, batch: int, blur: bool) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(len(images), np.int32)))
    return build_dataset(
        dataset,
        len(images),
        phase="pretrain",
        global_batch_size=batch,
        augment=AugmentConfig(image_size=size, use_blur=blur),
        training=True,
        shuffle_buffer=1024,
    )


def measure(datasets: list[tf.data.Dataset], views_per_batch: int, seconds: float) -> list[float]:
    """Views per second of each dataset, timed in alternating one-second rounds (so that a
    change of machine load hits all of them alike), after a warm-up (tracing, XLA compilation,
    filling the prefetch buffer)."""
    iterators = [iter(dataset) for dataset in datasets]
    for iterator in iterators:
        warm_up_end = time.perf_counter() + max(3.0, seconds / 4)
        while time.perf_counter() < warm_up_end:
            next(iterator)
    batches, elapsed = [0] * len(iterators), [0.0] * len(iterators)
    for _ in range(max(1, round(seconds))):
        for number, iterator in enumerate(iterators):
            start = time.perf_counter()
            while time.perf_counter() - start < 1.0:
                next(iterator)
                batches[number] += 1
            elapsed[number] += time.perf_counter() - start
    return [count * views_per_batch / time for count, time in zip(batches, elapsed, strict=True)]


def one_form(images: np.ndarray, size: int, batch: int, per_batch: bool) -> tf.data.Dataset:
    """Two pretraining views per image, all per batch or all per example (no blur)."""
    augmenter = Augmenter(AugmentConfig(image_size=size, use_blur=False))
    key = tf.constant([0, 0], tf.int64)
    dataset = tf.data.Dataset.from_tensor_slices(images).repeat().enumerate()

    def views(index: tf.Tensor, image: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        crop, distort = augmenter.crop_example, augmenter.distort_example
        if per_batch:
            index = index[0]
            crop, distort = augmenter.crop_batch, augmenter.distort
        seeds = [tf.random.experimental.stateless_fold_in(key, index + i) for i in range(4)]
        first = distort(crop(image, seeds[0], True), seeds[1])
        return first, distort(crop(image, seeds[2], True), seeds[3])

    if per_batch:
        dataset = dataset.batch(batch, drop_remainder=True)
    dataset = dataset.map(views, num_parallel_calls=tf.data.AUTOTUNE)
    if not per_batch:
        dataset = dataset.batch(batch, drop_remainder=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="32,224", help="output sides, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="timed seconds per row")
    parser.add_argument("--form_sides", default="", help="e.g. 32,64,96: per-batch vs per-example")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(
        f"# {platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}, "
        f"{args.seconds:g} s per pipeline and row"
    )
    print("| side | blur | reference per-example map | tf_simclr | speed-up |")
    print("|---:|:---:|---:|---:|---:|")
    for size in (int(text) for text in args.sizes.split(",") if text):
        batch = 128 if size <= 64 else 32
        images = rng.integers(0, 256, (4096 if size <= 64 else 256, size, size, 3), np.uint8)
        for blur in (False, True):
            builds = (reference_pipeline, tf_simclr_pipeline)
            datasets = [build(images, size, batch, blur) for build in builds]
            rates = measure(datasets, 2 * batch, args.seconds)
            print(
                f"| {size} | {'yes' if blur else 'no'} | {rates[0]:,.0f} | {rates[1]:,.0f} "
                f"| {rates[1] / rates[0]:.1f}x |",
                flush=True,
            )
    if args.form_sides:
        print("\n| side | per-example augmentation (views/s) | per-batch augmentation (views/s) |")
        print("|---:|---:|---:|")
        for size in (int(text) for text in args.form_sides.split(",")):
            images = rng.integers(0, 256, (1024, size, size, 3), np.uint8)
            datasets = [one_form(images, size, 64, per_batch) for per_batch in (False, True)]
            rates = measure(datasets, 128, args.seconds / 2)
            print(f"| {size} | {rates[0]:,.0f} | {rates[1]:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
