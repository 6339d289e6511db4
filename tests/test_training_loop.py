"""Unit tests of the training loop, evaluation and the phases' losses, in process.

The loop is driven with a linear regression whose SGD trajectory NumPy computes exactly, so
checkpoint boundaries, resumption, the non-finite stop, the non-chief worker's scratch folder and
the per-replica loss scaling all have a closed-form answer.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras as keras
from binary_runs import read_events
from regression_loop import (
    BATCH,
    DIM,
    LEARNING_RATE,
    ckpt_steps,
    regression_batch,
    regression_setup,
    settings,
    sgd_reference,
)

from tf_simclr import checkpoints
from tf_simclr.config import AugmentConfig, LossConfig, ModelConfig, OptimConfig
from tf_simclr.data import build_dataset, build_distributed_dataset, load_source
from tf_simclr.models import SimCLRModel
from tf_simclr.objectives import contrastive_loss, weight_decay_loss
from tf_simclr.training import evaluate, loop, phases

# --------------------------------------------------------------------------- weighted kNN


def numpy_weighted_knn(bank, bank_labels, queries, query_labels, classes, k, temperature):
    """Wu et al. 2018's weighted vote, one query at a time."""
    k = min(k, len(bank))
    correct = 0
    for query, label in zip(queries, query_labels, strict=True):
        similarity = bank @ query
        nearest = np.argsort(-similarity, kind="stable")[:k]
        scores = np.zeros(classes)
        np.add.at(scores, bank_labels[nearest], np.exp(similarity[nearest] / temperature))
        correct += int(np.argmax(scores) == label)
    return correct / len(queries)


def unit_rows(rng, count, dim):
    rows = rng.normal(size=(count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.mark.parametrize(("k", "temperature", "chunk"), [(5, 0.1, 7), (200, 0.5, 1024), (1, 1, 3)])
def test_weighted_knn_accuracy_matches_numpy(k, temperature, chunk):
    rng = np.random.default_rng(k)
    classes = 5
    bank, queries = unit_rows(rng, 60, 8), unit_rows(rng, 23, 8)
    bank_labels = rng.integers(0, classes, 60).astype(np.int32)
    # Queries near a bank row of their class, plus noise: neither trivial nor hopeless.
    anchors = rng.integers(0, 60, 23)
    queries = queries * 0.7 + bank[anchors]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    query_labels = np.where(rng.random(23) < 0.8, bank_labels[anchors], 0).astype(np.int32)
    expected = numpy_weighted_knn(bank, bank_labels, queries, query_labels, classes, k, temperature)
    actual = evaluate.weighted_knn_accuracy(
        tf.constant(bank),
        tf.constant(bank_labels),
        tf.constant(queries),
        tf.constant(query_labels),
        classes,
        k=k,
        temperature=temperature,
        chunk=chunk,
    )
    assert actual == pytest.approx(expected)
    assert 0.0 < actual < 1.0


def test_weighted_knn_votes_are_weighted_by_similarity():
    # Two class-0 neighbours at cos 0.5 against one class-1 neighbour at cos 0.99: a majority
    # vote says 0, the exp(cos / t) vote with t = 0.1 says 1 (e^9.9 > 2 e^5).
    angle = np.arccos([0.5, 0.5, 0.99, -1.0])
    bank = np.stack([np.cos(angle), np.sin(angle)], axis=1).astype(np.float32)
    bank_labels = np.array([0, 0, 1, 0], np.int32)
    query = np.array([[1.0, 0.0]], np.float32)
    args = (tf.constant(bank), tf.constant(bank_labels), tf.constant(query))
    assert evaluate.weighted_knn_accuracy(*args, tf.constant([1]), 2, k=3, temperature=0.1) == 1
    # At a high temperature the weights flatten and the two class-0 neighbours win.
    assert evaluate.weighted_knn_accuracy(*args, tf.constant([0]), 2, k=3, temperature=100) == 1


# ------------------------------------------------------------------------------ evaluation

SYNTHETIC = "synthetic:size=16,count=24,classes=6,test_count=13"


class MeanColourClassifier:
    """A stand-in model: ``logits_sup`` = fixed linear map of each image's mean colour."""

    def __init__(self) -> None:
        self.weights = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32) * 20

    def __call__(self, images, training=False):
        del training
        return {"logits_sup": tf.reduce_mean(images, axis=[1, 2]) @ self.weights}


def numpy_top_k(logits, labels, k):
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean([label in row for row, label in zip(top, labels, strict=True)]))


