"""The demo's phase commands (``tf_simclr/demo.py``): parsed by the binary's own flag parser,
each phase runs its recipe in its own model_dir with the demo's ``--seed``, which overrides the
recipe's (the spread of the demo's table is measured over seeds)."""

from __future__ import annotations

import json

import pytest
from absl import flags
from binary_runs import REPO_ROOT

from tf_simclr import demo, run


def parsed(command: list[str]) -> flags.FlagValues:
    """The flag values ``tf-simclr`` runs ``command`` (``python -m tf_simclr.run ...``) with."""
    values = flags.FlagValues()
    run.define_flags(values)
    run.parse_flags(values, ["tf-simclr", *command[3:]])
    return values


@pytest.mark.parametrize("seed", [0, 2])
def test_every_phase_runs_its_recipe_with_the_demos_seed(seed, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO_ROOT)  # the demo runs its children from the repository
    release = demo.best_release()
    assert release is not None  # pretrained/ is part of the checkout
    for name, flagfile, extra in (*demo.PHASES, demo.released_phase(release)):
        values = parsed(demo.phase_command(name, flagfile, extra, str(tmp_path), seed))
        assert values.seed == seed
        assert values.model_dir == str(tmp_path / name)
        assert values.train_mode in {"pretrain", "finetune", "distill"}
        if name == "distill_1pct":
            assert values.teacher == str(tmp_path / "finetune_1pct")


def write_release(folder, width: float, knn: float, hub: bool = True) -> None:
    folder.mkdir(parents=True)
    record = {"resnet_depth": 18, "width_multiplier": width, "epochs": 60.0}
    (folder / "release.json").write_text(json.dumps({**record, "final_knn_top_1": knn}))
    if hub:
        (folder / "hub").mkdir()


def test_the_released_row_fine_tunes_the_release_of_highest_knn(tmp_path):
    assert demo.best_release(str(tmp_path)) is None
    write_release(tmp_path / "small", 0.25, 0.819)
    write_release(tmp_path / "wide", 0.5, 0.834)
    write_release(tmp_path / "unfinished", 1.0, 0.9, hub=False)  # no module: not a release
    best = demo.best_release(str(tmp_path))
    assert best.hub == str(tmp_path / "wide" / "hub")
    assert best.describe() == "released R18 w0.5, 60 epochs"
    name, _, extra = demo.released_phase(best)
    assert name == demo.RELEASED
    assert extra == (f"--checkpoint={tmp_path / 'wide' / 'hub'}",)


def test_a_demo_folder_of_other_settings_is_named_with_the_way_out(tmp_path, capsys):
    """A rerun of the demo over an earlier one whose recipe differs (here: the temperature) is
    refused by tf-simclr's resume check; the demo stops with its status and says what to do."""
    tiny = (
        "--train_steps=1",
        "--mode=train",
        "--train_batch_size=32",
        "--noknn_monitor",
        "--noexport_hub",
        "--dataset=synthetic:size=28,count=64,classes=10",
    )
    first = demo.run_phase("pretrain", "pretrain.flags", tiny, str(tmp_path), 0)
    assert first["train"]["global_step"] == 1
    with pytest.raises(SystemExit) as stopped:
        demo.run_phase("pretrain", "pretrain.flags", (*tiny, "--temperature=0.5"), str(tmp_path), 0)
    assert stopped.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-2] == "make demo: the pretrain phase failed (exit status 2); see above."
    assert lines[-1] == (
        f"make demo: {tmp_path / 'pretrain'} holds a run of other settings (an earlier demo's?); "
        f"delete {tmp_path} to start the demo afresh, or pass --run_dir=ANOTHER_FOLDER."
    )
