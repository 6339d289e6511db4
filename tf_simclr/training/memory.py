"""SimCLRv2's memory of negatives (arXiv 2006.10029 section 2, third change; MoCo, He et al.
2020): a memory network whose weights are an exponential moving average of the online encoder
and projection head, and a first-in-first-out queue of its past projections.

As in MoCo, and as the SimCLRv2 authors describe their unreleased code ("the contrasting
examples are from momentum encoder from current and past batches", google-research/simclr
issue #115), the online projections of a step are contrasted with the memory network's
projections: of the current batch (the positive and the in-batch negatives) and of earlier
batches (the queue). Two other readings were measured here and fail (BENCHMARKS.md, recipe
grid): contrasting online anchors with each other with the queue as extra negatives lets the
online network run away from the queue (kNN 0.67 after 10 epochs against 0.78 without memory);
and projecting in inference mode gives targets the online network cannot match early on (its
batch-norm moving statistics lag the weights), so nothing is learned (kNN at the random
initialisation's level). The memory network therefore projects in training mode, with batch
statistics over both views together, exactly like the online network (and synchronised across
replicas when the online network is); MoCo's key encoder does the same.

Per training step: :meth:`NegativeMemory.before_step` moves the memory network towards the
online one, ``theta_m <- m theta_m + (1 - m) theta_online`` for every variable, batch-norm
moving statistics included, and projects both views; the loss reads the queue as it was before
the step (:meth:`NegativeMemory.negatives`); after the optimizer update
:meth:`NegativeMemory.after_step` gathers the view-1 projections of all replicas and writes them
over the oldest rows of the queue. Every replica holds the same queue. The queue, its row
counter and the memory network are checkpointed with the model. With momentum 0 and no queue
the loss is NT-Xent itself (the targets are then the online projections, without gradient).
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tf_simclr.config import MemoryConfig
from tf_simclr.hub import variable_paths
from tf_simclr.models import SimCLRModel


def memory_network_config(online: SimCLRModel):
    """The memory network's architecture: the online encoder and projection head (batch norm
    synchronised across replicas when the online network's is), no supervised head."""
    return dataclasses.replace(online.config, num_classes=0, supervised_head_stop_gradient=False)


