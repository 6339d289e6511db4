"""Label-efficiency study on Fashion-MNIST: SimCLRv2's claims (Chen et al. 2020, Sections 1 and
4; Figure 1 and Tables 2-3) reproduced at the scale of a 2-core CPU.

Every row is one or more ``tf-simclr --flagfile=flags/fashion_mnist/...`` processes, all on the
same network (the recipes' ResNet-18 at width 0.25 with the CIFAR stem) and evaluated on the
10,000 test images:

- supervised only, from scratch, on 1%, 10% and 100% of the labels;
- SimCLRv2: pretraining on the 60,000 training images without labels, then fine-tuning the whole
  network from the first projection-head layer on 1% and 10% (Section 2, ``ft_proj_selector=1``);
- linear evaluation of the frozen pretrained encoder on 1%, 10% and 100%;
- self-distillation (same architecture, initialised from the pretrained encoder) and distillation
  into a smaller student (width 0.125, about a quarter of the parameters, from scratch) of the
  seed-0 fine-tuned teachers on the unlabeled training images (Section 2, eq. 3).

Supervised and fine-tuning rows run with several seeds; the seed picks the class-balanced label
subset, the initialisation and the data order, and fine-tuning and supervised runs with the same
seed share a subset. The training budget is equal (see ``supervised_epochs``).

The study is resumable: a finished run leaves ``study.json`` in its folder and is skipped next
time; an interrupted run resumes from its own checkpoints. At the end it writes the results, a
Markdown table and a PNG plot (accuracy against label fraction, one line per method).

    .venv/bin/python bench/label_efficiency.py                    # the full study (~1.5-2 h here)
    .venv/bin/python bench/label_efficiency.py --seeds=0 --extra_flags="--train_steps=2"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_IMAGES = 60_000
FRACTIONS = (0.01, 0.1, 1.0)
# Epochs over the labeled subset of each labeled phase (full-network fine-tuning, linear
# evaluation): the recipes' settings, passed explicitly so the budget rule below sees them.
FINETUNE_EPOCHS = {0.01: 60, 0.1: 20}
LINEAR_EPOCHS = {0.01: 60, 0.1: 20, 1.0: 5}
STUDENT_WIDTH = 0.125
METHODS = {
    "supervised": "supervised only",
    "finetune": "SimCLRv2 fine-tuned (proj_head_1)",
    "linear": "SimCLRv2 linear eval (frozen encoder)",
    "self_distill": "SimCLRv2 self-distilled (same size)",
    "distill_small": f"SimCLRv2 distilled, smaller student (width {STUDENT_WIDTH})",
}


@dataclasses.dataclass(frozen=True)
class StudySettings:
    """What to run: pretraining length, seeds and flags appended to every run."""

    run_dir: str
    seeds: tuple[int, ...] = (0, 1, 2)
    pretrain_epochs: float = 5
    distill_epochs: float = 3
    extra_flags: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Run:
    """One ``tf-simclr`` process of the study."""

    name: str
    method: str
    fraction: float
    seed: int
    flags: tuple[str, ...]


def percent(fraction: float) -> str:
    return f"{fraction * 100:g}pct"


def labeled_images(fraction: float) -> int:
    """Size of the class-balanced subset (6,000 training images per class)."""
    return round(fraction * TRAIN_IMAGES)


def simclr_images(settings: StudySettings, fraction: float) -> float:
    """Training images drawn by the SimCLRv2 row at ``fraction``: pretraining plus its labeled
    phase (fine-tuning at 1% and 10%, linear evaluation at 100%)."""
    epochs = FINETUNE_EPOCHS.get(fraction, LINEAR_EPOCHS[fraction])
    return settings.pretrain_epochs * TRAIN_IMAGES + epochs * labeled_images(fraction)


def supervised_epochs(settings: StudySettings, fraction: float) -> float:
    """Epochs over its labels that give the supervised baseline the SimCLRv2 row's budget.

    The budget is counted in training images drawn (steps x batch size): each pretraining
    image counts once, although its two views make a pretraining step about twice as expensive
    as a supervised one.
    """
    return simclr_images(settings, fraction) / labeled_images(fraction)


def plan(settings: StudySettings) -> list[Run]:
    """Every run of the study, SimCLRv2 rows first, in an order that satisfies dependencies."""
    runs = []
    common = ("--keep_hub_module_max=0",)
    pretrain = os.path.join(settings.run_dir, "pretrain")
    runs.append(
        Run(
            "pretrain",
            "pretrain",
            1.0,
            0,
            (
                "--flagfile=flags/fashion_mnist/pretrain.flags",
                f"--train_epochs={settings.pretrain_epochs:g}",
                *common,
            ),
        )
    )
    for seed in settings.seeds:
        for fraction, epochs in FINETUNE_EPOCHS.items():
            runs.append(
                Run(
                    f"finetune_{percent(fraction)}_seed{seed}",
                    "finetune",
                    fraction,
                    seed,
                    (
                        f"--flagfile=flags/fashion_mnist/finetune_{percent(fraction)}.flags",
                        f"--checkpoint={pretrain}",
                        f"--seed={seed}",
                        f"--train_epochs={epochs:g}",
                        f"--checkpoint_epochs={epochs:g}",
                        *common,
                    ),
                )
            )
    for fraction, epochs in LINEAR_EPOCHS.items():
        runs.append(
            Run(
                f"linear_{percent(fraction)}",
                "linear",
                fraction,
                0,
                (
                    "--flagfile=flags/fashion_mnist/linear_eval.flags",
                    f"--checkpoint={pretrain}",
                    f"--label_fraction={fraction:g}",
                    f"--train_epochs={epochs:g}",
                    f"--checkpoint_epochs={epochs:g}",
                    *common,
                ),
            )
        )
    teacher_seed = settings.seeds[0]
    for fraction in FINETUNE_EPOCHS:
        teacher = os.path.join(settings.run_dir, f"finetune_{percent(fraction)}_seed{teacher_seed}")
        distill = (
            "--flagfile=flags/fashion_mnist/distill.flags",
            f"--teacher={teacher}",
            f"--label_fraction={fraction:g}",
            f"--seed={teacher_seed}",
            f"--train_epochs={settings.distill_epochs:g}",
            f"--checkpoint_epochs={settings.distill_epochs:g}",
            *common,
        )
        runs.append(
            Run(
                f"self_distill_{percent(fraction)}",
                "self_distill",
                fraction,
                teacher_seed,
                (*distill, f"--checkpoint={pretrain}"),
            )
        )
        runs.append(
            Run(
                f"distill_small_{percent(fraction)}",
                "distill_small",
                fraction,
                teacher_seed,
                (*distill, f"--width_multiplier={STUDENT_WIDTH:g}"),
            )
        )
    for seed in settings.seeds:  # seed-major: a cut-short study still has whole seeds
        for fraction in FRACTIONS:
            epochs = supervised_epochs(settings, fraction)
            runs.append(
                Run(
                    f"supervised_{percent(fraction)}_seed{seed}",
                    "supervised",
                    fraction,
                    seed,
                    (
                        f"--flagfile=flags/fashion_mnist/supervised_{percent(fraction)}.flags",
                        f"--seed={seed}",
                        f"--train_epochs={epochs:g}",
                        f"--checkpoint_epochs={epochs / 4:g}",
                        *common,
                    ),
                )
            )
    return runs


def execute(run: Run, settings: StudySettings) -> dict:
    """Run ``run`` unless a previous invocation finished it; return its ``study.json``."""
    model_dir = os.path.join(settings.run_dir, run.name)
    record_path = os.path.join(model_dir, "study.json")
    if os.path.exists(record_path):
        with open(record_path, encoding="utf-8") as handle:
            return json.load(handle)
    command = [
        sys.executable,
        "-m",
        "tf_simclr.run",
        *run.flags,
        f"--model_dir={model_dir}",
        *settings.extra_flags,
    ]
    print(f"\n=== {run.name}: {shlex.join(command[2:])}", flush=True)
    os.makedirs(model_dir, exist_ok=True)
    started = time.time()
    with open(os.path.join(model_dir, "study.log"), "a", encoding="utf-8") as log:
        subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    with open(os.path.join(model_dir, "result.json"), encoding="utf-8") as handle:
        result = json.load(handle)
    evaluation = result["eval"]
    record = {
        **dataclasses.asdict(run),
        "top_1": evaluation.get("label_top_1_accuracy", evaluation.get("knn_top_1_accuracy")),
        "seconds": time.time() - started,
        "images_per_second": result["train"].get("images_per_second"),
        "command": shlex.join(command[2:]),
    }
    with open(record_path, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
    print(f"    top-1 {record['top_1']:.4f} in {record['seconds']:.0f} s", flush=True)
    return record


def summarize(records: list[dict]) -> dict[tuple[str, float], dict]:
    """Mean, sample standard deviation (ddof=1; 0 for one seed), count and summed wall time of
    the top-1 accuracies of each (method, label fraction)."""
    groups: dict[tuple[str, float], list[dict]] = {}
    for record in records:
        groups.setdefault((record["method"], record["fraction"]), []).append(record)
    summary = {}
    for key, members in groups.items():
        accuracies = np.array([member["top_1"] for member in members], dtype=np.float64)
        summary[key] = {
            "mean": float(accuracies.mean()),
            "std": float(accuracies.std(ddof=1)) if len(accuracies) > 1 else 0.0,
            "count": len(accuracies),
            "seconds": float(sum(member["seconds"] for member in members)),
        }
    return summary


def markdown_table(summary: dict, settings: StudySettings) -> str:
    """Top-1 per method and label fraction as ``mean ± std (seeds)``, with budgets and times."""
    header = "| method | 1% labels | 10% labels | 100% labels | wall time |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for method, label in METHODS.items():
        cells, seconds = [], 0.0
        for fraction in FRACTIONS:
            entry = summary.get((method, fraction))
            if entry is None:
                cells.append("")
                continue
            seconds += entry["seconds"]
            spread = f" ± {entry['std']:.4f}" if entry["count"] > 1 else ""
            cells.append(f"{entry['mean']:.4f}{spread} ({entry['count']})")
        lines.append(f"| {label} | {' | '.join(cells)} | {seconds / 60:.1f} min |")
    pretrain = summary.get(("pretrain", 1.0))
    if pretrain is not None:
        lines.append(
            f"| SimCLRv2 pretraining, kNN monitor (no labels) | | | {pretrain['mean']:.4f} (1) "
            f"| {pretrain['seconds'] / 60:.1f} min |"
        )
    budgets = ", ".join(f"{f:.0%}: {supervised_epochs(settings, f):g} epochs" for f in FRACTIONS)
    lines.append("")
    lines.append(
        f"Cells: top-1 on the 10,000 test images, mean ± sample standard deviation (number of "
        f"seeds). Pretraining: {settings.pretrain_epochs:g} epochs; supervised budgets "
        f"(same training images drawn as the SimCLRv2 row): {budgets}."
    )
    return "\n".join(lines) + "\n"


def plot(summary: dict, path: str) -> None:
    """Accuracy against label fraction (log axis), one line per method, seed spread as bars."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(10, 4.5))
    for method, label in METHODS.items():
        points = [(f, summary[(method, f)]) for f in FRACTIONS if (method, f) in summary]
        if not points:
            continue
        axes.errorbar(
            [100 * f for f, _ in points],
            [entry["mean"] for _, entry in points],
            yerr=[entry["std"] for _, entry in points],
            marker="o",
            capsize=3,
            label=label,
        )
    axes.set_xscale("log")
    axes.set_xticks([1, 10, 100], labels=["1%", "10%", "100%"])
    axes.set_xlabel("labeled fraction of the 60,000 training images")
    axes.set_ylabel("top-1 accuracy (10,000 test images)")
    axes.set_title("Fashion-MNIST, ResNet-18 width 0.25: label efficiency")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", default=os.path.join(REPO_ROOT, "study_run"))
    parser.add_argument("--seeds", default=",".join(map(str, StudySettings.seeds)))
    parser.add_argument("--pretrain_epochs", type=float, default=StudySettings.pretrain_epochs)
    parser.add_argument("--distill_epochs", type=float, default=StudySettings.distill_epochs)
    parser.add_argument("--extra_flags", default="", help="Appended to every run (shell words).")
    parser.add_argument("--table", default="", help="Markdown output (default: in run_dir).")
    parser.add_argument("--plot", default="", help="PNG output (default: in run_dir).")
    args = parser.parse_args()
    settings = StudySettings(
        run_dir=os.path.abspath(args.run_dir),
        seeds=tuple(int(seed) for seed in args.seeds.split(",")),
        pretrain_epochs=args.pretrain_epochs,
        distill_epochs=args.distill_epochs,
        extra_flags=tuple(shlex.split(args.extra_flags)),
    )
    started = time.time()
    records = [execute(run, settings) for run in plan(settings)]
    summary = summarize(records)
    table = markdown_table(summary, settings)
    total = sum(record["seconds"] for record in records)
    table += f"Total wall time of the runs: {total / 60:.1f} min.\n"
    table_path = args.table or os.path.join(settings.run_dir, "label_efficiency.md")
    plot_path = args.plot or os.path.join(settings.run_dir, "label_efficiency.png")
    with open(table_path, "w", encoding="utf-8") as handle:
        handle.write(table)
    with open(os.path.join(settings.run_dir, "results.json"), "w", encoding="utf-8") as handle:
        json.dump(records, handle, indent=2)
    plot(summary, plot_path)
    print("\n" + table)
    print(f"this invocation: {time.time() - started:.0f} s; table {table_path}, plot {plot_path}")


if __name__ == "__main__":
    main()
