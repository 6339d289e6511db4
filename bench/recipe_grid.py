"""Pretraining recipe grid for small grayscale images (Fashion-MNIST, 28 px).

Short SimCLRv2 pretraining runs of the same length and seed, each changing one setting of the
CIFAR-style starting recipe ``bench/recipe_grid_base.flags`` (SimCLR sections 3-5 and appendix
B.9 name the settings that matter: crop scale, colour strength, temperature, learning rate and
its scaling, optimizer, batch size, width; SimCLRv2 section 2 adds the memory of negatives),
scored by the weighted kNN monitor (bank: 10,000 training images, queries: the 10,000 test
images, k = 200, t = 0.1) after every epoch.

Each finished run writes ``<record_dir>/<name>.json`` (settings, kNN by epoch, images/s, wall
time); a recorded run is skipped, so the grid spans sessions once its records are committed.
Hue and saturation are exact no-ops on gray images, so "brightness and contrast only" is the
paper's colour distortion here; the grid varies its strength instead.

    .venv/bin/python bench/recipe_grid.py                       # every setting (~15 min each)
    .venv/bin/python bench/recipe_grid.py --only=base,crop_0.2  # some of them
"""

from __future__ import annotations

import argparse
import json
import os
import re

from child_run import run_tf_simclr
from release_encoder import knn_curve

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_DIR = os.path.join(REPO_ROOT, "bench", "results", "recipe_grid")
EPOCHS = 10
# One setting changed at a time from the recipe (batch 256, LARS, base lr 1.0 linear scaling,
# temperature 0.2, colour strength 0.5, crops down to 8%, ResNet-18 width 0.25); the combinations
# pair the chosen colour strength with the next-best single change.
MOMENTUM_SGD = ("--optimizer=momentum", "--learning_rate=0.1", "--weight_decay=5e-4")
GRID: dict[str, tuple[str, ...]] = {
    "base": (),
    "base_seed1": ("--seed=1",),  # the same recipe on other seeds: the grid's noise
    "base_seed2": ("--seed=2",),
    "memory_16384_m0.99": ("--memory_size=16384", "--memory_momentum=0.99"),
    "crop_0.2": ("--crop_area_min=0.2",),
    "crop_0.35": ("--crop_area_min=0.35",),
    "color_0": ("--color_jitter_strength=0",),
    "color_1.0": ("--color_jitter_strength=1.0",),
    "color_1.0_crop_0.2": ("--color_jitter_strength=1.0", "--crop_area_min=0.2"),
    "temperature_0.1": ("--temperature=0.1",),
    "temperature_0.5": ("--temperature=0.5",),
    "lars_lr_0.3_linear": ("--learning_rate=0.3",),
    "lars_lr_2.0_linear": ("--learning_rate=2.0",),
    "lars_lr_0.075_sqrt": ("--learning_rate=0.075", "--learning_rate_scaling=sqrt"),
    "sgd_lr_0.1_wd_5e-4": MOMENTUM_SGD,
    "batch_512": ("--train_batch_size=512",),
    "width_0.5": ("--width_multiplier=0.5",),
    "width_0.5_seed1": ("--width_multiplier=0.5", "--seed=1"),  # is width 0.5 beyond the noise?
    "width_0.5_seed2": ("--width_multiplier=0.5", "--seed=2"),
    "memory_16384_m0.999": ("--memory_size=16384", "--memory_momentum=0.999"),
    "color_1.0_lars_lr_2.0": ("--color_jitter_strength=1.0", "--learning_rate=2.0"),
    "color_1.0_sgd_lr_0.1_wd_5e-4": ("--color_jitter_strength=1.0", *MOMENTUM_SGD),
    # Is momentum SGD's faster climb beyond the noise? Both on three seeds (issue 27).
    "color_1.0_seed1": ("--color_jitter_strength=1.0", "--seed=1"),
    "color_1.0_seed2": ("--color_jitter_strength=1.0", "--seed=2"),
    "color_1.0_sgd_lr_0.1_wd_5e-4_seed1": (
        "--color_jitter_strength=1.0",
        *MOMENTUM_SGD,
        "--seed=1",
    ),
    "color_1.0_sgd_lr_0.1_wd_5e-4_seed2": (
        "--color_jitter_strength=1.0",
        *MOMENTUM_SGD,
        "--seed=2",
    ),
}
# A progress line of the training loop and its training speed (images/s over the steps since
# the previous line).
_SPEED = re.compile(r"step \d+/\d+ epoch [\d.]+ .*?images/s=([\d.]+)")


