"""Time to accuracy: wall-clock minutes from the start of ``tf-simclr`` to a kNN accuracy of 0.80
on Fashion-MNIST with the pretraining recipe ``flags/fashion_mnist/pretrain.flags``.

The recipe runs for the released encoder's length (``--train_epochs=60``, so the learning-rate
schedule is the release's) and the kNN monitor scores it after every epoch (10,000-image bank,
the 10,000 test images as queries, SimCLR's weighted kNN). The clock starts when the process is
launched (TensorFlow's start, data loading and the step-0 kNN included) and stops at the wall
time of the TensorBoard event of the first kNN accuracy at or above the target; the run is then
stopped with SIGTERM. A run that ends below the target records no time.

Variants compare code or settings side by side, alternating in one invocation on one machine
(the only comparison this project trusts, BENCHMARKS.md): ``today`` runs the checkout, a
variant ``NAME=REV`` runs git revision REV from a temporary ``git worktree``, and ``NAME=REV:
--flag=value ...`` adds flags. Each finished run writes ``<record_dir>/<machine kind>/<name>-
<round>.json``; a recorded run is skipped, so rounds can span sessions once committed.

    .venv/bin/python bench/time_to_accuracy.py --variants=today --rounds=1
    .venv/bin/python bench/time_to_accuracy.py --variants="before=9684ed2,today" --rounds=2
    .venv/bin/python bench/time_to_accuracy.py --report_only
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time

from machine import describe_machine, machine_line
from release_encoder import KNN_TAG

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD_DIR = os.path.join(REPO_ROOT, "bench", "results", "time_to_accuracy")
RECIPE = ("--flagfile=flags/fashion_mnist/pretrain.flags", "--train_epochs=60")
POLL_SECONDS = 5.0


def parse_variant(text: str) -> tuple[str, str | None, tuple[str, ...]]:
    """``NAME``, ``NAME=REV`` or ``NAME=REV: --flag ...`` -> (name, revision or None for the
    checkout, extra flags)."""
    head, _, flags = text.partition(":")
    name, _, revision = head.partition("=")
    return name.strip(), revision.strip() or None, tuple(shlex.split(flags))


def first_crossing(points: list[tuple[float, int, float]], target: float) -> tuple | None:
    """The first ``(wall_time, step, accuracy)`` of ``points`` (in step order) at or above
    ``target``; None when none is."""
    return next((point for point in sorted(points, key=lambda p: p[1]) if point[2] >= target), None)


def knn_points(model_dir: str) -> list[tuple[float, int, float]]:
    """``(wall_time, step, kNN top-1)`` of every kNN event the run has written so far."""
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    train_dir = os.path.join(model_dir, "train")
    if not os.path.isdir(train_dir):
        return []
    accumulator = event_accumulator.EventAccumulator(
        train_dir, size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    if KNN_TAG not in accumulator.Tags().get("tensors", []):
        return []
    return [
        (event.wall_time, event.step, float(tensor_util.make_ndarray(event.tensor_proto)))
        for event in accumulator.Tensors(KNN_TAG)
    ]


def checkout(revision: str | None, scratch: str) -> str:
    """The folder whose code a variant runs: the repository itself, or a worktree of
    ``revision`` under ``scratch``."""
    if revision is None:
        return REPO_ROOT
    folder = os.path.join(scratch, f"rev-{revision}")
    if not os.path.isdir(folder):
        subprocess.run(
            ["git", "worktree", "add", "--detach", folder, revision], cwd=REPO_ROOT, check=True
        )
    return folder


def run_variant(code_dir: str, flags: tuple[str, ...], model_dir: str, target: float) -> dict:
    """Run the recipe from ``code_dir`` until its kNN accuracy reaches ``target`` (or the run
    ends); the record of the run."""
    command = [sys.executable, "-m", "tf_simclr.run", *RECIPE, *flags, f"--model_dir={model_dir}"]
    os.makedirs(model_dir, exist_ok=True)
    log_path = os.path.join(model_dir, "run.log")
    started = time.time()
    with open(log_path, "w", encoding="utf-8") as log:
        # The child imports the variant's code: its folder comes first on sys.path (python -m).
        child = subprocess.Popen(command, cwd=code_dir, stdout=log, stderr=subprocess.STDOUT)
        crossing = None
        while child.poll() is None:
            time.sleep(POLL_SECONDS)
            crossing = first_crossing(knn_points(model_dir), target)
            if crossing is not None:
                child.send_signal(signal.SIGTERM)
                child.wait()
                break
    points = knn_points(model_dir)
    crossing = crossing or first_crossing(points, target)
    return {
        "command": shlex.join(command[3:]),
        "target": target,
        "reached": crossing is not None,
        "minutes": None if crossing is None else (crossing[0] - started) / 60,
        "step": None if crossing is None else crossing[1],
        "knn_top_1": None if crossing is None else crossing[2],
        "curve": [
            {"minutes": (wall - started) / 60, "step": step, "knn_top_1": value}
            for wall, step, value in sorted(points, key=lambda p: p[1])
        ],
    }


def _head_revision() -> str:
    """The checkout's commit (``+changes`` when its files differ from it)."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "diff", "--quiet", "HEAD", "--", "tf_simclr", "flags"], cwd=REPO_ROOT
    ).returncode
    return head + ("+changes" if dirty else "")


