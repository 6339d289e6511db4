"""SimCLRv2's memory of negatives (arXiv 2006.10029 section 2).

In process: NT-Xent with the memory network's targets and memory negatives against an
independent NumPy computation, the memory
accuracy on a hand-built case, the first-in-first-out queue with its wrap-around, warm-up and
fill, and the moving average against its closed form. Through the binary: two mirrored replicas
give the losses and the queue of one device, a run resumed from a middle checkpoint continues
with the same queue and the same next losses, and the memory network exports as a hub module.
"""

from __future__ import annotations

import math
import shutil

import numpy as np
import pytest
import tensorflow as tf
from binary_runs import (
    REFERENCE_FLAGS,
    REFERENCE_STEPS,
    assert_succeeded,
    read_events,
    reference_run,
    run_binary,
    shared_runs,
)
from tolerances import EPS32, ONEDNN_OFF, drift_tolerance, reduction_bound, relative_spread

from tf_simclr import ModelConfig, SimCLRModel
from tf_simclr.config import LossConfig, MemoryConfig, OptimConfig
from tf_simclr.objectives import contrastive_loss, memory_metrics
from tf_simclr.training import phases
from tf_simclr.training.memory import NegativeMemory

QUEUE_KEY = "memory/queue/.ATTRIBUTES/VARIABLE_VALUE"
COUNT_KEY = "memory/count/.ATTRIBUTES/VARIABLE_VALUE"


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _numpy_nt_xent(
    hidden: np.ndarray,
    memory: np.ndarray,
    mask: np.ndarray,
    temperature: float,
    norm: bool,
    targets: np.ndarray | None = None,
) -> float:
    """Every one of the 2n views is an anchor; it is contrasted with the targets (``hidden``
    itself by default): the other view's as positive, the 2n - 2 of the other images and the
    unmasked memory rows as negatives, its own view's left out. Reference scale: sum over the
    2n anchors / n."""
    z = hidden.astype(np.float64)
    t = z if targets is None else targets.astype(np.float64)
    m = memory.astype(np.float64)[mask.astype(bool)]
    if norm:
        z, t = _normalise(z), _normalise(t)
        m = _normalise(m) if len(m) else m
    two_n = len(z)
    n = two_n // 2
    total = 0.0
    for i in range(two_n):
        partner = (i + n) % two_n
        negatives = [z[i] @ t[j] for j in range(two_n) if j not in (i, partner)]
        logits = np.array([z[i] @ t[partner], *negatives, *(m @ z[i])]) / temperature
        top = logits.max()
        total += -(logits[0] - top - math.log(np.exp(logits - top).sum()))
    return total / n


@pytest.mark.parametrize(
    ("n", "dim", "rows", "temperature", "norm", "masked", "with_targets"),
    [
        (3, 5, 4, 0.5, True, 0, False),
        (4, 8, 8, 0.1, True, 3, True),
        (2, 6, 6, 0.2, False, 2, True),
        (5, 16, 10, 1.0, True, 10, False),
        (3, 7, 5, 0.2, True, 0, True),
    ],
)
def test_loss_with_memory_matches_numpy(n, dim, rows, temperature, norm, masked, with_targets):
    rng = np.random.default_rng(n * 31 + rows)
    scale = 1.0 if norm else 0.4
    hidden = (scale * rng.normal(size=(2 * n, dim))).astype(np.float32)
    targets = (hidden + 0.5 * scale * rng.normal(size=hidden.shape)).astype(np.float32)
    memory = (scale * rng.normal(size=(rows, dim))).astype(np.float32)
    mask = np.ones(rows, np.float32)
    mask[rows - masked :] = 0.0

    with tf.GradientTape() as tape:
        target_tensor = tf.constant(targets)
        tape.watch(target_tensor)
        loss, logits, labels = contrastive_loss(
            tf.constant(hidden),
            temperature=temperature,
            hidden_norm=norm,
            memory=tf.constant(memory),
            memory_mask=tf.constant(mask),
            targets=target_tensor if with_targets else None,
        )

    expected = _numpy_nt_xent(
        hidden, memory, mask, temperature, norm, targets if with_targets else None
    )
    # Bound: cosines (or raw dot products of values < 2) of dim-term rows over temperatures
    # >= 0.1, in float32 vs float64: ~reduction_bound(dim, 1) / temperature per logit, a few
    # 1e-6; the log-sum-exp keeps it.
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5, atol=1e-5)
    assert logits.shape == labels.shape == (n, 2 * n + rows)
    if with_targets:  # the memory network's projections take no gradient
        assert tape.gradient(loss, target_tensor) is None
    if masked == rows and not with_targets:  # a fully masked memory is no memory at all
        plain, _, _ = contrastive_loss(tf.constant(hidden), temperature=temperature)
        # Bound: the same logits, masked columns at -inf adding exact zeros; the log-sum-exp's
        # sum over more columns rounds a few eps apart (rel 1e-6).
        np.testing.assert_allclose(loss.numpy(), plain.numpy(), rtol=1e-6)


