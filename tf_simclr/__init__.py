"""tf-simclr: SimCLRv2 (Chen et al. 2020, arXiv 2006.10029) on TensorFlow 2 and tf_keras.

``TF_USE_LEGACY_KERAS`` is set before TensorFlow is imported so that ``tf.keras`` and TF-Hub's
``hub.KerasLayer`` resolve to tf_keras, the Keras this package builds its models with.

Training from Python: :func:`config_from_flags` turns a ``tf-simclr`` command line (a recipe's
flagfile and flags) into a :class:`RunConfig`, with the binary's validation and architecture
adoption (:mod:`tf_simclr.command_line`), and :func:`train` runs it and returns the result the
run records in ``result.json`` (:mod:`tf_simclr.training.api`, which documents its exceptions:
:class:`InvalidConfigError`, :class:`ModelDirInUseError`, :class:`NonFiniteLossError`).

What needs TensorFlow or absl (``SimCLRModel``, ``train`` and its exceptions,
``config_from_flags``) is imported on first use (PEP 562): importing the package, its
configuration or the binary's flags does not import TensorFlow, so ``tf-simclr --help`` is fast
and the binary decides how TensorFlow starts (:func:`tf_simclr.logs.start_tensorflow`).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tf_simclr.config import ModelConfig, RunConfig
from tf_simclr.model_dir import ModelDirInUseError

__all__ = [
    "InvalidConfigError",
    "ModelConfig",
    "ModelDirInUseError",
    "NonFiniteLossError",
    "RunConfig",
    "SimCLRModel",
    "config_from_flags",
    "train",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "SimCLRModel":
        from tf_simclr.models.simclr import SimCLRModel

        return SimCLRModel
    if name in ("train", "InvalidConfigError", "NonFiniteLossError"):
        from tf_simclr.training import api

        return getattr(api, name)
    if name == "config_from_flags":
        from tf_simclr.command_line import config_from_flags

        return config_from_flags
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
