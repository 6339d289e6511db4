"""Losses against independent NumPy implementations of SimCLR eq. 1 and SimCLRv2 eq. 3-4, and
NT-Xent over two MirroredStrategy replicas against one device with the whole batch."""

import math

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from replica_equivalence import (
    IMAGES,
    TEMPERATURE,
    assert_same_weights,
    distribute,
    initial_weights,
    local_batches,
    reordered,
    run_steps,
    tiny_model,
    two_views,
)
from tolerances import drift_tolerance, reduction_bound

from tf_simclr.objectives import (
    contrastive_loss,
    contrastive_metrics,
    distillation_loss,
    supervised_loss,
)


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _paper_nt_xent(hidden: np.ndarray, temperature: float, hidden_norm: bool = True) -> float:
    """SimCLR eq. 1: 1/(2N) sum over all 2N anchors, positive k <-> k + N, self excluded."""
    z = _normalise(hidden.astype(np.float64)) if hidden_norm else hidden.astype(np.float64)
    two_n = z.shape[0]
    n = two_n // 2
    similarity = z @ z.T / temperature
    total = 0.0
    for i in range(two_n):
        others = np.delete(similarity[i], i)
        log_denominator = np.log(np.sum(np.exp(others - others.max()))) + others.max()
        total += -(similarity[i, (i + n) % two_n] - log_denominator)
    return total / two_n


@pytest.mark.parametrize(
    ("n", "dim", "temperature"),
    [(1, 3, 0.5), (2, 5, 0.5), (4, 16, 0.1), (7, 8, 1.0), (16, 32, 0.2)],
)
def test_nt_xent_matches_numpy_paper_formula(n: int, dim: int, temperature: float) -> None:
    rng = np.random.default_rng(n * 100 + dim)
    hidden = rng.normal(size=(2 * n, dim)).astype(np.float32)
    paper = _paper_nt_xent(hidden, temperature)

    loss, _, _ = contrastive_loss(tf.constant(hidden), temperature=temperature)
    paper_loss, _, _ = contrastive_loss(
        tf.constant(hidden), temperature=temperature, loss_scale="paper"
    )

    # Bound: a logit is a cosine of rows normalised in float32 (dim + 2 roundings each) over the
    # temperature, within reduction_bound(2 * dim + 4, 1) / temperature; an anchor's loss (a
    # log-sum-exp minus a logit) moves by twice that, plus the rounding of its 2n-term sum.
    per_logit = reduction_bound(2 * dim + 4, 1.0) / temperature
    atol = 2 * per_logit + reduction_bound(2 * n, 1.0)
    np.testing.assert_allclose(loss.numpy(), 2.0 * paper, rtol=0, atol=2 * atol)
    np.testing.assert_allclose(paper_loss.numpy(), paper, rtol=0, atol=atol)


def test_nt_xent_without_hidden_norm_uses_raw_dot_products() -> None:
    rng = np.random.default_rng(3)
    hidden = (0.3 * rng.normal(size=(10, 6))).astype(np.float32)
    loss, _, _ = contrastive_loss(tf.constant(hidden), temperature=0.5, hidden_norm=False)
    expected = 2.0 * _paper_nt_xent(hidden, 0.5, hidden_norm=False)
    # Bound: 6-term dot products of values < 1.5, reduction_bound(6, 6 * 1.5**2) / 0.5 = 2e-5
    # worst case per logit; the log-sum-exp keeps it (atol 1e-5 is ~10x the typical error).
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", [2, 5, 32])
@pytest.mark.parametrize("temperature", [0.05, 0.1, 1.0, 5.0])
def test_nt_xent_collinear_embeddings_closed_form(n: int, temperature: float) -> None:
    rng = np.random.default_rng(n)
    direction = rng.normal(size=(1, 12))
    scales = rng.uniform(0.5, 3.0, size=(2 * n, 1))
    hidden = tf.constant((scales * direction).astype(np.float32))

    loss, _, _ = contrastive_loss(hidden, temperature=temperature)
    paper_loss, _, _ = contrastive_loss(hidden, temperature=temperature, loss_scale="paper")

    # Bound: cosines of 12-dim unit rows within reduction_bound(12, 1) + a few eps of 1, over
    # temperatures >= 0.05: logit errors < 4e-5 absolute, that relative to log(3) >= 1.1.
    np.testing.assert_allclose(loss.numpy(), 2.0 * math.log(2 * n - 1), rtol=1e-5)
    np.testing.assert_allclose(paper_loss.numpy(), math.log(2 * n - 1), rtol=1e-5)


