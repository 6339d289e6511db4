"""The encoder's width as the lever of the study's missed targets, measured on the targets' own
protocols (SimCLRv2 section 3 and Figure 1: bigger models gain more from pretraining and are more
label-efficient).

The released encoder (ResNet-18 at width 0.25) misses two targets of the label-efficiency study:
linear evaluation at 100% of the labels >= 0.88, and 1% fine-tuning ahead of supervised 1% by 3
points. The recipe grid scores width 0.5 by kNN only; this script measures what it buys on those
two protocols, for the grid's 10-epoch encoders at width 0.25 (``base``, ``base_seed1``,
``base_seed2``) and 0.5 (``width_0.5``, ``width_0.5_seed1``, ``width_0.5_seed2``), seeds 0 / 1 / 2:

- the study's converged linear probe at 1%, 10% and 100% of the labels;
- fine-tuning on 1% of the labels (``finetune_1pct.flags``, the encoder's seed and label subset);
- supervised only on the same 1% subset at the same width (``supervised_1pct.flags`` for 800
  epochs, the best budget of the study's width-0.25 sweep). Width 0.25's are the study's records.

Each finished measurement writes ``<record_dir>/<name>.json``; a recorded one is skipped. The
grid's model_dirs (``--grid_run_dir``) must still hold the grid's final checkpoints.

    .venv/bin/python bench/width_lever.py --grid_run_dir=/work/grid_run --run_dir=/work/lever
    .venv/bin/python bench/width_lever.py --table      # the comparison from the records
"""

from __future__ import annotations

import argparse
import json
import os
import time

import label_efficiency as study
import numpy as np
from child_run import run_tf_simclr

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_DIR = os.path.join(REPO_ROOT, "bench", "results", "width_lever")
GRID_RECORD_DIR = os.path.join(REPO_ROOT, "bench", "results", "recipe_grid")
SEEDS = (0, 1, 2)
WIDTHS = (0.25, 0.5)
SUPERVISED_EPOCHS = 800  # 8x the 1% base schedule: the study's converged budget at width 0.25
# The study's supervised 1% runs at 800 epochs (width 0.25), by seed.
PAIRED = "0.5 - 0.25"  # the row of paired differences (same seed)
GAIN = "fine-tuned minus supervised 1%"
STUDY_SUPERVISED = {
    0: "supervised_1pct_x8_seed0",
    1: "supervised_1pct_seed1",
    2: "supervised_1pct_seed2",
}


def grid_name(width: float, seed: int) -> str:
    """The recipe grid's run of ``width`` on ``seed`` (bench/recipe_grid.py GRID)."""
    name = "base" if width == 0.25 else f"width_{width:g}"
    return name if seed == 0 else f"{name}_seed{seed}"


def supervised_name(width: float, seed: int) -> str:
    return f"supervised_1pct_width_{width:g}_seed{seed}"


def read_json(path: str) -> dict | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def write_record(record: dict, record_dir: str) -> None:
    os.makedirs(record_dir, exist_ok=True)
    with open(os.path.join(record_dir, f"{record['name']}.json"), "w", encoding="utf-8") as out:
        json.dump(record, out, indent=2)


def grid_encoder(grid_run_dir: str, width: float, seed: int) -> str:
    """The model_dir of a grid run; a clear error when its checkpoints are gone."""
    model_dir = os.path.join(grid_run_dir, grid_name(width, seed))
    if not os.path.exists(os.path.join(model_dir, "ckpt", "checkpoint")):
        raise FileNotFoundError(
            f"no checkpoint in {model_dir}: rerun the grid setting there "
            f"(bench/recipe_grid.py --only={grid_name(width, seed)} after moving its record "
            "out of bench/results/recipe_grid) or pass --grid_run_dir."
        )
    return model_dir


def measure_probe(width: float, seed: int, grid_run_dir: str, run_dir: str) -> dict:
    """The study's kNN and converged linear probe of a grid encoder."""
    encoder = grid_encoder(grid_run_dir, width, seed)
    settings = study.StudySettings(run_dir=run_dir, encoder=encoder)
    started = time.time()
    result = study.probe("simclr", settings)
    return {"knn_top_1": result["knn_top_1"], "linear": result["linear"]} | {
        "seconds": time.time() - started
    }


def measure_run(name: str, flags: tuple[str, ...], run_dir: str) -> dict:
    """A ``tf-simclr`` run's test top-1 and wall time."""
    model_dir = os.path.join(run_dir, name)
    seconds, command = run_tf_simclr(name, (*flags, "--noexport_hub"), model_dir, "lever.log")
    result = read_json(os.path.join(model_dir, "result.json"))
    return {
        "top_1": result["eval"]["label_top_1_accuracy"],
        "seconds": seconds,
        "images_per_second": result["train"].get("images_per_second"),
        "command": command,
    }


def pending(record_dir: str) -> list[tuple[str, str, float, int]]:
    """``(name, kind, width, seed)`` of every measurement without a record, in running order:
    the probes first (cheapest), then the fine-tunes, then the supervised baselines."""
    wanted = [("probe", w, s) for w in WIDTHS for s in SEEDS]
    wanted += [("finetune", w, s) for w in WIDTHS for s in SEEDS]
    wanted += [("supervised", w, s) for w in WIDTHS if w != 0.25 for s in SEEDS]
    named = [(measurement_name(kind, w, s), kind, w, s) for kind, w, s in wanted]
    return [
        item for item in named if not os.path.exists(os.path.join(record_dir, f"{item[0]}.json"))
    ]