class NegativeMemory(tf.Module):
    """The memory network and its queue of ``memory_size`` projections.

    Build it under the training strategy's scope after the online model holds the weights
    training starts from; the memory network starts as a copy of them, its moving average's
    natural start. (The runner restores a resumed run's weights first, so a memory that a resume
    adds starts from the trained network, not from random weights; a checkpoint that has a
    memory overwrites the copy when the loop restores it.) ``global_batch_size`` rows are
    written per step, so ``memory_size`` must be a multiple of it.
    """

    def __init__(
        self,
        online: SimCLRModel,
        config: MemoryConfig,
        *,
        global_batch_size: int,
        image_size: int,
        hidden_norm: bool = True,
    ) -> None:
        super().__init__(name="negative_memory")
        if not config.enabled:
            raise ValueError("NegativeMemory needs memory_size > 0.")
        if config.memory_size % global_batch_size:
            raise ValueError(
                f"memory_size={config.memory_size} must be a multiple of the global batch "
                f"{global_batch_size} (each step writes one projection per image), e.g. "
                f"{max(config.memory_size // global_batch_size, 1) * global_batch_size}."
            )
        self._config = config
        self._rows_per_step = global_batch_size
        self._hidden_norm = hidden_norm
        self.network = SimCLRModel(memory_network_config(online), name="memory_network")
        self.network.build_for_size(image_size)
        # Not marked untrainable: tf_keras would then run its batch norm in inference mode.
        # No gradient reaches it (``project`` stops it) and the optimizer never sees it.
        width = self.network(tf.zeros([1, image_size, image_size, 3]))["proj_head_output"].shape[-1]
        self.queue = tf.Variable(
            tf.zeros([config.memory_size, width]), trainable=False, name="queue"
        )
        self.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="count")
        for mine, theirs in self._pairs(online):
            mine.assign(theirs)

    @property
    def size(self) -> int:
        return self._config.memory_size

    def _pairs(self, online: SimCLRModel) -> list[tuple[tf.Variable, tf.Variable]]:
        """Memory and online variables of encoder and projection head, matched by object path
        (Keras orders ``variables`` by trainability, which differs between the two)."""
        parts = ("encoder", "projection_head")
        mine, theirs = variable_paths(self.network, parts), variable_paths(online, parts)
        if {k: tuple(v.shape) for k, v in mine.items()} != {
            k: tuple(v.shape) for k, v in theirs.items()
        }:
            raise ValueError("the memory network and the online network differ in architecture.")
        return [(mine[path], theirs[path]) for path in sorted(mine)]

    def negatives(self) -> tuple[tf.Tensor, tf.Tensor]:
        """``(queue [M, d], mask [M])`` for :func:`contrastive_loss`: rows written so far, and
        none before ``memory_warmup_steps`` steps have been written."""
        filled = tf.minimum(self.count, self.size)
        warm = self.count >= self._config.memory_warmup_steps * self._rows_per_step
        written = tf.range(self.size, dtype=tf.int64) < filled
        return tf.identity(self.queue), tf.cast(tf.logical_and(written, warm), tf.float32)

    def fill(self) -> tf.Tensor:
        """Fraction of the queue holding projections (TensorBoard ``train/memory_fill``)."""
        return tf.cast(tf.minimum(self.count, self.size), tf.float32) / self.size

    def follow(self, strategy: tf.distribute.Strategy, online: SimCLRModel) -> None:
        """One moving-average step towards ``online`` (cross-replica context)."""
        momentum = self._config.memory_momentum

        def update(mine: tf.Variable, theirs: tf.Tensor) -> tf.Operation:
            return mine.assign(momentum * mine + (1.0 - momentum) * theirs)

        for mine, theirs in self._pairs(online):
            strategy.extended.update(mine, update, args=(theirs,))

    def project(self, images: tf.Tensor) -> tf.Tensor:
        """The memory network's projections of this replica's ``images``: no gradient, batch
        statistics as the online network computes them."""
        hidden = tf.stop_gradient(self.network(images, training=True)["proj_head_output"])
        if self._hidden_norm:
            hidden = tf.math.l2_normalize(hidden, axis=-1)
        return hidden

    def enqueue(self, projections: tf.Tensor) -> None:
        """Write ``projections`` over the oldest rows, wrapping around (cross-replica context)."""
        rows = tf.shape(projections, out_type=tf.int64)[0]
        index = (self.count + tf.range(rows, dtype=tf.int64)) % self.size
        updated = tf.tensor_scatter_nd_update(
            self.queue, index[:, None], tf.cast(projections, tf.float32)
        )
        self.queue.assign(updated)
        self.count.assign_add(rows)

    def before_step(
        self, strategy: tf.distribute.Strategy, online: SimCLRModel, batch: dict
    ) -> dict:
        """Before the optimizer step (cross-replica context): follow the online network, then
        project both views in one batch, as the online network sees them; returns
        ``{"memory_view1", "memory_view2"}`` per replica."""
        self.follow(strategy, online)

        def project(views: dict) -> dict:
            both = self.project(tf.concat([views["view1"], views["view2"]], axis=0))
            first, second = tf.split(both, 2, axis=0)
            return {"memory_view1": first, "memory_view2": second}

        return strategy.run(project, args=({k: batch[k] for k in ("view1", "view2")},))

    def after_step(self, strategy: tf.distribute.Strategy, batch: dict) -> None:
        """After the optimizer step (cross-replica context): the view-1 projections of the
        global batch, gathered in replica order, enter the queue."""

        def gather(local: tf.Tensor) -> tf.Tensor:
            context = tf.distribute.get_replica_context()
            if context is not None and context.num_replicas_in_sync > 1:
                return context.all_gather(local, axis=0)
            return local

        gathered = strategy.run(gather, args=(batch["memory_view1"],))
        self.enqueue(strategy.experimental_local_results(gathered)[0])
