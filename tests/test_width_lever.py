"""bench/width_lever.py: which measurements are pending, and the table of the width-0.25 and
width-0.5 encoders (values by seed, mean ± sample std, paired differences)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import width_lever as lever


def write(folder, name: str, payload: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"name": name, **payload}))


def test_pending_lists_what_is_not_recorded_cheapest_first(tmp_path):
    names = [item[0] for item in lever.pending(str(tmp_path))]
    assert names[:6] == [
        "probe_base",
        "probe_base_seed1",
        "probe_base_seed2",
        "probe_width_0.5",
        "probe_width_0.5_seed1",
        "probe_width_0.5_seed2",
    ]
    assert names[6:12] == [f"finetune_{n.removeprefix('probe_')}" for n in names[:6]]
    # Width 0.25's supervised baselines are the study's records: only width 0.5 runs here.
    assert names[12:] == [f"supervised_1pct_width_0.5_seed{s}" for s in (0, 1, 2)]
    write(tmp_path, "probe_base_seed1", {})
    write(tmp_path, "supervised_1pct_width_0.5_seed2", {})
    left = [item[0] for item in lever.pending(str(tmp_path))]
    assert len(left) == 13
    assert "probe_base_seed1" not in left and "supervised_1pct_width_0.5_seed2" not in left


def test_grid_encoder_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape("--only=width_0.5_seed2")):
        lever.grid_encoder(str(tmp_path), 0.5, 2)


def test_table_gives_each_width_by_seed_and_the_paired_difference(tmp_path):
    records, study, grid = tmp_path / "lever", tmp_path / "study", tmp_path / "grid"
    linear = {0.25: [0.86, 0.87, 0.85], 0.5: [0.88, 0.87, 0.89]}
    tuned = {0.25: [0.83, 0.84, 0.85], 0.5: [0.85, 0.86, 0.84]}
    supervised = {0.25: [0.81, 0.815, 0.82], 0.5: [0.80, 0.81, 0.83]}
    for width in lever.WIDTHS:
        for seed in lever.SEEDS:
            name = lever.grid_name(width, seed)
            write(grid, name, {"final_knn_top_1": 0.78 + width / 10 + seed / 100})
            probe = {"linear": {"0.01": 0.8, "0.1": 0.85, "1": linear[width][seed]}}
            write(records, f"probe_{name}", probe)
            write(records, f"finetune_{name}", {"top_1": tuned[width][seed]})
            baseline = {"top_1": supervised[width][seed]}
            if width == 0.25:
                write(study, lever.STUDY_SUPERVISED[seed], baseline)
            else:
                write(records, lever.supervised_name(width, seed), baseline)
    (records / "supervised_1pct_width_0.5_seed1.json").unlink()  # a run still pending
    table = lever.collect(str(records), str(study), str(grid))
    lines = lever.markdown_table(table).splitlines()

    def row(metric: str, width: str) -> list[str]:
        matches = [line for line in lines if line.startswith(f"| {metric} | {width} |")]
        assert len(matches) == 1, (metric, width)
        return [cell.strip() for cell in matches[0].strip("|").split("|")][2:]

    wide = np.array(linear[0.5])
    assert row("linear probe 100%", "0.5") == [
        "0.8800",
        "0.8700",
        "0.8900",
        f"{wide.mean():.4f} ± {wide.std(ddof=1):.4f} (3)",
    ]
    difference = wide - np.array(linear[0.25])
    assert row("linear probe 100%", "0.5 - 0.25")[:3] == [f"{d:+.4f}" for d in difference]
    assert row("linear probe 100%", "0.5 - 0.25")[3].startswith(f"{difference.mean():+.4f} ± ")
    gains = np.array(tuned[0.5]) - np.array(supervised[0.5])
    assert row("fine-tuned minus supervised 1%", "0.5") == [
        f"{gains[0]:+.4f}",
        "",
        f"{gains[2]:+.4f}",
        f"{gains[[0, 2]].mean():+.4f} ± {gains[[0, 2]].std(ddof=1):.4f} (2)",
    ]
    assert row("kNN (grid, 10 epochs)", "0.25")[0] == "0.8050"
