"""SimCLR appendix A augmentations: ranges, frequencies and equality with tf.image / NumPy."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tf_simclr.config import AugmentConfig
from tf_simclr.data import augment, blur, color


def binomial_ok(successes: int, trials: int, probability: float) -> bool:
    """Within 5 standard deviations of the binomial mean (false alarm rate < 1e-6)."""
    sd = math.sqrt(trials * probability * (1.0 - probability))
    return abs(successes - trials * probability) <= 5.0 * sd


def uniforms(shape: tuple[int, ...], seed: int) -> tf.Tensor:
    return tf.constant(np.random.default_rng(seed).random(shape), tf.float32)


@pytest.mark.parametrize("height,width", [(32, 32), (48, 64)])
def test_crop_boxes_stay_inside_their_ranges_and_cover_them(height, width):
    count = 4000
    boxes = augment.sample_crop_boxes(
        uniforms((count, augment.CROP_UNIFORMS), seed=height),
        height,
        width,
        area_range=(0.08, 1.0),
        aspect_range=(3 / 4, 4 / 3),
    ).numpy()
    y, x, h, w = boxes.T.astype(float)
    assert (y >= 0).all() and (x >= 0).all()
    assert (y + h <= height).all() and (x + w <= width).all()
    # Sizes are rounded to whole pixels: allow half a pixel on each side.
    assert (h * w >= 0.08 * height * width - 0.5 * (h + w) - 0.25).all()
    assert ((w + 0.5) / (h - 0.5) >= 3 / 4).all() and ((w - 0.5) / (h + 0.5) <= 4 / 3).all()
    area, aspect = h * w / (height * width), w / h
    assert area.min() < 0.1 and area.max() > 0.9
    assert aspect.min() < 0.8 and aspect.max() > 1.25
    # Offsets cover the free space: both extremes occur for small crops.
    assert (y == 0).any() and (y + h == height).any()


def test_batched_crop_equals_tf_image_resize_of_each_crop():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 40, 50, 3), dtype=np.uint8)
    boxes = augment.sample_crop_boxes(
        uniforms((6, augment.CROP_UNIFORMS), 1), 40, 50, (0.08, 1.0), (0.75, 4 / 3)
    )
    flips = np.array([True, False, True, False, False, True])
    batched = augment.crop_resize_batch(tf.constant(images), boxes, 24, tf.constant(flips))
    for i, (y, x, h, w) in enumerate(boxes.numpy()):
        crop = images[i, y : y + h, x : x + w].astype(np.float32)
        expected = tf.image.resize(crop[None], [24, 24], method="bicubic")[0].numpy() / 255.0
        expected = np.clip(expected[:, ::-1] if flips[i] else expected, 0.0, 1.0)
        # Bound: bicubic is two 4-tap passes, sum|w| <= 1.25, of pixels <= 255:
        # (reduction_bound(4, 1.25 * 255) + reduction_bound(4, 1.25**2 * 255)) / 255 = 1.3e-6,
        # plus one division (eps/2 = 6e-8).
        np.testing.assert_allclose(batched[i].numpy(), expected, atol=2e-6)
        single = augment.crop_resize_image(tf.constant(images[i]), boxes[i], 24, flips[i])
        np.testing.assert_allclose(single.numpy(), expected, atol=2e-6)


def test_evaluation_crop_is_the_central_87_5_percent_of_the_shorter_side():
    image = np.random.default_rng(1).integers(0, 256, (100, 80, 3), dtype=np.uint8)
    view = augment.Augmenter(AugmentConfig(image_size=64)).crop_example(
        tf.constant(image), tf.constant([0, 0], tf.int64), training=False
    )
    # side = rint(0.875 * 80) = 70, offsets ((100 - 70 + 1) // 2, (80 - 70 + 1) // 2) = (15, 5)
    crop = image[15:85, 5:75].astype(np.float32)
    expected = tf.image.resize(crop[None], [64, 64], method="bicubic")[0].numpy() / 255.0
    np.testing.assert_allclose(view.numpy(), np.clip(expected, 0, 1), atol=2e-6)  # as above


def test_no_evaluation_crop_at_the_cifar_size():
    augmenter = augment.Augmenter(AugmentConfig(image_size=32))
    seed = tf.constant([0, 0], tf.int64)
    small = np.random.default_rng(2).integers(0, 256, (28, 28, 3), dtype=np.uint8)
    resized = augmenter.crop_example(tf.constant(small), seed, training=False)
    expected = tf.image.resize(small[None].astype(np.float32), [32, 32], method="bicubic")[0]
    # Bound: bicubic's two 4-tap passes, 1.3e-6 (see the crop test above).
    np.testing.assert_allclose(resized.numpy(), np.clip(expected.numpy() / 255, 0, 1), atol=2e-6)
    same = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    batch = augmenter.crop_batch(tf.constant(same), seed, training=False)
    np.testing.assert_allclose(batch.numpy(), same / 255.0, atol=1e-6)  # bound: one division


def reference_jitter(image, params, index, mode):
    """The reference's sequence of tf.image ops, one image at a time."""
    if not params.apply[index, 0, 0, 0]:
        result = image
    else:
        result = image
        for op in params.order[index].numpy():
            if op == color.BRIGHTNESS and mode == "simclrv2":
                result = result * params.brightness_scale[index, 0, 0, 0]
            elif op == color.BRIGHTNESS:
                result = tf.image.adjust_brightness(result, params.brightness_shift[index, 0, 0, 0])
            elif op == color.CONTRAST:
                result = tf.image.adjust_contrast(result, params.contrast[index, 0, 0, 0])
            elif op == color.SATURATION:
                result = tf.image.adjust_saturation(result, params.saturation[index, 0, 0, 0])
            else:
                result = tf.image.adjust_hue(result, params.hue[index, 0, 0, 0])
            result = tf.clip_by_value(result, 0.0, 1.0)
    if params.grayscale[index, 0, 0, 0]:
        result = tf.tile(tf.image.rgb_to_grayscale(result), [1, 1, 3])
    return result


