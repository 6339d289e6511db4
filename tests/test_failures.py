"""What happens when things go wrong, through the ``tf-simclr`` binary as a user meets it
(issue 15): a run that goes non-finite leaves only finite checkpoints and a rerun skips
non-finite ones; one run per model_dir; rerunning a finished run changes nothing; a truncated
newest checkpoint gives way to the newest readable one; bad data, a batch that does not split
over the replicas, logical CPU devices without a strategy to use them (issue 16) and a missing
split are refused with status 2 before any file is written;
Ctrl-C says where to resume (130); a full disk is one line (1) and leaves no half-written
checkpoint.

Runs are the shared tiny pretraining of ``binary_runs`` (ResNet-18 at width 1/8, 16x16 synthetic
images, batch 32) or a copy of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    SMALL_MODEL,
    binary_command,
    checkpoint_steps,
    child_env,
    finish,
    read_json,
    reference_run,
    run_all,
    run_binary,
    run_child,
    start,
    truncate_data_file,
)
from PIL import Image

from tf_simclr.checkpoints import checkpoint_problem, checkpoint_step, recorded_checkpoints
from tf_simclr.model_dir import LOCK_FILENAME

POLL_SECONDS = 0.05
# Pretraining of the reference run's model on an image folder: 2 steps of 8 images.
FOLDER_FLAGS = (
    "--train_mode=pretrain",
    *SMALL_MODEL[1:],
    "--train_batch_size=8",
    "--eval_batch_size=8",
    "--train_steps=2",
    "--noexport_hub",
)


def tree_digests(directory: Path) -> dict[str, str]:
    """sha256 of every file under ``directory``, by relative path."""
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file()
    }


def assert_clean_refusal(finished, model_dir: Path, *phrases: str) -> None:
    """Exit status 2, a message with every phrase, no traceback, no model_dir."""
    assert finished.returncode == 2, finished.tail()
    assert "Traceback" not in finished.output, finished.tail()
    for phrase in phrases:
        assert phrase in finished.output, (phrase, finished.tail())
    assert not model_dir.exists(), "files were written for a refused command"


def unusable(model_dir: Path) -> dict[str, str]:
    """The problem of every checkpoint the model_dir's state file records, if any."""
    problems = {
        prefix: checkpoint_problem(prefix)
        for prefix in recorded_checkpoints(str(model_dir / "ckpt"))
    }
    return {prefix: problem for prefix, problem in problems.items() if problem}


def write_images(folder: Path, classes: dict[str, int]) -> Path:
    """``folder/<class>/<i>.png``: ``count`` random 16x16 RGB images per class."""
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{index}.png")
    return folder


def write_non_finite_copy(source: Path, target: Path) -> None:
    """Checkpoint ``target``: ``source`` with one model variable set to NaN (as the NaN guard of
    earlier versions saved them), recorded as the newest checkpoint of its folder."""
    reader = tf.train.load_checkpoint(str(source))
    names = sorted(reader.get_variable_to_dtype_map())
    tensors = {name: reader.get_tensor(name) for name in names}
    poisoned = next(name for name in names if name.startswith("model/encoder/stem"))
    tensors[poisoned] = np.full_like(tensors[poisoned], np.nan)
    tf.raw_ops.SaveV2(
        prefix=str(target),
        tensor_names=names,
        shape_and_slices=[""] * len(names),
        tensors=[tf.constant(tensors[name]) for name in names],
    )
    folder = str(target.parent)
    recorded = recorded_checkpoints(folder)[::-1]
    lines = [f"model_checkpoint_path: {json.dumps(str(target))}"] + [
        f"all_model_checkpoint_paths: {json.dumps(path)}" for path in [*recorded, str(target)]
    ]
    Path(folder, "checkpoint").write_text("\n".join(lines) + "\n")  # the state file's text proto


# ---------------------------------------------------------------- refused before any work


