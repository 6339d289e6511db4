"""tf_simclr.model_dir: the one-run lock of a model_dir (and the file lock under it, which
module exports share), atomic JSON files, disk-full errors."""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import threading
import time

import pytest
import tensorflow as tf
from binary_runs import finish, start

from tf_simclr.model_dir import (
    LOCK_FILENAME,
    FileLock,
    LockHeldError,
    ModelDirInUseError,
    ModelDirLock,
    first_line,
    is_disk_full,
    write_json_atomically,
)

HOLD_LOCK = """
import sys, time
from tf_simclr.model_dir import ModelDirLock
ModelDirLock(sys.argv[1]).acquire()
time.sleep(600)
"""


def test_a_second_lock_is_refused_naming_the_model_dir_and_the_holder(tmp_path):
    first = ModelDirLock(str(tmp_path))
    first.acquire()
    assert (tmp_path / LOCK_FILENAME).read_text().strip() == str(os.getpid())
    with pytest.raises(ModelDirInUseError) as refused:
        ModelDirLock(str(tmp_path)).acquire()
    assert str(tmp_path) in str(refused.value)
    assert f"process id {os.getpid()}" in str(refused.value)
    first.acquire()  # holding it already: nothing happens
    first.release()
    assert not (tmp_path / LOCK_FILENAME).exists()
    with ModelDirLock(str(tmp_path)) as second:
        assert second.held
    assert not second.held


def test_the_lock_dies_with_its_holder(tmp_path):
    holder = start([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], tmp_path / "holder.log")
    lock_file = tmp_path / LOCK_FILENAME
    try:
        while holder.poll() is None and not (
            lock_file.exists() and lock_file.read_text().strip() == str(holder.pid)
        ):
            time.sleep(0.05)
        with pytest.raises(ModelDirInUseError, match=f"process id {holder.pid}"):
            ModelDirLock(str(tmp_path)).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
    assert finish(holder).returncode == -signal.SIGKILL
    assert lock_file.exists(), "a killed holder cannot remove its lock file"
    with ModelDirLock(str(tmp_path)):  # but the kernel released its lock
        assert lock_file.read_text().strip() == str(os.getpid())


def test_a_waiting_file_lock_takes_over_when_its_holder_dies(tmp_path):
    holder = start([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], tmp_path / "holder.log")
    lock_file = tmp_path / LOCK_FILENAME
    waiting = FileLock(str(lock_file))
    thread = threading.Thread(target=waiting.acquire, kwargs={"wait": True})
    try:
        while holder.poll() is None and not (
            lock_file.exists() and lock_file.read_text().strip() == str(holder.pid)
        ):
            time.sleep(0.05)
        with pytest.raises(LockHeldError) as refused:
            FileLock(str(lock_file)).acquire()
        assert refused.value.holder == str(holder.pid)
        assert refused.value.path == str(lock_file)
        thread.start()
        thread.join(timeout=0.5)
        assert thread.is_alive() and not waiting.held, "took a lock that another process holds"
    finally:
        holder.send_signal(signal.SIGKILL)
    thread.join()
    assert finish(holder).returncode == -signal.SIGKILL
    assert waiting.held
    assert lock_file.read_text().strip() == str(os.getpid())
    waiting.release()
    assert not lock_file.exists()


def test_json_is_replaced_whole_or_not_at_all(tmp_path):
    path = tmp_path / "result.json"
    write_json_atomically(str(path), {"train": {"loss": 1.5}, "step": 3})
    assert json.loads(path.read_text()) == {"step": 3, "train": {"loss": 1.5}}
    with pytest.raises(TypeError):  # keys of mixed types cannot be sorted: fails mid-write
        write_json_atomically(str(path), {"train": {}, 1: "x"})
    assert json.loads(path.read_text()) == {"step": 3, "train": {"loss": 1.5}}
    assert sorted(os.listdir(tmp_path)) == ["result.json"], "a temporary file was left"


def test_disk_full_errors_are_recognised_through_their_causes():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    tf_error = tf.errors.ResourceExhaustedError(
        None,
        None,
        "{{function_node __wrapped__SaveV2}} /x/ckpt-4_temp/part; No space left on device",
    )
    assert is_disk_full(tf_error)
    try:
        try:
            raise tf_error
        except tf.errors.ResourceExhaustedError as error:
            raise RuntimeError("saving failed") from error
    except RuntimeError as wrapped:
        assert is_disk_full(wrapped)
    assert not is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not is_disk_full(tf.errors.ResourceExhaustedError(None, None, "OOM when allocating"))
    assert first_line(tf_error) == "/x/ckpt-4_temp/part; No space left on device"
