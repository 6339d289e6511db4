"""What keeps a model_dir whole: one training run at a time, JSON files written atomically, and
the recognition of a full disk.

* :class:`FileLock` is an OS file lock (``fcntl.flock``). The kernel releases it when its
  process ends, however it ends (SIGKILL included), so a crashed process never blocks the next
  one. The file holds the holder's process id, for the message of a process it keeps out; a
  holder that exits normally removes it. :class:`ModelDirLock` is the one on ``MODEL_DIR/.lock``
  (one training run per model_dir); the module exports of :mod:`tf_simclr.hub` lock their target
  folders with it too.
* :func:`write_json_atomically` and :func:`write_text_atomically` write a temporary file in the
  same folder and rename it over the target, so a reader (or a run killed mid-write) sees the old
  file or the new one, never half of one.

Local file systems only: flock and rename need them (``gs://`` model_dirs are not locked).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Sequence

LOCK_FILENAME = ".lock"
CLASSES_FILENAME = "classes.txt"  # line i names class i, in a model_dir and in a hub module
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
DISK_FULL_MESSAGES = ("No space left on device", "Disk quota exceeded")
_FUNCTION_NODE = re.compile(r"^\{\{function_node [^}]*\}\}\s*")


class LockHeldError(RuntimeError):
    """Another process (or another :class:`FileLock` of this process) holds the lock."""

    def __init__(self, path: str, holder: str) -> None:
        super().__init__(f"{path} is held by process id {holder}")
        self.path = path
        self.holder = holder


class ModelDirInUseError(RuntimeError):
    """Another process holds the model_dir's lock."""


class FileLock:
    """An exclusive lock (``fcntl.flock``) of the file at ``path``, which holds the holder's
    process id (for the messages of the processes it keeps out).

    ``acquire()`` raises :class:`LockHeldError` when another process (or another lock object of
    this process) holds it, or with ``wait=True`` blocks until it is free; it does nothing when
    this object holds it already. ``release()`` removes the file and unlocks.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, wait: bool = False) -> None:
        """Take the lock (its folder must exist) and write this process's id into it."""
        if self._fd is not None:
            return
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode("ascii", errors="replace").strip() or "unknown"
                os.close(fd)
                raise LockHeldError(self.path, holder) from None
            # The previous holder removes the file when it releases: if it did so between our
            # open and our flock, the lock we hold is on a file nobody else will open. Retry.
            if _same_file(fd, self.path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file, then unlock (in that order, see :meth:`acquire`)."""
        if self._fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class ModelDirLock:
    """An exclusive, non-blocking :class:`FileLock` of one model_dir by one training run.

    ``acquire()`` raises :class:`ModelDirInUseError` naming the model_dir and the holder's process
    id when another process (or another lock object of this process) holds it; it does nothing
    when this object holds it already. ``release()`` removes the lock file and unlocks.
    """

    def __init__(self, model_dir: str) -> None:
        self.model_dir = model_dir
        self._lock = FileLock(os.path.join(model_dir, LOCK_FILENAME))

    @property
    def path(self) -> str:
        return self._lock.path

    @property
    def held(self) -> bool:
        return self._lock.held

    def acquire(self) -> None:
        """Take the lock (the model_dir must exist)."""
        try:
            self._lock.acquire()
        except LockHeldError as error:
            raise ModelDirInUseError(
                f"{self.model_dir} is in use by another tf-simclr run (process id "
                f"{error.holder}); wait for it to finish, or pass another --model_dir. "
                "(--mode=eval may read a model_dir while it trains.)"
            ) from None

    def release(self) -> None:
        """Remove the lock file and unlock."""
        self._lock.release()

    def __enter__(self) -> ModelDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def write_text_atomically(path: str, text: str) -> None:
    """Write ``text`` to ``path``: a temporary file in the same folder, flushed to disk, then
    renamed over ``path``."""
    directory, name = os.path.split(os.path.abspath(path))
    # Named after the process: an evaluation run may write next to a training run.
    temporary = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write_class_names(directory: str, names: Sequence[str]) -> None:
    """Write ``directory/classes.txt``, line i naming class i."""
    write_text_atomically(
        os.path.join(directory, CLASSES_FILENAME), "".join(f"{name}\n" for name in names)
    )


def read_class_names(directory: str) -> tuple[str, ...]:
    """The names in ``directory/classes.txt``, or none when it has no such file."""
    path = os.path.join(directory, CLASSES_FILENAME)
    if not os.path.exists(path):
        return ()
    with open(path, encoding="utf-8") as handle:
        return tuple(line.rstrip("\n") for line in handle)


def write_json_atomically(path: str, payload: dict) -> None:
    """Write ``payload`` as indented, key-sorted JSON to ``path`` atomically
    (:func:`write_text_atomically`)."""
    write_text_atomically(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def is_disk_full(error: BaseException) -> bool:
    """Whether ``error`` (or an error it was raised from) says the disk or quota is full: an
    ``OSError`` with ENOSPC / EDQUOT, or TensorFlow's error for it (a ``ResourceExhaustedError``
    whose message carries the operating system's text)."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
            return True
        if any(text in str(error) for text in DISK_FULL_MESSAGES):
            return True
        error = error.__cause__ or error.__context__
    return False


def first_line(error: BaseException) -> str:
    """The first non-blank line of ``error``'s message (TensorFlow's run on for many lines),
    without the ``{{function_node ...}}`` prefix of TensorFlow's op errors."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return _FUNCTION_NODE.sub("", lines[0]) if lines else type(error).__name__
