"""`make demo`: the whole SimCLRv2 pipeline on Fashion-MNIST, run as a user would run it.

Pretraining on the 60,000 training images without labels, a supervised-only baseline and
SimCLRv2 fine-tuning on the same 1% of the labels, self-distillation of the fine-tuned model on
the unlabeled images, a TF-Hub export after every phase, and a table of top-1 accuracy on the
10,000 test images that names the encoder each row started from. When a released encoder
(``pretrained/<name>/hub``, pretrained for much longer) is in the checkout, the best of them (the
highest kNN accuracy in its ``release.json``) is also fine-tuned on the same labels. Each phase
is one ``tf-simclr --flagfile=...`` process. Without Debian's ``dataset-fashion-mnist`` the same
recipes run on synthetic images.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
import subprocess
import sys
import time

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRETRAINED_DIR = os.path.join(REPO_ROOT, "pretrained")

PHASES = (
    ("pretrain", "pretrain.flags", ()),
    ("supervised_1pct", "supervised_1pct.flags", ()),
    ("finetune_1pct", "finetune_1pct.flags", ("--checkpoint={run}/pretrain",)),
    (
        "distill_1pct",
        "distill.flags",
        ("--teacher={run}/finetune_1pct", "--checkpoint={run}/pretrain"),
    ),
)
RELEASED = "finetune_1pct_released"
# (method, phase, the encoder it started from)
ROWS = (
    ("supervised only, 1% labels", "supervised_1pct", "none (random initialisation)"),
    ("SimCLRv2 fine-tuned, 1% labels", "finetune_1pct", "this demo's 3-epoch pretraining"),
    ("SimCLRv2 self-distilled, 1% labels", "distill_1pct", "this demo's 3-epoch pretraining"),
)


@dataclasses.dataclass(frozen=True)
class Release:
    """A released encoder: its hub module and what its ``release.json`` records."""

    hub: str
    width_multiplier: float
    resnet_depth: int
    epochs: float
    knn_top_1: float

    def describe(self) -> str:
        return f"released R{self.resnet_depth} w{self.width_multiplier:g}, {self.epochs:.0f} epochs"


def best_release(pretrained_dir: str = PRETRAINED_DIR) -> Release | None:
    """The released encoder of ``pretrained_dir`` (one folder per release, with ``hub/`` and
    ``release.json``) of the highest kNN accuracy; None when there is none."""
    releases = []
    for record in sorted(glob.glob(os.path.join(glob.escape(pretrained_dir), "*", "release.json"))):
        hub = os.path.join(os.path.dirname(record), "hub")
        if not os.path.isdir(hub):
            continue
        with open(record, encoding="utf-8") as handle:
            info = json.load(handle)
        releases.append(
            Release(
                hub=hub,
                width_multiplier=info["width_multiplier"],
                resnet_depth=info["resnet_depth"],
                epochs=info["epochs"],
                knn_top_1=info["final_knn_top_1"],
            )
        )
    return max(releases, key=lambda release: release.knn_top_1, default=None)


def released_phase(release: Release) -> tuple[str, str, tuple[str, ...]]:
    """The phase that fine-tunes ``release`` on the demo's 1% (its architecture comes from the
    module: the recipe's width gives way to it)."""
    return (RELEASED, "finetune_1pct.flags", (f"--checkpoint={release.hub}",))


def data_flags() -> list[str]:
    """Fashion-MNIST when its IDX files are installed, else a synthetic stand-in."""
    if os.path.exists(os.path.join(FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")):
        return []
    print("Fashion-MNIST is not installed: running the demo on synthetic 28x28 images.")
    return ["--dataset=synthetic:size=28,count=6000,classes=10"]


def phase_command(
    name: str, flagfile: str, extra: tuple[str, ...], run_dir: str, seed: int
) -> list[str]:
    """The ``tf-simclr`` command of one phase: its recipe, its model_dir under ``run_dir``, the
    phase's own flags and ``--seed`` (the label subset, the augmentations and, with it, the
    initialisation differ from seed to seed: the demo's spread is measured over seeds)."""
    return [
        sys.executable,
        "-m",
        "tf_simclr.run",
        f"--flagfile=flags/fashion_mnist/{flagfile}",
        f"--model_dir={os.path.join(run_dir, name)}",
        *(flag.format(run=run_dir) for flag in extra),
        f"--seed={seed}",
        *data_flags(),
    ]


def run_phase(name: str, flagfile: str, extra: tuple[str, ...], run_dir: str, seed: int) -> dict:
    """Run one phase as a child process; its result.json, with the wall time in seconds. A failed
    phase ends the demo with its exit status and one line (two when its model_dir holds a run
    that the phase refused to change: an earlier demo of other recipes)."""
    model_dir = os.path.join(run_dir, name)
    command = phase_command(name, flagfile, extra, run_dir, seed)
    print(f"\n=== {name}: {' '.join(command[2:])}", flush=True)
    started = time.time()
    status = subprocess.run(command, cwd=REPO_ROOT, check=False).returncode
    if status:
        print(
            f"make demo: the {name} phase failed (exit status {status}); see above.",
            file=sys.stderr,
        )
        if status == 2 and os.path.isdir(model_dir):
            print(
                f"make demo: {model_dir} holds a run of other settings (an earlier demo's?); "
                f"delete {run_dir} to start the demo afresh, or pass --run_dir=ANOTHER_FOLDER.",
                file=sys.stderr,
            )
        raise SystemExit(status)
    with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    result["seconds"] = time.time() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--run_dir", default=os.path.join(REPO_ROOT, "demo_run"))
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="Seed of every phase: the 1%% label subset, augmentations, initialisation.",
    )
    args = parser.parse_args()
    started = time.time()
    phases, rows = list(PHASES), list(ROWS)
    release = best_release()
    if release is not None and not data_flags():
        phases.append(released_phase(release))
        rows.append(("SimCLRv2 fine-tuned, 1% labels", RELEASED, release.describe()))
    results = {
        name: run_phase(name, flagfile, extra, args.run_dir, args.seed)
        for name, flagfile, extra in phases
    }
    pretrain_eval = results["pretrain"]["eval"]
    print("\nTop-1 accuracy on the 10,000 Fashion-MNIST test images")
    print(f"{'method':36s} {'encoder':34s} {'top-1':>7s} {'seconds':>8s}")
    print(
        f"{'SimCLRv2 pretraining, kNN monitor':36s} {'(no labels)':34s} "
        f"{pretrain_eval['knn_top_1_accuracy']:7.4f} {results['pretrain']['seconds']:8.0f}"
    )
    for label, name, encoder in rows:
        if name in results:
            top1 = results[name]["eval"]["label_top_1_accuracy"]
            print(f"{label:36s} {encoder:34s} {top1:7.4f} {results[name]['seconds']:8.0f}")
    print(
        f"total wall time: {time.time() - started:.0f} s; exported modules: "
        f"{args.run_dir}/*/hub/<step>"
    )


if __name__ == "__main__":
    main()
