"""The label-efficiency study script (bench/label_efficiency.py): its budget rule and statistics
against closed forms and the statistics module, and a tiny real study (every row, one seed, two
steps per run on synthetic images) that writes the table and the plot and resumes by skipping
finished runs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys

import label_efficiency as study
import pytest
from binary_runs import REPO_ROOT, run_child


def _sweep_records(settings, fraction, accuracies, records=None, method="supervised"):
    """Records for the first ``len(accuracies)`` runs of ``method``'s sweep on ``fraction``,
    planned as the study plans it (it grows as records arrive)."""
    records = dict(records or {})
    for accuracy in accuracies:
        run = next(
            r
            for r in study.fraction_sweep(settings, records, fraction, method)
            if r.name not in records
        )
        records[run.name] = {**study.dataclasses.asdict(run), "top_1": accuracy, "seconds": 1.0}
    return records


def test_sweep_picks_the_best_budget_for_the_other_seeds():
    settings = study.StudySettings(run_dir="/study", seeds=(0, 1, 2))
    sweep = [run for f in study.FRACTIONS for run in study.fraction_sweep(settings, {}, f)]
    assert [(r.fraction, r.multiplier) for r in sweep] == [
        (f, m) for f in study.FRACTIONS for m in (1, 2, 4)
    ]
    assert all(r.seed == 0 for r in sweep)
    # No later-seed supervised run is planned before its fraction's sweep is complete.
    names = [run.name for run in study.plan(settings, {})]
    assert not any(name.startswith("supervised_1pct_seed") for name in names)

    records = _sweep_records(settings, 0.01, [0.80, 0.83, 0.82])  # 2x is best
    records |= _sweep_records(settings, 0.1, [0.88, 0.88, 0.87])  # a tie goes to 1x
    planned = {run.name: run for run in study.plan(settings, records)}
    for seed in (1, 2):
        first = planned[f"supervised_1pct_seed{seed}"]
        assert first.multiplier == 2 and f"--seed={seed}" in first.flags
        epochs = 2 * study.SUPERVISED_BASE_EPOCHS[0.01]
        assert f"--train_epochs={epochs:g}" in first.flags
        assert planned[f"supervised_10pct_seed{seed}"].multiplier == 1
        assert f"supervised_100pct_seed{seed}" not in planned  # its sweep has not run
    # The costly 100% sweep waits until the cheap fractions' seeds are done.
    order = [run.name for run in study.plan(settings, records)]
    assert order.index("supervised_10pct_seed2") < order.index("supervised_100pct_x1_seed0")

    summary = study.summarize(list(records.values()))
    assert summary[("supervised", 0.01)]["mean"] == 0.83
    assert summary[("supervised", 0.01)]["count"] == 1  # only the best budget counts
    assert summary[("supervised", 0.1)]["mean"] == 0.88


def test_a_sweep_whose_longest_budget_wins_is_doubled_until_it_stops_improving():
    settings = study.StudySettings(run_dir="/study", seeds=(0, 1), max_budget_multiplier=16)
    records = _sweep_records(settings, 0.01, [0.76, 0.80, 0.81])  # still rising at 4x
    assert study.best_multiplier(records, settings, 0.01) is None
    # An unfinished sweep is no converged baseline: marked, and no target compares with it.
    finetuned = {"name": "finetune_1pct_seed0", "method": "finetune", "fraction": 0.01}
    with_finetune = [*records.values(), {**finetuned, "seed": 0, "top_1": 0.9, "seconds": 1.0}]
    table = study.markdown_table(with_finetune, settings)
    assert "0.8100 (1) (sweep not finished)" in table
    assert "| fine-tuning on 1% beats supervised 1% by >= 3 points | not run |" in table
    names = [run.name for run in study.plan(settings, records)]
    assert "supervised_1pct_x8_seed0" in names and "supervised_1pct_seed1" not in names

    records = _sweep_records(settings, 0.01, [0.83], records)  # 8x wins too: 16x is next
    assert [r.multiplier for r in study.fraction_sweep(settings, records, 0.01)] == [1, 2, 4, 8, 16]
    records = _sweep_records(settings, 0.01, [0.84], records)  # 16x is the cap
    assert study.best_multiplier(records, settings, 0.01) == 16
    seed1 = {run.name: run for run in study.plan(settings, records)}["supervised_1pct_seed1"]
    assert f"--train_epochs={16 * study.SUPERVISED_BASE_EPOCHS[0.01]:g}" in seed1.flags

    # 8x falling back below 4x closes the sweep at 4x.
    records = _sweep_records(settings, 0.01, [0.76, 0.80, 0.81, 0.805])
    assert study.best_multiplier(records, settings, 0.01) == 4
    table = study.markdown_table(list(records.values()), settings)
    assert "| 1x | 2x | 4x | 8x |" in table and "0.8050 (800 ep)" in table


@pytest.mark.parametrize(
    "accuracies, longest, longest_without_minimum",
    [
        ([0.9219, 0.9410, 0.9413], 4, 8),  # the 100% sweep: 3 more test images at 4x, a plateau
        ([0.9219, 0.9410, 0.9420], 8, 8),  # 10 more images is the smallest gain that counts
        ([0.9219, 0.9410, 0.9410], 4, 4),  # a tie stops the sweep, even with no minimum
    ],
)
def test_a_sweep_stops_when_its_longest_budget_gains_less_than_the_minimum(
    accuracies, longest, longest_without_minimum
):
    settings = study.StudySettings(run_dir="/study", seeds=(0, 1, 2))
    assert settings.min_budget_gain == 0.001
    for minimum, expected in ((0.001, longest), (0.0, longest_without_minimum)):
        minimum_settings = dataclasses.replace(settings, min_budget_gain=minimum)
        records = _sweep_records(minimum_settings, 1.0, accuracies)
        planned = study.fraction_sweep(minimum_settings, records, 1.0)
        assert max(run.multiplier for run in planned) == expected
    # The plateau's best budget is still the most accurate one, and it runs the other seeds.
    records = _sweep_records(settings, 1.0, [0.9219, 0.9410, 0.9413])
    assert study.best_multiplier(records, settings, 1.0) == 4
    planned = {run.name: run for run in study.plan(settings, records)}
    assert planned["supervised_100pct_seed1"].multiplier == 4


def test_fine_tuning_gets_the_budget_rule_of_the_baselines():
    settings = study.StudySettings(run_dir="/study", seeds=(0, 1, 2), encoder="/released/hub")
    sweep = study.fraction_sweep(settings, {}, 0.1, "finetune")
    assert [run.name for run in sweep] == [f"finetune_10pct_x{m}_seed0" for m in (1, 2, 4)]
    for run in sweep:
        epochs = run.multiplier * study.FINETUNE_EPOCHS[0.1]
        assert f"--train_epochs={epochs:g}" in run.flags
        assert "--checkpoint=/released/hub" in run.flags
    records = _sweep_records(settings, 0.1, [0.89, 0.90, 0.91], method="finetune")
    assert study.best_multiplier(records, settings, 0.1, "finetune") is None  # 4x wins: 8x next
    records = _sweep_records(settings, 0.1, [0.905], records, method="finetune")
    assert study.best_multiplier(records, settings, 0.1, "finetune") == 4
    planned = {run.name: run for run in study.plan(settings, records)}
    assert planned["finetune_10pct_seed2"].multiplier == 4
    assert "--seed=2" in planned["finetune_10pct_seed2"].flags
    assert "finetune_1pct_seed1" not in planned  # the 1% sweep has not run
    # The students of 10% learn from the best budget's seed-0 fine-tune; 1% has no teacher yet.
    students = [run for run in planned.values() if run.teacher]
    assert {(run.method, run.seed) for run in students} == {
        (method, seed) for method in ("self_distill", "distill_small") for seed in (0, 1, 2)
    }
    for run in students:
        assert run.fraction == 0.1 and run.teacher == "finetune_10pct_x4_seed0"
        assert f"--teacher={settings.record_dir}/modules/finetune_10pct_x4_seed0" in run.flags
        assert (
            run.name == f"{run.method}_10pct_seed{run.seed}" and f"--seed={run.seed}" in run.flags
        )
    # Only the best budget counts.
    summary = study.summarize(list(records.values()))
    assert summary[("finetune", 0.1)]["mean"] == 0.91 and summary[("finetune", 0.1)]["count"] == 1
    table = study.markdown_table(list(records.values()), settings)
    assert "| finetune | 10% | 0.8900 (20 ep) | 0.9000 (40 ep) | 0.9100 (80 ep) | 0.9050" in table
    assert "teachers: finetune_10pct_x4_seed0 (0.9100)." in table


def test_plan_pairs_seeds_and_orders_dependencies():
    settings = study.StudySettings(run_dir="/study", record_dir="/records", seeds=(0, 1, 2))
    runs = study.plan(settings, {})
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    assert names[0] == "pretrain"
    assert not any(run.teacher for run in runs)  # no student before its teacher's sweep
    records = {}
    for fraction in study.SEMI_SUPERVISED:
        records |= _sweep_records(settings, fraction, [0.85, 0.84, 0.83], method="finetune")
        records |= _sweep_records(settings, fraction, [0.80, 0.82, 0.81])
    runs = study.plan(settings, records)
    names = [run.name for run in runs]
    assert len(names) == len(set(names))
    by_method = {}
    for run in runs:
        by_method.setdefault(run.method, []).append(run)
    assert len(by_method["finetune"]) == 10 and len(by_method["probe"]) == 3
    for run in by_method["finetune"]:
        assert "--checkpoint=/study/pretrain" in run.flags
        if run.seed == 0:
            twin = f"supervised_{study.percent(run.fraction)}_x{run.multiplier:g}_seed0"
            assert twin in names
    for run in by_method["self_distill"] + by_method["distill_small"]:
        teacher = f"finetune_{study.percent(run.fraction)}_x1_seed0"  # 1x won both sweeps
        assert run.teacher == teacher and f"--teacher=/records/modules/{teacher}" in run.flags
        assert names.index(teacher) < names.index(run.name)
        assert f"--distill_alpha={settings.distill_alpha:g}" in run.flags
    assert len(by_method["self_distill"]) == len(by_method["distill_small"]) == 6
    small = by_method["distill_small"]
    assert all(f"--width_multiplier={study.STUDENT_WIDTH:g}" in run.flags for run in small)
    assert not any(flag.startswith("--checkpoint=") for run in small for flag in run.flags)
    # The first seed's students come before the baselines' seeds, the other seeds' students
    # before the costly 100% sweep.
    assert names.index("self_distill_10pct_seed0") < names.index("supervised_1pct_seed1")
    assert names.index("supervised_10pct_seed2") < names.index("distill_small_1pct_seed1")
    assert names.index("distill_small_10pct_seed2") < names.index("supervised_100pct_x1_seed0")

    # With a released encoder nothing is pretrained and everything starts from the module.
    released = study.StudySettings(run_dir="/study", encoder="/pretrained/hub")
    runs = study.plan(released, {})
    assert "pretrain" not in [run.name for run in runs]
    assert all("--checkpoint=/pretrained/hub" in r.flags for r in runs if r.method == "finetune")


def test_a_record_is_stale_when_its_flags_encoder_or_teacher_change(tmp_path):
    module = tmp_path / "module"
    (module / "variables").mkdir(parents=True)
    (module / "variables" / "variables.index").write_bytes(b"weights v1")
    settings = study.StudySettings(run_dir="/study", encoder=str(module))
    records = _sweep_records(settings, 0.1, [0.90, 0.89, 0.88], method="finetune")
    first = study.encoder_fingerprint(settings)
    for record in records.values():
        record["inputs"] = "teacher v1"
    runs = {run.name: run for run in study.plan(settings, records)}
    assert "self_distill_10pct_seed0" in runs

    def keys(settings, encoder, records):
        return {
            name: study.inputs_of(run, settings, encoder, records) for name, run in runs.items()
        }

    before = keys(settings, first, records)
    (module / "variables" / "variables.index").write_bytes(b"weights v2")
    second = study.encoder_fingerprint(settings)
    assert second != first
    after = keys(settings, second, records)
    assert {name for name in runs if after[name] != before[name]} == {
        name for name, run in runs.items() if run.method in study.ENCODER_DEPENDENT
    } | {"probe_simclr"}
    more_flags = dataclasses.replace(settings, extra_flags=("--train_steps=2",))
    assert all(v != before[name] for name, v in keys(more_flags, first, records).items())
    # A retrained teacher (another key in its record) makes only its students stale.
    records["finetune_10pct_x1_seed0"] = {**records["finetune_10pct_x1_seed0"], "inputs": "v2"}
    retrained = keys(settings, first, records)
    assert {name for name in runs if retrained[name] != before[name]} == {
        name for name, run in runs.items() if run.teacher == "finetune_10pct_x1_seed0"
    }


def test_a_clone_in_another_folder_keeps_its_records(tmp_path):
    """The encoder and the teachers' modules are named by absolute paths in the flags; the key
    must not depend on them, or a fresh machine would rerun every fine-tune and student."""
    settings = {}
    for clone in ("here", "there"):
        module = tmp_path / clone / "pretrained" / "hub"
        (module / "variables").mkdir(parents=True)
        (module / "variables" / "variables.index").write_bytes(b"the released weights")
        settings[clone] = study.StudySettings(
            run_dir=str(tmp_path / clone / "run"),
            record_dir=str(tmp_path / clone / "records"),
            encoder=str(module),
        )
    records = _sweep_records(settings["here"], 0.1, [0.90, 0.89, 0.88], method="finetune")
    for record in records.values():
        record["inputs"] = "teacher key"
    keys = {}
    for clone, clone_settings in settings.items():
        encoder = study.encoder_fingerprint(clone_settings)
        runs = study.plan(clone_settings, records)
        assert any(run.teacher for run in runs) and any(run.method == "finetune" for run in runs)
        keys[clone] = [study.inputs_of(run, clone_settings, encoder, records) for run in runs]
        flags = [flag for run in runs for flag in run.flags]
        assert any(flag.startswith(f"--teacher={clone_settings.record_dir}/") for flag in flags)
        assert f"--checkpoint={clone_settings.encoder}" in flags
    assert keys["here"] == keys["there"]
    # Another encoder (other bytes at the same path) still makes its runs stale.
    variables = tmp_path / "there" / "pretrained" / "hub" / "variables" / "variables.index"
    variables.write_bytes(b"other weights")
    encoder = study.encoder_fingerprint(settings["there"])
    runs = study.plan(settings["there"], records)
    changed = [study.inputs_of(run, settings["there"], encoder, records) for run in runs]
    assert changed != keys["here"]


def test_only_selects_runs_by_name_or_pattern():
    everything = study.StudySettings(run_dir="/study")
    assert everything.selects("supervised_100pct_x4_seed0")
    some = dataclasses.replace(everything, only=("self_distill_10pct_*", "probe_pixels"))
    names = ["self_distill_10pct_seed1", "self_distill_1pct_seed1", "probe_pixels", "probe_random"]
    assert [name for name in names if some.selects(name)] == names[:1] + names[2:3]


def test_the_key_follows_a_flagfiles_content_not_its_name(tmp_path, monkeypatch):
    """Editing a recipe makes its runs stale; moving a flag into an included file does not."""
    (tmp_path / "common.flags").write_text("--image_size=28\n")
    recipe = tmp_path / "recipe.flags"
    recipe.write_text("# a comment\n--flagfile=common.flags\n--learning_rate=0.05\n")
    monkeypatch.setattr(study, "REPO_ROOT", str(tmp_path))
    settings = study.StudySettings(run_dir="/study")
    run = study.Run("finetune_1pct_x1_seed0", "finetune", 0.01, 0, ("--flagfile=recipe.flags",))
    key = study.inputs_of(run, settings, "encoder", {})
    assert study.expanded_flags(run.flags) == ["--image_size=28", "--learning_rate=0.05"]
    recipe.write_text("--image_size=28\n--learning_rate=0.05\n")
    assert study.inputs_of(run, settings, "encoder", {}) == key
    recipe.write_text("--flagfile=common.flags\n--learning_rate=0.1\n")
    assert study.inputs_of(run, settings, "encoder", {}) != key


def test_the_best_budgets_module_becomes_the_teacher_and_replaces_the_former(tmp_path):
    settings = study.StudySettings(
        run_dir=str(tmp_path / "runs"), record_dir=str(tmp_path / "records"), seeds=(0,)
    )
    for name in ("finetune_1pct_x1_seed0", "finetune_1pct_x2_seed0"):
        for step in (10, 200):  # the newest export is the teacher
            module = tmp_path / "runs" / name / "hub" / str(step)
            module.mkdir(parents=True)
            (module / "saved_model.pb").write_text(f"{name} {step}")
    records = _sweep_records(settings, 0.01, [0.80, 0.82, 0.81], method="finetune")
    study.install_teachers(settings, records)
    modules = tmp_path / "records" / "modules"
    assert [p.name for p in modules.iterdir()] == ["finetune_1pct_x2_seed0"]
    assert (modules / "finetune_1pct_x2_seed0" / "saved_model.pb").read_text() == (
        "finetune_1pct_x2_seed0 200"
    )
    # The sweep is rerun and 1x now wins: its module replaces the former teacher's.
    records["finetune_1pct_x2_seed0"]["top_1"] = 0.79
    records["finetune_1pct_x4_seed0"]["top_1"] = 0.79
    study.install_teachers(settings, records)
    assert [p.name for p in modules.iterdir()] == ["finetune_1pct_x1_seed0"]
    # A teacher with a record but no module anywhere is an error that says what to do.
    shutil.rmtree(modules / "finetune_1pct_x1_seed0")
    shutil.rmtree(tmp_path / "runs" / "finetune_1pct_x1_seed0")
    with pytest.raises(FileNotFoundError, match=r"delete finetune_1pct_x1_seed0\.json"):
        study.install_teachers(settings, records)


def test_summary_matches_statistics_module():
    records = [
        {
            "name": f"finetune_1pct_seed{i}",
            "method": "finetune",
            "fraction": 0.01,
            "top_1": value,
            "seconds": 2.0,
        }
        for i, value in enumerate((0.81, 0.79, 0.805))
    ]
    summary = study.summarize(records)
    entry = summary[("finetune", 0.01)]
    # Bound: float64 sums of 3 values in another order (pytest.approx's rel 1e-6).
    assert entry["mean"] == pytest.approx(statistics.mean([0.81, 0.79, 0.805]))
    assert entry["std"] == pytest.approx(statistics.stdev([0.81, 0.79, 0.805]))
    assert entry["count"] == 3 and entry["seconds"] == pytest.approx(6.0)
    assert (entry["min"], entry["max"]) == (0.79, 0.81)


def _entry(mean, low, high):
    return {"mean": mean, "min": low, "max": high, "std": 0.0, "count": 3, "seconds": 1.0}


def test_targets_are_met_or_missed_by_their_definitions():
    probes = {
        "pixels": {"knn_top_1": 0.73, "linear": {"1": 0.845}},
        "simclr": {"knn_top_1": 0.80, "linear": {"1": 0.87}},
    }
    summary = {
        ("finetune", 0.01): _entry(0.85, 0.84, 0.86),
        ("supervised", 0.01): _entry(0.81, 0.80, 0.835),
        ("finetune", 0.1): _entry(0.90, 0.89, 0.91),
        ("supervised", 0.1): _entry(0.89, 0.88, 0.90),
        ("self_distill", 0.1): _entry(0.91, 0.90, 0.92),
        ("supervised", 1.0): _entry(0.94, 0.93, 0.95),
        ("distill_small", 0.01): _entry(0.82, 0.82, 0.82),
        ("distill_small", 0.1): _entry(0.87, 0.87, 0.87),
    }
    teachers = {0.01: 0.85, 0.1: 0.90}  # the best-budget seed-0 fine-tunes
    rows = study.targets(summary, probes, teachers)
    # Linear 0.87 < 0.88; +4 points with 0.84 > 0.835; 0.91 > 0.89; 0.91 < 0.94; the small
    # students keep 0.82 / 0.85 = 96.5% and 0.87 / 0.90 = 96.7%.
    assert [ok for _, ok, _ in rows] == [False, True, True, False, True]
    assert rows[-1][2] == "96.5%, 96.7%"
    assert study.targets(summary, probes, {0.01: 0.85, 0.1: 0.92})[-1][1] is False  # 94.6%
    summary[("supervised", 0.01)] = _entry(0.83, 0.80, 0.845)  # overlapping, +2 points
    assert study.targets(summary, probes, teachers)[1][1] is False
    assert all(ok is None for _, ok, _ in study.targets({}, {}, {}))


TINY = (
    "--dataset=synthetic:size=28,count=1000,classes=10,test_count=100 --train_steps=2 "
    "--steps_per_loop=1 --eval_batch_size=100 --knn_bank_size=200 --precision=float32 "
    "--train_batch_size=32"
)


@pytest.mark.long
@pytest.mark.slow
def test_tiny_study_from_a_released_encoder_writes_table_and_plot_and_resumes(tmp_path):
    """Every row on synthetic images, two steps per run, from the released encoder
    (``pretrained/fashion_mnist/hub``, the study's default): no pretraining in the study; a
    rerun runs nothing; a dropped record reruns only its run."""
    encoder = study.RELEASED_ENCODER
    records_dir = tmp_path / "records"
    command = [
        sys.executable,
        str(REPO_ROOT / "bench" / "label_efficiency.py"),
        f"--run_dir={tmp_path / 'study'}",
        f"--record_dir={records_dir}",
        f"--encoder={encoder}",
        "--seeds=0",
        "--budget_multipliers=1",
        "--max_budget_multiplier=1",
        f"--extra_flags={TINY}",
        f"--table={tmp_path / 'table.md'}",
        f"--plot={tmp_path / 'plot.png'}",
    ]

    def run_study() -> str:
        return run_child(command, check=True).stdout

    first = run_study()
    records = json.loads((records_dir / "results.json").read_text())
    settings = study.StudySettings(
        run_dir="",
        seeds=(0,),
        encoder=str(encoder),
        budget_multipliers=(1,),
        max_budget_multiplier=1,
    )
    planned = study.plan(settings, {record["name"]: record for record in records})
    assert [r["name"] for r in records] == [run.name for run in planned]
    assert {r["method"] for r in records} == {"probe", "finetune", *study.METHODS}
    assert "=== pretrain:" not in first
    for record in records:
        if record["method"] == "probe":
            assert 0.0 <= record["knn_top_1"] <= 1.0
            assert set(record["linear"]) == {"0.01", "0.1", "1"}
        else:
            assert 0.0 <= record["top_1"] <= 1.0
    dims = {r["name"]: r["feature_dim"] for r in records if r["method"] == "probe"}
    assert dims == {"probe_pixels": 28 * 28, "probe_random": 128, "probe_simclr": 128}
    modules = sorted(p.name for p in (records_dir / "modules").iterdir())
    assert modules == ["finetune_10pct_x1_seed0", "finetune_1pct_x1_seed0"]
    assert (records_dir / "modules" / "finetune_1pct_x1_seed0" / "saved_model.pb").exists()
    table = (tmp_path / "table.md").read_text()
    for label in [*study.METHODS.values(), *study.PROBE_LABELS.values()]:
        assert f"| {label} |" in table
    assert table.count("| **met** |") + table.count("| **missed** |") == 5
    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert first.count("\n=== ") == len(records)

    # A second invocation runs nothing; dropping one run's record reruns only that run.
    assert "\n=== " not in run_study()
    (records_dir / "distill_small_10pct_seed0.json").unlink()
    rerun = run_study()
    assert rerun.count("\n=== ") == 1 and "=== distill_small_10pct_seed0:" in rerun
    # --report_only writes the same table from the records alone.
    written = (tmp_path / "table.md").read_text()
    (tmp_path / "table.md").unlink()
    command.append("--report_only")
    report = run_study()
    assert "\n=== " not in report and "0 planned runs not recorded yet" in report
    assert (tmp_path / "table.md").read_text() == written
