"""Losses: NT-Xent (SimCLR eq. 1), supervised cross-entropy, distillation (SimCLRv2 eq. 3-4).

Every loss returns the *mean over the local batch*. Under a ``tf.distribute`` strategy the
training step divides it by ``strategy.num_replicas_in_sync`` before taking gradients, because
gradients are summed across replicas; the result is then the gradient of the global mean.
"""

from __future__ import annotations

import tensorflow as tf

from tf_simclr.config import CONTRASTIVE_LOSS_SCALES

# Subtracted from a logit to remove it from a softmax (an anchor's similarity with itself).
_MASK_LOGIT = 1e9


def contrastive_loss(
    hidden: tf.Tensor,
    temperature: float = 0.1,
    hidden_norm: bool = True,
    strategy: tf.distribute.Strategy | None = None,
    loss_scale: str = "reference",
    memory: tf.Tensor | None = None,
    memory_mask: tf.Tensor | None = None,
    targets: tf.Tensor | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """NT-Xent, the normalised temperature-scaled cross-entropy of SimCLR eq. 1.

    ``hidden`` is ``concat([view1, view2], axis=0)``: row ``i`` and row ``i + n`` are the two
    views of local image ``i`` (``n = hidden.shape[0] // 2``). Each view is an anchor whose
    positive is the other view of the same image and whose ``2G - 2`` negatives are all other
    views of the global batch of ``G`` images. With ``strategy`` given this must run inside
    ``strategy.run``: the views of every replica are gathered with a differentiable all-gather, so
    the negatives come from all replicas (MirroredStrategy, MultiWorkerMirroredStrategy and
    TPUStrategy alike); local batches must have the same size on every replica.

    Scale (``loss_scale``): ``"reference"`` follows google-research/simclr, ``mean_n(loss_a +
    loss_b)`` where ``loss_a`` (``loss_b``) is the cross-entropy of the view-1 (view-2) anchors;
    that is twice the paper's ``L = 1/(2N) sum_k [l(2k-1, 2k) + l(2k, 2k-1)]``. ``"paper"`` gives
    the paper's ``L``. The choice scales the loss and its gradients by 2; the paper's learning
    rates (0.3 x batch / 256 with LARS) were tuned with the reference scale.

    Memory of negatives (SimCLRv2 section 2, after MoCo): ``targets`` ``[2n, d]`` are the
    moving-average memory network's projections of the same views, laid out like ``hidden``;
    the anchors (``hidden``) are then contrasted with the targets of the global batch instead of
    with each other (positive: the other view's target; negatives: the ``2G - 2`` targets of
    the other images; the anchor's own-view target is left out), and no gradient flows into the
    targets. ``memory`` ``[M, d]`` holds targets of earlier batches; every anchor of both
    directions gets all of them as extra negatives. ``memory_mask`` ``[M]`` (1 = use the row)
    leaves out rows not filled yet. With ``hidden_norm`` targets and memory are L2-normalised.

    Args:
        hidden: ``[2n, d]`` projections of both views (any float dtype; computed in float32).
        temperature: the softmax temperature ``tau`` (> 0).
        hidden_norm: L2-normalise the projections first, making the logits cosine similarities.
        strategy: gather negatives across the replicas of this strategy (call inside its ``run``).
        loss_scale: ``"reference"`` or ``"paper"`` (see above).
        memory: ``[M, d]`` extra negatives shared by every anchor (None: none).
        targets: ``[2n, d]`` what the anchors are contrasted with (None: ``hidden`` itself).
        memory_mask: ``[M]`` weights in {0, 1} for the rows of ``memory`` (None: all used).

    Returns:
        ``(loss, logits, labels)``: the scalar loss; ``logits`` ``[n, 2G (+ M)]``, the view-1
        anchors' logits against ``concat([all view-2, all view-1(, memory)])`` with the anchor
        itself and masked memory rows pushed to -1e9 (as fed to the softmax); ``labels`` the
        one-hot positives of the same shape. Feed both to :func:`contrastive_metrics` (and the
        last ``M`` columns to :func:`memory_metrics`).
    """
    _check_temperature(temperature)
    if loss_scale not in CONTRASTIVE_LOSS_SCALES:
        raise ValueError(
            f"loss_scale={loss_scale!r} must be one of {CONTRASTIVE_LOSS_SCALES}: 'reference' "
            "(mean of both directions summed, as google-research/simclr) or 'paper' (1/(2N))."
        )
    hidden = _check_views(tf.cast(hidden, tf.float32))
    if hidden_norm:
        hidden = tf.math.l2_normalize(hidden, axis=-1)
    hidden1, hidden2 = tf.split(hidden, 2, axis=0)
    local_batch = tf.shape(hidden1)[0]

    if targets is None:
        target1, target2 = hidden1, hidden2
    else:
        targets = tf.stop_gradient(tf.cast(targets, tf.float32))
        if hidden_norm:
            targets = tf.math.l2_normalize(targets, axis=-1)
        target1, target2 = tf.split(targets, 2, axis=0)
    hidden1_all, hidden2_all, first_index = _gather_views(target1, target2, strategy)
    global_batch = tf.shape(hidden1_all)[0]
    positive_index = tf.range(local_batch) + first_index
    labels = tf.one_hot(positive_index, 2 * global_batch)
    self_mask = tf.one_hot(positive_index, global_batch) * _MASK_LOGIT

    logits_ab = tf.matmul(hidden1, hidden2_all, transpose_b=True) / temperature
    logits_aa = tf.matmul(hidden1, hidden1_all, transpose_b=True) / temperature - self_mask
    logits_ba = tf.matmul(hidden2, hidden1_all, transpose_b=True) / temperature
    logits_bb = tf.matmul(hidden2, hidden2_all, transpose_b=True) / temperature - self_mask

    logits_a = [logits_ab, logits_aa]
    logits_b = [logits_ba, logits_bb]
    if memory is not None:
        memory = tf.cast(memory, tf.float32)
        if hidden_norm:
            memory = tf.math.l2_normalize(memory, axis=-1)
        removed = 0.0
        if memory_mask is not None:
            removed = (1.0 - tf.cast(memory_mask, tf.float32)) * _MASK_LOGIT
        logits_a.append(tf.matmul(hidden1, memory, transpose_b=True) / temperature - removed)
        logits_b.append(tf.matmul(hidden2, memory, transpose_b=True) / temperature - removed)
        labels = tf.pad(labels, [[0, 0], [0, tf.shape(memory)[0]]])
    logits_a = tf.concat(logits_a, axis=1)
    logits_b = tf.concat(logits_b, axis=1)
    loss_a = tf.nn.softmax_cross_entropy_with_logits(labels, logits_a)
    loss_b = tf.nn.softmax_cross_entropy_with_logits(labels, logits_b)
    loss = tf.reduce_mean(loss_a + loss_b)
    if loss_scale == "paper":
        loss = loss / 2.0
    return loss, logits_a, labels


def contrastive_metrics(logits: tf.Tensor, labels: tf.Tensor) -> dict[str, tf.Tensor]:
    """Contrastive top-1 accuracy and the mean entropy of the contrastive distribution.

    ``logits`` and ``labels`` are the second and third outputs of :func:`contrastive_loss`.
    Accuracy is the fraction of anchors whose largest logit is their positive; entropy is that of
    ``softmax(logits)`` (in nats, averaged over anchors), ``log(2G - 1)`` when it is uniform.
    """
    logits = tf.cast(logits, tf.float32)
    labels = tf.cast(labels, tf.float32)
    if logits.shape.rank != 2 or not logits.shape.is_compatible_with(labels.shape):
        raise ValueError(
            f"logits {logits.shape} and labels {labels.shape} must both be [n, 2G]; pass the "
            "outputs of contrastive_loss unchanged."
        )
    correct = tf.equal(tf.argmax(logits, axis=1), tf.argmax(labels, axis=1))
    log_probs = tf.nn.log_softmax(logits, axis=1)
    entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, axis=1)
    return {
        "contrast_acc": tf.reduce_mean(tf.cast(correct, tf.float32)),
        "contrast_entropy": tf.reduce_mean(entropy),
    }


