"""What ``tf-simclr-embed`` writes, written as the rows arrive (issue 29).

In the output directory:

* ``embeddings.npy``: float32 ``[images, width]``, row ``i`` the embedding of the source's
  ``i``-th image (the order of :meth:`tf_simclr.data.Source.index`);
* ``metadata.tsv``: a header row, then one line per row of ``embeddings.npy``: ``row`` (its
  index there), ``key`` (the source's key of the image: its path under the split's folder, its
  index in the split, a TFDS ``file_name``) and, for a labeled source, ``label`` (the class
  name);
* ``projector_config.pbtxt`` and ``projector/``: TensorBoard's embedding projector
  (``tensorboard --logdir=OUTPUT_DIR``): ``tensors.tsv`` and ``metadata.tsv`` (columns as above)
  of at most ``projector_max_images`` rows spread evenly over the source
  (:func:`projector_positions`), and ``sprite.png``, their thumbnails in a grid, row-major in the
  same order, within the projector's limit of :data:`SPRITE_MAX_SIDE` pixels a side;
* ``embed.json``: what was embedded, the images skipped, the time taken and images per second.

Memory stays bounded whatever the number of images: each batch of rows is appended to the
``.npy`` file (whose header is written before the first row) and to the TSV files as it
arrives, and the sprite is filled in place at thumbnail size, so what is held is one batch and
the sprite (at most ``SPRITE_MAX_SIDE``\\ :sup:`2` x 3 bytes). Everything is written in a
staging folder inside the output directory and moved into place at the end, ``embed.json``
last, so a run that fails leaves a previous embedding as it was.

Neither TensorFlow nor the model is needed here: :class:`EmbeddingFiles` takes numpy rows,
metadata strings and uint8 thumbnails.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections.abc import Sequence
from typing import BinaryIO, TextIO

import numpy as np
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector import ProjectorConfig

EMBEDDINGS = "embeddings.npy"
METADATA = "metadata.tsv"
SUMMARY = "embed.json"
PROJECTOR_CONFIG = "projector_config.pbtxt"  # the name TensorBoard's projector looks for
PROJECTOR_DIR = "projector"
PROJECTOR_TENSORS = "tensors.tsv"
SPRITE = "sprite.png"
STAGING = ".embed-partial"
# What a run writes in its output directory; --overwrite replaces these and nothing else.
OUTPUTS = (EMBEDDINGS, METADATA, PROJECTOR_CONFIG, PROJECTOR_DIR, SUMMARY)
# The projector refuses a sprite wider or taller than this (tensorboard's projector_binary.js:
# "Sprite image of dimensions ... exceeds maximum dimensions 8192px x 8192px").
SPRITE_MAX_SIDE = 8192
MAX_PROJECTOR_IMAGES = 1_000_000  # thumbnails of 8 px in the largest sprite
# Significant digits of the projector's TSV tensor (a display: float32 has 7 to 9).
TSV_FORMAT = "%.7g"


def check_output_dir(path: str, overwrite: bool) -> None:
    """Raise ``FileExistsError`` (or ``NotADirectoryError``/``PermissionError``) unless ``path``
    can receive an embedding: it does not exist yet (its nearest existing parent must be
    writable), or it is an empty writable directory, or with ``overwrite`` it holds only what an
    earlier run wrote (:data:`OUTPUTS`)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotADirectoryError(f"--output_dir={path} is a file; pass a directory.")
    existing = path
    while not os.path.isdir(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"--output_dir={path}: {existing} is not writable.")
    if existing != path:
        return
    entries = sorted(set(os.listdir(path)) - {STAGING})
    foreign = [entry for entry in entries if entry not in OUTPUTS]
    if foreign:
        listed = ", ".join(foreign[:5]) + (" ..." if len(foreign) > 5 else "")
        raise FileExistsError(
            f"--output_dir={path} holds files tf-simclr-embed did not write ({listed}); pass an "
            "empty or new directory (--overwrite only replaces a previous embedding)."
        )
    if entries and not overwrite:
        raise FileExistsError(
            f"--output_dir={path} already holds an embedding ({', '.join(entries)}); pass "
            "--overwrite to replace it, or another --output_dir."
        )