def test_memory_accuracy_counts_anchors_whose_positive_beats_every_memory_row():
    e1, e2 = np.eye(4, dtype=np.float32)[:2]
    hidden = np.stack([e1, e2, e1, e2])  # both views of image k are the same vector
    memory = np.stack([e1, -e1, -e2])  # image 1 ties with its copy in the memory
    _, logits, labels = contrastive_loss(
        tf.constant(hidden), temperature=0.1, memory=tf.constant(memory)
    )
    accuracy = memory_metrics(logits, labels, memory_size=3)["memory_contrast_acc"]
    assert float(accuracy) == 0.5


def _tiny_model() -> SimCLRModel:
    config = ModelConfig(
        resnet_depth=18,
        width_multiplier=0.0625,
        cifar_stem=True,
        num_proj_layers=2,
        proj_out_dim=4,
        num_classes=3,
    )
    return SimCLRModel(config).build_for_size(8)


def test_with_momentum_0_and_no_queue_the_loss_is_nt_xent():
    """The memory network then is the online network at the step's start, projecting the same
    batch with the same batch statistics: its targets are the online projections."""
    online = _tiny_model()
    config = MemoryConfig(memory_size=4, memory_momentum=0.0, memory_warmup_steps=10)
    memory = NegativeMemory(online, config, global_batch_size=4, image_size=8)
    for variable in online.trainable_variables:  # the memory must follow, not stay a copy
        variable.assign(variable + 0.05)
    views = tf.random.stateless_uniform([8, 8, 8, 3], seed=[4, 5])
    batch = {"view1": views[:4], "view2": views[4:], "label": tf.constant([0, 1, 2, 0])}
    strategy = tf.distribute.get_strategy()
    batch.update(memory.before_step(strategy, online, batch))
    loss_config, optim = LossConfig(temperature=0.2), OptimConfig(weight_decay=0.0)
    with_memory = phases.pretrain_compute(
        online, None, loss_config, optim, linear_eval=False, memory=memory
    )
    plain = phases.pretrain_compute(online, None, loss_config, optim, linear_eval=False)
    _, scalars = with_memory(batch)
    _, reference = plain(batch)
    # Bound: the targets come from an exact copy of the online network (momentum 0) run on the
    # same batch by another call, which gives the same projections up to a few float32
    # roundings; the loss moves by a few eps relative of it (rel 1e-5).
    np.testing.assert_allclose(
        float(scalars["contrast_loss"]), float(reference["contrast_loss"]), rtol=1e-5
    )
    assert float(scalars["memory_fill"]) == 0.0


def test_queue_is_first_in_first_out_and_wraps_around():
    config = MemoryConfig(memory_size=6, memory_warmup_steps=2)
    memory = NegativeMemory(_tiny_model(), config, global_batch_size=2, image_size=8)
    assert memory.queue.shape == (6, 4)
    expected = np.zeros((6, 4), np.float32)
    rng = np.random.default_rng(0)
    for step in range(5):  # 10 rows through a queue of 6: the oldest are overwritten
        rows = rng.normal(size=(2, 4)).astype(np.float32)
        memory.enqueue(tf.constant(rows))
        for offset, row in enumerate(rows):
            expected[(2 * step + offset) % 6] = row
        np.testing.assert_array_equal(memory.queue.numpy(), expected)
        written = min(2 * (step + 1), 6)
        assert int(memory.count.numpy()) == 2 * (step + 1)
        assert float(memory.fill()) == pytest.approx(written / 6)  # bound: one division
        negatives, mask = memory.negatives()
        np.testing.assert_array_equal(negatives.numpy(), expected)
        warm = step + 1 >= config.memory_warmup_steps
        np.testing.assert_array_equal(mask.numpy(), [warm and i < written for i in range(6)])


def test_memory_size_must_be_a_multiple_of_the_global_batch():
    with pytest.raises(ValueError, match="multiple of the global batch 4"):
        NegativeMemory(
            _tiny_model(), MemoryConfig(memory_size=6), global_batch_size=4, image_size=8
        )