@pytest.fixture(scope="module")
def eval_split():
    source, info = load_source(SYNTHETIC, split="test")
    assert info.num_examples == 13
    return source, info.num_examples


def test_evaluate_classifier_counts_every_example_on_two_replicas(two_replica_strategy, eval_split):
    source, count = eval_split
    augment = AugmentConfig(image_size=16)
    model = MeanColourClassifier()
    # 13 examples in global batches of 4: three full steps and a remainder of one example,
    # which leaves the second replica an empty batch.
    dataset = build_distributed_dataset(
        two_replica_strategy,
        source,
        count,
        phase="eval",
        global_batch_size=4,
        augment=augment,
        training=False,
    )
    results = evaluate.evaluate_classifier(two_replica_strategy, model, dataset)
    batches = list(
        build_dataset(
            source, count, phase="eval", global_batch_size=4, augment=augment, training=False
        )
    )
    images = np.concatenate([batch["image"].numpy() for batch in batches])
    labels = np.concatenate([batch["label"].numpy() for batch in batches])
    logits = model(tf.constant(images))["logits_sup"].numpy()
    assert results["num_examples"] == count == len(labels)
    assert results["label_top_1_accuracy"] == pytest.approx(numpy_top_k(logits, labels, 1))
    assert results["label_top_5_accuracy"] == pytest.approx(numpy_top_k(logits, labels, 5))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -np.mean(log_probs[np.arange(len(labels)), labels])
    assert results["supervised_loss"] == pytest.approx(expected_loss, rel=1e-5)
    assert 0 < results["label_top_1_accuracy"] < results["label_top_5_accuracy"] < 1

    # eval_steps > 0 stops after that many global batches.
    dataset = build_distributed_dataset(
        two_replica_strategy,
        source,
        count,
        phase="eval",
        global_batch_size=4,
        augment=augment,
        training=False,
    )
    assert evaluate.evaluate_classifier(two_replica_strategy, model, dataset, 2)[
        "num_examples"
    ] == (8)


def test_extract_features_are_unit_length_and_cover_the_split(eval_split):
    source, count = eval_split
    model = SimCLRModel(tiny_model_config(num_classes=0)).build_for_size(16)
    dataset = build_dataset(
        source,
        count,
        phase="eval",
        global_batch_size=5,
        augment=AugmentConfig(image_size=16),
        training=False,
    )
    features, labels = evaluate.extract_features(model, dataset)
    assert features.shape == (count, model.config.encoder_output_dim)
    np.testing.assert_allclose(tf.norm(features, axis=1).numpy(), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), [int(label) for _, label in source])


# ------------------------------------------------------------------------------ the loop


def test_loop_trains_checkpoints_logs_and_resumes(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    seen = []
    functions.on_checkpoint = lambda step: seen.append(step) or {"eval/probe": float(step)}
    scalars = loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 5))
    assert calls == [0]
    assert int(optimizer.iterations) == 5
    # The monitor sees the initial model (step 0); loops stop at checkpoint boundaries (2, 4)
    # and at the end (5).
    assert seen == [0, 2, 4, 5]
    assert ckpt_steps(tmp_path) == [2, 4, 5]
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(5), rtol=1e-5)
    assert set(scalars) == {"loss", "images_per_second", "learning_rate", "eval/probe"}
    events = read_events(tmp_path / "train")
    assert events.steps("train/loss") == [2, 4, 5]
    assert events.steps("eval/probe") == [0, 2, 4, 5]
    assert events.values("learning_rate") == pytest.approx([LEARNING_RATE] * 3)
    assert "train/learning_rate" not in events.scalars

    # A new process (fresh model and optimizer) continues from step 5 to 7; a resumed run does
    # not measure step 0 again.
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    seen.clear()
    functions.on_checkpoint = lambda step: seen.append(step) or {"eval/probe": float(step)}
    loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 7))
    assert seen == [6, 7]
    assert calls == [5]
    assert ckpt_steps(tmp_path) == [2, 4, 5, 6, 7]
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(7), rtol=1e-5)


