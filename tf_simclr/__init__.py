"""tf-simclr: SimCLRv2 (Chen et al. 2020, arXiv 2006.10029) on TensorFlow 2 and tf_keras.

``TF_USE_LEGACY_KERAS`` is set before TensorFlow is imported so that ``tf.keras`` and TF-Hub's
``hub.KerasLayer`` resolve to tf_keras, the Keras this package builds its models with.
``SimCLRModel`` is imported on first use (PEP 562): importing the package, its configuration or the
binary's flags does not import TensorFlow, so ``tf-simclr --help`` is fast and the binary decides
how TensorFlow starts (:func:`tf_simclr.logs.start_tensorflow`).
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tf_simclr.config import ModelConfig

__all__ = ["ModelConfig", "SimCLRModel"]
__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    if name == "SimCLRModel":
        from tf_simclr.models.simclr import SimCLRModel

        return SimCLRModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