def test_moving_average_equals_its_closed_form_after_k_steps():
    """m_k = mu^k m_0 + (1 - mu) sum_j mu^(k - j) w_j for online weights w_1 .. w_k."""
    momentum, steps = 0.9, 4
    online = _tiny_model()
    memory = NegativeMemory(
        online,
        MemoryConfig(memory_size=2, memory_momentum=momentum),
        global_batch_size=2,
        image_size=8,
    )
    followed = {
        "conv kernel": (
            memory.network.encoder.stem.convs[0].conv.kernel,
            online.encoder.stem.convs[0].conv.kernel,
        ),
        "bn moving variance": (
            memory.network.encoder.stem.convs[0].bn.moving_variance,
            online.encoder.stem.convs[0].bn.moving_variance,
        ),
        "head kernel": (
            memory.network.projection_head.layers_list[-1].dense.kernel,
            online.projection_head.layers_list[-1].dense.kernel,
        ),
    }
    rng = np.random.default_rng(1)
    start = {}
    for name, (mine, theirs) in followed.items():
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy(), err_msg=f"{name} copy")
        start[name] = rng.uniform(0.5, 1.5, size=mine.shape)
        mine.assign(start[name])
    history = {name: [] for name in followed}
    strategy = tf.distribute.get_strategy()
    for _ in range(steps):
        for name, (_, theirs) in followed.items():
            value = rng.uniform(0.5, 1.5, size=theirs.shape)
            theirs.assign(value)
            history[name].append(value)
        memory.follow(strategy, online)
    for name, (mine, _) in followed.items():
        closed = momentum**steps * start[name] + (1 - momentum) * sum(
            momentum ** (steps - j) * w for j, w in enumerate(history[name], start=1)
        )
        # Bound: `steps` float32 updates m * a + (1 - m) * b of values ~1, ~3 eps each.
        np.testing.assert_allclose(mine.numpy(), closed, rtol=1e-5, err_msg=name)


# Through the binary: the shared 12-step reference pretraining with a memory of 3 steps (it
# wraps around 3 times), moving-average momentum 0.9 and one warm-up step.
MEMORY_FLAGS = (
    *REFERENCE_FLAGS,
    "--memory_size=96",
    "--memory_momentum=0.9",
    "--memory_warmup_steps=1",
    "--export_memory_network",
    "--export_hub",
)
MIRRORED_MEMORY_FLAGS = (*MEMORY_FLAGS, "--strategy=mirrored", "--logical_cpu_devices=2")


@pytest.fixture(scope="module")
def memory_runs(tmp_path_factory):
    return shared_runs(
        tmp_path_factory, {"memory": MEMORY_FLAGS, "memory_mirrored": MIRRORED_MEMORY_FLAGS}
    )


def _queue(prefix) -> tuple[np.ndarray, int]:
    reader = tf.train.load_checkpoint(str(prefix))
    return reader.get_tensor(QUEUE_KEY), int(reader.get_tensor(COUNT_KEY))


@pytest.mark.long
@pytest.mark.slow
def test_two_replicas_give_the_losses_and_queue_of_one_device(memory_runs, tmp_path_factory):
    one, two = memory_runs["memory"], memory_runs["memory_mirrored"]
    # The one-device run again with oneDNN off (Eigen's kernels, another summation order
    # everywhere) measures how far round-off alone moves losses and queue on this machine.
    other_order = shared_runs(
        tmp_path_factory,
        {"memory_onednn_off": MEMORY_FLAGS},
        envs={"memory_onednn_off": ONEDNN_OFF},
    )["memory_onednn_off"]
    single, mirrored = read_events(one / "train"), read_events(two / "train")
    reordered = read_events(other_order / "train")
    for tag in ("train/contrast_loss", "train/memory_contrast_acc", "train/memory_fill"):
        assert single.steps(tag) == mirrored.steps(tag) == list(range(1, REFERENCE_STEPS + 1))
    # Bound: 10x the relative round-off spread of the losses measured here (drift_tolerance);
    # targets or queue rows missing from another replica would move the loss by ~log(2).
    losses = single.values("train/contrast_loss")
    spread = relative_spread(reordered.values("train/contrast_loss"), losses)
    rtol = drift_tolerance(spread, REFERENCE_STEPS, 1.0)
    np.testing.assert_allclose(mirrored.values("train/contrast_loss"), losses, rtol=rtol)
    # The fill is logged before the step's enqueue: 0, 1/3, 2/3, then full.
    # Bound: one float32 division, relative eps/2 (below assert_allclose's default rtol 1e-7).
    np.testing.assert_allclose(single.values("train/memory_fill")[:4], [0, 1 / 3, 2 / 3, 1])
    queue_one, count_one = _queue(one / f"ckpt/ckpt-{REFERENCE_STEPS}")
    queue_two, count_two = _queue(two / f"ckpt/ckpt-{REFERENCE_STEPS}")
    queue_other, _ = _queue(other_order / f"ckpt/ckpt-{REFERENCE_STEPS}")
    assert count_one == count_two == 32 * REFERENCE_STEPS
    # Bound: float32 l2_normalize of a row, a sum of dim squares (reduction_bound(dim, 1)) and
    # a square root.
    dim = queue_one.shape[1]
    norm_tolerance = reduction_bound(dim, 1.0) + EPS32
    np.testing.assert_allclose(np.linalg.norm(queue_one, axis=1), 1.0, rtol=norm_tolerance)
    # Same rows in the same order: every unit row of one queue is where the other's is, within
    # 10x the spread of the oneDNN-off queue (rows of other images or of another order are
    # ~1 away).
    atol = drift_tolerance(float(np.max(np.abs(queue_other - queue_one))), REFERENCE_STEPS, 1.0)
    np.testing.assert_allclose(queue_two, queue_one, rtol=0, atol=atol)

    # At step 1 the memory network is the freshly copied online network and the queue is
    # empty: the loss is the run without memory's (bound: 10x the step-1 spread measured
    # above). Once the queue is in use, it is not: the losses differ by far more than rtol.
    plain = read_events(reference_run(tmp_path_factory) / "train").values("train/contrast_loss")
    with_memory = single.values("train/contrast_loss")
    step_one = drift_tolerance(
        relative_spread(reordered.values("train/contrast_loss")[:1], losses[:1]), 1, 1.0
    )
    np.testing.assert_allclose(with_memory[0], plain[0], rtol=step_one)
    assert all(abs(a - b) > 1e-2 for a, b in zip(with_memory[2:], plain[2:], strict=True))


