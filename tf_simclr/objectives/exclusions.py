"""Identify variables by what they are, not by their names (SimCLR appendix B.1).

Batch-norm gamma/beta, biases and the supervised head are excluded from weight decay and from
LARS layer adaptation. The model hands over those variables as objects; this module turns them
into stable keys that match the same variable however it is seen: as a plain variable, as a
``tf.distribute`` mirrored variable, as one of its per-replica components (what an optimizer's
update function receives under ``MirroredStrategy``), or through a mixed-precision
``AutoCastVariable`` wrapper.
"""

from __future__ import annotations

from collections.abc import Iterable

import tensorflow as tf


def variable_key(variable: tf.Variable) -> str:
    """A key shared by a variable, its distributed container and its per-replica components."""
    variable = _container_of(variable)
    unique_id = getattr(variable, "_unique_id", None)
    if unique_id is None:
        raise ValueError(
            f"{variable!r} is not a tf.Variable; pass the variable objects themselves "
            "(e.g. model.excluded_variables()), not tensors or names."
        )
    return str(unique_id)


def variable_keys(variables: Iterable[tf.Variable]) -> frozenset[str]:
    """The keys of ``variables`` as an immutable set (see :func:`variable_key`)."""
    return frozenset(variable_key(variable) for variable in variables)


def _container_of(variable: tf.Variable) -> tf.Variable:
    """The distributed variable that ``variable`` is a per-replica component of, else itself.

    ``tf.distribute`` records the container as a weak reference on the component (or, for
    resource variables, on the component's handle); TF-Keras's optimizer resolves it the same way.
    """
    if isinstance(variable, tf.distribute.DistributedValues):
        return variable
    for holder in (variable, getattr(variable, "handle", None)):
        reference = getattr(holder, "_distributed_container", None)
        container = reference() if reference is not None else None
        if container is not None:
            return container
    return variable
