"""LARS: layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR (section 4).

SimCLR trains with LARS at large batch sizes: momentum 0.9, trust coefficient ``eeta = 0.001``
and weight decay ``1e-6`` folded into the gradient. Batch-norm gamma/beta, biases and the
supervised head are excluded from both weight decay and layer adaptation (appendix B.1); here that
set is the explicit list of variable objects the model provides, never a match on names.

Update for a variable ``w`` with gradient ``g`` and momentum slot ``v`` (learning rate ``lr``)::

    g' = g + weight_decay * w                 (unless w is excluded)
    r  = eeta * ||w|| / ||g'|| if ||w|| > 0 and ||g'|| > 0 else 1
                                              (r = 1 when w is excluded)
    v  = momentum * v + lr * r * g'
    w  = w - (momentum * v + lr * r * g' if nesterov else v)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import tensorflow as tf
import tf_keras as keras

from tf_simclr.objectives.exclusions import variable_key, variable_keys

LearningRate = float | keras.optimizers.schedules.LearningRateSchedule


class LARS(keras.optimizers.Optimizer):
    """LARS with classic momentum, as in SimCLR's reference implementation.

    A TF-Keras (v2.11+) optimizer: its momentum slots are created in :meth:`build` and saved by
    ``tf.train.Checkpoint``, and it runs under any ``tf.distribute`` strategy (gradients are summed
    across replicas before the update).

    Args:
        learning_rate: a float or a ``LearningRateSchedule`` (e.g. ``WarmUpAndCosineDecay``).
        momentum: momentum coefficient in [0, 1).
        weight_decay: L2 coefficient added to the gradient of non-excluded variables. This is
            not the base class's decoupled weight decay, which LARS turns off.
        eeta: trust coefficient (> 0) of the layer-wise rate ``eeta * ||w|| / ||g||``.
        nesterov: use Nesterov momentum.
        excluded_variables: variables exempt from weight decay *and* layer adaptation, matched
            by identity (a distributed variable covers its per-replica components). They are
            objects, so they are not part of :meth:`get_config`.
        name: name of the optimizer.
        **kwargs: base-optimizer arguments (``clipnorm``, ``use_ema``, ``jit_compile``, ...).
    """

    def __init__(
        self,
        learning_rate: LearningRate = 0.3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eeta: float = 0.001,
        nesterov: bool = False,
        excluded_variables: Iterable[tf.Variable] = (),
        name: str = "LARS",
        **kwargs: Any,
    ) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must be in [0, 1) (SimCLR uses 0.9).")
        if weight_decay is None or weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0 (SimCLR uses 1e-6).")
        if not eeta > 0:
            raise ValueError(f"eeta={eeta} must be > 0 (SimCLR uses 0.001).")
        super().__init__(name=name, weight_decay=weight_decay, **kwargs)
        self._learning_rate = self._build_learning_rate(learning_rate)
        self.momentum = momentum
        self.eeta = eeta
        self.nesterov = nesterov
        self._excluded_keys = variable_keys(excluded_variables)

    def build(self, var_list: list[tf.Variable]) -> None:
        """Create one momentum slot per variable (tracked, so checkpointed)."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self.momentums = [
            self.add_variable_from_reference(model_variable=variable, variable_name="momentum")
            for variable in var_list
        ]
        self._built = True

    def is_excluded(self, variable: tf.Variable) -> bool:
        """Whether ``variable`` is exempt from weight decay and layer adaptation."""
        return variable_key(variable) in self._excluded_keys

    def update_step(self, gradient: tf.Tensor | tf.IndexedSlices, variable: tf.Variable) -> None:
        """Apply one LARS update to ``variable`` (see the module docstring for the formula)."""
        dtype = variable.dtype
        learning_rate = tf.cast(self.learning_rate, dtype)
        momentum = tf.cast(self.momentum, dtype)
        gradient = tf.convert_to_tensor(gradient, dtype=dtype)
        slot = self.momentums[self._index_dict[self._var_key(variable)]]

        if self.is_excluded(variable):
            scaled_lr = learning_rate
        else:
            if self.weight_decay:
                gradient = gradient + tf.cast(self.weight_decay, dtype) * variable
            weight_norm = tf.norm(variable)
            gradient_norm = tf.norm(gradient)
            trust_ratio = tf.where(
                (weight_norm > 0) & (gradient_norm > 0),
                tf.cast(self.eeta, dtype) * tf.math.divide_no_nan(weight_norm, gradient_norm),
                tf.ones_like(weight_norm),
            )
            scaled_lr = learning_rate * trust_ratio

        next_velocity = momentum * slot + scaled_lr * gradient
        slot.assign(next_velocity)
        if self.nesterov:
            variable.assign_sub(momentum * next_velocity + scaled_lr * gradient)
        else:
            variable.assign_sub(next_velocity)

    def _apply_weight_decay(self, variables: list[tf.Variable]) -> None:
        """Disable the base class's decoupled decay: LARS folds decay into the gradient."""

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter(self._learning_rate),
                "momentum": self.momentum,
                "eeta": self.eeta,
                "nesterov": self.nesterov,
            }
        )
        return config
