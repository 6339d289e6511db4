"""The label-efficiency study script (bench/label_efficiency.py): its budget rule and statistics
against closed forms and the statistics module, and a tiny real study (every row, one seed, two
steps per run on synthetic images) that writes the table and the plot and resumes by skipping
finished runs."""

from __future__ import annotations

import importlib.util
import json
import statistics
import subprocess
import sys

import pytest
from binary_runs import REPO_ROOT, RUN_TIMEOUT_SECONDS, subprocess_env

SPEC = importlib.util.spec_from_file_location(
    "label_efficiency", REPO_ROOT / "bench" / "label_efficiency.py"
)
study = importlib.util.module_from_spec(SPEC)
sys.modules[SPEC.name] = study  # dataclasses look their module up while the file executes
SPEC.loader.exec_module(study)


def test_supervised_budget_equals_pretraining_plus_labeled_phase():
    settings = study.StudySettings(run_dir="/unused", pretrain_epochs=5)
    # (5 x 60,000 + 60 x 600) / 600, (5 x 60,000 + 20 x 6,000) / 6,000, 5 + 5 linear epochs.
    assert study.supervised_epochs(settings, 0.01) == pytest.approx(560)
    assert study.supervised_epochs(settings, 0.1) == pytest.approx(70)
    assert study.supervised_epochs(settings, 1.0) == pytest.approx(10)


def test_plan_pairs_seeds_and_orders_dependencies():
    settings = study.StudySettings(run_dir="/study", seeds=(0, 1, 2))
    runs = study.plan(settings)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    by_method = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    assert len(by_method["supervised"]) == 9 and len(by_method["finetune"]) == 6
    for run in by_method["finetune"]:
        twin = f"supervised_{study.percent(run.fraction)}_seed{run.seed}"
        assert twin in names  # same seed, so the same label subset
        assert f"--seed={run.seed}" in run.flags
    for run in runs:  # every --teacher / --checkpoint folder is produced by an earlier run
        for flag in run.flags:
            if flag.startswith(("--teacher=", "--checkpoint=")):
                source = flag.split("=", 1)[1].removeprefix("/study/")
                assert names.index(source) < names.index(run.name)
    small = [run for run in runs if run.method == "distill_small"]
    assert all(f"--width_multiplier={study.STUDENT_WIDTH:g}" in run.flags for run in small)
    assert not any(flag.startswith("--checkpoint=") for run in small for flag in run.flags)


def test_summary_matches_statistics_module():
    records = [
        {"method": "finetune", "fraction": 0.01, "top_1": value, "seconds": 2.0}
        for value in (0.81, 0.79, 0.805)
    ] + [{"method": "linear", "fraction": 1.0, "top_1": 0.7, "seconds": 3.0}]
    summary = study.summarize(records)
    entry = summary[("finetune", 0.01)]
    assert entry["mean"] == pytest.approx(statistics.mean([0.81, 0.79, 0.805]))
    assert entry["std"] == pytest.approx(statistics.stdev([0.81, 0.79, 0.805]))
    assert entry["count"] == 3 and entry["seconds"] == pytest.approx(6.0)
    assert summary[("linear", 1.0)] == {"mean": 0.7, "std": 0.0, "count": 1, "seconds": 3.0}


TINY = (
    "--dataset=synthetic:size=28,count=1000,classes=10,test_count=100 --train_steps=2 "
    "--steps_per_loop=1 --eval_batch_size=100 --knn_bank_size=200 --precision=float32"
)


@pytest.mark.slow
def test_tiny_study_writes_table_and_plot_and_resumes(tmp_path):
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "label_efficiency.py"),
        f"--run_dir={tmp_path / 'study'}",
        "--seeds=0",
        f"--extra_flags={TINY}",
        f"--table={tmp_path / 'table.md'}",
        f"--plot={tmp_path / 'plot.png'}",
    ]

    def run_study() -> str:
        return subprocess.run(
            command,
            cwd=REPO_ROOT,
            env=subprocess_env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=RUN_TIMEOUT_SECONDS,
        ).stdout

    first = run_study()
    records = json.loads((tmp_path / "study" / "results.json").read_text())
    assert len(records) == len(study.plan(study.StudySettings(run_dir="", seeds=(0,))))
    assert all(0.0 <= record["top_1"] <= 1.0 for record in records)
    table = (tmp_path / "table.md").read_text()
    for label in study.METHODS.values():
        assert f"| {label} |" in table
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert first.count("\n=== ") == len(records)

    # A second invocation runs nothing; dropping one run's record reruns only that run.
    assert "\n=== " not in run_study()
    (tmp_path / "study" / "linear_100pct" / "study.json").unlink()
    rerun = run_study()
    assert rerun.count("\n=== ") == 1 and "=== linear_100pct:" in rerun
    assert (tmp_path / "table.md").read_text().splitlines()[:3] == table.splitlines()[:3]
