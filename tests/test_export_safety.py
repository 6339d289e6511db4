"""Exports never lose or overwrite a module (issue 30).

Through the binaries, on copies of one tiny pretraining (checkpoints at steps 2 and 4, module
``hub/4``): an export of an older checkpoint keeps the module it wrote and the newer one, and a
training run's export prunes only its older modules; a second export into a folder that an
export is writing is refused; what a killed export left is cleaned and named; a model_dir's
newest checkpoint removed while it is read (a training run with ``--keep_checkpoint_max=1``
saving meanwhile, played by a hook in the export's process) gives way to the newer one, a
bounded number of times. In this process: the lock, temporary folder and rename of
:class:`tf_simclr.hub.ExportTarget`, what a training run's pruning spares, and a module called
with no images.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from binary_runs import (
    SMALL_MODEL,
    binary_command,
    console_script,
    finish,
    run_all,
    run_child,
    shared_runs,
    start,
)

from tf_simclr import ModelConfig, SimCLRModel
from tf_simclr.hub import (
    METADATA_FILENAME,
    WRITTEN_BY_EXPORT,
    WRITTEN_BY_TRAINING,
    ExportInProgressError,
    ExportTarget,
    prune_modules,
    read_module_info,
    save_hub_module,
)
from tf_simclr.model_dir import FileLock

RUN_FLAGS = (
    "--train_mode=pretrain",
    "--mode=train",
    *SMALL_MODEL,
    "--train_batch_size=32",
    "--train_steps=4",
    "--checkpoint_steps=2",
    "--keep_checkpoint_max=5",
    "--keep_hub_module_max=1",
    "--steps_per_loop=1",
    "--warmup_epochs=0",
    "--noknn_monitor",
)
EXPORTED = re.compile(r"exported hub module to (\S+) \(")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """The tiny pretraining of :data:`RUN_FLAGS` (shared by the session; copy it to change it)."""
    return shared_runs(tmp_path_factory, {"export_safety": RUN_FLAGS})["export_safety"]


def copy_run(run: Path, folder: Path) -> Path:
    copy = folder / "run"
    shutil.copytree(run, copy)
    return copy


def export(*flags: str):
    """``tf-simclr-export FLAGS...`` to its end (stdout and stderr captured)."""
    return run_child([console_script("tf-simclr-export"), *flags])


def names(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


def hold_lock(path: Path) -> int:
    """Take the flock of ``path`` as an export does (the file holds the holder's process id);
    returns the open descriptor, whose closing releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


# ------------------------------------------------------------ an export deletes no module


@pytest.mark.slow
def test_an_export_of_an_older_checkpoint_keeps_it_and_the_newer_module(trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    result = export(f"--checkpoint={run / 'ckpt' / 'ckpt-2'}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(run / "hub" / "2")
    assert read_module_info(str(run / "hub" / "2")).step == 2
    assert read_module_info(str(run / "hub" / "4")).written_by == WRITTEN_BY_TRAINING
    assert read_module_info(str(run / "hub" / "2")).written_by == WRITTEN_BY_EXPORT
    assert names(run / "hub") == ["2", "4"], "a lock or temporary folder was left"
    # Exporting the newest checkpoint in place would replace the run's own module: refused.
    again = export(f"--checkpoint={run}")
    assert again.returncode == 2, again.stderr[-3000:]
    assert f"{run / 'hub' / '4'} holds a SavedModel already; pass --overwrite" in again.stderr
    assert "Restored" not in again.stderr
    assert read_module_info(str(run / "hub" / "4")).written_by == WRITTEN_BY_TRAINING


@pytest.mark.slow
def test_a_training_run_prunes_only_its_older_modules(trained_run, tmp_path):
    # A new run in a folder holding modules of steps 1 and 4 (of a run whose checkpoints were
    # deleted): its export of step 2 keeps itself and module 4, and prunes module 1.
    run = tmp_path / "run"
    for step in (1, 4):
        shutil.copytree(trained_run / "hub" / "4", run / "hub" / str(step))
    flags = [flag for flag in RUN_FLAGS if not flag.startswith("--train_steps=")]
    command = binary_command(f"--model_dir={run}", *flags, "--train_steps=2")
    finished = finish(start(command, tmp_path / "run.log"))
    assert finished.returncode == 0, finished.tail()
    assert EXPORTED.findall(finished.output) == [str(run / "hub" / "2")]
    assert names(run / "hub") == ["2", "4"]
    assert read_module_info(str(run / "hub" / "2")).step == 2


# ----------------------------------------------------------- one export per folder at a time


@pytest.mark.slow
def test_an_export_into_a_folder_another_export_is_writing_is_refused(trained_run, tmp_path):
    module = tmp_path / "module"
    fd = hold_lock(tmp_path / ".module.lock")
    try:
        result = export(f"--checkpoint={trained_run}", f"--export_dir={module}")
    finally:
        os.close(fd)
    assert result.returncode == 2, result.stderr[-3000:]
    assert (
        f"another export (process id {os.getpid()}) is writing a module to {module}"
        in result.stderr
    )
    assert "Traceback" not in result.stderr and "Restored" not in result.stderr
    assert not module.exists()


@pytest.mark.slow
def test_of_two_exports_into_one_folder_one_writes_and_one_is_refused(trained_run, tmp_path):
    module = tmp_path / "module"
    command = [console_script("tf-simclr-export"), f"--checkpoint={trained_run}"]
    jobs = {
        name: ([*command, f"--export_dir={module}"], tmp_path / f"{name}.log")
        for name in ("first", "second")
    }
    finished = run_all(jobs)
    codes = sorted(result.returncode for result in finished.values())
    outputs = "\n".join(result.output for result in finished.values())
    assert codes == [0, 2], outputs[-5000:]
    assert "is writing a module to" in outputs or f"{module} holds a SavedModel already" in outputs
    assert read_module_info(str(module)).step == 4
    assert names(tmp_path) == ["first.log", "module", "second.log"]


# ------------------------------------------------------------------ what killed exports left


@pytest.mark.slow
def test_what_a_killed_export_left_is_cleaned_and_named(trained_run, tmp_path):
    module = tmp_path / "module"
    (module / "variables").mkdir(parents=True)
    (module / "variables" / "variables.index").write_bytes(b"cut short")
    leftover = tmp_path / ".module.tmp-4242"
    shutil.copytree(trained_run / "hub" / "4", leftover)
    # A replacement cut short between its two renames: the old module waits beside its folder.
    parked = tmp_path / "parked"
    shutil.copytree(trained_run / "hub" / "4", parked / ".module.old-4242")

    result = export(f"--checkpoint={trained_run / 'ckpt' / 'ckpt-2'}", f"--export_dir={module}")
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stderr.splitlines() if "interrupted export" in line]
    assert f"removed what an interrupted export to {module} left" in line
    assert str(leftover) in line and f"{module} (no saved_model.pb)" in line
    assert "a SavedModel already" not in result.stderr
    assert read_module_info(str(module)).step == 2
    assert names(tmp_path) == ["module", "parked"]

    refused = export(f"--checkpoint={trained_run}", f"--export_dir={parked / 'module'}")
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert f"put back {parked / '.module.old-4242'} as {parked / 'module'}" in refused.stderr
    assert "holds a SavedModel already" in refused.stderr
    assert names(parked) == ["module"]
    assert read_module_info(str(parked / "module")).written_by == WRITTEN_BY_TRAINING


# ---------------------------------------------------- a checkpoint pruned while it is read

# The export binary, with a training run (--keep_checkpoint_max=1) saving a newer checkpoint and
# pruning the one the export is reading, TIMES times: after the export found it ("found"), or
# while it checks that it is usable ("checked"). The "newer" checkpoint is a copy, 10 steps on.
PRUNING_EXPORT = """
import shutil, sys
from pathlib import Path
from tf_simclr import checkpoints
from tf_simclr.export_hub import run_main

mode, times = sys.argv.pop(1), int(sys.argv.pop(1))
pruned = []

def save_newer_and_prune(prefix):
    if len(pruned) == times:
        return
    pruned.append(prefix)
    prefix = Path(prefix)
    newer = f"ckpt-{checkpoints.checkpoint_step(str(prefix)) + 10}"
    for path in prefix.parent.glob(prefix.name + ".*"):
        shutil.copy(path, prefix.parent / (newer + path.name[len(prefix.name):]))
    (prefix.parent / "checkpoint").write_text(
        f'model_checkpoint_path: "{newer}"\\nall_model_checkpoint_paths: "{newer}"\\n'
    )
    for path in prefix.parent.glob(prefix.name + ".*"):
        path.unlink()

find, problem = checkpoints.find_usable_checkpoint, checkpoints.checkpoint_problem

def find_then_prune(path):
    prefix, model_dir = find(path)
    save_newer_and_prune(prefix)
    return prefix, model_dir

def prune_then_check(prefix):
    save_newer_and_prune(prefix)
    return problem(prefix)

if mode == "found":
    checkpoints.find_usable_checkpoint = find_then_prune
else:
    checkpoints.checkpoint_problem = prune_then_check
run_main()
"""
PRUNING_CASES = {
    # name: (mode, times, --checkpoint relative to the model_dir)
    "found_once": ("found", 1, "."),
    "checked_once": ("checked", 1, "ckpt"),
    "found_every_time": ("found", 3, "."),
    "prefix": ("found", 1, "ckpt/ckpt-4"),
}


@pytest.fixture(scope="module")
def pruning_exports(trained_run, tmp_path_factory):
    """The finished export of each of :data:`PRUNING_CASES`, with its model_dir (a copy of the
    run that keeps only ckpt-4, as with --keep_checkpoint_max=1) and its --export_dir."""
    root = tmp_path_factory.mktemp("pruning")
    jobs, folders = {}, {}
    for name, (mode, times, checkpoint) in PRUNING_CASES.items():
        run = copy_run(trained_run, root / name)
        for path in (run / "ckpt").glob("ckpt-2.*"):
            path.unlink()
        (run / "ckpt" / "checkpoint").write_text(
            'model_checkpoint_path: "ckpt-4"\nall_model_checkpoint_paths: "ckpt-4"\n'
        )
        module = root / name / "module"
        command = [sys.executable, "-c", PRUNING_EXPORT, mode, str(times)]
        command += [f"--checkpoint={run / checkpoint}", f"--export_dir={module}"]
        jobs[name] = (command, root / f"{name}.log")
        folders[name] = (run, module)
    finished = run_all(jobs)
    return {name: (finished[name], *folders[name]) for name in PRUNING_CASES}


@pytest.mark.slow
@pytest.mark.parametrize("case", ["found_once", "checked_once"])
def test_a_checkpoint_pruned_while_it_is_read_gives_way_to_the_newer_one(pruning_exports, case):
    finished, run, module = pruning_exports[case]
    assert finished.returncode == 0, finished.tail()
    assert f"{run / 'ckpt' / 'ckpt-4'} was removed while it was being read" in finished.output, (
        finished.tail()
    )
    assert "attempt 2 of 3" in finished.output
    assert read_module_info(str(module)).step == 14


@pytest.mark.slow
def test_retries_of_a_model_dir_whose_checkpoints_keep_vanishing_are_bounded(pruning_exports):
    finished, run, module = pruning_exports["found_every_time"]
    assert finished.returncode == 1, finished.tail()
    assert "Traceback" not in finished.output
    assert "attempt 2 of 3" in finished.output and "attempt 3 of 3" in finished.output
    assert "attempt 4" not in finished.output
    assert finished.output.splitlines()[-1] == (
        f"tf-simclr-export: the newest checkpoint of {run / '.'} was removed while it was being "
        "read, 3 times in a row (the run training there saves faster than it can be read): "
        "export a checkpoint prefix that it keeps, or export when it has finished."
    )
    assert not module.exists() and names(module.parent) == ["run"]


@pytest.mark.slow
def test_a_checkpoint_prefix_removed_while_it_is_read_is_one_line(pruning_exports):
    finished, run, module = pruning_exports["prefix"]
    assert finished.returncode == 1, finished.tail()
    assert "Traceback" not in finished.output
    assert finished.output.splitlines()[-1] == (
        f"tf-simclr-export: the checkpoint {run / 'ckpt' / 'ckpt-4'} was removed while it was "
        "being read (a training run keeps only its --keep_checkpoint_max newest); pass the "
        "model_dir to export its newest checkpoint."
    )
    assert not module.exists()


# ---------------------------------------------------------------------------- bad flags


def test_an_export_without_checkpoint_is_refused_with_status_2():
    result = export()
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip() == (
        "tf-simclr-export: pass --checkpoint: a model_dir, its ckpt/ directory, a checkpoint "
        "prefix (MODEL_DIR/ckpt/ckpt-<step>) or a checkpoint of the reference implementation."
    )


# ------------------------------------------------- ExportTarget: lock, temporary folder, rename


def fake_module(folder: Path, written_by: str = WRITTEN_BY_TRAINING, text: str = "") -> Path:
    """A folder that looks like a module to the export's checks: saved_model.pb and metadata."""
    (folder / "assets").mkdir(parents=True)
    (folder / "saved_model.pb").write_text(text)
    (folder / "assets" / METADATA_FILENAME).write_text(f'{{"written_by": "{written_by}"}}')
    return folder


def test_a_module_is_renamed_into_place_and_replaces_one_only_with_overwrite(tmp_path):
    target_dir = tmp_path / "module"
    with ExportTarget(str(target_dir)) as target:
        assert target.temporary == str(tmp_path / f".module.tmp-{os.getpid()}")
        assert names(tmp_path) == [".module.lock"]
        fake_module(Path(target.temporary), text="first")
        assert not target_dir.exists()
        target.commit()
    assert names(tmp_path) == ["module"]
    assert (target_dir / "saved_model.pb").read_text() == "first"
    with pytest.raises(FileExistsError, match="holds a SavedModel already; pass --overwrite"):
        ExportTarget(str(target_dir), overwrite_option="--overwrite").__enter__()
    assert names(tmp_path) == ["module"], "a refused export left its lock"
    with ExportTarget(str(target_dir), overwrite=True) as target:
        fake_module(Path(target.temporary), text="second")
        target.commit()
    assert (target_dir / "saved_model.pb").read_text() == "second"
    assert names(tmp_path) == ["module"]


def test_a_folder_filled_while_the_module_is_written_is_checked_again(tmp_path):
    with ExportTarget(str(tmp_path / "module")) as target:
        fake_module(Path(target.temporary))
        fake_module(tmp_path / "module")  # e.g. written by an older version without the lock
        with pytest.raises(FileExistsError, match="holds a SavedModel already"):
            target.commit()
    assert names(tmp_path) == ["module"], "the uncommitted temporary folder was left"


def test_an_uncommitted_export_leaves_nothing(tmp_path):
    with (
        pytest.raises(RuntimeError, match="cut short"),
        ExportTarget(str(tmp_path / "module")) as t,
    ):
        fake_module(Path(t.temporary))
        raise RuntimeError("cut short")
    assert names(tmp_path) == []


def test_a_second_export_is_refused_or_waits_and_says_so(tmp_path, caplog):
    first = ExportTarget(str(tmp_path / "module"))
    with first:
        with pytest.raises(ExportInProgressError, match=f"process id {os.getpid()}"):
            ExportTarget(str(tmp_path / "module")).__enter__()
        # As a training run's export: it waits, then replaces the module the first one wrote.
        waiting = ExportTarget(str(tmp_path / "module"), overwrite=True, wait=True)
        entered = threading.Event()

        def enter_and_leave() -> None:
            with waiting:
                entered.set()

        thread = threading.Thread(target=enter_and_leave)
        with caplog.at_level("WARNING"):
            thread.start()
            while not any("waiting for another export" in r.message for r in caplog.records):
                time.sleep(0.01)
        assert not entered.is_set(), "the waiting export entered while the first held the lock"
        fake_module(Path(first.temporary))
        first.commit()
    thread.join()
    assert entered.is_set()
    (record,) = [r for r in caplog.records if "waiting for another export" in r.message]
    assert f"process id {os.getpid()}" in record.getMessage()
    assert str(tmp_path / "module") in record.getMessage()


def test_a_remote_or_file_target_is_refused(tmp_path):
    with pytest.raises(ValueError, match="written to local folders only"):
        ExportTarget("gs://bucket/module").__enter__()
    (tmp_path / "module").write_text("not a folder")
    with pytest.raises(FileExistsError, match="is a file"):
        ExportTarget(str(tmp_path / "module")).__enter__()


# ---------------------------------------------------------------- what a training run prunes


def test_pruning_spares_the_written_module_newer_ones_and_explicit_exports(tmp_path):
    for step in (1, 2, 3, 5, 7):
        fake_module(tmp_path / str(step))
    fake_module(tmp_path / "0", written_by=WRITTEN_BY_EXPORT)
    (tmp_path / "notes").mkdir()
    removed = prune_modules(str(tmp_path), 1, written_step=5)  # e.g. a resume to fewer steps
    assert removed == [str(tmp_path / "1"), str(tmp_path / "2"), str(tmp_path / "3")]
    assert names(tmp_path) == ["0", "5", "7", "notes"]
    assert prune_modules(str(tmp_path), 0, written_step=7) == []  # 0 keeps all
    assert prune_modules(str(tmp_path), 1, written_step=7) == [str(tmp_path / "5")]


def test_pruning_spares_a_module_an_export_is_writing(tmp_path):
    for step in (1, 2):
        fake_module(tmp_path / str(step))
    with FileLock(str(tmp_path / ".1.lock")):
        assert prune_modules(str(tmp_path), 1, written_step=2) == []
    assert names(tmp_path) == ["1", "2"]
    assert prune_modules(str(tmp_path), 1, written_step=2) == [str(tmp_path / "1")]


# ------------------------------------------------------------------- a batch of no images

EMPTY_CONFIG = ModelConfig(
    resnet_depth=18, width_multiplier=0.125, cifar_stem=True, num_proj_layers=2, num_classes=3
)


def test_a_module_given_no_images_returns_empty_endpoints(tmp_path):
    model = SimCLRModel(EMPTY_CONFIG).build_for_size(16)
    module = hub.load(save_hub_module(model, str(tmp_path / "module")))
    for height, width in ((16, 16), (20, 24)):
        empty = tf.zeros([0, height, width, 3])
        one = module(tf.zeros([1, height, width, 3]), training=False)
        for training in (False, True):
            outputs = module(empty, training=training)
            assert sorted(outputs) == sorted(one)
            for name, value in outputs.items():
                assert value.shape == (0, *one[name].shape[1:]), (name, training)
        for name, signature in module.signatures.items():
            (value,) = signature(images=empty).values()
            endpoint = "final_avg_pool" if name == "default" else name
            assert value.shape == (0, *one[endpoint].shape[1:]), name
    moving = [v for v in module.variables if "moving" in v.name]
    before = [v.numpy() for v in moving]
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(module(tf.zeros([0, 16, 16, 3]), training=True)["logits_sup"])
    gradients = tape.gradient(loss, module.trainable_variables)
    assert all(np.all(g.numpy() == 0) for g in gradients if g is not None)
    assert moving, "no batch-norm statistics found"
    for variable, value in zip(moving, before, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.name)