@pytest.mark.long
@pytest.mark.slow
def test_resumed_run_continues_with_the_same_queue_and_losses(memory_runs, tmp_path):
    uninterrupted = memory_runs["memory"]
    model_dir = tmp_path / "resumed"
    shutil.copytree(uninterrupted / "ckpt", model_dir / "ckpt")
    for path in (model_dir / "ckpt").glob("ckpt-*"):
        if int(path.name.split(".")[0].split("-")[1]) > 6:
            path.unlink()
    (model_dir / "ckpt" / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-6"\nall_model_checkpoint_paths: "ckpt-6"\n'
    )
    resumed = run_binary(model_dir, *MEMORY_FLAGS)
    assert_succeeded(resumed)
    assert "resumed from" in resumed.output and "ckpt-6" in resumed.output

    queue_a, count_a = _queue(uninterrupted / f"ckpt/ckpt-{REFERENCE_STEPS}")
    queue_b, count_b = _queue(model_dir / f"ckpt/ckpt-{REFERENCE_STEPS}")
    assert count_a == count_b
    # Exact (tests/tolerances.py): a checkpoint holds the very float32 values, the pipeline
    # replays the same batches and --deterministic runs the same kernels on them.
    np.testing.assert_array_equal(queue_b, queue_a)
    first = read_events(uninterrupted / "train")
    second = read_events(model_dir / "train")
    assert second.steps("train/contrast_loss") == list(range(7, REFERENCE_STEPS + 1))
    np.testing.assert_array_equal(
        second.values("train/contrast_loss"), first.values("train/contrast_loss")[6:]
    )


@pytest.mark.long
@pytest.mark.slow
def test_memory_network_is_exported_as_the_hub_module(memory_runs, tmp_path):
    from tf_simclr.export_hub import export_checkpoint

    run = memory_runs["memory"]
    images = tf.random.stateless_uniform([4, 16, 16, 3], seed=[1, 2])
    phase_module = tf.saved_model.load(str(run / "hub" / str(REFERENCE_STEPS)))
    memory_export = export_checkpoint(
        str(run), export_dir=str(tmp_path / "memory"), memory_network=True
    )
    online_export = export_checkpoint(str(run), export_dir=str(tmp_path / "online"))

    def features(module) -> np.ndarray:
        return module(images, training=False)["final_avg_pool"].numpy()

    at_phase_end = features(phase_module)
    # Exact: the same float32 weights (the checkpoint's) through the same traced function.
    np.testing.assert_array_equal(features(tf.saved_model.load(memory_export)), at_phase_end)
    online = features(tf.saved_model.load(online_export))
    assert np.max(np.abs(online - at_phase_end)) > 1e-3  # another network: not round-off
    # Without --export_dir the module goes to MODEL_DIR/hub/<step>, the step read from the
    # training loop's checkpoint name (it has no step variable); the phase's own module is
    # there already, so replacing it is explicit.
    in_place = export_checkpoint(str(run), memory_network=True, overwrite=True)
    assert in_place == str(run / "hub" / str(REFERENCE_STEPS))
    np.testing.assert_array_equal(features(tf.saved_model.load(in_place)), at_phase_end)