def test_train_function_traces_the_step_once_and_averages_its_scalars():
    strategy = tf.distribute.get_strategy()
    _, optimizer, functions, factory, _ = regression_setup(strategy)
    traces = []
    compute = functions.compute
    functions.compute = lambda batch: traces.append(1) or compute(batch)
    train_steps = loop.TrainFunction(strategy, optimizer, functions)
    iterator = factory(0)
    weights = np.zeros((DIM, 1), np.float64)
    for steps in (3, 2):  # a new step count is a new tensor value, not a new trace
        losses = []
        for _ in range(steps):
            x, y = regression_batch(int(optimizer.iterations) + len(losses) + 1)
            losses.append(np.mean((x @ weights - y) ** 2))
            weights -= LEARNING_RATE * 2.0 / BATCH * x.T @ (x @ weights - y)
        scalars = train_steps(iterator, steps)
        assert scalars == {"loss": pytest.approx(np.mean(losses), rel=1e-5)}
    assert len(traces) == 1


def test_loop_stops_on_a_non_finite_loss_without_saving(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy, poison_step=3)
    with pytest.raises(loop.NonFiniteLossError, match="step 3"):
        loop.train(
            strategy, model, optimizer, functions, factory, settings(tmp_path, 6, steps_per_loop=1)
        )
    assert ckpt_steps(tmp_path) == [2]
    assert read_events(tmp_path / "train").steps("train/loss") == [1, 2]
    restored = keras.Sequential([keras.layers.Dense(1, use_bias=False)])
    restored.build((None, DIM))
    tf.train.Checkpoint(model=restored).restore(
        tf.train.latest_checkpoint(str(tmp_path / "ckpt"))
    ).expect_partial()
    np.testing.assert_allclose(restored.get_weights()[0], sgd_reference(2), rtol=1e-5)


@pytest.mark.parametrize("holder", ["model", "checkpoint_object"])
def test_loop_never_saves_non_finite_weights(tmp_path, holder):
    # The update of step 4 (a checkpoint boundary) makes one of the 3 float variables (kernel,
    # checkpointed counter, SGD learning rate) infinite while every loss so far was finite:
    # step 4 must not be saved, and the error names the last finite checkpoint.
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    extra = tf.Module()
    extra.counter = tf.Variable(0.0)
    functions.checkpoint_objects["extra"] = extra
    target = model.trainable_variables[0] if holder == "model" else extra.counter

    def blow_up_at_step_4(batch):
        target.assign_add(tf.where(optimizer.iterations == 4, np.inf, 0.0) * tf.ones_like(target))

    functions.after_step = blow_up_at_step_4
    with pytest.raises(loop.NonFiniteLossError) as stopped:
        loop.train(
            strategy, model, optimizer, functions, factory, settings(tmp_path, 6, steps_per_loop=1)
        )
    assert "non-finite weights after step 4: 1 of 3 variables" in str(stopped.value)
    assert target.name in str(stopped.value)
    assert f"{tmp_path / 'ckpt' / 'ckpt-2'}, is the last finite one" in str(stopped.value)
    assert ckpt_steps(tmp_path) == [2]
    assert checkpoints.newest_usable_checkpoint(str(tmp_path)).endswith("ckpt-2")