@pytest.fixture(scope="module")
def refusals(tmp_path_factory):
    """Every command that must be refused with status 2 before writing, run at once."""
    root = tmp_path_factory.mktemp("refused")
    no_test = write_images(root / "data" / "no_test", {"cats": 4, "dogs": 4})
    empty = write_images(root / "data" / "empty_class", {"ants": 4, "bees": 4, "wasps": 0})
    cases = {
        "batch_split": (
            *REFERENCE_FLAGS,
            "--strategy=mirrored",
            "--logical_cpu_devices=2",
            "--train_batch_size=33",
        ),
        "devices_without_strategy": (*REFERENCE_FLAGS, "--logical_cpu_devices=2"),
        "missing_folder": (*FOLDER_FLAGS, f"--dataset=folder:{root / 'data' / 'nowhere'}"),
        "missing_data_dir": (
            *FOLDER_FLAGS,
            "--dataset=fashion_mnist",
            f"--data_dir={root / 'data' / 'nowhere'}",
        ),
        "empty_class": (*FOLDER_FLAGS, f"--dataset=folder:{empty}"),
        "no_test_train_then_eval": (
            *FOLDER_FLAGS,
            f"--dataset=folder:{no_test}",
            "--mode=train_then_eval",
        ),
        "no_test_eval": (  # waiting for checkpoints: otherwise nothing to evaluate is refused
            *FOLDER_FLAGS,
            f"--dataset=folder:{no_test}",
            "--mode=eval",
            "--eval_timeout_seconds=1",
        ),
    }
    jobs = {
        name: (binary_command(f"--model_dir={root / name}", *flags), root / f"{name}.log")
        for name, flags in cases.items()
    }
    return root, run_all(jobs)


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_two_replicas_is_refused_at_once(refusals):
    root, finished = refusals
    assert_clean_refusal(
        finished["batch_split"],
        root / "batch_split",
        "--train_batch_size=33 does not split evenly over the 2 replicas",
        "e.g. 32 or 34",
    )


@pytest.mark.slow
def test_logical_cpu_devices_without_a_strategy_to_use_them_are_refused(refusals):
    root, finished = refusals
    assert_clean_refusal(
        finished["devices_without_strategy"],
        root / "devices_without_strategy",
        "--logical_cpu_devices=2",
        "--strategy=mirrored",
    )


@pytest.mark.slow
def test_missing_data_paths_are_refused_at_once(refusals):
    root, finished = refusals
    nowhere = root / "data" / "nowhere"
    assert_clean_refusal(finished["missing_folder"], root / "missing_folder", str(nowhere))
    assert_clean_refusal(finished["missing_data_dir"], root / "missing_data_dir", str(nowhere))


@pytest.mark.slow
def test_an_empty_class_folder_is_refused_by_name(refusals):
    root, finished = refusals
    assert_clean_refusal(
        finished["empty_class"],
        root / "empty_class",
        f"1 class folder(s) hold no readable image: {root / 'data' / 'empty_class' / 'wasps'}",
        "put images of that class in it, or move it out",
    )
    assert "class 2" not in finished["empty_class"].output


@pytest.mark.slow
def test_evaluating_a_folder_without_test_split_is_refused_at_once(refusals):
    root, finished = refusals
    for mode in ("train_then_eval", "eval"):
        assert_clean_refusal(
            finished[f"no_test_{mode}"],
            root / f"no_test_{mode}",
            f"--mode={mode} evaluates on --eval_split=test",
            "has no test/ subfolder",
            "put held-out images in PATH/test/",
        )


@pytest.mark.long
@pytest.mark.slow
def test_a_folder_without_test_split_trains_with_the_knn_monitor_off(tmp_path):
    data = write_images(tmp_path / "data", {"cats": 8, "dogs": 8})
    model_dir = tmp_path / "run"
    finished = run_binary(model_dir, *FOLDER_FLAGS, f"--dataset=folder:{data}")
    assert finished.returncode == 0, finished.tail()
    assert "the kNN monitor is off" in finished.output
    assert "has no test/ subfolder" in finished.output
    assert read_json(model_dir / "config.json")["train"]["knn_monitor"] is False
    assert set(read_json(model_dir / "result.json")["train"]) >= {"contrast_loss"}
    assert checkpoint_steps(model_dir) == [2]


# ------------------------------------------------------------------------------ NaN / Inf


@pytest.mark.long
@pytest.mark.slow
def test_a_run_that_goes_non_finite_leaves_only_finite_checkpoints(tmp_path):
    # The repro: at this learning rate the weights overflow after step 3 while the loss
    # of step 3 (computed before the update) is still finite; it used to be checkpointed.
    model_dir = tmp_path / "run"
    finished = run_binary(
        model_dir, *REFERENCE_FLAGS, "--learning_rate=1e9", "--checkpoint_steps=1"
    )
    assert finished.returncode == 3, finished.tail()
    assert "Traceback" not in finished.output
    assert "non-finite" in finished.output
    steps = checkpoint_steps(model_dir)
    assert steps and max(steps) < REFERENCE_STEPS, steps
    assert unusable(model_dir) == {}
    newest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert f"the newest checkpoint, {newest}, is the last finite one" in finished.output


