"""A short, useful log: TensorFlow started quietly, its chatter filtered, one start line.

TensorFlow writes four kinds of noise that tell a user of ``tf-simclr`` or ``tf-simclr-export``
nothing: start-up lines of its C++ log (hidden by :func:`start_tensorflow`), INFO lines of every
save (``tf.saved_model.save`` lists each signature's renamed inputs, hundreds of names per
signature; every checkpoint save reports its sharding callback), INFO lines of ``tf.distribute``
for every traced cross-replica reduction or gather (over a hundred per run under
MirroredStrategy or MultiWorkerMirroredStrategy, issue 28), and warnings about things this
package already handles (retracing of the kNN monitor's feature function, restore warnings of
checkpoints restored with ``expect_partial`` whose counts the loop logs itself). All but the
first go through Python logging (the ``absl`` and ``tensorflow`` loggers) and are dropped by
:class:`DropMessages`: around each save (:func:`dropped`, :data:`SAVE_NOISE`) and for the whole
process by the binaries (:func:`quiet_tensorflow_logs`, :data:`RUN_NOISE` and
:data:`DISTRIBUTE_NOISE`). Only messages containing one of the listed texts are dropped; every
other warning and error passes.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator

from tf_simclr.config import ModelConfig

# The loggers TensorFlow's Python code writes to: ``absl.logging`` (saved-model and checkpoint
# writers) and ``tf_logging`` (tf.function, checkpoint restores).
TENSORFLOW_LOGGERS = ("absl", "tensorflow")
# INFO lines of a save: signature_serialization.py lists the renamed input names of each
# signature, functional_saver.py times its sharding callback, builder_impl.py and
# fingerprinting_utils.py name the files they write.
SAVE_NOISE = (
    "contains input name(s)",
    "Sharding callback duration",
    "Assets written to",
    "Writing fingerprint to",
)
# Warnings about what the binaries handle: tf.function retracing (polymorphic_function.py) and
# the restore warnings of tf.train.Checkpoint (checkpoint.py), which the binaries replace by
# their own counts of restored and unused values.
RUN_NOISE = (
    "triggered tf.function retracing",
    "being deleted with unrestored values",
    "Value in checkpoint could not be found in the restored object",
    "Unresolved object in checkpoint",
    "not all checkpointed values were used",
)
# INFO lines of tf.distribute's cross_device_ops.py, logged each time a cross-replica reduction
# or gather is traced (every variable's all-reduce, the losses' all-gathers): CollectiveAllReduce
# (MirroredStrategy on CPUs, MultiWorkerMirroredStrategy) logs a line per traced all-reduce,
# ReductionToOneDevice its first ten reductions and gathers, and the batched implementations
# (NCCL, hierarchical copy) their first ten batches. The start line names the strategy and its
# replicas instead. Also MultiWorkerMirroredStrategy's note that it does not check its peers'
# health (collective_all_reduce_strategy.py), which is its default; its line naming the cluster
# and this worker stays, as does MirroredStrategy's naming its devices. tf.distribute's warnings
# (e.g. about IndexedSlices) are not listed.
DISTRIBUTE_NOISE = (
    "Collective all_reduce tensors:",
    "Collective all_reduce IndexedSlices:",
    "Collective batch_all_gather:",
    "batch_all_reduce:",
    "then broadcast to",
    "Check health not enabled.",
)


class DropMessages(logging.Filter):
    """Drops the log records whose message contains one of ``texts``; every other passes."""

    def __init__(self, texts: tuple[str, ...]) -> None:
        super().__init__()
        self.texts = texts

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in self.texts)


@contextlib.contextmanager
def dropped(texts: tuple[str, ...] = SAVE_NOISE) -> Iterator[None]:
    """Drop TensorFlow's log records containing one of ``texts`` inside the ``with`` block."""
    drop = DropMessages(texts)
    loggers = [logging.getLogger(name) for name in TENSORFLOW_LOGGERS]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


def quiet_tensorflow_logs() -> None:
    """For the binaries: drop :data:`SAVE_NOISE`, :data:`RUN_NOISE` and :data:`DISTRIBUTE_NOISE`
    for the whole process."""
    drop = DropMessages(SAVE_NOISE + RUN_NOISE + DISTRIBUTE_NOISE)
    for name in TENSORFLOW_LOGGERS:
        logging.getLogger(name).addFilter(drop)


