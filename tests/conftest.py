"""Shared pytest set-up: two logical CPU devices for every test session.

Logical devices must be configured before TensorFlow initialises its runtime, so this runs at
import time of the test session, before any test touches a tensor.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
)


@pytest.fixture
def two_replica_strategy() -> tf.distribute.MirroredStrategy:
    """MirroredStrategy over the two logical CPU devices."""
    return tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])


@pytest.fixture
def one_device_strategy() -> tf.distribute.Strategy:
    """A single-device strategy on the first CPU, the reference for equivalence tests."""
    return tf.distribute.OneDeviceStrategy("/cpu:0")