@pytest.mark.parametrize("mode,jit,strength", [("simclrv2", True, 1.0), ("simclrv1", False, 0.5)])
def test_color_distortion_equals_the_reference_tf_image_sequence(mode, jit, strength):
    config = AugmentConfig(
        image_size=16,
        color_jitter_mode=mode,
        color_jitter_strength=strength,
        augment_jit_compile=jit,
    )
    images = uniforms((24, 12, 12, 3), 4)
    draws = uniforms((24, color.COLOR_UNIFORMS), 5)
    distorted = color.ColorDistortion(config)(images, draws)
    params = color.jitter_parameters(draws, config)
    assert params.apply.numpy().any() and not params.apply.numpy().all()
    assert params.grayscale.numpy().any()
    expected = tf.stack([reference_jitter(images[i], params, i, mode) for i in range(24)])
    # Bound: ~20 float32 operations on values in [0, 1] (RGB <-> HSV, products, clips) and
    # contrast's mean over the image, reduction_bound(pixels, 1) / pixels each: < 1e-5.
    np.testing.assert_allclose(distorted.numpy(), expected.numpy(), atol=1e-5)


def test_jitter_parameter_ranges_follow_the_strength():
    extremes = tf.constant([[0.0] * color.COLOR_UNIFORMS, [1.0] * color.COLOR_UNIFORMS])
    for strength in (1.0, 0.5):
        params = color.jitter_parameters(
            extremes, AugmentConfig(image_size=32, color_jitter_strength=strength)
        )
        low, high = max(0.0, 1 - 0.8 * strength), 1 + 0.8 * strength
        # Bound: a float32 affine map of 0 or 1, two roundings (rel 2 * eps/2 < 1e-6).
        for factor in (params.brightness_scale, params.contrast, params.saturation):
            np.testing.assert_allclose(factor.numpy().ravel(), [low, high], rtol=1e-6)
        np.testing.assert_allclose(params.hue.numpy().ravel(), [-0.2 * strength, 0.2 * strength])
    v1 = color.jitter_parameters(
        extremes, AugmentConfig(image_size=32, color_jitter_mode="simclrv1")
    )
    np.testing.assert_allclose(v1.brightness_shift.numpy().ravel(), [-0.8, 0.8], rtol=1e-6)  # same
    np.testing.assert_array_equal(v1.brightness_scale.numpy().ravel(), [1.0, 1.0])
    orders = color.jitter_parameters(uniforms((50, 10), 6), AugmentConfig(image_size=32)).order
    np.testing.assert_array_equal(np.sort(orders.numpy(), axis=1), np.tile(np.arange(4), (50, 1)))