def test_two_replicas_follow_the_single_device_trajectory(two_replica_strategy, tmp_path):
    # Each replica's mean loss is divided by the replica count and the gradients are summed:
    # the update is the gradient of the global-batch mean, as on one device.
    model, optimizer, functions, factory, _ = regression_setup(two_replica_strategy)
    loop.train(two_replica_strategy, model, optimizer, functions, factory, settings(tmp_path, 4))
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(4), rtol=1e-5)


class WorkerView:
    """A strategy seen from worker ``task_id`` of a two-worker cluster (for is_chief)."""

    def __init__(self, strategy: tf.distribute.Strategy, task_id: int) -> None:
        self._strategy = strategy
        self.cluster_resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": ["localhost:1", "localhost:2"]}),
            task_type="worker",
            task_id=task_id,
        )

    def __getattr__(self, name):
        return getattr(self._strategy, name)


def test_non_chief_resumes_from_the_chief_and_leaves_no_trace(tmp_path):
    strategy = tf.distribute.get_strategy()
    model, optimizer, functions, factory, _ = regression_setup(strategy)
    loop.train(strategy, model, optimizer, functions, factory, settings(tmp_path, 2))
    assert ckpt_steps(tmp_path) == [2]
    events_before = sorted(os.listdir(tmp_path / "train"))

    worker = WorkerView(strategy, task_id=1)
    model, optimizer, functions, factory, calls = regression_setup(strategy)
    loop.train(worker, model, optimizer, functions, factory, settings(tmp_path, 4))
    assert calls == [2], "the non-chief did not resume from the chief's checkpoint"
    np.testing.assert_allclose(model.get_weights()[0], sgd_reference(4), rtol=1e-5)
    assert ckpt_steps(tmp_path) == [2]
    assert sorted(os.listdir(tmp_path / "train")) == events_before
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "train"]  # scratch folder deleted


def test_checkpoint_manager_puts_non_chief_checkpoints_in_a_scratch_folder(tmp_path):
    strategy = tf.distribute.get_strategy()
    checkpoint = tf.train.Checkpoint(step=tf.Variable(1))
    chief = loop.checkpoint_manager(checkpoint, str(tmp_path), WorkerView(strategy, 0), 1)
    other = loop.checkpoint_manager(checkpoint, str(tmp_path), WorkerView(strategy, 1), 1)
    assert chief.directory == str(tmp_path / "ckpt")
    assert other.directory == str(tmp_path / ".worker_scratch_1" / "ckpt")


# ------------------------------------------------------------------------------ the phases


def tiny_model_config(**overrides) -> ModelConfig:
    values = dict(
        resnet_depth=18,
        width_multiplier=0.125,
        cifar_stem=True,
        num_proj_layers=2,
        proj_out_dim=16,
        num_classes=4,
    )
    values.update(overrides)
    return ModelConfig(**values)


def image_batch(count: int = 6, seed: int = 0) -> dict[str, tf.Tensor]:
    rng = np.random.default_rng(seed)
    return {
        "image": tf.constant(rng.random((count, 16, 16, 3)), tf.float32),
        "label": tf.constant(rng.integers(0, 4, count), tf.int32),
    }


