"""Colour distortion, every image with its own random draw (SimCLR appendix A).

SimCLR's colour distortion of strength ``s``: with probability 0.8 apply brightness, contrast,
saturation (each with factor range ``0.8 s``) and hue (``0.2 s``) in a random order, clipping to
[0, 1] after each; then with probability 0.2 convert to grayscale (kept as 3 channels). The
reference implementation chains ``tf.image`` ops; here each op is a closed form that XLA fuses:

* brightness, contrast and saturation are all per-pixel affine maps ``y = a x + b``:
  brightness ``a = f`` (SimCLRv2, multiplicative) or ``b = delta`` (SimCLRv1, additive),
  contrast ``a = f, b = (1 - f) mean`` with the per-channel image mean (as
  ``tf.image.adjust_contrast``), and saturation ``a = k, b = (1 - k) V`` with ``V`` the
  per-pixel channel maximum and ``k = min(f, V / (V - min))`` (exactly
  ``tf.image.adjust_saturation``: scale S in HSV and clip it at 1);
* hue rotates H in HSV and keeps S and V, written in closed form on the RGB hexcone (exactly
  ``tf.image.adjust_hue``).

Two forms with the same result for the same random draws:

* batched (:meth:`ColorDistortion.__call__`, small images): one pass applies, for every image,
  the affine op it has at a given position (or none). Hue is costly, so it is evaluated once:
  three masked affine passes apply the ops an image has *before* its hue position, then hue, then
  three passes apply the ops it has *after* it. Each pass is a separate (optionally XLA-compiled)
  function so that the per-image contrast mean of one pass is materialised, not recomputed;
* per example (:meth:`ColorDistortion.distort_example`, large images): ``tf.switch_case`` runs
  only the four drawn ops (or none), in one compiled function.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import tensorflow as tf

from tf_simclr.config import AugmentConfig

# Layout of the uniform draws of one view: [apply jitter, brightness, contrast, saturation, hue,
# 4 order keys, grayscale].
COLOR_UNIFORMS = 10
BRIGHTNESS, CONTRAST, SATURATION, HUE = 0, 1, 2, 3
GRAYSCALE_WEIGHTS = (0.2989, 0.5870, 0.1140)  # those of tf.image.rgb_to_grayscale


class JitterParameters(NamedTuple):
    """Per-image colour-jitter parameters, each shaped [B, 1, 1, 1] (``order`` is [B, 4])."""

    apply: tf.Tensor  # bool: jitter this image at all (p = color_jitter_probability)
    brightness_scale: tf.Tensor  # a of brightness (1 in simclrv1 mode)
    brightness_shift: tf.Tensor  # b of brightness (0 in simclrv2 mode)
    contrast: tf.Tensor
    saturation: tf.Tensor
    hue: tf.Tensor  # delta in turns, applied as H <- (H + delta) mod 1
    order: tf.Tensor  # int32 [B, 4]: order[b, k] is the op at position k
    grayscale: tf.Tensor  # bool (p = grayscale_probability)


def jitter_parameters(uniforms: tf.Tensor, config: AugmentConfig) -> JitterParameters:
    """Maps ``uniforms`` [B, COLOR_UNIFORMS] in [0, 1) to the parameters of SimCLR's jitter.

    Ranges follow the reference: brightness factor U[max(0, 1 - 0.8s), 1 + 0.8s] (simclrv2) or
    offset U[-0.8s, 0.8s] (simclrv1); contrast and saturation U[max(0, 1 - 0.8s), 1 + 0.8s];
    hue U[-0.2s, 0.2s]; the order is a uniformly random permutation.
    """
    strength = config.color_jitter_strength

    def column(index: int) -> tf.Tensor:
        return uniforms[:, index][:, None, None, None]

    def factor(index: int, max_delta: float) -> tf.Tensor:
        low = max(0.0, 1.0 - max_delta)
        return low + (1.0 + max_delta - low) * column(index)

    bright = 0.8 * strength
    if config.color_jitter_mode == "simclrv2":
        scale, shift = factor(1, bright), tf.zeros_like(column(1))
    else:
        scale, shift = tf.ones_like(column(1)), bright * (2.0 * column(1) - 1.0)
    hue = 0.2 * strength
    return JitterParameters(
        apply=column(0) < config.color_jitter_probability,
        brightness_scale=scale,
        brightness_shift=shift,
        contrast=factor(2, 0.8 * strength),
        saturation=factor(3, 0.8 * strength),
        hue=hue * (2.0 * column(4) - 1.0),
        order=tf.argsort(uniforms[:, 5:9], axis=1),
        grayscale=column(9) < config.grayscale_probability,
    )


def _channel_max_min(images: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    red, green, blue = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    return (
        tf.maximum(tf.maximum(red, green), blue),
        tf.minimum(tf.minimum(red, green), blue),
    )


def adjust_brightness(images: tf.Tensor, scale: tf.Tensor, shift: tf.Tensor) -> tf.Tensor:
    """``scale * x + shift`` (SimCLRv2: scale; SimCLRv1: shift), clipped to [0, 1]."""
    return tf.clip_by_value(scale * images + shift, 0.0, 1.0)


def adjust_contrast(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``tf.image.adjust_contrast`` (about each channel's image mean), clipped to [0, 1]."""
    mean = tf.reduce_mean(images, axis=[-3, -2], keepdims=True)
    return tf.clip_by_value(factor * (images - mean) + mean, 0.0, 1.0)