def test_flip_jitter_grayscale_and_blur_frequencies_match_their_probabilities():
    count = 2000
    config = AugmentConfig(
        image_size=24, crop_area_range=(1.0, 1.0), crop_aspect_range=(1.0, 1.0), use_blur=True
    )
    augmenter = augment.Augmenter(config)
    ramp = np.broadcast_to(np.linspace(0, 255, 24, dtype=np.uint8)[None, :, None], (24, 24, 3))
    images = tf.constant(np.broadcast_to(ramp, (count, 24, 24, 3)).copy())
    crops = augmenter.crop_batch(images, tf.constant([1, 2], tf.int64), training=True).numpy()
    # Bound: an identity crop and a division (eps/2); neighbouring ramp values are 0.04 apart.
    flipped = np.all(np.isclose(crops, ramp[:, ::-1] / 255.0, atol=1e-5), axis=(1, 2, 3))
    unflipped = np.all(np.isclose(crops, ramp / 255.0, atol=1e-5), axis=(1, 2, 3))
    assert (flipped ^ unflipped).all()
    assert binomial_ok(int(flipped.sum()), count, 0.5)

    colorful = uniforms((count, 6, 6, 3), 7)
    distorted = color.ColorDistortion(config)(colorful, uniforms((count, 10), 8)).numpy()
    # Bound: grayscale writes one value to the 3 channels (exactly equal); a jitter moves pixels
    # by ~0.1, far above 1e-4, round-off of an identity by ~1e-7, far below.
    gray = np.all(np.abs(distorted - distorted[..., :1]) < 1e-6, axis=(1, 2, 3))
    changed = np.any(np.abs(distorted - colorful.numpy()) > 1e-4, axis=(1, 2, 3))
    assert binomial_ok(int(gray.sum()), count, 0.2)
    assert binomial_ok(int(changed[~gray].sum()), int((~gray).sum()), 0.8)

    noisy = uniforms((count, 24, 24, 3), 9)
    blurred = blur.RandomBlur(config)(noisy, uniforms((count, blur.BLUR_UNIFORMS), 10)).numpy()
    # Bound: a blur of noise moves pixels by ~0.1; the unblurred ones are copies (0).
    was_blurred = np.any(np.abs(blurred - noisy.numpy()) > 1e-5, axis=(1, 2, 3))
    assert binomial_ok(int(was_blurred.sum()), count, 0.5)


