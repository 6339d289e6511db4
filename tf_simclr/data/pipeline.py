"""Input pipelines of the three SimCLRv2 phases and of evaluation (SimCLR appendix A, B.9).

Batches (images float32 NHWC in [0, 1], no mean/std normalisation; labels int32):

* ``phase="pretrain"``, training: ``{"view1", "view2": [b, S, S, 3], "label": [b]}`` -- two
  independently augmented views of every image (crop, flip, colour distortion, blur);
* ``phase="finetune"``, training: ``{"image", "label"}`` -- crop + flip;
* ``phase="distill"``, training: ``{"image", "label", "has_label": bool [b]}`` -- crop + flip;
  the input may be ``(image, label, has_label)`` triples (labeled and unlabeled examples in one
  stream, see :func:`mix_evenly`, :func:`combine_streams` and
  ``subsets.LabelSubset.with_label_mask``) or pairs (all labeled);
* ``training=False`` (any phase, e.g. ``phase="eval"``): ``{"image", "label"}`` with the
  evaluation crop, one pass over the data, the last partial batch kept.

Training streams are sharded per input pipeline, optionally cached, shuffled, repeated, augmented
and batched with a fixed per-replica batch, and prefetched. Small fixed-size images are batched
first and augmented a whole batch at a time; large or variable-size images are augmented one by
one before batching (see :mod:`.augment`). Every random draw is a stateless function of ``seed``
and the element's position in the stream, so ``deterministic=True`` reproduces a run exactly,
including a run resumed at ``start_step``.
"""

from __future__ import annotations

import logging

import tensorflow as tf

from tf_simclr.config import CIFAR_IMAGE_SIZE, AugmentConfig
from tf_simclr.data.augment import Augmenter, augments_per_batch, fold_seed

PHASES = ("pretrain", "finetune", "distill", "eval")
_CROP_EXAMPLE, _CROP_BATCH, _DISTORT_EXAMPLE, _DISTORT_BATCH = 0, 1, 2, 3  # seed streams
logger = logging.getLogger(__name__)


def default_shuffle_buffer(batch_size: int, image_size: int, num_examples: int) -> int:
    """The reference's buffer: 50 per-replica batches at <= 32 px, 10 above, at most the data."""
    multiplier = 50 if image_size <= CIFAR_IMAGE_SIZE else 10
    return max(1, min(batch_size * multiplier, num_examples))


def combine_streams(
    labeled: tf.data.Dataset,
    unlabeled: tf.data.Dataset,
    *,
    labeled_weight: float,
    seed: int = 0,
) -> tf.data.Dataset:
    """An endless ``(image, label, has_label)`` stream drawing from two ``(image, label)``
    datasets: ``labeled`` with probability ``labeled_weight``, else ``unlabeled`` (label -1).

    For distillation on unlabeled data from another source than the labeled examples
    (SimCLRv2 section 2, eq. 3 with ground-truth labels); pass the result with ``phase="distill"``.
    """
    if not 0.0 <= labeled_weight <= 1.0:
        raise ValueError(f"labeled_weight={labeled_weight} must be in [0, 1].")
    marked = labeled.map(lambda image, label: (image, tf.cast(label, tf.int32), True))
    hidden = unlabeled.map(lambda image, label: (image, tf.constant(-1, tf.int32), False))
    return tf.data.Dataset.sample_from_datasets(
        [marked.repeat(), hidden.repeat()],
        weights=[labeled_weight, 1.0 - labeled_weight],
        seed=seed,
    )