def test_logits_and_labels_layout() -> None:
    n, temperature = 4, 0.2
    rng = np.random.default_rng(7)
    hidden = rng.normal(size=(2 * n, 5)).astype(np.float32)
    z = _normalise(hidden.astype(np.float64))
    z1, z2 = z[:n], z[n:]

    _, logits, labels = contrastive_loss(tf.constant(hidden), temperature=temperature)

    assert logits.shape == (n, 2 * n) and labels.shape == (n, 2 * n)
    np.testing.assert_array_equal(labels.numpy(), np.eye(n, 2 * n))
    # Bound: 5-term cosines, reduction_bound(5, 1) + normalisation (~8 eps) / 0.2 = 6e-6.
    np.testing.assert_allclose(logits.numpy()[:, :n], z1 @ z2.T / temperature, atol=1e-5)
    off_diagonal = ~np.eye(n, dtype=bool)
    aa = logits.numpy()[:, n:]
    np.testing.assert_allclose(aa[off_diagonal], (z1 @ z1.T / temperature)[off_diagonal], atol=1e-5)
    assert np.all(np.diag(aa) < -1e8)


def test_contrastive_metrics_match_numpy() -> None:
    n, temperature = 6, 0.5
    rng = np.random.default_rng(11)
    view1 = rng.normal(size=(n, 8))
    view2 = view1.copy()
    view2[: n // 2] = rng.normal(size=(n // 2, 8))  # half of the pairs no longer match
    hidden = np.concatenate([view1, view2]).astype(np.float32)
    z = _normalise(hidden.astype(np.float64))
    rows = np.concatenate([z[:n] @ z[n:].T, z[:n] @ z[:n].T], axis=1) / temperature
    rows[:, n:][np.eye(n, dtype=bool)] = -np.inf
    probs = np.exp(_log_softmax(rows))
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(probs > 0, probs * np.log(probs), 0.0)
    expected_entropy = -plogp.sum(axis=1).mean()
    expected_accuracy = np.mean(np.argmax(rows, axis=1) == np.arange(n))

    _, logits, labels = contrastive_loss(tf.constant(hidden), temperature=temperature)
    metrics = contrastive_metrics(logits, labels)

    assert 0.4 < expected_accuracy < 1.0  # the matching half is found, not every mismatch
    # Exact: a count of correct rows over n (one float32 division, within the default 1e-7).
    np.testing.assert_allclose(metrics["contrast_acc"].numpy(), expected_accuracy)
    # Bound: a float32 softmax and its entropy over 2n - 1 terms: a few (2n) eps relative.
    np.testing.assert_allclose(metrics["contrast_entropy"].numpy(), expected_entropy, rtol=1e-5)


def test_contrastive_metrics_uniform_distribution_entropy() -> None:
    n = 3
    hidden = tf.ones((2 * n, 4))  # all similarities equal: uniform over the 2n - 1 candidates
    _, logits, labels = contrastive_loss(hidden, temperature=0.1)
    metrics = contrastive_metrics(logits, labels)
    # Bound: as above, a float32 entropy of 5 equal probabilities, a few eps relative.
    np.testing.assert_allclose(metrics["contrast_entropy"].numpy(), math.log(2 * n - 1), rtol=1e-5)


def test_nt_xent_gradient_matches_finite_differences() -> None:
    rng = np.random.default_rng(5)
    hidden = rng.normal(size=(6, 4))
    temperature = 0.5
    variable = tf.Variable(hidden.astype(np.float32))
    with tf.GradientTape() as tape:
        loss, _, _ = contrastive_loss(variable, temperature=temperature)
    gradient = tape.gradient(loss, variable).numpy()

    step = 1e-6
    numeric = np.zeros_like(hidden)
    for index in np.ndindex(*hidden.shape):
        plus, minus = hidden.copy(), hidden.copy()
        plus[index] += step
        minus[index] -= step
        difference = _paper_nt_xent(plus, temperature) - _paper_nt_xent(minus, temperature)
        numeric[index] = 2.0 * difference / (2 * step)
    # Bound: central differences of step h = 1e-6 in float64: truncation h**2 |f'''| ~ 1e-12,
    # rounding 2**-52 |f| / h ~ 1e-9; the float32 gradient itself is within a few eps of its
    # size (< 1): 1e-4 leaves 100x.
    np.testing.assert_allclose(gradient, numeric, atol=1e-4)


def test_nt_xent_under_tf_function_with_unknown_batch() -> None:
    rng = np.random.default_rng(2)
    hidden = rng.normal(size=(8, 3)).astype(np.float32)
    compute = tf.function(
        lambda h: contrastive_loss(h, temperature=0.3)[0],
        input_signature=[tf.TensorSpec([None, 3], tf.float32)],
    )
    # Bound: as for the paper formula above (3-dim cosines over 0.3).
    np.testing.assert_allclose(
        compute(tf.constant(hidden)).numpy(), 2.0 * _paper_nt_xent(hidden, 0.3), rtol=1e-5
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="even number of rows"):
        compute(tf.constant(hidden[:7]))


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_nt_xent_rejects_non_positive_temperature(temperature: float) -> None:
    with pytest.raises(ValueError, match=r"temperature=.* must be > 0"):
        contrastive_loss(tf.ones((4, 3)), temperature=temperature)


def test_nt_xent_rejects_odd_or_badly_shaped_batches() -> None:
    with pytest.raises(ValueError, match="even, non-zero number"):
        contrastive_loss(tf.ones((5, 3)))
    with pytest.raises(ValueError, match="even, non-zero number"):
        contrastive_loss(tf.ones((0, 3)))
    with pytest.raises(ValueError, match=r"must be \[2n, d\]"):
        contrastive_loss(tf.ones((4,)))
    with pytest.raises(ValueError, match="loss_scale"):
        contrastive_loss(tf.ones((4, 3)), loss_scale="mean")


def test_contrastive_metrics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="outputs of contrastive_loss"):
        contrastive_metrics(tf.zeros((4, 8)), tf.zeros((4, 6)))


