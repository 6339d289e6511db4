"""Evaluation: top-1 / top-5 over a whole split, and the on-line weighted kNN monitor.

Label accuracy is the metric of SimCLRv2 Tables 2-4. The kNN monitor (Wu et al. 2018, weighted
vote with ``exp(cos / t)``, k = 200, t = 0.1) tracks representation quality during pretraining
without labels in the loss: ``final_avg_pool`` features of a bank of training images vote for
the classes of evaluation images.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras


def evaluate_classifier(
    strategy: tf.distribute.Strategy,
    model: keras.Model,
    distributed_dataset,
    max_steps: int = 0,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean cross-entropy of ``logits_sup`` over the dataset.

    Iterates the whole (finite) dataset, remainder included, unless ``max_steps > 0``.
    """
    with strategy.scope():
        top1 = keras.metrics.SparseCategoricalAccuracy()
        top5 = keras.metrics.SparseTopKCategoricalAccuracy(k=5)
        loss = keras.metrics.Mean()
        count = keras.metrics.Sum()

    def replica_step(batch: dict) -> None:
        logits = model(batch["image"], training=False)["logits_sup"]
        labels = batch["label"]
        top1.update_state(labels, logits)
        top5.update_state(labels, logits)
        per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
            tf.cast(labels, tf.int32), logits
        )
        loss.update_state(per_example)
        count.update_state(tf.cast(tf.size(labels), tf.float32))

    @tf.function(autograph=False)
    def step(batch: dict) -> None:
        strategy.run(replica_step, args=(batch,))

    for index, batch in enumerate(distributed_dataset):
        if max_steps and index >= max_steps:
            break
        step(batch)
    return {
        "label_top_1_accuracy": float(top1.result()),
        "label_top_5_accuracy": float(top5.result()),
        "supervised_loss": float(loss.result()),
        "num_examples": int(count.result()),
    }


def feature_function(
    model: keras.Model, endpoint: str = "final_avg_pool", normalize: bool = True
) -> Callable[[tf.Tensor], tf.Tensor]:
    """``images -> endpoint features`` (L2-normalised unless ``normalize=False``) in one
    ``tf.function``. Make it once per model and reuse it: every new function traces the model
    again (the kNN monitor at every checkpoint made TensorFlow warn about retracing)."""

    @tf.function(reduce_retracing=True, autograph=False)
    def features(images: tf.Tensor) -> tf.Tensor:
        values = model(images, training=False)[endpoint]
        return tf.math.l2_normalize(values, axis=-1) if normalize else values

    return features


def features_of(
    features: Callable[[tf.Tensor], tf.Tensor], dataset: tf.data.Dataset
) -> tuple[tf.Tensor, tf.Tensor]:
    """``features`` (a :func:`feature_function`) and labels of a batched
    ``{"image", "label"}`` set."""
    all_features, all_labels = [], []
    for batch in dataset:
        all_features.append(features(batch["image"]))
        all_labels.append(tf.cast(batch["label"], tf.int32))
    return tf.concat(all_features, axis=0), tf.concat(all_labels, axis=0)


def extract_features(
    model: keras.Model,
    dataset: tf.data.Dataset,
    endpoint: str = "final_avg_pool",
    normalize: bool = True,
) -> tuple[tf.Tensor, tf.Tensor]:
    """``endpoint`` features (L2-normalised unless ``normalize=False``) and labels of a batched
    ``{"image", "label"}`` set."""
    return features_of(feature_function(model, endpoint, normalize), dataset)


def weighted_knn_accuracy(
    bank_features: tf.Tensor,
    bank_labels: tf.Tensor,
    query_features: tf.Tensor,
    query_labels: tf.Tensor,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy of the weighted kNN vote: class score = sum of ``exp(cos / t)`` over the
    ``k`` nearest bank features (cosine similarity of L2-normalised features)."""
    k = min(k, int(bank_features.shape[0]))
    correct = 0
    for start in range(0, int(query_features.shape[0]), chunk):
        queries = query_features[start : start + chunk]
        similarity = tf.matmul(queries, bank_features, transpose_b=True)
        top_similarity, top_index = tf.math.top_k(similarity, k=k)
        votes = tf.one_hot(tf.gather(bank_labels, top_index), num_classes)
        weights = tf.exp(top_similarity / temperature)[..., None]
        predicted = tf.argmax(tf.reduce_sum(votes * weights, axis=1), axis=-1, output_type=tf.int32)
        correct += int(
            tf.reduce_sum(tf.cast(predicted == query_labels[start : start + chunk], tf.int32))
        )
    return correct / max(int(query_features.shape[0]), 1)
