"""Release a pretrained encoder: copy a pretraining run's newest hub module into ``pretrained/``
with the flags that produced it, its kNN curve (JSON and PNG, raw pixels as a reference line)
and its size, so that users fine-tune from it without pretraining (SimCLRv2 section 4 releases
its ImageNet checkpoints the same way).

    .venv/bin/python bench/release_encoder.py --model_dir=runs/pretrain_long \\
        --out=pretrained/fashion_mnist --pixels_knn=0.7256

The release folder holds ``hub/`` (the TF-Hub module), ``pretrain.flags`` (a flagfile that
reproduces the run: every flag that differs from the binary's default, model_dir left out),
``knn_curve.json``, ``knn_curve.png`` and ``release.json`` (depth, width, step, epochs, final kNN,
bytes, and whether it is under the 20 MB a committed release may weigh).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KNN_TAG = "eval/knn_top_1_accuracy"
SIZE_LIMIT_BYTES = 20 * 10**6  # a release small enough to commit with the repository


def knn_curve(model_dir: str) -> list[dict]:
    """``[{"step", "epoch", "knn_top_1"}]`` from the run's TensorBoard events (step 0 included)."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    accumulator = event_accumulator.EventAccumulator(
        os.path.join(model_dir, "train"), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        config = json.load(handle)
    steps_per_epoch = knn_steps_per_epoch(config)
    points = {}
    for event in accumulator.Tensors(KNN_TAG):
        value = float(tensor_util.make_ndarray(event.tensor_proto))
        points[event.step] = {
            "step": event.step,
            "epoch": round(event.step / steps_per_epoch, 3),
            "knn_top_1": value,
        }
    return [points[step] for step in sorted(points)]


def knn_steps_per_epoch(config: dict) -> float:
    """Steps per epoch of the run, from its config.json."""
    return config["num_train_examples"] / config["train"]["train_batch_size"]


def non_default_flags(flags_json: dict) -> list[str]:
    """``--name=value`` for every flag of the run that differs from the binary's default."""
    from absl import flags

    from tf_simclr import run

    values = flags.FlagValues()
    run.define_flags(values)
    values(["release"])
    lines = []
    for name, value in sorted(flags_json.items()):
        if name == "model_dir" or name not in values:
            continue
        default = values[name].default
        if value == default or (value is None and default is None):
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        else:
            lines.append(f"--{name}={value}")
    return lines


def folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def plot_curve(curve: list[dict], pixels_knn: float | None, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(7, 4))
    axes.plot([p["epoch"] for p in curve], [p["knn_top_1"] for p in curve], marker=".")
    if pixels_knn is not None:
        axes.axhline(pixels_knn, color="gray", linestyle="--", label="raw pixels (same kNN)")
        axes.legend(loc="lower right")
    axes.set_xlabel("pretraining epoch")
    axes.set_ylabel("weighted kNN top-1 (k=200, t=0.1)")
    axes.set_title("SimCLRv2 pretraining on Fashion-MNIST: kNN monitor")
    axes.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def release(model_dir: str, out: str, pixels_knn: float | None = None) -> dict:
    """Write the release folder ``out`` from the pretraining run in ``model_dir``."""
    hub_dir = os.path.join(model_dir, "hub")
    steps = sorted(int(name) for name in os.listdir(hub_dir) if name.isdigit())
    if not steps:
        raise FileNotFoundError(f"{hub_dir} holds no exported module; finish the run first.")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shutil.copytree(os.path.join(hub_dir, str(steps[-1])), os.path.join(out, "hub"))
    with open(os.path.join(model_dir, "flags.json"), encoding="utf-8") as handle:
        flag_lines = non_default_flags(json.load(handle))
    with open(os.path.join(out, "pretrain.flags"), "w", encoding="utf-8") as handle:
        handle.write(
            "# The flags of the run that produced this encoder (every flag that differs from\n"
            "# tf-simclr's default). Reproduce: tf-simclr --flagfile=<this file> --model_dir=DIR\n"
        )
        handle.write("\n".join(flag_lines) + "\n")
    curve = knn_curve(model_dir)
    with open(os.path.join(out, "knn_curve.json"), "w", encoding="utf-8") as handle:
        json.dump({"curve": curve, "raw_pixels_knn_top_1": pixels_knn}, handle, indent=2)
    plot_curve(curve, pixels_knn, os.path.join(out, "knn_curve.png"))
    size = folder_bytes(os.path.join(out, "hub"))
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as handle:
        model = json.load(handle)["model"]
    info = {
        "resnet_depth": model["resnet_depth"],
        "width_multiplier": model["width_multiplier"],
        "step": steps[-1],
        "epochs": curve[-1]["epoch"] if curve else None,
        "final_knn_top_1": curve[-1]["knn_top_1"] if curve else None,
        "hub_module_bytes": size,
        "under_20_mb": size < SIZE_LIMIT_BYTES,
    }
    with open(os.path.join(out, "release.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", default=os.path.join(REPO_ROOT, "pretrained", "fashion_mnist"))
    parser.add_argument("--pixels_knn", type=float, default=None)
    parser.add_argument(
        "--docs_plot",
        default=os.path.join(REPO_ROOT, "docs", "pretraining_knn_curve.png"),
        help="Also copy the kNN curve here (README and BENCHMARKS show it); empty: no copy.",
    )
    args = parser.parse_args()
    info = release(args.model_dir, args.out, args.pixels_knn)
    if args.docs_plot:
        shutil.copyfile(os.path.join(args.out, "knn_curve.png"), args.docs_plot)
    print(json.dumps(info, indent=2))


if __name__ == "__main__":
    main()
