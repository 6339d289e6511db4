"""Unit tests of evaluation (tf_simclr.training.evaluate), in process: the weighted kNN
monitor against a NumPy vote, classifier evaluation over two replicas, feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from model_fixtures import tiny_model_config
from tolerances import reduction_bound

from tf_simclr.config import AugmentConfig
from tf_simclr.data import build_dataset, build_distributed_dataset, load_source
from tf_simclr.models import SimCLRModel
from tf_simclr.training import evaluate

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
    # Exact in effect: a count of correct queries over 23; the class votes (sums of k weights
    # exp(cosine / temperature)) are far from ties next to their float32 round-off.
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
    # Exact in effect: counts over the split, from the same float32 logits up to round-off far
    # below the gaps between them.
    assert results["label_top_1_accuracy"] == pytest.approx(numpy_top_k(logits, labels, 1))
    assert results["label_top_5_accuracy"] == pytest.approx(numpy_top_k(logits, labels, 5))
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    expected_loss = -np.mean(log_probs[np.arange(len(labels)), labels])
    # Bound: the logits of the evaluation's graph vs eager ones (a forward pass of the tiny
    # ResNet-18, a few float32 roundings of each activation apart) through a float32 vs
    # float64 log-softmax: a cross-entropy moves by at most twice its logits' error; rel 1e-5.
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
    # Bound: float32 l2_normalize, then the norm, of rows of dim terms: two sums of dim squares
    # and a few more roundings, reduction_bound(2 * dim + 4, 1).
    rtol = reduction_bound(2 * features.shape[1] + 4, 1.0)
    np.testing.assert_allclose(tf.norm(features, axis=1).numpy(), 1.0, rtol=rtol)
    np.testing.assert_array_equal(labels.numpy(), [int(label) for _, label in source])