def numpy_blur(image: np.ndarray, sigma: float, radius: int) -> np.ndarray:
    taps = np.arange(-radius, radius + 1)
    kernel = np.exp(-(taps**2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(image, [(radius, radius), (radius, radius), (0, 0)], mode="symmetric")
    height, width = image.shape[:2]
    rows = sum(k * padded[:, i : i + width] for i, k in enumerate(kernel))
    return sum(k * rows[i : i + height] for i, k in enumerate(kernel))


@pytest.mark.parametrize("implementation", [blur.blur_shifted_sum, blur.blur_depthwise])
def test_blur_equals_numpy_lowers_high_frequencies_and_keeps_the_mean(implementation):
    radius = blur.blur_radius(64)
    assert (radius, blur.blur_radius(224), blur.blur_radius(32)) == (3, 11, 1)
    checker = (np.indices((64, 64)).sum(axis=0) % 2).astype(np.float32)
    images = np.stack([np.repeat(checker[..., None], 3, 2), uniforms((64, 64, 3), 11).numpy()])
    sigmas = np.array([1.5, 0.7], np.float32)
    blurred = implementation(tf.constant(images), tf.constant(sigmas), radius).numpy()
    for i in range(2):
        # Bound: two passes of 2 * radius + 1 = 7 taps, weights summing to 1, of values <= 1:
        # 2 * reduction_bound(7, 1) = 1.7e-6 against float64 NumPy (< 1e-5).
        np.testing.assert_allclose(
            blurred[i], numpy_blur(images[i], float(sigmas[i]), radius), atol=1e-5
        )
        # Bound: not round-off: the blur keeps the mean but for the borders' padding (~1e-3).
        assert abs(blurred[i].mean() - images[i].mean()) < 2e-3

    def high_frequency_energy(x):
        return float(np.sum(np.diff(x, axis=0) ** 2) + np.sum(np.diff(x, axis=1) ** 2))

    for i in range(2):
        assert high_frequency_energy(blurred[i]) < 0.3 * high_frequency_energy(images[i])


@pytest.mark.parametrize("shape", [(17, 23, 3), (300, 200, 3), (32, 32, 1), (40, 30, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_views_are_float32_in_unit_range_with_the_requested_shape(shape, training):
    config = AugmentConfig(image_size=40, use_blur=True)
    augmenter = augment.Augmenter(config)
    image = np.random.default_rng(12).integers(0, 256, shape, dtype=np.uint8)
    seed = tf.constant([3, 4], tf.int64)
    view = augmenter.crop_example(tf.constant(image), seed, training)
    assert view.shape == (40, 40, 3) and view.dtype == tf.float32
    distorted = augmenter.distort(tf.stack([view, view]), seed)
    for output in (view, distorted):
        assert float(tf.reduce_min(output)) >= 0.0 and float(tf.reduce_max(output)) <= 1.0
    if shape[-1] == 1:
        np.testing.assert_array_equal(view[..., 0].numpy(), view[..., 2].numpy())


def test_same_seed_same_views_and_jit_matches_graph_mode():
    images = tf.constant(np.random.default_rng(13).integers(0, 256, (8, 32, 32, 3), np.uint8))
    seed = tf.constant([5, 6], tf.int64)
    outputs = []
    for jit in (True, True, False):
        augmenter = augment.Augmenter(
            AugmentConfig(image_size=32, use_blur=True, augment_jit_compile=jit)
        )
        outputs.append(augmenter.distort(augmenter.crop_batch(images, seed, True), seed).numpy())
    np.testing.assert_array_equal(outputs[0], outputs[1])
    # Bound: XLA's kernels sum the blur's taps and contrast's image mean in another order:
    # the same chain as against NumPy above, < 1e-5 on values in [0, 1].
    np.testing.assert_allclose(outputs[0], outputs[2], atol=1e-5)
    other = augment.Augmenter(AugmentConfig(image_size=32)).crop_batch(
        images, tf.constant([5, 7], tf.int64), True
    )
    assert not np.allclose(other.numpy(), outputs[0])  # other crops differ by ~0.1


@pytest.mark.parametrize("jit", [True, False])
def test_per_example_distortion_equals_the_batched_one(jit):
    config = AugmentConfig(image_size=24, use_blur=True, augment_jit_compile=jit)
    images = uniforms((16, 24, 24, 3), 14)
    color_draws = uniforms((16, color.COLOR_UNIFORMS), 15)
    blur_draws = uniforms((16, blur.BLUR_UNIFORMS), 16)
    distortion, random_blur = color.ColorDistortion(config), blur.RandomBlur(config)
    batched = random_blur(distortion(images, color_draws), blur_draws).numpy()
    for i in range(16):
        single = distortion.distort_example(images[i], color_draws[i])
        single = random_blur.blur_example(single, blur_draws[i])
        np.testing.assert_allclose(single.numpy(), batched[i], atol=1e-5)  # the chain above