@pytest.mark.long
@pytest.mark.slow
def test_a_rerun_skips_a_non_finite_checkpoint_and_trains_on(tmp_path, tmp_path_factory):
    # A NaN checkpoint on top of good ones (as earlier versions wrote them): the rerun with a
    # sane learning rate used to resume from it and stop on NaN again.
    model_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory), model_dir)
    poisoned = model_dir / "ckpt" / f"ckpt-{REFERENCE_STEPS + 3}"
    write_non_finite_copy(model_dir / "ckpt" / f"ckpt-{REFERENCE_STEPS}", poisoned)
    finished = run_binary(model_dir, *REFERENCE_FLAGS, f"--train_steps={REFERENCE_STEPS + 3}")
    assert finished.returncode == 0, finished.tail()
    assert f"skipping checkpoint {poisoned}: it has 1 variables holding NaN" in finished.output
    assert f"resumed from {model_dir / 'ckpt' / f'ckpt-{REFERENCE_STEPS}'}" in finished.output
    assert checkpoint_steps(model_dir)[-1] == REFERENCE_STEPS + 3
    assert unusable(model_dir) == {}
    assert not (model_dir / "hub").exists()  # --noexport_hub


# --------------------------------------------------------------- integrity of a model_dir


@pytest.mark.long
@pytest.mark.slow
def test_a_truncated_newest_checkpoint_gives_way_and_stale_temp_folders_go(
    tmp_path, tmp_path_factory
):
    model_dir = tmp_path / "run"
    shutil.copytree(reference_run(tmp_path_factory), model_dir)
    newest = model_dir / "ckpt" / f"ckpt-{REFERENCE_STEPS}"
    truncate_data_file(newest)
    stale = model_dir / "ckpt" / f"ckpt-{REFERENCE_STEPS + 3}_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half a save")
    finished = run_binary(model_dir, *REFERENCE_FLAGS, f"--train_steps={REFERENCE_STEPS + 3}")
    assert finished.returncode == 0, finished.tail()
    assert f"skipping checkpoint {newest}: it cannot be read" in finished.output
    assert "Read less bytes than requested" in finished.output
    assert f"resumed from {model_dir / 'ckpt' / 'ckpt-9'}" in finished.output
    assert f"removed {stale}" in finished.output
    assert not stale.exists()
    assert checkpoint_steps(model_dir)[-2:] == [REFERENCE_STEPS, REFERENCE_STEPS + 3]
    assert unusable(model_dir) == {}


@pytest.mark.long
@pytest.mark.slow
def test_rerunning_a_finished_run_changes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    flags = (*REFERENCE_FLAGS, "--train_steps=3", "--export_hub")
    assert run_binary(model_dir, *flags).returncode == 0
    recorded = read_json(model_dir / "result.json")
    assert recorded["train"]["global_step"] == 3 and "contrast_loss" in recorded["train"]
    assert (model_dir / "hub" / "3" / "saved_model.pb").exists()
    before = tree_digests(model_dir)
    finished = run_binary(model_dir, *flags)
    assert finished.returncode == 0, finished.tail()
    assert "has already finished (step 3); nothing was changed" in finished.output
    assert json.dumps(recorded, indent=2, sort_keys=True) in finished.output
    assert tree_digests(model_dir) == before


# ----------------------------------------------------------- a second run, Ctrl-C, eval