@pytest.mark.parametrize("optimizer", ["lars", "momentum"])
def test_finetune_loss_and_weight_decay(optimizer):
    keras.utils.set_random_seed(1)
    model = SimCLRModel(tiny_model_config(ft_proj_selector=1)).build_for_size(16)
    optim = OptimConfig(optimizer=optimizer, weight_decay=1e-3)
    batch = image_batch()
    total, scalars = phases.finetune_compute(model, LossConfig(), optim)(batch)
    logits = model(batch["image"], training=True)["logits_sup"]
    expected = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(batch["label"], logits)
    )
    decay = weight_decay_loss(model.trainable_variables, 1e-3, model.excluded_variables())
    assert float(scalars["supervised_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(scalars["weight_decay"]) == pytest.approx(float(decay), rel=1e-5)
    assert float(decay) > 0
    # LARS decays inside its update; the other optimizers get the L2 term in the loss.
    added = 0.0 if optimizer == "lars" else float(decay)
    assert float(total) == pytest.approx(float(expected) + added, rel=1e-5)
    assert float(scalars["total_loss"]) == pytest.approx(float(total))


def test_distill_mixes_teacher_and_labels_and_never_trains_the_teacher():
    keras.utils.set_random_seed(2)
    student = SimCLRModel(tiny_model_config()).build_for_size(16)
    teacher = SimCLRModel(tiny_model_config(width_multiplier=0.25)).build_for_size(16)
    teacher.trainable = False
    batch = image_batch(count=8, seed=3)
    batch["has_label"] = tf.constant([True, False, True, False, False, False, True, False])
    batch["label"] = tf.where(batch["has_label"], batch["label"], -1)
    loss = LossConfig(distill_temperature=2.0, distill_alpha=0.25)
    compute = phases.distill_compute(student, teacher, loss, OptimConfig(optimizer="lars"))
    with tf.GradientTape(persistent=True) as tape:
        total, scalars = compute(batch)
    teacher_logits = teacher(batch["image"], training=False)["logits_sup"].numpy()
    logits = student(batch["image"], training=True)["logits_sup"].numpy()

    def log_softmax(values):
        shifted = values - values.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    targets = np.exp(log_softmax(teacher_logits / 2.0))
    distill = -np.mean(np.sum(targets * log_softmax(logits / 2.0), axis=1))
    mask = batch["has_label"].numpy()
    labels = np.maximum(batch["label"].numpy(), 0)
    per_example = -log_softmax(logits)[np.arange(8), labels]
    supervised = np.sum(per_example * mask) / 8  # unlabeled examples count in the mean as 0
    assert float(scalars["distill_loss"]) == pytest.approx(distill, rel=1e-4)
    assert float(scalars["supervised_loss"]) == pytest.approx(supervised, rel=1e-4)
    assert float(total) == pytest.approx(0.25 * distill + 0.75 * supervised, rel=1e-4)
    agreement = np.mean(np.argmax(logits, 1) == np.argmax(teacher_logits, 1))
    assert float(scalars["teacher_agreement"]) == pytest.approx(agreement)
    assert all(grad is None for grad in tape.gradient(total, teacher.variables))
    trained = student.encoder.trainable_variables + student.supervised_head.trainable_variables
    assert all(grad is not None for grad in tape.gradient(total, trained))


def test_pretrain_linear_probe_does_not_train_the_encoder():
    keras.utils.set_random_seed(3)
    config = tiny_model_config(supervised_head_stop_gradient=True)
    model = SimCLRModel(config).build_for_size(16)
    images = image_batch(count=4, seed=4)
    batch = {
        "view1": images["image"],
        "view2": tf.image.flip_left_right(images["image"]),
        "label": images["label"],
    }
    compute = phases.pretrain_compute(
        model, None, LossConfig(temperature=0.2), OptimConfig(), linear_eval=True
    )
    with tf.GradientTape(persistent=True) as tape:
        total, scalars = compute(batch)
    outputs = model(tf.concat([batch["view1"], batch["view2"]], 0), training=True)
    expected, _, _ = contrastive_loss(outputs["proj_head_output"], temperature=0.2)
    assert float(scalars["contrast_loss"]) == pytest.approx(float(expected), rel=1e-5)
    assert float(total) == pytest.approx(
        float(scalars["contrast_loss"]) + float(scalars["supervised_loss"]), rel=1e-5
    )
    predicted = np.argmax(outputs["logits_sup"].numpy(), axis=1)
    labels = np.concatenate([batch["label"].numpy()] * 2)
    assert float(scalars["supervised_acc"]) == pytest.approx(np.mean(predicted == labels))
    probe_to_encoder = tape.gradient(scalars["supervised_loss"], model.encoder.trainable_variables)
    assert all(grad is None for grad in probe_to_encoder)
    probe_to_head = tape.gradient(
        scalars["supervised_loss"], model.supervised_head.trainable_variables
    )
    assert all(grad is not None for grad in probe_to_head)
