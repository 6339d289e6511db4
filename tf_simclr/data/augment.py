"""SimCLR's data augmentation (SimCLR appendix A; SimCLRv2 section 4 uses the same recipe).

A pretraining view is: random crop of area U[0.08, 1] and aspect ratio in [3/4, 4/3] resized
(bicubic) to the output size, horizontal flip (p = 0.5), colour distortion (:mod:`.color`) and
Gaussian blur (:mod:`.blur`). Fine-tuning and distillation use crop + flip only. Evaluation takes
a centre crop of 87.5% of the shorter side and resizes it (no crop at or below the CIFAR size).

Every random choice is a function of an explicit stateless seed, so a batch is reproducible from
the pipeline seed and its position in the stream, whatever the parallelism. Augmentation comes in
two forms with identical results for the same boxes and random draws:

* per batch (:meth:`Augmenter.crop_batch`, :meth:`Augmenter.distort`), for small fixed-size
  images, where per-example overhead dominates: each image's crop-and-resize (and flip) is a pair
  of interpolation matrices with the same bicubic weights as ``tf.image.resize``, applied with two
  batched matmuls; colour and blur run as masked passes over the batch;
* per example (:meth:`Augmenter.crop_example`, :meth:`Augmenter.distort_example`), for large or
  variable-size images, where compute dominates: slice, then ``tf.image.resize`` (TF's 4-tap
  bicubic kernel is cheaper than dense matrices), and only the colour ops and blur drawn run.
"""

from __future__ import annotations

import math

import tensorflow as tf

from tf_simclr.config import AugmentConfig
from tf_simclr.data.blur import BLUR_UNIFORMS, RandomBlur
from tf_simclr.data.color import COLOR_UNIFORMS, ColorDistortion

CROP_ATTEMPTS = 10
# Layout of the uniform draws of one cropped view: [area x 10, log aspect x 10, y, x, flip].
CROP_UNIFORMS = 2 * CROP_ATTEMPTS + 3
# Batched (matrix) cropping costs O(side^3) per image and masked colour passes compute every op:
# above this side the per-example form wins (crossover measured in BENCHMARKS.md).
BATCHED_MAX_SIDE = 64
_KEYS_CUBIC_A = -0.5  # tf.image.resize(method="bicubic") uses Keys' kernel with a = -0.5
_RESIZE_TABLE_SIZE = 1024  # TF quantises the sub-pixel offset to 1/1024


def fold_seed(seed: tf.Tensor, *values: int | tf.Tensor) -> tf.Tensor:
    """A new stateless seed [2] derived from ``seed`` and each of ``values`` in turn."""
    for value in values:
        seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(value, tf.int64))
    return seed


def to_rgb(images: tf.Tensor) -> tf.Tensor:
    """Gives grayscale (1 channel) images 3 equal channels and drops the alpha of RGBA ones."""
    channels = images.shape[-1]
    if channels == 3:
        return images
    if channels == 1:
        return tf.repeat(images, 3, axis=-1)
    if channels == 4:
        return images[..., :3]
    raise ValueError(
        f"images have {channels} channels (shape {images.shape}); give 1, 3 or 4 channels "
        "with a static channel dimension."
    )


def sample_crop_boxes(
    uniforms: tf.Tensor,
    height: tf.Tensor,
    width: tf.Tensor,
    area_range: tuple[float, float],
    aspect_range: tuple[float, float],
) -> tf.Tensor:
    """Inception-style random crops (SimCLR appendix A): int32 boxes [B, 4] = (y, x, h, w).

    For each image, up to ``CROP_ATTEMPTS`` candidates with area fraction ~ U(area_range) and
    aspect ratio w / h log-uniform in ``aspect_range``; the first that fits the image wins,
    otherwise the whole image. The offset is uniform over the positions where the box fits.
    ``uniforms`` is [B, CROP_UNIFORMS]; ``height`` and ``width`` are [B] or scalars.
    """
    height = tf.cast(height, tf.float32) * tf.ones_like(uniforms[:, 0])
    width = tf.cast(width, tf.float32) * tf.ones_like(uniforms[:, 0])
    attempts = CROP_ATTEMPTS
    low, high = area_range
    area = (low + (high - low) * uniforms[:, :attempts]) * (height * width)[:, None]
    log_low, log_high = math.log(aspect_range[0]), math.log(aspect_range[1])
    ratio = tf.exp(log_low + (log_high - log_low) * uniforms[:, attempts : 2 * attempts])
    crop_h = tf.round(tf.sqrt(area / ratio))
    crop_w = tf.round(tf.sqrt(area * ratio))
    fits = (crop_h >= 1) & (crop_w >= 1) & (crop_h <= height[:, None]) & (crop_w <= width[:, None])
    first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
    found = tf.reduce_any(fits, axis=1)
    crop_h = tf.where(found, tf.gather(crop_h, first, batch_dims=1), height)
    crop_w = tf.where(found, tf.gather(crop_w, first, batch_dims=1), width)
    y = tf.floor(uniforms[:, 2 * attempts] * (height - crop_h + 1.0))
    x = tf.floor(uniforms[:, 2 * attempts + 1] * (width - crop_w + 1.0))
    return tf.cast(tf.stack([y, x, crop_h, crop_w], axis=1), tf.int32)