def test_supervised_loss_matches_numpy() -> None:
    rng = np.random.default_rng(8)
    logits = rng.normal(size=(6, 5)).astype(np.float32)
    labels = rng.integers(0, 5, size=6)
    log_probs = _log_softmax(logits.astype(np.float64))
    expected = -log_probs[np.arange(6), labels].mean()
    smoothing = 0.2
    targets = np.eye(5)[labels] * (1 - smoothing) + smoothing / 5
    expected_smoothed = -(targets * log_probs).sum(axis=1).mean()

    loss = supervised_loss(tf.constant(labels), tf.constant(logits))
    smoothed = supervised_loss(tf.constant(labels), tf.constant(logits), label_smoothing=smoothing)

    # Bound: a float32 log-softmax over 5 logits < 4 and a mean of 6: a few (< 16) eps.
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(smoothed.numpy(), expected_smoothed, rtol=1e-5)


def test_supervised_loss_rejects_bad_arguments() -> None:
    logits = tf.zeros((4, 3))
    with pytest.raises(ValueError, match="integer class ids"):
        supervised_loss(tf.one_hot([0, 1, 2, 0], 3), logits)
    with pytest.raises(ValueError, match="4 examples but logits has 3"):
        supervised_loss(tf.constant([0, 1, 2, 0]), tf.zeros((3, 3)))
    with pytest.raises(ValueError, match="label_smoothing"):
        supervised_loss(tf.constant([0, 1, 2, 0]), logits, label_smoothing=1.0)


def _numpy_distillation(teacher: np.ndarray, student: np.ndarray, tau: float) -> float:
    teacher_probs = np.exp(_log_softmax(teacher.astype(np.float64) / tau))
    return float(-(teacher_probs * _log_softmax(student.astype(np.float64) / tau)).sum(1).mean())


@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
def test_distillation_loss_matches_numpy_and_gradient_reaches_student_only(tau: float) -> None:
    rng = np.random.default_rng(int(tau * 10))
    teacher = tf.Variable(rng.normal(size=(5, 7)).astype(np.float32))
    student = tf.Variable(rng.normal(size=(5, 7)).astype(np.float32))

    with tf.GradientTape(persistent=True) as tape:
        loss = distillation_loss(teacher, student, temperature=tau)
        hinton = distillation_loss(teacher, student, temperature=tau, hinton_tau_squared=True)
    teacher_gradient = tape.gradient(loss, teacher)
    student_gradient = tape.gradient(loss, student)

    expected = _numpy_distillation(teacher.numpy(), student.numpy(), tau)
    # Bound: float32 softmaxes over 7 logits and a 7-term sum per row: a few (< 30) eps.
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(hinton.numpy(), tau**2 * expected, rtol=1e-5)
    assert teacher_gradient is None
    teacher_probs = np.exp(_log_softmax(teacher.numpy().astype(np.float64) / tau))
    student_probs = np.exp(_log_softmax(student.numpy().astype(np.float64) / tau))
    expected_gradient = (student_probs - teacher_probs) / tau / 5
    # Bound: differences of probabilities <= 1 (a few eps each) over tau >= 0.5 and 5.
    np.testing.assert_allclose(student_gradient.numpy(), expected_gradient, atol=1e-6)


def test_distillation_gradient_is_zero_when_student_equals_teacher() -> None:
    logits = np.random.default_rng(1).normal(size=(4, 6)).astype(np.float32)
    student = tf.Variable(logits)
    with tf.GradientTape() as tape:
        loss = distillation_loss(tf.constant(logits), student, temperature=2.0)
    # Bound: two float32 softmaxes of the same logits differ by 0 (the same op) to a few eps
    # (2e-7 of probabilities <= 1), over tau = 2 and 4 examples.
    np.testing.assert_allclose(tape.gradient(loss, student).numpy(), 0.0, atol=1e-7)


