"""The optimizer factory: LARS, Nesterov SGD-momentum or Adam (SimCLR section 4, appendix B).

As in the reference implementation, ``momentum`` is SGD with Nesterov momentum and ``adam`` is
plain Adam; for both, weight decay is an explicit L2 loss term (:func:`weight_decay_loss`) rather
than part of the optimizer. LARS folds weight decay into its gradient.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf
import tf_keras as keras

from tf_simclr.config import OptimConfig
from tf_simclr.objectives.lars import LARS, LearningRate


def build_optimizer(
    optim_config: OptimConfig,
    learning_rate: LearningRate,
    excluded_variables: Iterable[tf.Variable] = (),
) -> keras.optimizers.Optimizer:
    """The optimizer named by ``optim_config.optimizer``, stepping with ``learning_rate``.

    ``excluded_variables`` (batch-norm gamma/beta, biases, the supervised head; see
    ``SimCLRModel.excluded_variables()``) are exempt from LARS weight decay and adaptation. The
    other optimizers do no weight decay themselves: add :func:`weight_decay_loss` to the loss.
    Create the optimizer inside ``strategy.scope()`` when training under a strategy.
    """
    if optim_config.optimizer == "lars":
        return LARS(
            learning_rate,
            momentum=optim_config.momentum,
            weight_decay=optim_config.weight_decay,
            eeta=optim_config.eeta,
            nesterov=optim_config.nesterov,
            excluded_variables=excluded_variables,
        )
    if optim_config.optimizer == "momentum":
        return keras.optimizers.SGD(learning_rate, momentum=optim_config.momentum, nesterov=True)
    return keras.optimizers.Adam(learning_rate)
