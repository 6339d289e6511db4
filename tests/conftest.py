"""Shared pytest set-up: two logical CPU devices for every test session.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time of the test session, before any test touches a tensor.
"""

import itertools
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import pytest

from tf_simclr.logs import start_tensorflow

start_tensorflow()  # as the binaries do: TensorFlow's start-up chatter hidden, level 2 set

import tensorflow as tf  # noqa: E402 - after the quiet start

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture(scope="session")
def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPU devices, one per test session.

    Every new MirroredStrategy numbers its collective operations from the same key, and the
    runtime remembers the first shape used under each key for the life of the process, so two
    strategies in one process whose all-reduces differ abort with "Shape mismatch in the
    collective instance". One shared strategy avoids that.
    """
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture(scope="session")
def one_device_strategy() -> tf.distribute.Strategy:
    """A single-device strategy on the first CPU, the reference for equivalence tests."""
    return tf.distribute.OneDeviceStrategy("/cpu:0")


_COLLECTIVE_KEY_BASES = itertools.count(start=1_000_000, step=10_000)


@pytest.fixture
def isolated_two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPUs, in a collective group no other test uses.

    For tests that compare several models or steps on two replicas (tests/replica_equivalence.py):
    every MirroredStrategy instance numbers its collective ops from the same group and instance
    keys, and the runtime caches an instance's shape and type for the whole process, so two
    strategies whose collectives differ collide ("Collective ops is aborted by: Shape mismatch in
    the collective instance 100") and poison every later collective. Each such test therefore
    gets a strategy in a collective group of its own (``_collective_key_base``, TF's hook for
    tests).
    """

    class IsolatedMirroredStrategy(tf.distribute.MirroredStrategy):
        _collective_key_base = next(_COLLECTIVE_KEY_BASES)

    return IsolatedMirroredStrategy(["/cpu:0", "/cpu:1"])


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every ``long`` test is also ``slow`` (make test-fast leaves both out). The files with slow
    (end-to-end) tests run first, in their order: with ``-n 2 --dist
    loadfile`` the longest work starts first and the quick files fill the gaps, so that no
    worker is left running a long file alone at the end."""
    long_only = [
        item.nodeid
        for item in items
        if item.get_closest_marker("long") and not item.get_closest_marker("slow")
    ]
    if long_only:
        raise pytest.UsageError(f"a long test must also be marked slow: {long_only}")
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
