"""Cost of the TF-Hub module's input check (``tf_simclr.hub.checked_images``): images per
second of the module's forward pass with and without the check, in the same process.

The module's ``__call__`` runs ``model.endpoints(checked_images(images))``. Both functions below
are that computation traced with ``tf.function`` on the same model (one with the check, one
without), timed in alternating rounds so that a load change on the machine hits both alike; the
exported module itself (loaded with ``hub.load``) is timed too, as a check that the in-process
function is what consumers run.

On a shared machine wall-clock rates swing by 2-5x between rounds (other jobs take the cores), far
more than the check can cost. So TensorFlow runs on ``--threads`` threads (1 by default) and the
rate that decides is images per CPU-second of this process (``time.process_time``), which waiting
for a core does not inflate; the wall-clock rate is reported too. Both are medians over the
rounds, with the ratio with/without check.

    .venv/bin/python bench/hub_input_check.py --configs=r18_w0.25_32,r50_224 --rounds=30
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf
import tensorflow_hub as tf_hub

from tf_simclr import ModelConfig, SimCLRModel, hub


@dataclasses.dataclass(frozen=True)
class Setting:
    """A model, an input side and a batch size."""

    config: ModelConfig
    side: int
    batch: int


SETTINGS = {
    # Fashion-MNIST-sized inputs on the demo's network: the least compute per pixel, so the
    # largest relative cost of a check that reads every pixel once.
    "r18_w0.25_32": Setting(
        ModelConfig(resnet_depth=18, width_multiplier=0.25, cifar_stem=True, num_classes=0),
        32,
        256,
    ),
    "r50_224": Setting(ModelConfig(resnet_depth=50, width_multiplier=1, num_classes=0), 224, 16),
}


def images_per_second(function, images: tf.Tensor, calls: int) -> tuple[float, float]:
    """``(images per CPU-second, images per wall-clock second)`` over ``calls`` calls."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(calls):
        function(images)["final_avg_pool"].numpy()
    count = calls * int(images.shape[0])
    return count / (time.process_time() - cpu), count / (time.perf_counter() - wall)


def measure(setting: Setting, rounds: int, calls: int) -> dict[str, dict[str, float]]:
    """Median images per CPU-second and per wall-clock second of the three functions over
    ``rounds`` alternating rounds, and the ratios with/without check."""
    # The module's own configuration: plain batch norm, float32.
    model = SimCLRModel(hub.export_config(setting.config)).build_for_size(setting.side)
    parts = ("encoder", "projection_head")
    functions = {
        "without check": tf.function(
            lambda x: model.endpoints(x, training=False, parts=parts), autograph=False
        ),
        "with check": tf.function(
            lambda x: model.endpoints(hub.checked_images(x), training=False, parts=parts),
            autograph=False,
        ),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = hub.save_hub_module(model, os.path.join(folder, "module"))
        module = tf_hub.load(path)
        functions["exported module"] = lambda x: module(x, training=False)
        rng = np.random.default_rng(0)
        shape = (setting.batch, setting.side, setting.side, 3)
        images = tf.constant(rng.uniform(0, 1, shape).astype(np.float32))
        for function in functions.values():  # trace and warm up
            images_per_second(function, images, 2)
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in functions}
        for index in range(rounds):
            order = list(functions) if index % 2 == 0 else list(functions)[::-1]
            for name in order:
                samples[name].append(images_per_second(functions[name], images, calls))
    result = {}
    for column, clock in enumerate(("CPU", "wall-clock")):
        values = {
            name: statistics.median(rate[column] for rate in rates)
            for name, rates in samples.items()
        }
        values["ratio with/without"] = values["with check"] / values["without check"]
        result[clock] = values
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default=",".join(SETTINGS), help="Comma-separated names.")
    parser.add_argument("--rounds", type=int, default=30, help="Alternating rounds.")
    parser.add_argument("--calls", type=int, default=5, help="Calls per function and round.")
    parser.add_argument("--threads", type=int, default=1, help="TensorFlow's thread pools.")
    args = parser.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    machine = platform.processor() or platform.machine()
    print(f"{machine}, TF {tf.__version__}, {args.threads} thread(s)")
    for name in args.configs.split(","):
        setting = SETTINGS[name]
        for clock, values in measure(setting, args.rounds, args.calls).items():
            shown = ", ".join(
                f"{key} {value:.3f}" if key.startswith("ratio") else f"{key} {value:.1f}"
                for key, value in values.items()
            )
            print(
                f"{name} (batch {setting.batch}, {setting.side}x{setting.side}), images per "
                f"{clock} second, median of {args.rounds} rounds: {shown}"
            )


if __name__ == "__main__":
    main()
