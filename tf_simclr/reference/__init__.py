"""Checkpoints of the reference implementation (google-research/simclr) as tf-simclr models.

The reference publishes its SimCLRv2 checkpoints as TF1 checkpoints and TF2 SavedModels; its
``tf2/run.py`` also writes TF2 training checkpoints. :func:`read_reference_checkpoint` finds
one in any of the three formats and reads its architecture from its weights;
:func:`load_reference_model` returns a :class:`tf_simclr.SimCLRModel` holding it, which computes
the reference's endpoints exactly. :mod:`tf_simclr.checkpoints` reads these checkpoints through
this package, so every binary takes them wherever it takes a checkpoint.
"""

from tf_simclr.reference.convert import (
    FOLDER_SELECTORS,
    ReferenceCheckpoint,
    load_reference_model,
    read_reference_checkpoint,
    restore_reference_weights,
)
from tf_simclr.reference.storage import (
    TF1_CHECKPOINT,
    TF2_CHECKPOINT,
    TF2_SAVED_MODEL,
    describe,
    locate,
)

__all__ = [
    "FOLDER_SELECTORS",
    "TF1_CHECKPOINT",
    "TF2_CHECKPOINT",
    "TF2_SAVED_MODEL",
    "ReferenceCheckpoint",
    "describe",
    "load_reference_model",
    "locate",
    "read_reference_checkpoint",
    "restore_reference_weights",
]