def projector_positions(num_rows: int, max_images: int) -> np.ndarray:
    """The rows shown in the projector: all of them up to ``max_images``, else ``max_images``
    rows spread evenly over the source (row ``floor(j * num_rows / max_images)`` for the j-th),
    so that a source sorted by class shows every class."""
    count = min(num_rows, max_images)
    return np.arange(count, dtype=np.int64) * num_rows // count


def thumbnail_side(count: int, requested: int) -> int:
    """The side of a sprite thumbnail: ``requested``, or smaller when the grid of ``count``
    thumbnails (``ceil(sqrt(count))`` a row) would exceed :data:`SPRITE_MAX_SIDE`."""
    columns = math.ceil(math.sqrt(count))
    return max(1, min(requested, SPRITE_MAX_SIDE // columns))


def _cell(value: str) -> str:
    """A TSV cell: tabs and line breaks would split it, so they become spaces."""
    return value.replace("\t", " ").replace("\r", " ").replace("\n", " ")


class EmbeddingFiles:
    """The outputs of one embedding, written batch by batch (see the module docstring).

    ``columns`` names the metadata columns after ``row`` (``key``, and ``label`` for a labeled
    source). Call :meth:`write` with consecutive batches, then :meth:`finish`; on an error,
    :meth:`discard` removes what was staged.
    """

    def __init__(
        self,
        output_dir: str,
        num_rows: int,
        columns: Sequence[str],
        *,
        tensor_name: str,
        projector_max_images: int,
        thumbnail_size: int,
    ) -> None:
        if num_rows < 1:
            raise ValueError(f"num_rows={num_rows}: there is nothing to embed.")
        self.output_dir = output_dir
        self.num_rows = num_rows
        self.columns = ("row", *columns)
        self.tensor_name = tensor_name
        self.rows_written = 0
        self.width: int | None = None
        self.projector = projector_positions(num_rows, projector_max_images)
        self.thumbnail = thumbnail_side(len(self.projector), thumbnail_size)
        self._columns = math.ceil(math.sqrt(len(self.projector)))
        grid_rows = math.ceil(len(self.projector) / self._columns)
        self.sprite = np.zeros(
            (grid_rows * self.thumbnail, self._columns * self.thumbnail, 3), dtype=np.uint8
        )
        self._shown = 0  # projector rows written so far
        self._staging = os.path.join(output_dir, STAGING)
        shutil.rmtree(self._staging, ignore_errors=True)  # left by a run that was killed
        os.makedirs(os.path.join(self._staging, PROJECTOR_DIR))
        self._embeddings = open(self._staged(EMBEDDINGS), "wb")  # noqa: SIM115 - closed in finish
        self._metadata = self._open_tsv(METADATA)
        self._projector_tensors = self._open_tsv(os.path.join(PROJECTOR_DIR, PROJECTOR_TENSORS))
        self._projector_metadata = self._open_tsv(os.path.join(PROJECTOR_DIR, METADATA))
        header = "\t".join(self.columns) + "\n"
        self._metadata.write(header)
        self._projector_metadata.write(header)

    def _staged(self, name: str) -> str:
        return os.path.join(self._staging, name)

    def _open_tsv(self, name: str) -> TextIO:
        return open(self._staged(name), "w", encoding="utf-8", newline="\n")

    def projector_rows(self, start: int, stop: int) -> np.ndarray:
        """Positions within the batch of rows ``start``..``stop - 1`` that the projector shows
        (the batch's thumbnails are needed for these only)."""
        first, last = np.searchsorted(self.projector, [start, stop])
        return self.projector[first:last] - start

    def write(
        self, rows: np.ndarray, metadata: Sequence[Sequence[str]], thumbnails: np.ndarray
    ) -> None:
        """Append the next batch: float32 ``rows`` [b, width], their metadata cells (one
        sequence of ``columns`` values per row, ``row`` left out) and the uint8 thumbnails
        [k, side, side, 3] of its :meth:`projector_rows`, in order."""
        start, stop = self.rows_written, self.rows_written + len(rows)
        if rows.ndim != 2 or stop > self.num_rows or len(metadata) != len(rows):
            raise ValueError(
                f"a batch of {rows.shape} rows with {len(metadata)} metadata lines after "
                f"{start} of {self.num_rows} rows; expected [b, width] rows, one line each."
            )
        if self.width is None:
            self.width = rows.shape[1]
            header = {"descr": "<f4", "fortran_order": False, "shape": (self.num_rows, self.width)}
            np.lib.format.write_array_header_1_0(self._embeddings, header)
        elif rows.shape[1] != self.width:
            raise ValueError(f"rows of width {rows.shape[1]} after rows of width {self.width}.")
        self._embeddings.write(np.ascontiguousarray(rows, dtype="<f4").tobytes())
        lines = [
            "\t".join(map(_cell, (str(start + offset), *cells))) + "\n"
            for offset, cells in enumerate(metadata)
        ]
        self._metadata.writelines(lines)
        shown = self.projector_rows(start, stop)
        if len(thumbnails) != len(shown):
            raise ValueError(f"{len(thumbnails)} thumbnails for {len(shown)} projector rows.")
        np.savetxt(self._projector_tensors, rows[shown], fmt=TSV_FORMAT, delimiter="\t")
        self._projector_metadata.writelines(lines[offset] for offset in shown)
        for thumbnail in thumbnails:
            self._paste(thumbnail)
        self.rows_written = stop

    def _paste(self, thumbnail: np.ndarray) -> None:
        """Put the next projector thumbnail in its cell of the sprite (resized if needed)."""
        side = self.thumbnail
        if thumbnail.shape != (side, side, 3):
            resized = Image.fromarray(thumbnail).resize((side, side), Image.Resampling.BOX)
            thumbnail = np.asarray(resized)
        row, column = divmod(self._shown, self._columns)
        self.sprite[row * side : (row + 1) * side, column * side : (column + 1) * side] = thumbnail
        self._shown += 1

    def finish(self, summary: dict) -> None:
        """Check that every row came, write the sprite, the projector's configuration and
        ``embed.json`` (``summary``), and move the outputs into the output directory."""
        if self.rows_written != self.num_rows:
            raise ValueError(
                f"the source gave {self.rows_written} images, not the {self.num_rows} it "
                "announced; nothing was replaced."
            )
        for handle in self._handles():
            handle.close()
        Image.fromarray(self.sprite).save(self._staged(os.path.join(PROJECTOR_DIR, SPRITE)))
        config = ProjectorConfig()
        embedding = config.embeddings.add()
        embedding.tensor_name = self.tensor_name
        embedding.tensor_path = f"{PROJECTOR_DIR}/{PROJECTOR_TENSORS}"
        embedding.metadata_path = f"{PROJECTOR_DIR}/{METADATA}"
        embedding.sprite.image_path = f"{PROJECTOR_DIR}/{SPRITE}"
        embedding.sprite.single_image_dim.extend([self.thumbnail, self.thumbnail])
        with open(self._staged(PROJECTOR_CONFIG), "w", encoding="utf-8") as handle:
            handle.write(text_format.MessageToString(config))
        with open(self._staged(SUMMARY), "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2, sort_keys=True)
        # embed.json goes first and comes back last: its presence says the rest is complete.
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(self.output_dir, SUMMARY))
        for name in OUTPUTS:
            target = os.path.join(self.output_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            os.replace(self._staged(name), target)
        os.rmdir(self._staging)

    def _handles(self) -> tuple[BinaryIO | TextIO, ...]:
        return (
            self._embeddings,
            self._metadata,
            self._projector_tensors,
            self._projector_metadata,
        )

    def discard(self) -> None:
        """Close and remove what was staged (after an error); the output directory keeps what
        it held before."""
        for handle in self._handles():
            with contextlib.suppress(OSError):
                handle.close()
        shutil.rmtree(self._staging, ignore_errors=True)
