"""tf-simclr: SimCLRv2 (Chen et al. 2020, arXiv 2006.10029) on TensorFlow 2 and tf_keras.

``TF_USE_LEGACY_KERAS`` is set before TensorFlow is imported so that ``tf.keras`` and TF-Hub's
``hub.KerasLayer`` resolve to tf_keras, the Keras this package builds its models with.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from tf_simclr.config import ModelConfig
from tf_simclr.models.simclr import SimCLRModel

__all__ = ["ModelConfig", "SimCLRModel"]
__version__ = "0.1.0"