# A line of absl's C++ log starts with its severity and the date: "I0000 ...", "E0000 ...".
_CPP_LOG_LINE = re.compile(r"([IWEF])\d{4} ")
# TensorFlow's start-up lines that the severity does not sort out: absl's notice that it logs to
# stderr before absl::InitializeLog() (prefixed "WARNING:", not "W0000"), the second line of
# cpu_feature_guard.cc's INFO, and cuda_platform.cc's ERROR when the CUDA libraries are installed
# but there is no GPU.
_STARTUP_NOISE = (
    "All log messages before absl::InitializeLog() is called",
    "To enable the following instructions:",
    "failed call to cuInit",
)


def is_startup_noise(line: str) -> bool:
    """Whether ``line`` of TensorFlow's start-up output is hidden by :func:`start_tensorflow`."""
    match = _CPP_LOG_LINE.match(line)
    return bool(match and match.group(1) in "IW") or any(text in line for text in _STARTUP_NOISE)


@contextlib.contextmanager
def _stderr_without(hidden: Callable[[str], bool]) -> Iterator[None]:
    """Capture file descriptor 2 (TensorFlow's C++ code writes to it directly) and write the
    captured lines back afterwards, except those ``hidden`` accepts."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not hidden(line)))
            sys.stderr.flush()


def start_tensorflow() -> None:
    """Import TensorFlow and find its devices, without its start-up logging.

    TensorFlow 2.21 writes the oneDNN notice, ``cudart_stub.cc``'s "Could not find cuda drivers"
    and ``cpu_feature_guard.cc``'s instruction list at INFO through absl's C++ log before
    ``absl::InitializeLog()``, which ignores ``TF_CPP_MIN_LOG_LEVEL``; and where the CUDA
    libraries are installed without a GPU, ``cuda_platform.cc`` logs the failed ``cuInit`` when the
    devices are first listed, at ERROR, which only level 3 would hide (with every real error
    after it). ``CUDA_VISIBLE_DEVICES=""`` does not help either (cuInit still fails and logs) and
    would take the GPU away from runs that have one. So unless the user chose a level,
    ``TF_CPP_MIN_LOG_LEVEL`` is 2 (INFO and WARNING hidden) and, while TensorFlow starts, stderr
    is captured and replayed without its INFO and WARNING lines and without the cuInit failure.
    The trade-off: a machine whose GPU driver is broken trains on the CPU without that line
    saying why (``TF_CPP_MIN_LOG_LEVEL=0`` shows it), and output of a crash inside the import
    itself is lost. A user who sets ``TF_CPP_MIN_LOG_LEVEL`` sees TensorFlow's output untouched.
    """
    quiet = "TF_CPP_MIN_LOG_LEVEL" not in os.environ
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with _stderr_without(is_startup_noise) if quiet else contextlib.nullcontext():
        import tensorflow as tf

        tf.config.list_physical_devices()


def describe_model(config: ModelConfig) -> str:
    """The architecture in a few words: depth, width, SK, stem, heads (SimCLRv2 Table 1)."""
    parts = [f"ResNet-{config.resnet_depth} width {config.width_multiplier:g}"]
    parts.append(f"SK {config.sk_ratio:g}" if config.sk_ratio else "no SK")
    if config.cifar_stem:
        parts.append("CIFAR stem")
    if config.proj_head_mode == "nonlinear":
        parts.append(f"{config.num_proj_layers}-layer head to {config.proj_out_dim}")
    else:
        parts.append(f"{config.proj_head_mode} head")
    if config.num_classes:
        selected = config.selected_head_output
        source = f"proj_head_{selected}" if selected else "proj_head_input"
        parts.append(f"{config.num_classes}-class supervised head on {source}")
    return ", ".join(parts)


def _short(value: float) -> str:
    """``value`` with at most two decimals, without trailing zeros: 1.41, 120, 0.5."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def start_line(
    phase: str,
    data: str,
    model: ModelConfig,
    strategy: str,
    replicas: int,
    steps: tuple[int, int, int],
) -> str:
    """The run's first log line: phase, data, model, strategy, precision and
    ``steps = (total steps, global batch size, training examples)``, with the epochs they make
    and the steps per epoch, both counted in images (a step sees a batch; an epoch, every
    training example once), so fractional where the data is not a multiple of the batch."""
    total, batch, examples = steps
    return (
        f"{phase} | {data} | model {describe_model(model)} | strategy {strategy} "
        f"({replicas} replica{'s' if replicas != 1 else ''}) | precision {model.dtype_policy} | "
        f"{total} steps of batch {batch} ({_short(total * batch / examples)} epochs), "
        f"{_short(examples / batch)} steps per epoch"
    )
