"""The demo's phase commands (``tf_simclr/demo.py``): parsed by the binary's own flag parser,
each phase runs its recipe in its own model_dir with the demo's ``--seed``, which overrides the
recipe's (the spread of the demo's table is measured over seeds)."""

from __future__ import annotations

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
    for name, flagfile, extra in (*demo.PHASES, demo.RELEASED_PHASE):
        values = parsed(demo.phase_command(name, flagfile, extra, str(tmp_path), seed))
        assert values.seed == seed
        assert values.model_dir == str(tmp_path / name)
        assert values.train_mode in {"pretrain", "finetune", "distill"}
        if name == "distill_1pct":
            assert values.teacher == str(tmp_path / "finetune_1pct")


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
