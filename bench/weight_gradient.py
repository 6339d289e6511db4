"""The weight gradient of a 3x3 "same" convolution three ways, at the study networks' shapes.

``Conv2DBackpropFilter`` (what autodiff runs) against the same gradient written as a forward
convolution (the padded input transposed to ``[C, H+2, W+2, N]`` convolved with the output
gradient transposed to ``[H, W, N, K]``) and as ``extract_patches`` + ``MatMul``. Each is checked
against the first (relative error < 5% in bfloat16), then timed in alternating rounds; the best
round is reported as GFLOP/s (2 x N x H x W x 9 x C x K). Shapes: ResNet-18 at widths 0.25 and
0.5, 28 px with the CIFAR stem, a batch of 256 images = 512 views.

    .venv/bin/python bench/weight_gradient.py
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf
from machine import describe_machine, machine_line

# (feature-map side, input channels, output channels) of the 3x3 stride-1 convolutions.
SHAPES = ((28, 16, 16), (14, 32, 32), (7, 64, 64), (4, 128, 128), (4, 256, 256))


def backprop_filter(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """TensorFlow's weight-gradient kernel."""
    channels, filters = x.shape[-1], dy.shape[-1]
    return tf.raw_ops.Conv2DBackpropFilter(
        input=x,
        filter_sizes=[3, 3, channels, filters],
        out_backprop=dy,
        strides=[1, 1, 1, 1],
        padding="SAME",
    )


def as_forward_convolution(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """dW[i, j, c, k] = sum over n, h, w of x_pad[n, h+i, w+j, c] dy[n, h, w, k]: a valid
    convolution whose batch is the input channels and whose filter is the output gradient."""
    padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    out = tf.nn.conv2d(
        tf.transpose(padded, [3, 1, 2, 0]), tf.transpose(dy, [1, 2, 0, 3]), 1, "VALID"
    )
    return tf.transpose(out, [1, 2, 0, 3])


def as_matmul(x: tf.Tensor, dy: tf.Tensor) -> tf.Tensor:
    """The patches of every output position (kh, kw, c order) times the output gradient."""
    channels, filters = x.shape[-1], dy.shape[-1]
    patches = tf.image.extract_patches(x, [1, 3, 3, 1], [1, 1, 1, 1], [1, 1, 1, 1], "SAME")
    product = tf.matmul(
        tf.reshape(patches, [-1, 9 * channels]), tf.reshape(dy, [-1, filters]), transpose_a=True
    )
    return tf.reshape(product, [3, 3, channels, filters])


WAYS = {
    "Conv2DBackpropFilter": backprop_filter,
    "forward convolution": as_forward_convolution,
    "patches + MatMul": as_matmul,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--views", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {machine_line(describe_machine())}", flush=True)
    print("| feature map, channels | " + " | ".join(WAYS) + " |")
    print("|---|" + "---:|" * len(WAYS))
    for side, channels, filters in SHAPES:
        x = tf.cast(tf.random.normal([args.views, side, side, channels], seed=1), tf.bfloat16)
        dy = tf.cast(tf.random.normal([args.views, side, side, filters], seed=2), tf.bfloat16)
        functions = {name: tf.function(way) for name, way in WAYS.items()}
        reference = tf.cast(backprop_filter(x, dy), tf.float32)
        for name, function in functions.items():
            error = tf.reduce_max(tf.abs(tf.cast(function(x, dy), tf.float32) - reference))
            relative = float(error / tf.reduce_max(tf.abs(reference)))
            if relative > 0.05:
                raise AssertionError(f"{name} differs from Conv2DBackpropFilter by {relative}")
        best = dict.fromkeys(functions, float("inf"))
        for _ in range(args.rounds):
            for name, function in functions.items():
                start = time.perf_counter()
                for _ in range(3):
                    function(x, dy)
                function(x, dy).numpy()
                best[name] = min(best[name], (time.perf_counter() - start) / 4)
        flops = 2 * args.views * side * side * 9 * channels * filters
        rates = " | ".join(f"{flops / seconds / 1e9:.0f} GFLOP/s" for seconds in best.values())
        print(f"| {side}x{side}, {channels} | {rates} |", flush=True)


if __name__ == "__main__":
    main()
