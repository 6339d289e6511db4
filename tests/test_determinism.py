"""``--deterministic``: the same command on the same machine gives bit-identical results.

Through the binary, as a user runs it: one tiny pretraining command twice in two model_dirs,
then one fine-tuning command from the same pretrained module twice; every variable of the final
checkpoints (weights, optimizer slots, counters) is compared with ``np.array_equal``, no
tolerance (tests/tolerances.py, "exact by construction"). A third pretraining without
``--deterministic`` shows that the equality is not automatic: its weights start elsewhere and
its augmentations differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import assert_succeeded, binary_command, read_events, run_all

TINY = (
    "--dataset=synthetic:size=32,count=64,classes=4",
    "--image_size=32",
    "--resnet_depth=18",
    "--width_multiplier=0.25",
    "--train_batch_size=16",
    "--train_steps=3",
    "--mode=train",
    "--noknn_monitor",
)
PRETRAIN = (*TINY, "--train_mode=pretrain", "--export_hub")


def finetune_flags(hub_module: Path) -> tuple[str, ...]:
    """Fine-tuning the tiny pretrained module on a quarter of the labels."""
    return (
        *TINY,
        "--train_mode=finetune",
        f"--checkpoint={hub_module}",
        "--label_fraction=0.25",
        "--noexport_hub",
    )


def run_together(root: Path, runs: dict[str, tuple[str, ...]]) -> dict[str, Path]:
    """Run the binary once per ``{name: flags}`` concurrently; their model_dirs."""
    dirs = {name: root / name for name in runs}
    jobs = {
        name: (binary_command(f"--model_dir={dirs[name]}", *flags), root / f"{name}.log")
        for name, flags in runs.items()
    }
    for finished in run_all(jobs).values():
        assert_succeeded(finished)
    return dirs


def checkpoint_variables(model_dir: Path) -> dict[str, np.ndarray]:
    """Every variable of the latest checkpoint of ``model_dir`` (model, optimizer, counters)."""
    prefix = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert prefix, f"no checkpoint in {model_dir}"
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name, _ in tf.train.list_variables(prefix)}


def unequal(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> list[str]:
    """Names of the variables whose values are not bit-identical."""
    assert first.keys() == second.keys()
    return [name for name in first if not np.array_equal(first[name], second[name])]


@pytest.mark.slow
def test_deterministic_runs_of_the_same_command_are_bit_identical(tmp_path):
    seeded = (*PRETRAIN, "--deterministic")
    pretrained = run_together(tmp_path, {"first": seeded, "second": seeded, "unseeded": PRETRAIN})
    first = checkpoint_variables(pretrained["first"])
    assert len([name for name in first if name.startswith("model/")]) > 100
    assert unequal(first, checkpoint_variables(pretrained["second"])) == []

    # Not automatic: without --deterministic the initial weights and the augmented views differ,
    # so the same first-step loss would be a coincidence.
    unseeded = checkpoint_variables(pretrained["unseeded"])
    assert len(unequal(first, unseeded)) > len(first) // 2
    losses = {
        name: read_events(pretrained[name] / "train").values("train/contrast_loss")
        for name in ("first", "second", "unseeded")
    }
    assert losses["first"] == losses["second"]
    assert losses["first"][0] != losses["unseeded"][0]

    hub_module = pretrained["first"] / "hub" / "3"
    tuned_flags = (*finetune_flags(hub_module), "--deterministic")
    tuned = run_together(tmp_path / "finetune", {"first": tuned_flags, "second": tuned_flags})
    tuned_first = checkpoint_variables(tuned["first"])
    assert any(name.startswith("model/") for name in tuned_first)
    assert unequal(tuned_first, checkpoint_variables(tuned["second"])) == []
