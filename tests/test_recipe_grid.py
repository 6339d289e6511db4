"""bench/recipe_grid.py: the speeds read from a run's progress lines, and the table of recorded
runs (best first, epochs 1/5/10)."""

from __future__ import annotations

import json

import recipe_grid as grid
from binary_runs import REPO_ROOT

LOG = """\
I1130 loop.py:148] step 0 eval/knn_top_1_accuracy=0.4258
I1130 loop.py:379] step 100/468 epoch 0.43 contrast_acc=0.1 total_loss=9.1 lr=1 images/s=1000.0 \
eta=00:01:00; at step 0 eval/knn_top_1_accuracy=0.4258
I1130 loop.py:379] step 200/468 epoch 0.85 contrast_acc=0.2 total_loss=8.2 lr=0.5 \
images/s=1100.5 eta=00:00:30; at step 0 eval/knn_top_1_accuracy=0.4258
I1130 hub.py:219] exported hub module to /runs/base/hub/468 (encoder; 60 variables, 6 signatures)
"""


def test_speeds_are_read_from_the_progress_lines_only():
    assert grid.progress_speeds(LOG) == [1000.0, 1100.5]


def test_table_lists_runs_best_first(tmp_path):
    def record(name, values, flags):
        curve = [{"epoch": e, "step": 10 * e, "knn_top_1": v} for e, v in enumerate(values, 1)]
        payload = {
            "name": name,
            "flags": flags,
            "knn_by_epoch": curve,
            "final_knn_top_1": values[-1],
            "images_per_second_median": 900.0,
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))

    record("base", [0.70 + 0.01 * e for e in range(10)], [])
    record("crop_0.2", [0.72 + 0.01 * e for e in range(9)] + [0.79], ["--crop_area_min=0.2"])
    lines = grid.markdown_table(str(tmp_path)).splitlines()
    assert lines[2].startswith("| crop_0.2 | `--crop_area_min=0.2` | 0.7200 | 0.7600 | 0.7900 |")
    assert "0.8000 (9)" in lines[2]  # the best epoch beats the last one
    assert lines[3].startswith("| base | (the recipe) | 0.7000 | 0.7400 | 0.7900 | 0.7900 (10)")


def test_every_setting_starts_from_the_fixed_cifar_style_recipe(tmp_path, monkeypatch):
    from absl import flags

    from tf_simclr import run

    monkeypatch.chdir(REPO_ROOT)  # the command names bench/recipe_grid_base.flags from the root
    for name, extra in grid.GRID.items():
        values = flags.FlagValues()
        run.define_flags(values)
        run.parse_flags(
            values,
            ["tf-simclr", "--flagfile=bench/recipe_grid_base.flags", *extra, "--model_dir=x"],
        )
        config = run.configs_from_flags(values.flag_values_dict())
        if not extra:
            assert name == "base"
            assert config.train.train_batch_size == 256 and config.loss.temperature == 0.2
            assert config.augment.color_jitter_strength == 0.5
            assert config.augment.crop_area_range[0] == 0.08
        assert config.train.train_mode == "pretrain", name