def test_distillation_mixes_with_supervised_loss_for_labelled_examples() -> None:
    rng = np.random.default_rng(4)
    teacher = rng.normal(size=(6, 4)).astype(np.float32)
    student = rng.normal(size=(6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=6)
    alpha, tau = 0.3, 2.0
    supervised = -_log_softmax(student.astype(np.float64))[np.arange(6), labels].mean()
    expected = (1 - alpha) * supervised + alpha * _numpy_distillation(teacher, student, tau)

    loss = distillation_loss(
        tf.constant(teacher), tf.constant(student), tau, labels=tf.constant(labels), alpha=alpha
    )
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)  # bound: as above


def test_distillation_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="same \\[batch, num_classes\\] shape"):
        distillation_loss(tf.zeros((4, 3)), tf.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"temperature=0.0 must be > 0"):
        distillation_loss(tf.zeros((4, 3)), tf.zeros((4, 3)), temperature=0.0)
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        distillation_loss(tf.zeros((4, 3)), tf.zeros((4, 3)), alpha=1.5)


# ------------------------------------------------------------------ two replicas == one device


def test_cross_replica_nt_xent_and_its_gradient_equal_single_device(
    isolated_two_replica_strategy,
) -> None:
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2 * IMAGES, 7)).astype(np.float32)
    view1, view2 = hidden[:IMAGES], hidden[IMAGES:]

    variable = tf.Variable(hidden)
    with tf.GradientTape() as tape:
        loss, logits, labels = contrastive_loss(variable, temperature=TEMPERATURE)
    gradient = tape.gradient(loss, variable).numpy()

    strategy = isolated_two_replica_strategy

    def replica_fn(local):
        with tf.GradientTape() as local_tape:
            local_tape.watch(local)
            result = contrastive_loss(local, temperature=TEMPERATURE, strategy=strategy)
            scaled = result[0] / strategy.num_replicas_in_sync
        return (*result, local_tape.gradient(scaled, local))

    per_replica = strategy.run(
        tf.function(replica_fn),
        args=(distribute(strategy, local_batches(view1, view2, 2)),),
    )
    local = [strategy.experimental_local_results(value) for value in per_replica]
    half = IMAGES // 2
    # Bound: the same 7-dim cosines summed in another order (all-gathered), through the
    # log-sum-exp: reduction_bound(7, 1) / TEMPERATURE per logit, ~1e-6 relative.
    np.testing.assert_allclose(np.mean([x.numpy() for x in local[0]]), loss.numpy(), rtol=1e-5)
    for replica in range(2):
        rows = slice(replica * half, (replica + 1) * half)
        # Bound: reduction_bound(7, 1) / TEMPERATURE plus normalisation, < 1e-5.
        np.testing.assert_allclose(local[1][replica].numpy(), logits.numpy()[rows], atol=1e-5)
        np.testing.assert_array_equal(local[2][replica].numpy(), labels.numpy()[rows])
        # The gathered negatives must send their gradient back to the replica that owns them.
        expected_gradient = np.concatenate(
            [gradient[rows], gradient[IMAGES + replica * half : IMAGES + (replica + 1) * half]]
        )
        # Bound: gradient entries < 0.1, a few eps relative of the same sums, < 1e-6.
        np.testing.assert_allclose(local[3][replica].numpy(), expected_gradient, atol=1e-6)


def test_nt_xent_with_strategy_outside_strategy_run_raises(isolated_two_replica_strategy) -> None:
    with (
        isolated_two_replica_strategy.scope(),
        pytest.raises(ValueError, match=r"inside strategy\.run"),
    ):
        contrastive_loss(tf.ones((4, 3)), strategy=isolated_two_replica_strategy)


def test_sgd_step_with_sync_bn_matches_single_device(
    isolated_two_replica_strategy, one_device_strategy
) -> None:
    views = [two_views(10)]
    models, losses = [], []
    for strategy, batches in (
        (one_device_strategy, views),
        (isolated_two_replica_strategy, views),
        (one_device_strategy, reordered(views)),  # measures the round-off spread
    ):
        with strategy.scope():
            model = tiny_model()
            optimizer = keras.optimizers.SGD(0.5)
        losses.append(run_steps(strategy, model, optimizer, batches))
        models.append(model)

    # Bound: 10x the loss spread of the reordered batch, floored at one float32 rounding.
    spread = abs(losses[2][0] - losses[0][0])
    atol = drift_tolerance(spread, 1, abs(losses[0][0]))
    np.testing.assert_allclose(losses[0], losses[1], rtol=0, atol=atol)
    assert_same_weights(*models, steps=1)
    # Bound: one step of rate 0.5 moves the kernel by ~0.1, 100x more than 1e-3.
    assert not np.allclose(models[0].get_weights()[0], initial_weights()[0], atol=1e-3)
