"""Weight decay as an explicit L2 term, for optimizers other than LARS (SimCLR appendix B.1).

LARS folds weight decay into its gradient; SGD-momentum and Adam get it here, added to the loss:
``weight_decay * sum(l2_loss(v))`` with ``l2_loss(v) = sum(v**2) / 2`` over the variables that are
not excluded (batch-norm gamma/beta, biases, the supervised head: ``model.excluded_variables()``).
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf

from tf_simclr.objectives.exclusions import variable_key, variable_keys


def weight_decay_loss(
    variables: Iterable[tf.Variable],
    weight_decay: float,
    excluded_variables: Iterable[tf.Variable] = (),
) -> tf.Tensor:
    """``weight_decay * sum(tf.nn.l2_loss(v))`` over ``variables`` not in ``excluded_variables``.

    Variables are matched by identity (a distributed variable matches its per-replica components),
    never by name. Returns a float32 scalar, 0 when nothing is decayed.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay={weight_decay} must be >= 0 (0 disables weight decay).")
    excluded = variable_keys(excluded_variables)
    terms = [
        tf.nn.l2_loss(tf.cast(variable, tf.float32))
        for variable in variables
        if variable_key(variable) not in excluded
    ]
    if not terms or weight_decay == 0:
        return tf.constant(0.0, tf.float32)
    return weight_decay * tf.add_n(terms)
