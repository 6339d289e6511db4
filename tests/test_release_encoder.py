"""bench/release_encoder.py on a real (tiny) pretraining run: the module is copied and loads,
the flagfile reproduces the run's configuration, the kNN curve is the one in TensorBoard (step
0 included), and the size is the module's bytes on disk."""

from __future__ import annotations

import json

import pytest
import release_encoder
import tensorflow as tf
from absl import flags
from binary_runs import SMALL_MODEL, assert_succeeded, read_events, run_binary

from tf_simclr import run


@pytest.mark.long
@pytest.mark.slow
def test_release_folder_reproduces_the_run(tmp_path, monkeypatch):
    model_dir = tmp_path / "pretrain"
    finished = run_binary(
        model_dir,
        *SMALL_MODEL,
        "--train_steps=4",
        "--train_batch_size=32",
        "--checkpoint_steps=2",
        "--steps_per_loop=2",
        "--knn_bank_size=64",
        "--eval_batch_size=64",
        "--temperature=0.3",
        "--nolineareval_while_pretraining",
    )
    assert_succeeded(finished)
    out = tmp_path / "release"
    info = release_encoder.release(str(model_dir), str(out), pixels_knn=0.5)

    module = tf.saved_model.load(str(out / "hub"))
    features = module(tf.zeros([2, 16, 16, 3]), training=False)["final_avg_pool"]
    assert features.shape == (2, 512 // 8)

    lines = [line for line in (out / "pretrain.flags").read_text().splitlines() if line[:1] != "#"]
    assert "--temperature=0.3" in lines and "--train_steps=4" in lines
    assert not any(line.startswith("--model_dir") for line in lines)
    values = flags.FlagValues()
    run.define_flags(values)
    monkeypatch.chdir(tmp_path)
    run.parse_flags(
        values, ["tf-simclr", f"--flagfile={out / 'pretrain.flags'}", "--model_dir=again"]
    )
    reproduced = run.configs_from_flags(values.flag_values_dict()).to_json()
    original = json.loads((model_dir / "config.json").read_text())
    for section in ("optim", "loss", "augment", "data"):
        assert json.loads(json.dumps(reproduced[section])) == original[section], section
    assert reproduced["train"]["train_steps"] == original["train"]["train_steps"]

    events = read_events(model_dir / "train")
    curve = json.loads((out / "knn_curve.json").read_text())
    assert [p["step"] for p in curve["curve"]] == events.steps("eval/knn_top_1_accuracy")
    assert [p["step"] for p in curve["curve"]] == [0, 2, 4]
    # Exact in effect: the same values, read back from the events (float32 to float64).
    assert [p["knn_top_1"] for p in curve["curve"]] == pytest.approx(
        events.values("eval/knn_top_1_accuracy")
    )
    # Bound: one float64 division (pytest.approx's rel 1e-6); 256 synthetic images.
    assert curve["curve"][-1]["epoch"] == pytest.approx(4 * 32 / 256)
    assert (out / "knn_curve.png").read_bytes().startswith(b"\x89PNG")
    on_disk = sum(path.stat().st_size for path in (out / "hub").rglob("*") if path.is_file())
    assert info["hub_module_bytes"] == on_disk and info["under_20_mb"]
    assert (info["resnet_depth"], info["width_multiplier"]) == (18, 0.125)
    assert json.loads((out / "release.json").read_text()) == info