def knn_by_epoch(model_dir: str) -> list[dict]:
    """``[{"step", "epoch", "knn_top_1"}]`` of every checkpoint (one per epoch here), from the
    run's TensorBoard events: the kNN curve without the random initialisation's step 0."""
    return [point for point in knn_curve(model_dir) if point["step"] > 0]


def progress_speeds(log_text: str) -> list[float]:
    """The images/s of every progress line of a run's log."""
    return [float(match.group(1)) for match in _SPEED.finditer(log_text)]


def run_setting(name: str, extra: tuple[str, ...], run_dir: str, record_dir: str) -> dict:
    """Pretrain with ``extra`` flags unless ``<record_dir>/<name>.json`` exists; the record."""
    record_path = os.path.join(record_dir, f"{name}.json")
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as handle:
            return json.load(handle)
    model_dir = os.path.join(run_dir, name)
    flags = (
        "--flagfile=bench/recipe_grid_base.flags",
        f"--train_epochs={EPOCHS}",
        "--checkpoint_epochs=1",
        "--mode=train",
        "--noexport_hub",
        *extra,
    )
    seconds, command = run_tf_simclr(name, flags, model_dir, "grid.log")
    with open(os.path.join(model_dir, "grid.log"), encoding="utf-8") as handle:
        log_text = handle.read()
    curve = knn_by_epoch(model_dir)
    speeds = progress_speeds(log_text)
    record = {
        "name": name,
        "flags": list(extra),
        "epochs": EPOCHS,
        "knn_by_epoch": curve,
        "final_knn_top_1": curve[-1]["knn_top_1"] if curve else None,
        "seconds": seconds,
        "images_per_second_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "command": command,
    }
    os.makedirs(record_dir, exist_ok=True)
    with open(record_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(f"    kNN {record['final_knn_top_1']} in {record['seconds']:.0f} s", flush=True)
    return record


def markdown_table(record_dir: str) -> str:
    """Every recorded run, best final kNN first: its flags, kNN after epochs 1, 5 and 10, the
    best epoch and its speed."""
    records = []
    for name in sorted(os.listdir(record_dir)):
        if name.endswith(".json"):
            with open(os.path.join(record_dir, name), encoding="utf-8") as handle:
                records.append(json.load(handle))
    records.sort(key=lambda r: -(r["final_knn_top_1"] or 0.0))
    lines = [
        "| setting | flags | kNN ep 1 | kNN ep 5 | kNN ep 10 | best (epoch) | images/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for record in records:
        by_epoch = {round(p["epoch"]): p["knn_top_1"] for p in record["knn_by_epoch"]}
        best = max(record["knn_by_epoch"], key=lambda p: p["knn_top_1"], default=None)
        cells = [f"{by_epoch[e]:.4f}" if e in by_epoch else "" for e in (1, 5, 10)]
        flags = " ".join(f"`{flag}`" for flag in record["flags"]) or "(the recipe)"
        lines.append(
            f"| {record['name']} | {flags} | {' | '.join(cells)} | "
            + (f"{best['knn_top_1']:.4f} ({round(best['epoch'])})" if best else "")
            + f" | {record['images_per_second_median'] or 0:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", default=os.path.join(REPO_ROOT, "grid_run"))
    parser.add_argument("--record_dir", default=RECORD_DIR)
    parser.add_argument("--only", default="", help="Comma-separated setting names.")
    parser.add_argument("--table", action="store_true", help="Print the table; run nothing.")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(args.record_dir))
        return
    names = args.only.split(",") if args.only else list(GRID)
    for name in names:
        run_setting(name, GRID[name], os.path.abspath(args.run_dir), args.record_dir)


if __name__ == "__main__":
    main()
