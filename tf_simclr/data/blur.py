"""Random Gaussian blur of a batch, one sigma per image (SimCLR appendix A).

SimCLR blurs each view with probability 0.5, sigma uniform in [0.1, 2.0] and a kernel of 10% of
the image side, as a separable convolution. The reference code draws one sigma per *batch*; here
every image has its own. Borders are padded symmetrically (the reference pads with zeros, which
darkens a band of ``radius`` pixels), so the blur preserves the mean intensity.

Two equivalent formulations of "a different kernel per image in one op":

* a weighted sum of the ``2r + 1`` shifted copies of the padded batch, per axis, which XLA fuses
  into one pass (used when ``augment_jit_compile``);
* a depthwise convolution after moving the batch into the channels, so that each channel has its
  image's kernel (used without XLA, where the shifted sum would materialise every copy).
"""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.config import AugmentConfig

BLUR_UNIFORMS = 2  # [apply, sigma]


def blur_radius(image_size: int) -> int:
    """Kernel radius: the kernel spans 10% of the side, ``2 * ((size // 10) // 2) + 1`` taps."""
    return (image_size // 10) // 2


def gaussian_kernels(sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Normalised 1-D Gaussian kernels [B, 2 * radius + 1] for ``sigma`` [B]."""
    taps = tf.range(-radius, radius + 1, dtype=tf.float32)
    kernels = tf.exp(-tf.square(taps)[None, :] / (2.0 * tf.square(sigma)[:, None]))
    return kernels / tf.reduce_sum(kernels, axis=1, keepdims=True)


def _pad(images: tf.Tensor, radius: int) -> tf.Tensor:
    return tf.pad(images, [[0, 0], [radius, radius], [radius, radius], [0, 0]], mode="SYMMETRIC")


def blur_shifted_sum(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable blur of [B, H, W, C] as weighted sums of shifted slices (fuses under XLA)."""
    height, width = images.shape[1], images.shape[2]
    kernels = gaussian_kernels(sigma, radius)[:, :, None, None, None]
    padded = _pad(images, radius)
    rows = tf.add_n([kernels[:, i] * padded[:, :, i : i + width, :] for i in range(2 * radius + 1)])
    return tf.add_n([kernels[:, i] * rows[:, i : i + height, :, :] for i in range(2 * radius + 1)])


def blur_depthwise(images: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
    """Separable blur of [B, H, W, C] as one depthwise convolution with batch-in-channels."""
    shape = tf.shape(images)
    batch, height, width, channels = shape[0], shape[1], shape[2], shape[3]
    kernels = tf.repeat(gaussian_kernels(sigma, radius), channels, axis=0)  # [B*C, K]
    stacked = tf.reshape(tf.transpose(images, [1, 2, 0, 3]), [1, height, width, -1])
    horizontal = tf.transpose(kernels)[None, :, :, None]  # [1, K, B*C, 1]
    vertical = tf.transpose(kernels)[:, None, :, None]  # [K, 1, B*C, 1]
    blurred = tf.nn.depthwise_conv2d(_pad(stacked, radius), horizontal, [1, 1, 1, 1], "VALID")
    blurred = tf.nn.depthwise_conv2d(blurred, vertical, [1, 1, 1, 1], "VALID")
    blurred = tf.reshape(blurred, [height, width, batch, channels])
    return tf.transpose(blurred, [2, 0, 1, 3])


class RandomBlur:
    """Blurs each float32 image with probability ``blur_probability``, sigma ~ U(sigma range).

    ``random_blur(images, uniforms)`` blurs a batch [B, H, W, 3] (``uniforms`` [B, 2]);
    ``random_blur.blur_example(image, uniforms)`` one image [H, W, 3] (``uniforms`` [2]), and
    only when it is drawn. The kernel radius comes from the (static) image side: a 224 px view
    gets 23 taps, a 32 px view 3.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self._config = config
        jit = config.augment_jit_compile
        self._separable_blur = blur_shifted_sum if jit else blur_depthwise
        self._blur_batch = tf.function(self._blur_selected, jit_compile=jit, autograph=False)
        self._blur_example = tf.function(self._blur_one, jit_compile=jit, autograph=False)

    def _sigma(self, uniforms: tf.Tensor) -> tf.Tensor:
        low, high = self._config.blur_sigma_range
        return low + (high - low) * uniforms

    def _blur_selected(self, images: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        radius = blur_radius(min(images.shape[1], images.shape[2]))
        if radius == 0:
            return images
        blurred = self._separable_blur(images, self._sigma(uniforms[:, 1]), radius)
        chosen = uniforms[:, 0][:, None, None, None] < self._config.blur_probability
        return tf.clip_by_value(tf.where(chosen, blurred, images), 0.0, 1.0)

    def __call__(self, images: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        return self._blur_batch(images, uniforms)

    def blur_example(self, image: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        return self._blur_example(image, uniforms)

    def _blur_one(self, image: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        radius = blur_radius(min(image.shape[0], image.shape[1]))
        if radius == 0:
            return image

        def blurred() -> tf.Tensor:
            sigma = self._sigma(uniforms[1:2])
            return tf.clip_by_value(self._separable_blur(image[None], sigma, radius)[0], 0.0, 1.0)

        return tf.cond(uniforms[0] < self._config.blur_probability, blurred, lambda: image)