def report(record_dir: str) -> str:
    """A Markdown table of every record: machine kind, variant, round, minutes to the target."""
    lines = [
        "| machine | variant | round | revision | minutes to kNN 0.80 | step | kNN |",
        "|---|---|---:|---|---:|---:|---:|",
    ]
    for path in sorted(glob.glob(os.path.join(record_dir, "*", "*.json"))):
        with open(path, encoding="utf-8") as handle:
            record = json.load(handle)
        minutes = f"{record['minutes']:.1f}" if record["reached"] else "not reached"
        knn = f"{record['knn_top_1']:.4f}" if record["reached"] else ""
        lines.append(
            f"| {machine_line(record['machine'])} | {record['variant']} | {record['round']} | "
            f"{record['revision']} | {minutes} | {record['step'] or ''} | {knn} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="today", help="Comma-separated variants.")
    parser.add_argument("--rounds", type=int, default=1, help="Alternations of the variants.")
    parser.add_argument("--target", type=float, default=0.80)
    parser.add_argument("--record_dir", default=RECORD_DIR)
    parser.add_argument("--run_dir", default="", help="Where runs go (default: a temp folder).")
    parser.add_argument("--report_only", action="store_true")
    args = parser.parse_args()
    if args.report_only:
        print(report(args.record_dir))
        return
    machine = describe_machine()
    print(f"machine: {machine_line(machine)}", flush=True)
    variants = [parse_variant(text) for text in args.variants.split(",")]
    scratch = args.run_dir or tempfile.mkdtemp(prefix="time_to_accuracy_")
    kind_dir = os.path.join(args.record_dir, machine["kind"])
    os.makedirs(kind_dir, exist_ok=True)
    for round_index in range(args.rounds):
        for name, revision, flags in variants:
            record_path = os.path.join(kind_dir, f"{name}-{round_index}.json")
            if os.path.exists(record_path):
                print(f"{record_path} is recorded: skipped", flush=True)
                continue
            code_dir = checkout(revision, scratch)
            model_dir = os.path.join(scratch, f"{name}-{round_index}")
            record = run_variant(code_dir, flags, model_dir, args.target)
            record.update(
                variant=name,
                round=round_index,
                revision=revision or _head_revision(),
                machine=machine,
            )
            with open(record_path, "w", encoding="utf-8") as handle:
                json.dump(record, handle, indent=2)
            print(json.dumps({k: v for k, v in record.items() if k != "curve"}), flush=True)
    print(report(args.record_dir))


if __name__ == "__main__":
    main()
