"""Choosing the tf.distribute strategy (SimCLR section 2: large batches across accelerators).

Every phase runs under one of these; negatives for NT-Xent and sync-BN statistics come from all
of its replicas. ``logical_cpu_devices`` splits the CPU into that many logical devices before
TensorFlow starts, which is how multi-replica runs are simulated on a machine without
accelerators.
"""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.config import STRATEGIES


def configure_logical_cpus(count: int) -> None:
    """Split the first CPU into ``count`` logical devices (must run before any TF op)."""
    if count <= 1:
        return
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    )


def make_deterministic(seed: int) -> None:
    """Make the run a function of its command: the same flags on the same machine give
    bit-identical weights (``--deterministic``).

    Seeds Python's, NumPy's and TensorFlow's global generators (weight initialisers draw from
    them) and turns on TensorFlow's op determinism: every op runs a deterministic kernel (or
    raises if it has none), and tf.data keeps its element order. The input pipeline's own
    randomness is seeded by ``DataConfig.seed`` whatever this says. Call it before any op runs.
    Across machines the result still differs by round-off (oneDNN picks other kernels).
    """
    import tf_keras

    tf_keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()


def create_strategy(
    name: str, tpu_address: str = "", worker_timeout_seconds: int = 300
) -> tf.distribute.Strategy:
    """The strategy called ``name``: default, mirrored, multi_worker (TF_CONFIG) or tpu.

    ``mirrored`` replicates over every local GPU, or over every logical CPU device when there
    is no GPU. ``multi_worker`` reads the cluster from the ``TF_CONFIG`` environment variable
    and waits at most ``worker_timeout_seconds`` for the other workers to join.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy={name!r} must be one of {STRATEGIES}.")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (task_type == "worker" and task_id == 0)


def check_batch_sizes(
    strategy: tf.distribute.Strategy, train_batch_size: int, eval_batch_size: int | None
) -> None:
    """Raises ValueError unless each global batch (``eval_batch_size`` None: not used) splits
    evenly over the strategy's replicas; run it as soon as the strategy exists."""
    replicas = strategy.num_replicas_in_sync
    for flag, size in (
        ("train_batch_size", train_batch_size),
        ("eval_batch_size", eval_batch_size),
    ):
        if size is not None and size % replicas:
            lower = size - size % replicas
            options = f"{lower} or {lower + replicas}" if lower else str(replicas)
            raise ValueError(
                f"--{flag}={size} does not split evenly over the {replicas} replicas of this "
                f"strategy (every replica gets the same share); use a multiple of {replicas}, "
                f"e.g. {options}."
            )
