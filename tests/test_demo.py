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