def measurement_name(kind: str, width: float, seed: int) -> str:
    if kind == "supervised":
        return supervised_name(width, seed)
    return f"{kind}_{grid_name(width, seed)}"


def measure(kind: str, width: float, seed: int, grid_run_dir: str, run_dir: str) -> dict:
    if kind == "probe":
        return measure_probe(width, seed, grid_run_dir, run_dir)
    if kind == "finetune":
        flags = (
            "--flagfile=flags/fashion_mnist/finetune_1pct.flags",
            f"--checkpoint={grid_encoder(grid_run_dir, width, seed)}",
            f"--width_multiplier={width:g}",
            f"--seed={seed}",
        )
    else:
        flags = (
            "--flagfile=flags/fashion_mnist/supervised_1pct.flags",
            f"--width_multiplier={width:g}",
            f"--seed={seed}",
            f"--train_epochs={SUPERVISED_EPOCHS}",
            f"--checkpoint_epochs={SUPERVISED_EPOCHS // 4}",
        )
    return measure_run(measurement_name(kind, width, seed), flags, run_dir)


def collect(record_dir: str, study_dir: str, grid_dir: str) -> dict[str, dict[float, list]]:
    """``{metric: {width: [value of seed 0, 1, 2 or None]}}`` from the records: kNN after 10
    epochs (the grid's), linear probe at 1% / 10% / 100%, fine-tuning and supervised at 1%,
    and fine-tuning's gain over supervised on the same seed."""
    table: dict[str, dict[float, list]] = {}

    def put(metric: str, width: float, seed: int, value: float | None) -> None:
        table.setdefault(metric, {w: [None] * len(SEEDS) for w in WIDTHS})[width][seed] = value

    for width in WIDTHS:
        for seed in SEEDS:
            grid = read_json(os.path.join(grid_dir, f"{grid_name(width, seed)}.json")) or {}
            put("kNN (grid, 10 epochs)", width, seed, grid.get("final_knn_top_1"))
            probe = read_json(os.path.join(record_dir, f"probe_{grid_name(width, seed)}.json"))
            for fraction in ("0.01", "0.1", "1"):
                value = probe["linear"][fraction] if probe else None
                put(f"linear probe {float(fraction):.0%}", width, seed, value)
            tuned = read_json(os.path.join(record_dir, f"finetune_{grid_name(width, seed)}.json"))
            put("fine-tuned 1%", width, seed, tuned["top_1"] if tuned else None)
            if width == 0.25:
                baseline = read_json(os.path.join(study_dir, f"{STUDY_SUPERVISED[seed]}.json"))
            else:
                baseline = read_json(
                    os.path.join(record_dir, f"{supervised_name(width, seed)}.json")
                )
            put("supervised 1% (same width)", width, seed, baseline["top_1"] if baseline else None)
            gain = tuned["top_1"] - baseline["top_1"] if tuned and baseline else None
            put(GAIN, width, seed, gain)
    return table


def number(value: float | None, signed: bool) -> str:
    if value is None:
        return ""
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def mean_std(values: list[float | None], signed: bool = False) -> str:
    """``mean ± sample std (count)`` of the known values, or "" with none."""
    known = np.array([v for v in values if v is not None], np.float64)
    if not len(known):
        return ""
    spread = known.std(ddof=1) if len(known) > 1 else 0.0
    return f"{number(float(known.mean()), signed)} ± {spread:.4f} ({len(known)})"


def markdown_table(table: dict[str, dict[float, list]]) -> str:
    """Each metric at each width by seed, with the mean ± std, and the paired difference of
    width 0.5 from width 0.25 (same seed) as its own row; differences carry their sign."""
    lines = [
        "| metric | width | seed 0 | seed 1 | seed 2 | mean ± std (seeds) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for metric, by_width in table.items():
        rows: dict[float | str, list] = dict(by_width)
        narrow, wide = by_width[WIDTHS[0]], by_width[WIDTHS[1]]
        rows[PAIRED] = [
            b - a if a is not None and b is not None else None
            for a, b in zip(narrow, wide, strict=True)
        ]
        for width, values in rows.items():
            signed = width == PAIRED or metric == GAIN
            cells = " | ".join(number(v, signed) for v in values)
            lines.append(f"| {metric} | {width} | {cells} | {mean_std(values, signed)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid_run_dir", default=os.path.join(REPO_ROOT, "grid_run"))
    parser.add_argument("--run_dir", default=os.path.join(REPO_ROOT, "lever_run"))
    parser.add_argument("--record_dir", default=RECORD_DIR)
    parser.add_argument("--table", action="store_true", help="Print the table; run nothing.")
    args = parser.parse_args()
    if not args.table:
        for name, kind, width, seed in pending(args.record_dir):
            print(f"\n=== {name}", flush=True)
            outcome = measure(kind, width, seed, args.grid_run_dir, os.path.abspath(args.run_dir))
            write_record(
                {"name": name, "kind": kind, "width": width, "seed": seed} | outcome,
                args.record_dir,
            )
    print(markdown_table(collect(args.record_dir, study.RECORD_DIR, GRID_RECORD_DIR)))


if __name__ == "__main__":
    main()