def center_crop_boxes(height: tf.Tensor, width: tf.Tensor, proportion: float) -> tf.Tensor:
    """The reference's evaluation crop: a centred square of ``proportion`` x the shorter side.

    ``height`` and ``width`` are int [B]; returns int32 boxes [B, 4] = (y, x, h, w).
    """
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    side = tf.cast(
        tf.math.rint(proportion * tf.cast(tf.minimum(height, width), tf.float32)), tf.int32
    )
    side = tf.maximum(side, 1)
    return tf.stack([(height - side + 1) // 2, (width - side + 1) // 2, side, side], axis=1)


def whole_image_boxes(height: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
    """Boxes [B, 4] covering the whole image (evaluation at or below the CIFAR size)."""
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    zeros = tf.zeros_like(height)
    return tf.stack([zeros, zeros, height, width], axis=1)


def _keys_cubic(distance: tf.Tensor) -> tf.Tensor:
    a = _KEYS_CUBIC_A
    d = tf.abs(distance)
    near = ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0
    far = ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a
    return tf.where(d <= 1.0, near, tf.where(d < 2.0, far, 0.0))


def bicubic_matrices(
    starts: tf.Tensor, lengths: tf.Tensor, in_size: int, out_size: int
) -> tf.Tensor:
    """Matrices [B, out_size, in_size] that crop ``[start, start + length)`` and resize it.

    Row ``o`` holds the weights ``tf.image.resize(method="bicubic")`` gives the crop's pixels for
    output pixel ``o``: half-pixel centres, Keys' cubic (a = -0.5) at the offset quantised to
    1/1024, taps outside the crop dropped and the rest renormalised.
    """
    starts = tf.cast(starts, tf.float32)
    lengths = tf.cast(lengths, tf.float32)
    scale = lengths / float(out_size)
    centers = (tf.range(out_size, dtype=tf.float32) + 0.5)[None, :] * scale[:, None] - 0.5
    base = tf.floor(centers)
    offset = tf.round((centers - base) * _RESIZE_TABLE_SIZE) / _RESIZE_TABLE_SIZE
    taps = tf.constant([-1.0, 0.0, 1.0, 2.0])
    weights = _keys_cubic(taps - offset[:, :, None])  # [B, out, 4]
    positions = base[:, :, None] + taps  # in crop coordinates
    inside = (positions >= 0.0) & (positions <= lengths[:, None, None] - 1.0)
    weights = tf.where(inside, weights, 0.0)
    weights = weights / tf.reduce_sum(weights, axis=2, keepdims=True)
    columns = tf.cast(
        starts[:, None, None] + tf.clip_by_value(positions, 0.0, lengths[:, None, None] - 1.0),
        tf.int32,
    )
    return tf.reduce_sum(weights[..., None] * tf.one_hot(columns, in_size), axis=2)


def crop_resize_batch(
    images: tf.Tensor, boxes: tf.Tensor, size: int, flip: tf.Tensor | None = None
) -> tf.Tensor:
    """Crops ``boxes`` out of uint8 [B, H, W, 3] (static H, W), bicubic-resizes to ``size``.

    ``flip`` (bool [B]) mirrors the chosen images left-right for free (reversed matrix rows).
    Returns float32 [B, size, size, 3] in [0, 1], equal to :func:`crop_resize_image` per image.
    """
    height, width = images.shape[1], images.shape[2]
    rows = bicubic_matrices(boxes[:, 0], boxes[:, 2], height, size)
    cols = bicubic_matrices(boxes[:, 1], boxes[:, 3], width, size)
    if flip is not None:
        cols = tf.where(flip[:, None, None], tf.reverse(cols, axis=[1]), cols)
    pixels = tf.cast(images, tf.float32) / 255.0
    resized = tf.einsum("boh,bhwc->bowc", rows, pixels)
    resized = tf.einsum("bpw,bowc->bopc", cols, resized)
    return tf.clip_by_value(resized, 0.0, 1.0)


def crop_resize_image(
    image: tf.Tensor, box: tf.Tensor, size: int, flip: tf.Tensor | bool = False
) -> tf.Tensor:
    """Crops ``box`` (y, x, h, w) out of one uint8 image [H, W, 3], bicubic-resizes to ``size``.

    Returns float32 [size, size, 3] in [0, 1], mirrored left-right if ``flip``. (A ``tf.cond``
    on the flip, not a ``tf.where`` with a broadcast scalar: that select alone costs more than
    the resize.)
    """
    crop = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    pixels = tf.cast(crop, tf.float32) / 255.0
    resized = tf.image.resize(pixels[None], [size, size], method="bicubic")[0]
    if isinstance(flip, bool):
        resized = tf.reverse(resized, axis=[1]) if flip else resized
    else:
        resized = tf.cond(flip, lambda: tf.reverse(resized, axis=[1]), lambda: resized)
    return tf.clip_by_value(tf.ensure_shape(resized, [size, size, 3]), 0.0, 1.0)


def augments_per_batch(image_shape: tf.TensorShape, image_size: int) -> bool:
    """Whether ``image_shape`` images are augmented per batch (else per example)."""
    height, width = image_shape[0], image_shape[1]
    return (
        height is not None
        and width is not None
        and max(height, width, image_size) <= BATCHED_MAX_SIDE
    )


class Augmenter:
    """SimCLR's augmentations for one :class:`AugmentConfig`; all randomness from seeds [2].

    ``crop_*`` with ``training=True`` draw random crops and flips; with ``training=False`` they
    give the evaluation crop. With ``augment_jit_compile`` the batched crop, the colour
    distortion and the blur run XLA-compiled (the random draws stay outside XLA, so both modes
    draw the same numbers). ``distort*`` apply colour distortion and blur (if enabled) to
    cropped pretraining views; fine-tuning, distillation and evaluation stop at the crop.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self.config = config
        self._color = ColorDistortion(config)
        self._crop_resize_batch = tf.function(
            crop_resize_batch, jit_compile=config.augment_jit_compile, autograph=False
        )
        self._blur = RandomBlur(config) if config.blur_enabled else None

    def _boxes(
        self, seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor, training: bool
    ) -> tuple[tf.Tensor, tf.Tensor | None]:
        config = self.config
        if not training:
            if config.eval_center_crop:
                return center_crop_boxes(height, width, config.eval_crop_proportion), None
            return whole_image_boxes(height, width), None
        uniforms = tf.random.stateless_uniform([tf.shape(height)[0], CROP_UNIFORMS], seed)
        boxes = sample_crop_boxes(
            uniforms, height, width, config.crop_area_range, config.crop_aspect_range
        )
        return boxes, uniforms[:, -1] < config.flip_probability

    def crop_example(self, image: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
        """One view [S, S, 3] float32 of one uint8 image [H, W, C] of any size."""
        image = to_rgb(image)
        shape = tf.shape(image)
        boxes, flip = self._boxes(seed, shape[0:1], shape[1:2], training)
        flip = False if flip is None else flip[0]
        return crop_resize_image(image, boxes[0], self.config.image_size, flip)

    def crop_batch(self, images: tf.Tensor, seed: tf.Tensor, training: bool) -> tf.Tensor:
        """One view [B, S, S, 3] float32 of each image of a uint8 batch [B, H, W, C]."""
        images = to_rgb(images)
        batch = tf.shape(images)[0]
        height = tf.fill([batch], images.shape[1])
        width = tf.fill([batch], images.shape[2])
        boxes, flip = self._boxes(seed, height, width, training)
        return self._crop_resize_batch(images, boxes, self.config.image_size, flip)

    def distort(self, views: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """Colour distortion, then blur if enabled, of a batch of cropped views [B, S, S, 3]."""
        batch = tf.shape(views)[0]
        color_uniforms = tf.random.stateless_uniform([batch, COLOR_UNIFORMS], fold_seed(seed, 0))
        views = self._color(views, color_uniforms)
        if self._blur is not None:
            blur_uniforms = tf.random.stateless_uniform([batch, BLUR_UNIFORMS], fold_seed(seed, 1))
            views = self._blur(views, blur_uniforms)
        return views

    def distort_example(self, view: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
        """The same distortion for one view [S, S, 3], skipping the ops that are not drawn."""
        color_uniforms = tf.random.stateless_uniform([COLOR_UNIFORMS], fold_seed(seed, 0))
        view = self._color.distort_example(view, color_uniforms)
        if self._blur is not None:
            blur_uniforms = tf.random.stateless_uniform([BLUR_UNIFORMS], fold_seed(seed, 1))
            view = self._blur.blur_example(view, blur_uniforms)
        return view