def adjust_saturation(images: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """``tf.image.adjust_saturation``: S <- min(factor S, 1) in HSV, i.e. every channel moves
    towards or away from V = max by ``k = min(factor, V / (V - min))``."""
    value, minimum = _channel_max_min(images)
    scale = tf.minimum(factor, value / tf.maximum(value - minimum, 1e-12))
    return tf.clip_by_value(value - scale * (value - images), 0.0, 1.0)


def affine_step(images: tf.Tensor, op: tf.Tensor, params: JitterParameters) -> tf.Tensor:
    """Per image, brightness (op 0), contrast (1), saturation (2) or, for other ops, nothing.

    ``op`` is int32 [B, 1, 1, 1]. Every image pays for the three ops (one fused XLA pass); the
    per-example path (:meth:`ColorDistortion.distort_example`) runs only the one it needs.
    """
    brightness = adjust_brightness(images, params.brightness_scale, params.brightness_shift)
    contrast = adjust_contrast(images, params.contrast)
    saturation = adjust_saturation(images, params.saturation)
    return tf.where(
        op == BRIGHTNESS,
        brightness,
        tf.where(op == CONTRAST, contrast, tf.where(op == SATURATION, saturation, images)),
    )


def _wrap_sextant(hue6: tf.Tensor) -> tf.Tensor:
    """Wraps hue measured in sextants (0..6) back into [0, 6) after a shift of less than 6."""
    return tf.where(hue6 >= 6.0, hue6 - 6.0, tf.where(hue6 < 0.0, hue6 + 6.0, hue6))


def adjust_hue(images: tf.Tensor, delta: tf.Tensor) -> tf.Tensor:
    """Rotates the HSV hue of every image by its ``delta`` (turns, [B, 1, 1, 1]).

    Same result as ``tf.image.adjust_hue`` image by image, in closed form on the hexcone: with
    V = max, C = max - min and H in sextants, channel k of the output is
    ``V - C clip(min(t, 4 - t), 0, 1)`` with ``t = (k + H) mod 6`` and k = 5, 3, 1 for R, G, B.
    """
    red, green, blue = images[..., 0:1], images[..., 1:2], images[..., 2:3]
    value, minimum = _channel_max_min(images)
    chroma = value - minimum
    inverse = 1.0 / tf.where(chroma > 0, chroma, 1.0)
    hue6 = tf.where(
        value == red,
        (green - blue) * inverse,
        tf.where(value == green, (blue - red) * inverse + 2.0, (red - green) * inverse + 4.0),
    )
    # |delta| <= 0.5 turn for strength <= 2.5; larger shifts wrap around the circle.
    hue6 = _wrap_sextant(_wrap_sextant(hue6) + 6.0 * (delta - tf.round(delta)))
    channels = []
    for offset in (5.0, 3.0, 1.0):
        t = _wrap_sextant(offset + hue6)
        channels.append(value - chroma * tf.clip_by_value(tf.minimum(t, 4.0 - t), 0.0, 1.0))
    return tf.clip_by_value(tf.concat(channels, axis=-1), 0.0, 1.0)


def to_grayscale(images: tf.Tensor) -> tf.Tensor:
    """Luma with the weights of ``tf.image.rgb_to_grayscale``, repeated over 3 channels."""
    luma = tf.reduce_sum(images * tf.constant(GRAYSCALE_WEIGHTS), axis=-1, keepdims=True)
    return tf.repeat(luma, 3, axis=-1)


class ColorDistortion:
    """SimCLR's random colour distortion (appendix A) of float32 images in [0, 1].

    ``distortion(images, uniforms)`` distorts a batch [B, H, W, 3] with masked passes (best for
    small images); ``distortion.distort_example(image, uniforms)`` one image [H, W, 3], running
    only the ops it draws (best for large images). Both give the same result for the same
    ``uniforms`` ([B, COLOR_UNIFORMS] or [COLOR_UNIFORMS]). ``config.augment_jit_compile``
    XLA-compiles every op.
    """

    def __init__(self, config: AugmentConfig) -> None:
        self._config = config
        jit = config.augment_jit_compile
        self._affine = tf.function(affine_step, jit_compile=jit, autograph=False)
        self._hue = tf.function(adjust_hue, jit_compile=jit, autograph=False)
        self._finish = tf.function(self._select_and_gray, jit_compile=jit, autograph=False)
        self._distort_example = tf.function(self._distort_one, jit_compile=jit, autograph=False)

    @staticmethod
    def _select_and_gray(
        images: tf.Tensor, jittered: tf.Tensor, apply: tf.Tensor, grayscale: tf.Tensor
    ) -> tf.Tensor:
        result = tf.where(apply, jittered, images)
        return tf.where(grayscale, to_grayscale(result), result)

    def __call__(self, images: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        params = jitter_parameters(uniforms, self._config)
        # Images that are not jittered run every pass as the identity.
        order = tf.where(params.apply[:, :, 0, 0], params.order, -1)[:, :, None, None, None]
        hue_position = tf.argmax(tf.cast(params.order == HUE, tf.int32), axis=1)
        hue_position = tf.cast(hue_position, tf.int32)[:, None, None, None]
        jittered = images
        for position in range(3):
            op = tf.where(position < hue_position, order[:, position], -1)
            jittered = self._affine(jittered, op, params)
        jittered = self._hue(jittered, tf.where(params.apply, params.hue, 0.0))
        for position in range(1, 4):
            op = tf.where(position > hue_position, order[:, position], -1)
            jittered = self._affine(jittered, op, params)
        return self._finish(images, jittered, params.apply, params.grayscale)

    def distort_example(self, image: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        """Distorts one image [H, W, 3] with its ``uniforms`` [COLOR_UNIFORMS]."""
        return self._distort_example(image, uniforms)

    def _distort_one(self, image: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
        # One compiled function; XLA keeps the conditionals, so only the drawn ops run.
        params = jitter_parameters(uniforms[None], self._config)
        first = tf.nest.map_structure(lambda tensor: tensor[0], params)

        def jitter() -> tf.Tensor:
            result = image
            for position in range(4):
                branches = [
                    functools.partial(
                        adjust_brightness, result, first.brightness_scale, first.brightness_shift
                    ),
                    functools.partial(adjust_contrast, result, first.contrast),
                    functools.partial(adjust_saturation, result, first.saturation),
                    functools.partial(adjust_hue, result, first.hue),
                ]
                result = tf.switch_case(first.order[position], branches)
            return result

        jittered = tf.cond(first.apply[0, 0, 0], jitter, lambda: image)
        return tf.cond(first.grayscale[0, 0, 0], lambda: to_grayscale(jittered), lambda: jittered)