@pytest.mark.long
@pytest.mark.slow
def test_a_second_run_is_refused_eval_may_follow_and_ctrl_c_says_where_to_resume(tmp_path):
    model_dir = tmp_path / "run"
    # Checkpoints every 50 steps, none deleted: the evaluation reads the newest one meanwhile.
    endless = (
        *REFERENCE_FLAGS,
        "--train_steps=100000",
        "--checkpoint_steps=50",
        "--keep_checkpoint_max=100000",
    )
    trainer = start(binary_command(f"--model_dir={model_dir}", *endless), tmp_path / "a.log")
    try:
        while trainer.poll() is None and not (model_dir / "ckpt" / "checkpoint").exists():
            time.sleep(POLL_SECONDS)
        assert trainer.poll() is None, "the first run ended by itself"
        assert (model_dir / LOCK_FILENAME).read_text().strip() == str(trainer.pid)
        # Suspended (as by Ctrl-Z), the first run still holds its model_dir, and leaves the
        # two cores to the second run and the evaluation.
        trainer.send_signal(signal.SIGSTOP)
        second = run_binary(model_dir, *endless)  # output in run.log
        evaluation = finish(
            start(
                binary_command(f"--model_dir={model_dir}", *endless, "--mode=eval"),
                tmp_path / "eval.log",
            )
        )
        trainer.send_signal(signal.SIGCONT)
        trainer.send_signal(signal.SIGINT)
        interrupted = finish(trainer)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert second.returncode == 2, second.tail()
    assert f"{model_dir} is in use by another tf-simclr run (process id {trainer.pid})" in (
        second.output
    )
    assert "Traceback" not in second.output
    writers = {path.name.split(".")[-3] for path in (model_dir / "train").glob("events.*")}
    assert writers == {str(trainer.pid)}, "another process wrote TensorBoard events"
    assert evaluation.returncode == 0, evaluation.tail()
    assert "label_top_1_accuracy" in evaluation.output

    assert interrupted.returncode == 130, interrupted.tail()
    assert "Traceback" not in interrupted.output and "KeyboardInterrupt" not in interrupted.output
    last_line = interrupted.output.strip().splitlines()[-1]
    # Ctrl-C during training saves at the end of the current call, and says where it resumes.
    newest = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    step = checkpoint_step(newest)
    assert last_line == (
        f"tf-simclr: SIGINT received: saved {newest} at step {step}; the same command resumes "
        "from it."
    )
    assert unusable(model_dir) == {}
    assert not list((model_dir / "ckpt").glob("*_temp"))
    assert not (model_dir / LOCK_FILENAME).exists()


# ----------------------------------------------------------------------------- disk full

# Room for two checkpoints of the reference model (1.6 MB each) and the small files.
TMPFS_SIZE = "4m"
FULL_DISK_SCRIPT = """
mount -t tmpfs -o size={size} tmpfs "$1" || exit 97
shift
"$@"
status=$?
cp -a "$MNT_COPY_FROM" "$MNT_COPY_TO"
exit $status
"""


def can_mount_a_small_file_system() -> bool:
    """Whether ``unshare -rm`` (user and mount namespaces) works here: unprivileged tmpfs."""
    if shutil.which("unshare") is None:
        return False
    return run_child(["unshare", "-rm", "true"]).returncode == 0


@pytest.mark.long
@pytest.mark.slow
def test_a_full_disk_is_one_line_and_leaves_no_half_written_checkpoint(tmp_path):
    if not can_mount_a_small_file_system():
        pytest.skip("cannot mount a small tmpfs here (unshare -rm is not permitted)")
    mount_point, copy = tmp_path / "small_disk", tmp_path / "copy"
    mount_point.mkdir()
    model_dir = mount_point / "run"
    flags = (
        *REFERENCE_FLAGS,
        "--train_steps=100",
        "--checkpoint_steps=1",
        "--keep_checkpoint_max=100",
    )
    command = [
        "unshare",
        "-rm",
        "sh",
        "-c",
        FULL_DISK_SCRIPT.format(size=TMPFS_SIZE),
        "sh",
        str(mount_point),
        *binary_command(f"--model_dir={model_dir}", *flags),
    ]
    env = child_env(MNT_COPY_FROM=str(model_dir), MNT_COPY_TO=str(copy))
    finished = finish(start(command, tmp_path / "full.log", env=env))
    assert finished.returncode == 1, finished.tail()
    assert "Traceback" not in finished.output, finished.tail()
    messages = [line for line in finished.output.splitlines() if line.startswith("tf-simclr:")]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"tf-simclr: disk full while writing to {model_dir} (")
    assert "No space left on device" in messages[0]
    steps = checkpoint_steps(copy)
    assert steps, "no checkpoint fitted: the file system is too small for this test"
    assert not list((copy / "ckpt").glob("*_temp"))
    newest = recorded_checkpoints(str(copy / "ckpt"))[0]
    assert newest == str(copy / "ckpt" / f"ckpt-{max(steps)}"), (newest, steps)
    assert checkpoint_problem(newest) is None
    assert messages[0].endswith(f"resumes from {model_dir / 'ckpt' / f'ckpt-{max(steps)}'}.")
