"""Embeddings of every image of a source, with their metadata and a TensorBoard projector
(issue 29; the binary is ``tf-simclr-embed``, :mod:`tf_simclr.embed_main`).

:func:`embed` reads a model the way every binary does, through :mod:`tf_simclr.checkpoints`
(a model_dir, a checkpoint prefix, an exported TF-Hub module or a checkpoint of the reference
implementation), reads the images of any ``--dataset`` source in the source's order, prepares
them as evaluation does (:func:`tf_simclr.data.build_dataset` with ``training=False``: the
whole image resized to ``image_size``, or above 32 px a centre crop of 87.5% of the shorter side)
and writes one row per image of the chosen endpoint (flattened when it is a feature map), as
:mod:`tf_simclr.embed_files` describes.

Everything that can be checked without running the model is checked before anything is written
(:func:`plan`): the output directory, the checkpoint, the endpoint, the image size, the source.
Files of a ``folder:`` source that cannot be read, whose header announces more than
``max_image_megapixels`` or whose names are not UTF-8 are skipped and counted (``skipped`` in
``embed.json`` and the log), as in training.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from tf_simclr.config import HELP, ModelConfig, setting
from tf_simclr.embed_files import MAX_PROJECTOR_IMAGES, EmbeddingFiles, check_output_dir

if TYPE_CHECKING:  # TensorFlow is imported by the functions that need it
    from tf_simclr.data import Source, SourceInfo
    from tf_simclr.models.simclr import SimCLRModel

logger = logging.getLogger("tf_simclr")

DEFAULT_ENDPOINT = "final_avg_pool"
MIN_IMAGE_SIZE = 8  # as AugmentConfig


@dataclasses.dataclass(frozen=True)
class EmbedConfig:
    """What to embed, with which model, and where the files go (``tf-simclr-embed``'s flags)."""

    checkpoint: str = setting(
        "",
        "The model: a model_dir, its ckpt/ directory, a checkpoint prefix, an exported TF-Hub "
        "module or a checkpoint of the reference implementation.",
    )
    endpoint: str = setting(
        DEFAULT_ENDPOINT, "The model output to embed: an endpoint (feature maps are flattened)."
    )
    image_size: int | None = setting(
        None, "Side of the network input; default: the one the source model trained at."
    )
    dataset: str = setting(
        "", "The images: fashion_mnist, folder:PATH, tfds:NAME or synthetic[:options]."
    )
    split: str = setting("train", "The split to embed, e.g. test or train[:10%].")
    data_dir: str | None = setting(None, "Where fashion_mnist or tfds: data lives.")
    batch_size: int = setting(256, "Images per forward pass.")
    output_dir: str = setting("", "Where to write the embeddings (new or empty).")
    overwrite: bool = setting(False, "Replace a previous embedding in --output_dir.")
    projector_max_images: int = setting(
        10_000, "Images in the projector, spread evenly over the source (all in the .npy)."
    )
    thumbnail_size: int = setting(
        32, "Side of the projector's thumbnails (at most the image size; less for big sprites)."
    )
    log_every_seconds: float = setting(10.0, "Seconds between progress lines (0: every batch).")
    max_image_megapixels: float = setting(
        50.0, "Skip (and count) images whose header announces more megapixels."
    )

    def __post_init__(self) -> None:
        for name in ("checkpoint", "dataset", "output_dir"):
            if not getattr(self, name):
                raise ValueError(f"--{name} is required: {_HELP[name]}")
        checks = (
            (self.batch_size >= 1, f"batch_size={self.batch_size} must be >= 1."),
            (
                self.image_size is None or self.image_size >= MIN_IMAGE_SIZE,
                f"image_size={self.image_size} must be >= {MIN_IMAGE_SIZE}.",
            ),
            (
                1 <= self.projector_max_images <= MAX_PROJECTOR_IMAGES,
                f"projector_max_images={self.projector_max_images} must be in "
                f"[1, {MAX_PROJECTOR_IMAGES}].",
            ),
            (self.thumbnail_size >= 1, f"thumbnail_size={self.thumbnail_size} must be >= 1."),
            (
                self.log_every_seconds >= 0,
                f"log_every_seconds={self.log_every_seconds} must be >= 0.",
            ),
            (
                self.max_image_megapixels > 0,
                f"max_image_megapixels={self.max_image_megapixels} must be > 0.",
            ),
        )
        for condition, message in checks:
            if not condition:
                raise ValueError(message)


_HELP = {field.name: field.metadata[HELP] for field in dataclasses.fields(EmbedConfig)}


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A saved model as :mod:`tf_simclr.checkpoints` reads it: its architecture (plain batch
    norm, float32), the parts it holds and the image size its run trained at (None when no
    ``config.json`` records it)."""

    path: str
    config: ModelConfig
    parts: tuple[str, ...]
    image_size: int | None

    @property
    def endpoints(self) -> tuple[str, ...]:
        """Every endpoint the model computes from its parts."""
        from tf_simclr.hub import endpoint_names

        return endpoint_names(self.config, self.parts)


def recorded_image_size(model_dir: str) -> int | None:
    """``augment.image_size`` of ``model_dir/config.json`` (the run's input side), if any."""
    import tensorflow as tf

    from tf_simclr.checkpoints import CONFIG_FILENAME

    path = os.path.join(model_dir, CONFIG_FILENAME)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as handle:
        size = json.load(handle).get("augment", {}).get("image_size")
    return int(size) if size else None


def read_model_source(path: str) -> ModelSource:
    """What the saved model at ``path`` is (no weights read). A module exported into a run
    (``MODEL_DIR/hub/<step>``) and a checkpoint of a run take the image size from the run's
    ``config.json``. Raises ``FileNotFoundError`` when ``path`` holds no model."""
    import tensorflow as tf

    from tf_simclr import checkpoints, hub

    if not tf.io.gfile.exists(path) and not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(
            f"--checkpoint={path} does not exist; pass a model_dir, a checkpoint prefix, an "
            "exported TF-Hub module (MODEL_DIR/hub/<step>) or a reference checkpoint."
        )
    config = hub.export_config(checkpoints.load_model_config(path))
    if checkpoints.is_reference_checkpoint(path):
        return ModelSource(path, config, hub.module_parts(config, True, True), None)
    if checkpoints.is_hub_module(path):
        parts = hub.read_module_info(path).parts
        hub_dir = os.path.dirname(os.path.normpath(path))
        run = os.path.dirname(hub_dir) if os.path.basename(hub_dir) == "hub" else None
        return ModelSource(path, config, parts, recorded_image_size(run) if run else None)
    _, model_dir = checkpoints.find_checkpoint(path)
    parts = hub.module_parts(config, True, True)
    return ModelSource(path, config, parts, recorded_image_size(model_dir))


def load_model(source: ModelSource, image_size: int) -> SimCLRModel:
    """The ``SimCLRModel`` of ``source`` with its weights restored, every part it holds."""
    from tf_simclr import checkpoints
    from tf_simclr.models.simclr import SimCLRModel

    model = SimCLRModel(source.config).build_for_size(image_size)
    if checkpoints.is_hub_module(source.path):
        checkpoints.restore_model_from_hub(
            model, source.path, require_all_parts=True, parts=source.parts
        )
    else:
        checkpoints.restore_weights(model, source.path, include_supervised_head=True)
    return model


@dataclasses.dataclass(frozen=True)
class Plan:
    """A checked embedding: the model, the image size and the opened source."""

    config: EmbedConfig
    model: ModelSource
    image_size: int
    source: Source

    @property
    def info(self) -> SourceInfo:
        """The source's counts, class names and skipped files."""
        return self.source.info


def plan(config: EmbedConfig) -> Plan:
    """Check everything that can be checked before the model runs, writing nothing: the output
    directory, the checkpoint, the endpoint, the image size and the source (a folder is
    indexed: the files it skips are found and counted here). Raises ``ValueError``,
    ``FileNotFoundError`` or ``FileExistsError`` with a message saying what to change."""
    from tf_simclr.data import open_source, validate_dataset_name

    check_output_dir(config.output_dir, config.overwrite)
    validate_dataset_name(config.dataset)
    model = read_model_source(config.checkpoint)
    if config.endpoint not in model.endpoints:
        raise ValueError(
            f"--endpoint={config.endpoint} is not an output of {config.checkpoint}; it has "
            f"{', '.join(model.endpoints)}."
        )
    image_size = config.image_size or model.image_size
    if image_size is None:
        raise ValueError(
            f"no image size is recorded for {config.checkpoint} (only a run's config.json "
            "records it); pass --image_size, the side the model was trained at (e.g. 28 for the "
            "released Fashion-MNIST encoder)."
        )
    source = open_source(
        config.dataset,
        config.split,
        config.data_dir,
        max_image_megapixels=config.max_image_megapixels,
    )
    return Plan(config, model, image_size, source)


class Progress:
    """Progress lines every ``every_seconds`` (of ``clock``): images done, images per second
    and the time left at that rate; :meth:`rate` is the overall images per second."""

    def __init__(
        self,
        total: int,
        every_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        log: Callable[[str], None] = logger.info,
    ) -> None:
        self.total, self.every_seconds, self.clock, self.log = total, every_seconds, clock, log
        self.done = 0
        self.start = self.last = clock()

    def seconds(self) -> float:
        """Seconds since the start."""
        return self.clock() - self.start

    def rate(self) -> float:
        """Images per second since the start."""
        return self.done / max(self.seconds(), 1e-9)

    def update(self, images: int) -> None:
        """Count ``images`` more; log a line when ``every_seconds`` have passed since the last
        one, or at the end."""
        self.done += images
        now = self.clock()
        if now - self.last < self.every_seconds and self.done < self.total:
            return
        self.last = now
        rate = self.rate()
        left = (self.total - self.done) / max(rate, 1e-9)
        self.log(
            f"embedded {self.done:,}/{self.total:,} images ({100 * self.done / self.total:.0f}%), "
            f"{rate:,.0f} images/s, {left:,.0f} s left"
        )


@dataclasses.dataclass(frozen=True)
class Batch:
    """One batch of the stream: its rows, its metadata cells and its projector thumbnails."""

    rows: np.ndarray
    metadata: list[tuple[str, ...]]
    thumbnails: np.ndarray


def write_stream(batches: Iterable[Batch], files: EmbeddingFiles, progress: Progress) -> None:
    """Write each batch before the next one is read: at most one batch is held."""
    for batch in batches:
        files.write(batch.rows, batch.metadata, batch.thumbnails)
        progress.update(len(batch.rows))


def _batches(plan: Plan, model: SimCLRModel, files: EmbeddingFiles) -> Iterator[Batch]:
    """The source's images in order, through the model, as :class:`Batch` es."""
    import tensorflow as tf

    from tf_simclr.config import AugmentConfig
    from tf_simclr.data import build_dataset

    info, config = plan.info, plan.config
    keys, labels = plan.source.index()
    names = info.class_names
    dataset = build_dataset(
        plan.source.dataset(),
        info.num_examples,
        phase="eval",
        global_batch_size=config.batch_size,
        augment=AugmentConfig(image_size=plan.image_size),
        training=False,
    )
    parts, endpoint, side = plan.model.parts, config.endpoint, files.thumbnail

    @tf.function(
        input_signature=[tf.TensorSpec([None, plan.image_size, plan.image_size, 3], tf.float32)]
    )
    def forward(images: tf.Tensor) -> tf.Tensor:
        output = model.endpoints(images, training=False, parts=parts)[endpoint]
        return tf.reshape(output, [tf.shape(output)[0], -1])

    start = 0
    for batch in dataset:
        rows = forward(batch["image"]).numpy()
        stop = start + len(rows)
        shown = files.projector_rows(start, stop)
        thumbnails = tf.image.resize(tf.gather(batch["image"], shown), [side, side], method="area")
        thumbnails = tf.cast(tf.round(tf.clip_by_value(thumbnails, 0, 1) * 255), tf.uint8)
        metadata = [
            (keys[i], names[labels[i]] if names and labels[i] >= 0 else str(labels[i]))
            if info.num_classes
            else (keys[i],)
            for i in range(start, stop)
        ]
        yield Batch(rows, metadata, thumbnails.numpy())
        start = stop


@dataclasses.dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed` did (also written to ``embed.json``)."""

    output_dir: str
    checkpoint: str
    dataset: str
    split: str
    endpoint: str
    image_size: int
    num_images: int
    width: int
    skipped: int
    projector_images: int
    thumbnail_size: int
    seconds: float
    images_per_second: float


def embed(config: EmbedConfig, clock: Callable[[], float] = time.monotonic) -> EmbedResult:
    """Embed every image of ``config.dataset`` (see the module docstring); returns the result.

    Raises before writing anything when :func:`plan` finds a problem.
    """
    checked = plan(config)
    info = checked.info
    if info.skipped:
        logger.warning(
            "%s split %s: %d file(s) skipped (named above); %d images to embed",
            config.dataset,
            config.split,
            info.skipped,
            info.num_examples,
        )
    model = load_model(checked.model, checked.image_size)
    logger.info(
        "embedding %d images of %s split %s at %d px: %s of %s",
        info.num_examples,
        config.dataset,
        config.split,
        checked.image_size,
        config.endpoint,
        config.checkpoint,
    )
    files = EmbeddingFiles(
        config.output_dir,
        info.num_examples,
        ("key", "label") if info.num_classes else ("key",),
        tensor_name=config.endpoint,
        projector_max_images=config.projector_max_images,
        thumbnail_size=min(config.thumbnail_size, checked.image_size),
    )
    progress = Progress(info.num_examples, config.log_every_seconds, clock)
    try:
        write_stream(_batches(checked, model, files), files, progress)
        result = EmbedResult(
            output_dir=config.output_dir,
            checkpoint=config.checkpoint,
            dataset=config.dataset,
            split=config.split,
            endpoint=config.endpoint,
            image_size=checked.image_size,
            num_images=files.rows_written,
            width=files.width or 0,
            skipped=info.skipped,
            projector_images=len(files.projector),
            thumbnail_size=files.thumbnail,
            seconds=round(progress.seconds(), 3),
            images_per_second=round(progress.rate(), 1),
        )
        files.finish(dataclasses.asdict(result))
    except BaseException:
        files.discard()
        raise
    logger.info(
        "wrote %d rows of %d values to %s (%.0f images/s, %d file(s) skipped)",
        result.num_images,
        result.width,
        config.output_dir,
        result.images_per_second,
        result.skipped,
    )
    return result
