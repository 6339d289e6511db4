"""What ``--deterministic`` costs: pretraining images/second with and without it.

Each measurement is one ``tf-simclr`` pretraining run of the Fashion-MNIST recipe
(flags/fashion_mnist/pretrain.flags: 28 px, ResNet-18 at width 0.25, batch 256, bfloat16), in its
own process because op determinism is process-wide. A run trains ``2 * steps`` steps in two
loops of ``steps``; the figure is the second loop's ``train/images_per_second`` (the first one
includes tracing), which covers the whole training step with its input pipeline. Runs alternate
with and without the flag (ABBA order per pair of rounds), so that a slow drift of the machine
falls on both sides. Without the dataset (Debian's dataset-fashion-mnist) the runs use synthetic
28 px data of the same shape. Prints the CPU model: figures depend on it.

    .venv/bin/python bench/deterministic_cost.py                     # 3 rounds of 50 steps
    .venv/bin/python bench/deterministic_cost.py --rounds=1 --steps=2 --batch=32   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

from child_run import REPO_ROOT, run_tf_simclr

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
SYNTHETIC = "synthetic:size=28,count=4096,classes=10"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, with its bfloat16 / AMX capabilities."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            lines = cpuinfo.read().splitlines()
    except OSError:
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in lines if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    features = set(fields.get("flags", "").split())
    extras = [name for name in ("amx_bf16", "avx512_bf16") if name in features]
    return f"{fields.get('model name', 'unknown CPU')} ({', '.join(extras) or 'no bf16 units'})"


def images_per_second(model_dir: str) -> float:
    """The last ``train/images_per_second`` of a run's TensorBoard events."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(model_dir, "train"), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    events = accumulator.Tensors("train/images_per_second")
    return float(tensor_util.make_ndarray(events[-1].tensor_proto))


def run_flags(args: argparse.Namespace, dataset: str, deterministic: bool) -> tuple[str, ...]:
    """The recipe's pretraining, cut to two loops of ``args.steps`` steps."""
    return (
        f"--flagfile={os.path.join(REPO_ROOT, 'flags/fashion_mnist/pretrain.flags')}",
        f"--dataset={dataset}",
        "--mode=train",
        f"--train_batch_size={args.batch}",
        f"--train_steps={2 * args.steps}",
        f"--steps_per_loop={args.steps}",
        f"--checkpoint_steps={2 * args.steps}",
        "--noknn_monitor",
        "--noexport_hub",
        "--deterministic" if deterministic else "--nodeterministic",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="runs each way")
    parser.add_argument("--steps", type=int, default=50, help="steps per timed loop")
    parser.add_argument("--batch", type=int, default=256, help="global batch (the recipe's)")
    parser.add_argument("--dataset", default="", help="default: fashion_mnist, else synthetic")
    args = parser.parse_args()
    dataset = args.dataset or ("fashion_mnist" if os.path.exists(FASHION_MNIST) else SYNTHETIC)
    print(f"CPU: {cpu_model()}; {os.cpu_count()} logical CPUs", flush=True)
    print(f"data: {dataset}; batch {args.batch}; 2 loops of {args.steps} steps per run")

    rates: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory(prefix="deterministic_cost_") as root:
        for index in range(args.rounds):
            order = (False, True) if index % 2 == 0 else (True, False)
            for deterministic in order:
                name = f"{'deterministic' if deterministic else 'default'}_{index}"
                model_dir = os.path.join(root, name)
                run_tf_simclr(name, run_flags(args, dataset, deterministic), model_dir, "log")
                rates[deterministic].append(images_per_second(model_dir))
                print(f"{name}: {rates[deterministic][-1]:.1f} images/s", flush=True)

    def summary(values: list[float]) -> str:
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.1f} ± {spread:.1f} images/s (n={len(values)})"

    plain, exact = statistics.mean(rates[False]), statistics.mean(rates[True])
    print(f"without --deterministic: {summary(rates[False])}")
    print(f"with --deterministic:    {summary(rates[True])}")
    print(f"--deterministic changes images/s by {100 * (exact / plain - 1):+.1f}%")


if __name__ == "__main__":
    sys.exit(main())
