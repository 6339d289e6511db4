"""Choosing the tf.distribute strategy (SimCLR section 2: large batches across accelerators).

Every phase runs under one of these; negatives for NT-Xent and sync-BN statistics come from all
of its replicas. ``logical_cpu_devices`` splits the CPU into that many logical devices before
TensorFlow starts, which is how multi-replica runs are simulated on a machine without
accelerators.

Starting a MultiWorkerMirroredStrategy waits for every worker of ``TF_CONFIG``'s cluster, and
TensorFlow's own wait cannot be stopped (measured with TF 2.21 on CPU, two workers over
loopback): it happens inside one C++ call that holds the GIL, so no Python code runs until it
returns (neither a thread's join loop nor a signal handler: a lone worker's main thread blocked
in ``join(0.01)`` for as long as the call), it installs a SIGTERM handler of its own that only
logs ``SIGTERM caught`` (SIGINT waits for the call to return), and with no peer a chief (task 0,
the coordination leader) waits without end (still waiting after 40 s with a registration timeout
of 8 s, unless registration is a barrier). So :func:`create_strategy` first
waits in Python (:func:`wait_for_workers`: every peer's address must accept a connection, while
this worker listens on its own), where SIGTERM and SIGINT end the wait at once
(:class:`ClusterWaitInterruptedError`) and ``worker_timeout_seconds`` bounds it
(:class:`ClusterStartError`); TensorFlow's registration is then bounded by the same timeout, in
case a peer dies in between; and SIGTERM gets its previous handler back.
"""

from __future__ import annotations

import logging
import re
import signal
import socket
import threading
import time

import tensorflow as tf

from tf_simclr.config import STRATEGIES
from tf_simclr.training.preemption import StopRequests

logger = logging.getLogger("tf_simclr")

# The jobs whose tasks run MultiWorkerMirroredStrategy's collectives (an evaluator does not).
COLLECTIVE_JOBS = ("chief", "worker")
# Seconds between two rounds of connections to the missing workers, and the longest a
# connection may take (a worker that is up answers within milliseconds).
PROBE_INTERVAL_SECONDS = 0.5
PROBE_TIMEOUT_SECONDS = 1.0
_TASK_NAME = re.compile(r"/job:(\w+)(?:/replica:\d+)?/task:(\d+)")


class ClusterStartError(RuntimeError):
    """The workers of ``TF_CONFIG``'s cluster did not all start within the timeout, or this
    worker cannot listen on its own address; nothing was written."""


class ClusterWaitInterruptedError(Exception):
    """SIGTERM or SIGINT (``signal_name``) while waiting for the workers ``missing``; nothing
    was written."""

    def __init__(self, signal_name: str, missing: str) -> None:
        super().__init__(f"{signal_name} received while waiting for {missing}; nothing was written")
        self.signal_name = signal_name
        self.missing = missing


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
    and waits for the other workers to join: ClusterStartError when they have not after
    ``worker_timeout_seconds``, ClusterWaitInterruptedError on SIGTERM or SIGINT meanwhile.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = gpus or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([device.name for device in devices])
    if name == "multi_worker":
        return _multi_worker_strategy(worker_timeout_seconds)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(f"strategy={name!r} must be one of {STRATEGIES}.")


def _multi_worker_strategy(timeout_seconds: int) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy over ``TF_CONFIG``'s cluster, started as the module
    docstring says. Raises ClusterStartError or ClusterWaitInterruptedError."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    tasks = _cluster_tasks(resolver)
    own = f"{resolver.task_type} {resolver.task_id}"
    peers = {name: address for name, address in tasks.items() if name != own}
    # An earlier strategy of this process already joined the cluster: nothing to wait for.
    if own in tasks and peers and not _joined_cluster():
        wait_for_workers(tasks[own], peers, timeout_seconds)
        _bound_registration(resolver, timeout_seconds)
    sigterm = signal.getsignal(signal.SIGTERM)
    try:
        return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except tf.errors.DeadlineExceededError as error:
        # The chief's error names the workers that did not register, another's the chief.
        named = {f"{job} {index}" for job, index in _TASK_NAME.findall(error.message)}
        late = {name: address for name, address in peers.items() if name in named} or peers
        raise ClusterStartError(_gave_up(timeout_seconds, late)) from error
    finally:
        # TensorFlow's C++ handler only logs "SIGTERM caught": SIGTERM would not stop the run.
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)