def mark_unlabeled(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``(image, label)`` pairs as ``(image, -1, False)`` triples: images without labels."""
    return dataset.map(lambda image, label: (image, tf.constant(-1, tf.int32), False))


def mix_evenly(
    labeled: tf.data.Dataset,
    num_labeled: int,
    unlabeled: tf.data.Dataset,
    num_unlabeled: int,
) -> tf.data.Dataset:
    """One pass over two finite ``(image, label)`` datasets of the given sizes as
    ``(image, label, has_label)`` triples, the labeled examples spread evenly among the unlabeled
    ones (whose labels become -1): element ``i`` of ``n`` is the next labeled one when
    ``floor((i + 1) * num_labeled / n)`` steps up. Finite and deterministic, so it can be cached,
    shuffled and replayed like one source; for distillation whose labels come from another
    source than its images (SimCLRv2 section 2, eq. 4).
    """
    if num_labeled < 1 or num_unlabeled < 1:
        raise ValueError(
            f"mix_evenly needs examples of both kinds, got {num_labeled} labeled "
            f"and {num_unlabeled} unlabeled."
        )
    total = num_labeled + num_unlabeled
    marked = labeled.map(lambda image, label: (image, tf.cast(label, tf.int32), True))

    def choice(position: tf.Tensor) -> tf.Tensor:
        return (position + 1) * num_labeled // total - position * num_labeled // total

    choices = tf.data.Dataset.range(total).map(choice)
    return tf.data.Dataset.choose_from_datasets([mark_unlabeled(unlabeled), marked], choices)


def _check_arguments(
    dataset: tf.data.Dataset, num_examples: int, phase: str, training: bool, cache: bool
) -> None:
    if phase not in PHASES:
        raise ValueError(f"phase={phase!r} must be one of {PHASES}.")
    if phase == "eval" and training:
        raise ValueError("phase='eval' is for training=False; pick the training phase instead.")
    if num_examples < 1:
        raise ValueError(f"num_examples={num_examples}: the dataset is empty.")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            f"dataset elements must be (image, label) or (image, label, has_label), got {spec}."
        )
    if spec[0].dtype != tf.uint8 or spec[0].shape.rank != 3:
        raise ValueError(f"images must be uint8 [H, W, C] (as load_source gives), got {spec[0]}.")
    infinite = dataset.cardinality() == tf.data.INFINITE_CARDINALITY
    if cache and bool(infinite):
        raise ValueError("cache=True needs a finite dataset; cache before combining streams.")


class _Batcher:
    """Augments examples (per example or per batch) and builds the phase's batch dict."""

    def __init__(self, augmenter: Augmenter, phase: str, training: bool, key: tf.Tensor) -> None:
        self.augmenter = augmenter
        self.pretrain = training and phase == "pretrain"
        self.distill = training and phase == "distill"
        self.training = training
        self.key = key

    def _seed(self, stream: int, index: tf.Tensor, view: int) -> tf.Tensor:
        return fold_seed(self.key, stream, index, view)

    def augment_example(self, index: tf.Tensor, element: tuple) -> tuple:
        """``(image, *rest)`` -> ``(views, *rest)``: crop (and distort) one example."""
        image, rest = element[0], element[1:]
        views = []
        for view in range(2 if self.pretrain else 1):
            cropped = self.augmenter.crop_example(
                image, self._seed(_CROP_EXAMPLE, index, view), self.training
            )
            if self.pretrain:
                cropped = self.augmenter.distort_example(
                    cropped, self._seed(_DISTORT_EXAMPLE, index, view)
                )
            views.append(cropped)
        return (tuple(views), *rest)

    def augment_batch(self, index: tf.Tensor, element: tuple) -> dict[str, tf.Tensor]:
        """A batch ``(images, *rest)`` -> the batch dict: crop (and distort) the whole batch."""
        images, rest = element[0], element[1:]
        views = []
        for view in range(2 if self.pretrain else 1):
            cropped = self.augmenter.crop_batch(
                images, self._seed(_CROP_BATCH, index, view), self.training
            )
            if self.pretrain:
                cropped = self.augmenter.distort(cropped, self._seed(_DISTORT_BATCH, index, view))
            views.append(cropped)
        return self.to_dict(tuple(views), *rest)

    def to_dict(self, *element: tf.Tensor) -> dict[str, tf.Tensor]:
        """``(views, label[, has_label])`` -> the phase's batch dict."""
        views, label = element[0], tf.cast(element[1], tf.int32)
        if self.pretrain:
            return {"view1": views[0], "view2": views[1], "label": label}
        batch = {"image": views[0], "label": label}
        if self.distill:
            has_label = element[2] if len(element) > 2 else tf.ones_like(label, dtype=tf.bool)
            batch["has_label"] = tf.cast(has_label, tf.bool)
        return batch


def build_dataset(
    dataset: tf.data.Dataset,
    num_examples: int,
    *,
    phase: str,
    global_batch_size: int,
    augment: AugmentConfig,
    training: bool,
    seed: int = 0,
    deterministic: bool = False,
    cache: bool = False,
    shuffle_buffer: int = 0,
    start_step: int = 0,
    input_context: tf.distribute.InputContext | None = None,
) -> tf.data.Dataset:
    """The batched stream of one phase from ``(image uint8, label[, has_label])`` elements.

    ``num_examples`` is the size of ``dataset`` (sizes the shuffle buffer). With an
    ``input_context`` the batch is the per-replica share of ``global_batch_size`` and the data is
    sharded over input pipelines. Training repeats forever and drops the last partial batch;
    ``training=False`` reads the data once and keeps it. ``start_step`` positions a resumed run:
    with ``deterministic`` the stream is replayed from the start and its first ``start_step``
    batches skipped before augmentation (cheap: no augmentation runs for them), so a resumed run
    sees exactly the batches an uninterrupted one would; otherwise a fresh, equally reproducible
    random stream starts there. ``deterministic`` also fixes the element order.
    """
    _check_arguments(dataset, num_examples, phase, training, cache)
    batch_size = global_batch_size
    pipeline_id = 0
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        pipeline_id = input_context.input_pipeline_id
        if input_context.num_input_pipelines > 1:
            dataset = dataset.shard(input_context.num_input_pipelines, pipeline_id)
    if batch_size < 1:
        raise ValueError(f"global_batch_size={global_batch_size} must be >= 1.")
    replay = deterministic and training
    stream_step = 0 if replay else start_step
    batcher = _Batcher(
        Augmenter(augment),
        phase,
        training,
        fold_seed(tf.constant([seed, stream_step], tf.int64), pipeline_id),
    )
    if cache:
        dataset = dataset.cache()
    if training:
        buffer = shuffle_buffer or default_shuffle_buffer(
            batch_size, augment.image_size, num_examples
        )
        shuffle_seed = (seed * 1_000_003 + stream_step * 7_919 + pipeline_id) % 2**31
        dataset = dataset.shuffle(buffer, seed=shuffle_seed).repeat()
    skipped_batches = start_step if replay else 0
    if skipped_batches:
        dataset = dataset.skip(skipped_batches * batch_size)
    parallel = tf.data.AUTOTUNE
    if augments_per_batch(dataset.element_spec[0].shape, augment.image_size):
        dataset = dataset.batch(batch_size, drop_remainder=training)
        dataset = dataset.enumerate(start=skipped_batches).map(
            tf.autograph.experimental.do_not_convert(batcher.augment_batch),
            num_parallel_calls=parallel,
        )
    else:
        dataset = dataset.enumerate(start=skipped_batches * batch_size).map(
            tf.autograph.experimental.do_not_convert(batcher.augment_example),
            num_parallel_calls=parallel,
        )
        dataset = dataset.batch(batch_size, drop_remainder=training)
        dataset = dataset.map(
            tf.autograph.experimental.do_not_convert(batcher.to_dict), num_parallel_calls=parallel
        )
    options = tf.data.Options()
    options.deterministic = deterministic or not training
    return dataset.with_options(options).prefetch(tf.data.AUTOTUNE)


def build_distributed_dataset(
    strategy: tf.distribute.Strategy,
    dataset: tf.data.Dataset,
    num_examples: int,
    *,
    phase: str,
    global_batch_size: int,
    augment: AugmentConfig,
    training: bool,
    seed: int = 0,
    deterministic: bool = False,
    cache: bool = False,
    shuffle_buffer: int = 0,
    start_step: int = 0,
) -> tf.distribute.DistributedDataset:
    """:func:`build_dataset` per input pipeline through
    ``strategy.distribute_datasets_from_function``: each replica gets ``global_batch_size /
    num_replicas`` examples per step (``global_batch_size`` must divide evenly).

    For training, each input pipeline (one per worker) builds its worker's share of the global
    batch and splits it into consecutive per-replica batches, so the examples and their
    augmentations depend on the number of workers only: one device and two mirrored replicas
    see the same data.

    Training on a single example runs, with a warning: every batch is copies of that image.
    """
    replicas = strategy.num_replicas_in_sync
    if training and num_examples == 1:
        logger.warning(
            "the training data holds a single image: training will see only copies of it "
            "(differently augmented), from which the model learns little; add images to the "
            "dataset (see the skipped files above, if any) or widen --train_split."
        )
    if global_batch_size % replicas:
        raise ValueError(
            f"global_batch_size={global_batch_size} does not divide over {replicas} replicas; "
            f"use a multiple of {replicas}."
        )

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        context = input_context
        if training:
            workers = input_context.num_input_pipelines
            context = tf.distribute.InputContext(
                num_input_pipelines=workers,
                input_pipeline_id=input_context.input_pipeline_id,
                num_replicas_in_sync=workers,
            )
        stream = build_dataset(
            dataset,
            num_examples,
            phase=phase,
            global_batch_size=global_batch_size,
            augment=augment,
            training=training,
            seed=seed,
            deterministic=deterministic,
            cache=cache,
            shuffle_buffer=shuffle_buffer,
            start_step=start_step,
            input_context=context,
        )
        per_replica = input_context.get_per_replica_batch_size(global_batch_size)
        if training and per_replica != global_batch_size // input_context.num_input_pipelines:
            stream = stream.rebatch(per_replica, drop_remainder=True)
        return stream

    return strategy.distribute_datasets_from_function(dataset_fn)