def memory_metrics(logits: tf.Tensor, labels: tf.Tensor, memory_size: int) -> dict[str, tf.Tensor]:
    """Contrastive accuracy against the memory alone: the fraction of anchors whose positive
    scores above every (unmasked) memory negative; 1 while the memory is empty.

    ``logits`` and ``labels`` are the outputs of :func:`contrastive_loss` called with a memory
    of ``memory_size`` rows (its last columns).
    """
    positive = tf.reduce_sum(tf.cast(logits, tf.float32) * tf.cast(labels, tf.float32), axis=1)
    hardest = tf.reduce_max(tf.cast(logits[:, -memory_size:], tf.float32), axis=1)
    return {"memory_contrast_acc": tf.reduce_mean(tf.cast(positive > hardest, tf.float32))}


def supervised_loss(
    labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
    """Softmax cross-entropy with integer labels, mean over the local batch (SimCLRv2 sec. 2.2).

    With ``label_smoothing = s`` the target is ``(1 - s) * one_hot + s / num_classes``.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1) (0 disables it).")
    logits = tf.cast(logits, tf.float32)
    if logits.shape.rank != 2:
        raise ValueError(f"logits must be [batch, num_classes], got shape {logits.shape}.")
    labels = tf.convert_to_tensor(labels)
    if labels.dtype.is_floating or labels.shape.rank != 1:
        raise ValueError(
            f"labels must be integer class ids of shape [batch], got {labels.dtype.name} "
            f"{labels.shape}; convert one-hot labels with tf.argmax(labels, axis=-1)."
        )
    _check_batch_match(labels, logits, "labels", "logits")
    targets = tf.one_hot(labels, tf.shape(logits)[1])
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / tf.cast(
            tf.shape(logits)[1], tf.float32
        )
    return tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(targets, logits))


def distillation_loss(
    teacher_logits: tf.Tensor,
    student_logits: tf.Tensor,
    temperature: float = 1.0,
    hinton_tau_squared: bool = False,
    labels: tf.Tensor | None = None,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> tf.Tensor:
    """Distillation loss of SimCLRv2 eq. 3 (and eq. 4 when ``labels`` are given).

    ``-sum_y P_T(y|x; tau) log P_S(y|x; tau)`` with ``P(y|x; tau) = softmax(logits / tau)``,
    averaged over the local batch. The teacher is fixed: no gradient flows into
    ``teacher_logits``. The gradient with respect to the student logits is
    ``(softmax(s / tau) - P_T) / tau`` per example, zero when student and teacher agree.

    Args:
        teacher_logits: ``[batch, classes]`` logits of the (fixed) teacher.
        student_logits: ``[batch, classes]`` logits of the student being trained.
        temperature: ``tau`` (> 0), applied to both teacher and student.
        hinton_tau_squared: multiply by ``tau**2`` so that gradient magnitudes do not shrink with
            ``tau`` (Hinton et al. 2015); the paper does not.
        labels: integer labels for labelled examples; then the loss is eq. 4's mix
            ``(1 - alpha) * supervised_loss(labels, student_logits) + alpha * distillation``.
        alpha: the distillation weight in that mix, in [0, 1]; ignored without ``labels``.
        label_smoothing: passed to :func:`supervised_loss` for the supervised part.
    """
    _check_temperature(temperature)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} must be in [0, 1] (1 = distillation only).")
    teacher_logits = tf.stop_gradient(tf.cast(teacher_logits, tf.float32))
    student_logits = tf.cast(student_logits, tf.float32)
    if teacher_logits.shape.rank != 2 or not teacher_logits.shape.is_compatible_with(
        student_logits.shape
    ):
        raise ValueError(
            f"teacher_logits {teacher_logits.shape} and student_logits {student_logits.shape} "
            "must have the same [batch, num_classes] shape; teacher and student must predict "
            "the same classes for the same examples."
        )
    teacher_probs = tf.nn.softmax(teacher_logits / temperature, axis=-1)
    per_example = tf.nn.softmax_cross_entropy_with_logits(
        teacher_probs, student_logits / temperature
    )
    loss = tf.reduce_mean(per_example)
    if hinton_tau_squared:
        loss = loss * temperature**2
    if labels is None:
        return loss
    supervised = supervised_loss(labels, student_logits, label_smoothing=label_smoothing)
    return (1.0 - alpha) * supervised + alpha * loss


def _gather_views(
    hidden1: tf.Tensor, hidden2: tf.Tensor, strategy: tf.distribute.Strategy | None
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Both views of the global batch, and the global index of this replica's first image."""
    if strategy is None or strategy.num_replicas_in_sync == 1:
        return hidden1, hidden2, tf.constant(0, tf.int32)
    context = tf.distribute.get_replica_context()
    if context is None or tf.distribute.in_cross_replica_context():
        raise ValueError(
            "contrastive_loss(strategy=...) gathers negatives across replicas and must be "
            "called inside strategy.run(...); call it from the per-replica step function, or "
            "pass strategy=None for local negatives only."
        )
    hidden1_all, hidden2_all = context.all_gather([hidden1, hidden2], axis=0)
    replica_id = tf.cast(context.replica_id_in_sync_group, tf.int32)
    return hidden1_all, hidden2_all, replica_id * tf.shape(hidden1)[0]


def _check_views(hidden: tf.Tensor) -> tf.Tensor:
    """``hidden``, validated; with an unknown batch size the check runs before any use of it."""
    if hidden.shape.rank != 2:
        raise ValueError(
            f"hidden must be [2n, d] (concat([view1, view2], axis=0)), got shape {hidden.shape}."
        )
    rows = hidden.shape[0]
    if rows is not None and (rows == 0 or rows % 2):
        raise ValueError(
            f"hidden has {rows} rows but must hold an even, non-zero number: n view-1 rows "
            "followed by the n matching view-2 rows (concat([view1, view2], axis=0))."
        )
    if rows is not None:
        return hidden
    check = tf.debugging.assert_equal(
        tf.shape(hidden)[0] % 2,
        0,
        message="hidden must hold an even number of rows: concat([view1, view2], axis=0).",
    )
    with tf.control_dependencies([check]):
        return tf.identity(hidden)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature={temperature} must be > 0 (the papers use 0.1 to 1.0).")


def _check_batch_match(a: tf.Tensor, b: tf.Tensor, name_a: str, name_b: str) -> None:
    if a.shape[0] is not None and b.shape[0] is not None and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} has {a.shape[0]} examples but {name_b} has {b.shape[0]}; pass one "
            "label per row of logits."
        )