def wait_for_workers(own_address: str, peers: dict[str, str], timeout_seconds: float) -> None:
    """Return once every peer (``{"worker 1": "host:port"}``) accepts a TCP connection in the
    same round, while this worker listens on the port of ``own_address`` so that the peers find
    it too (its TensorFlow server takes the port over afterwards).

    Raises ClusterStartError naming the missing peers after ``timeout_seconds``, or when the
    port is taken; ClusterWaitInterruptedError on SIGTERM or SIGINT, within a fraction of a
    second.
    """
    port = int(own_address.rsplit(":", 1)[1])
    dualstack = socket.has_dualstack_ipv6()  # IPv4 and IPv6 peers, like TensorFlow's server
    try:
        listener = socket.create_server(
            ("", port),
            family=socket.AF_INET6 if dualstack else socket.AF_INET,
            dualstack_ipv6=dualstack,
        )
    except OSError as error:
        raise ClusterStartError(
            f"this worker cannot listen on port {port} of its address {own_address} in "
            f"TF_CONFIG ({error}): is another process using it?"
        ) from error
    deadline = time.monotonic() + timeout_seconds
    with listener, StopRequests() as requests:
        missing = _unreachable(peers)
        if missing:
            logger.info("waiting up to %g s for %s (TF_CONFIG)", timeout_seconds, _listing(missing))
        while missing and not requests.signal_name:
            if time.monotonic() >= deadline:
                raise ClusterStartError(_gave_up(timeout_seconds, missing))
            time.sleep(PROBE_INTERVAL_SECONDS)
            missing = _unreachable(peers)
    # Checked after the handlers are back, so that no signal falls between two checks.
    if requests.signal_name:
        raise ClusterWaitInterruptedError(requests.signal_name, _listing(missing or peers))


def _cluster_tasks(resolver: tf.distribute.cluster_resolver.ClusterResolver) -> dict[str, str]:
    """``{"worker 1": "host:port"}`` for every task of the cluster that runs collectives."""
    spec = resolver.cluster_spec()
    return {
        f"{job} {index}": spec.task_address(job, index)
        for job in COLLECTIVE_JOBS
        if job in spec.jobs
        for index in spec.task_indices(job)
    }


def _unreachable(peers: dict[str, str]) -> dict[str, str]:
    """The peers whose address refuses a TCP connection (or does not answer in time)."""
    missing = {}
    for name, address in peers.items():
        host, port = address.rsplit(":", 1)
        try:
            with socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT_SECONDS):
                pass
        except OSError:
            missing[name] = address
    return missing


def _listing(tasks: dict[str, str]) -> str:
    """``worker 1 at host:port, ...``: the tasks as the messages name them."""
    return ", ".join(f"{name} at {address}" for name, address in tasks.items())


def _gave_up(timeout_seconds: float, missing: dict[str, str]) -> str:
    """The message of a wait that timed out: who was missing and what to do."""
    return (
        f"gave up after {timeout_seconds:g} s waiting for {_listing(missing)} of TF_CONFIG's "
        "cluster: start the same command on every worker (each with its own TF_CONFIG), or "
        "wait longer with --worker_timeout_seconds."
    )


def _joined_cluster() -> bool:
    """Whether this process has configured TensorFlow's coordination service already."""
    from tensorflow.python.eager import context  # no public API tells

    return context.context().coordination_service is not None


def _bound_registration(
    resolver: tf.distribute.cluster_resolver.ClusterResolver, timeout_seconds: int
) -> None:
    """End TensorFlow's wait for the workers to register after ``timeout_seconds`` (with a
    DeadlineExceededError) instead of never, should a peer die after :func:`wait_for_workers`
    saw it: the coordination service MultiWorkerMirroredStrategy would configure, plus a
    registration timeout that is a barrier (without the barrier, measured, a lone chief still
    waited forever). No public API sets these."""
    from tensorflow.python.eager import context

    spec = resolver.cluster_spec()
    jobs = [job for job in COLLECTIVE_JOBS if job in spec.jobs]
    eager = context.context()
    eager.configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        cluster_register_timeout_in_ms=timeout_seconds * 1000,
    )
    config = eager.coordination_service
    config.cluster_register_with_barrier = True
    for job in jobs:
        config.coordinated_job_list.add(name=job, num_tasks=spec.num_tasks(job))


def lost_worker(error: BaseException) -> str | None:
    """One line on the worker a multi-worker run lost (it died or cannot be reached; its
    collectives then fail with UnavailableError), naming workers by their TF_CONFIG address;
    None for any other error."""
    if not isinstance(error, tf.errors.UnavailableError):
        return None
    return _with_addresses(_reason(error.message))


def _reason(message: str) -> str:
    """The cause in a TensorFlow error message, in one line: what follows "Collective ops is
    aborted by:" when that is there, without the traced op's location."""
    text = message.split("Collective ops is aborted by:", 1)[-1]
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.startswith(("Graph execution error", "Detected at node"))
    ]
    if not lines:
        return "no reason given"
    reason = lines[0]
    if reason.endswith(":") and len(lines) > 1:  # a list of tasks follows
        reason = f"{reason} {lines[1]}"
    return reason


def _with_addresses(text: str) -> str:
    """``text`` with each TensorFlow task name (``/job:worker/replica:0/task:1``) followed by
    its TF_CONFIG address."""
    tasks = _cluster_tasks(tf.distribute.cluster_resolver.TFConfigClusterResolver())

    def named(match: re.Match) -> str:
        address = tasks.get(f"{match.group(1)} {match.group(2)}")
        return f"{match.group(0)} ({address})" if address else match.group(0)

    return _TASK_NAME.sub(named, text)


def in_cluster(strategy: tf.distribute.Strategy) -> bool:
    """True for a strategy over a cluster of workers (MultiWorkerMirroredStrategy with
    TF_CONFIG), whose workers take every step together."""
    resolver = getattr(strategy, "cluster_resolver", None)
    return resolver is not None and bool(resolver.cluster_spec().as_dict())


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and exports."""
    if not in_cluster(strategy):
        return True
    resolver = strategy.cluster_resolver
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
