"""Folder sources against files that used to break a run (issue 30).

* An image whose header announces more than ``--max_image_megapixels`` is skipped, counted and
  named before anything decodes it: through the binary, a PNG of a few hundred KB announcing
  23000x23000 pixels leaves the run's peak memory below the size of the decoded image, and a
  lower limit skips ordinary images.
* A file named in bytes that are not UTF-8 is skipped, counted and named by its escaped bytes
  (labeled and unlabeled folders); the rest of the folder loads.
* Training on a single image (here: what is left after skipping) runs, with a warning.

Sizes come from :mod:`tf_simclr.data.image_headers`, checked against Pillow on small images of
every format it reads.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from binary_runs import SMALL_MODEL, binary_command, finish, read_json, run_python, start
from PIL import Image

from tf_simclr.config import DataConfig
from tf_simclr.data import load_source
from tf_simclr.data.folder import DEFAULT_MAX_IMAGE_MEGAPIXELS
from tf_simclr.data.image_headers import announced_size

# Pretraining of the tiny model on an unlabeled folder: 2 steps of 8 images.
FOLDER_FLAGS = (
    "--train_mode=pretrain",
    "--mode=train",
    *SMALL_MODEL[1:],
    "--train_batch_size=8",
    "--train_steps=2",
    "--noexport_hub",
)
# 529 megapixels, just under the 2**29 pixels TF's PNG decoder accepts: 1.59 GB as decoded RGB.
HUGE_SIDE = 23_000


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_blank_png(path: Path, width: int, height: int) -> Path:
    """A valid black 1-bit grayscale PNG of ``width`` x ``height``, written row by row through
    zlib, so that neither this test nor the file (a few hundred KB at most) holds the pixels."""
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte 0, then the row's bits
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + _chunk(b"IEND", b"")
    )
    return path


def write_image(path: Path, width: int, height: int, seed: int = 0, **options) -> Path:
    """A random RGB image of ``width`` x ``height`` saved by Pillow (format from the name)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)
    return path


def write_bytes_named(folder: Path, name: bytes, content: bytes) -> None:
    """A file whose name is the raw bytes ``name`` (not necessarily UTF-8) in ``folder``."""
    os.makedirs(os.path.dirname(os.path.join(os.fsencode(folder), name)), exist_ok=True)
    with open(os.path.join(os.fsencode(folder), name), "wb") as handle:
        handle.write(content)


# ------------------------------------------------------------------------------ headers


def test_headers_give_the_size_pillow_reads(tmp_path):
    rng = np.random.default_rng(0)
    exif = Image.Exif()
    exif[0x010E] = "a description long enough to make an APP1 segment " * 20
    cases = {
        "rgb.png": {},
        "photo.jpg": {"quality": 90, "exif": exif},
        "progressive.jpg": {"progressive": True},
        "anim.gif": {},
        "rgb.bmp": {},
        "lossy.webp": {},
        "lossless.webp": {"lossless": True},
        "extended.webp": {"exif": exif},  # a VP8X header
        "scan.tiff": {},  # a format TF does not decode: Pillow reads its header
    }
    for name, options in cases.items():
        path = write_image(tmp_path / name, 37, 23, **options)
        with Image.open(path) as image:
            assert announced_size(str(path)) == image.size == (37, 23), name
    gray = tmp_path / "deep.png"
    Image.fromarray(rng.integers(0, 65535, (19, 41), np.uint16)).save(gray)
    Image.fromarray(rng.integers(0, 2, (11, 7), np.uint8) * 255).convert("1").save(
        tmp_path / "1bit.bmp"
    )
    Image.fromarray(rng.integers(0, 255, (13, 5, 3), np.uint8)).convert("P").save(
        tmp_path / "palette.png"
    )
    top_down = bytearray(write_image(tmp_path / "down.bmp", 9, 6).read_bytes())
    top_down[22:26] = struct.pack("<i", -6)  # a negative height: rows stored top down
    (tmp_path / "down.bmp").write_bytes(bytes(top_down))
    expected = {"deep.png": (41, 19), "1bit.bmp": (7, 11), "palette.png": (5, 13)}
    for name, size in {**expected, "down.bmp": (9, 6)}.items():
        assert announced_size(str(tmp_path / name)) == size, name


def test_headers_of_other_files_announce_nothing(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    png = write_image(tmp_path / "a.png", 8, 8).read_bytes()
    (tmp_path / "cut.png").write_bytes(png[:20])  # the signature and part of IHDR
    (tmp_path / "soi.jpg").write_bytes(b"\xff\xd8")
    (tmp_path / "scan_first.jpg").write_bytes(b"\xff\xd8\xff\xda\x00\x08" + bytes(8))
    for name in ("notes.png", "cut.png", "soi.jpg", "scan_first.jpg", "missing.png"):
        assert announced_size(str(tmp_path / name)) is None, name


def test_a_small_file_announces_a_huge_png_that_pillow_refuses_to_open(tmp_path):
    path = write_blank_png(tmp_path / "huge.png", 20_000, 20_000)
    assert path.stat().st_size < 400_000  # the file: 389 KB
    assert announced_size(str(path)) == (20_000, 20_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(path)  # why the header is read here and not through Image.open


# ------------------------------------------------------------------------ the folder source


def test_images_announcing_more_megapixels_than_the_limit_are_skipped_and_named(tmp_path, caplog):
    folder = tmp_path / "flat"
    for index in range(3):
        write_image(folder / f"{index}.png", 16, 16, seed=index)
    write_blank_png(folder / "at_limit.png", 1000, 1000)  # 1.0 megapixels: kept
    write_blank_png(folder / "wide.png", 1500, 1000)
    (folder / "disguised.jpg").write_bytes((folder / "wide.png").read_bytes())
    write_image(folder / "scan.png", 1200, 900, format="TIFF")  # only Pillow reads it
    with caplog.at_level(logging.WARNING):
        dataset, info = load_source(f"folder:{folder}", max_image_megapixels=1.0)
    assert (info.num_examples, info.skipped) == (4, 3)
    assert "skipped 3 of 7 image files whose header announces more than 1 megapixels" in (
        caplog.text
    )
    for named in ("disguised.jpg (1500x1000)", "scan.png (1200x900)", "wide.png (1500x1000)"):
        assert named in caplog.text
    keys, _ = info.source.index()
    assert keys == ["0.png", "1.png", "2.png", "at_limit.png"]
    shapes = [image.shape for image, _ in dataset.as_numpy_iterator()]
    assert shapes == [(16, 16, 3)] * 3 + [(1000, 1000, 3)]


def test_the_default_limit_is_the_settings_default(tmp_path, caplog):
    assert DataConfig().max_image_megapixels == DEFAULT_MAX_IMAGE_MEGAPIXELS
    folder = tmp_path / "flat"
    write_image(folder / "a.png", 16, 16)
    write_blank_png(folder / "over.png", 10_000, 5_001)  # 50.01 megapixels
    with caplog.at_level(logging.WARNING):
        _, info = load_source(f"folder:{folder}")
    assert (info.num_examples, info.skipped) == (1, 1)
    assert "over.png (10000x5001)" in caplog.text


def test_unlabeled_files_whose_names_are_not_utf8_are_skipped_and_named(tmp_path, caplog):
    folder = tmp_path / "flat"
    good = write_image(folder / "good.png", 16, 16).read_bytes()
    write_image(folder / "other.jpg", 12, 10)
    write_bytes_named(folder, b"bad\xff.png", good)
    with caplog.at_level(logging.WARNING):
        dataset, info = load_source(f"folder:{folder}")
    assert (info.num_examples, info.num_classes, info.skipped) == (2, 0, 1)
    assert "skipped 1 of 3 image files whose names are not UTF-8" in caplog.text
    assert repr(b"bad\xff.png") in caplog.text  # b'bad\xff.png'
    assert info.source.index()[0] == ["good.png", "other.jpg"]
    assert [image.shape for image, _ in dataset.as_numpy_iterator()] == [(16, 16, 3), (10, 12, 3)]
    write_bytes_named(tmp_path / "only_bad", b"\xff.png", good)
    with pytest.raises(ValueError, match="no image is left of 1"):
        load_source(f"folder:{tmp_path / 'only_bad'}")


def test_labeled_files_and_class_folders_not_named_in_utf8_are_skipped_and_named(tmp_path, caplog):
    train = tmp_path / "tree" / "train"
    good = write_image(train / "cat" / "a.png", 16, 16).read_bytes()
    write_image(train / "dog" / "b.png", 16, 16, seed=1)
    write_bytes_named(train, b"cat/\xe9t\xe9.png", good)  # Latin-1 names
    write_bytes_named(train, b"caf\xe9/c.png", good)
    with caplog.at_level(logging.WARNING):
        dataset, info = load_source(f"folder:{tmp_path / 'tree'}", supervised=True)
    assert (info.num_examples, info.skipped) == (2, 2)
    assert info.class_names == ("cat", "dog")
    for name in (b"caf\xe9/c.png", b"cat/\xe9t\xe9.png"):
        assert repr(name) in caplog.text
    assert info.source.index()[0] == ["cat/a.png", "dog/b.png"]
    assert [int(label) for _, label in dataset.as_numpy_iterator()] == [0, 1]


# ---------------------------------------------------------------------------- the binary

# Runs a command, its output in a log file, and prints its exit status and peak resident memory
# (ru_maxrss of this process's only child). The child is killed once its resident memory passes
# the limit, to spare the machine; its peak is then above the limit and the test fails.
MEASURED_RUN = """
    import os, resource, subprocess, sys, time
    limit, log, *command = sys.argv[1:]
    page = os.sysconf("SC_PAGE_SIZE")
    with open(log, "w") as handle:
        child = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        while child.poll() is None:
            try:
                with open(f"/proc/{child.pid}/statm") as statm:
                    resident = int(statm.read().split()[1]) * page
            except (FileNotFoundError, ProcessLookupError):
                resident = 0
            if resident > int(limit):
                child.kill()
            time.sleep(0.05)
    print(child.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
"""


@pytest.mark.slow
def test_a_huge_png_is_skipped_unread_and_a_lower_limit_skips_ordinary_images(tmp_path):
    huge = tmp_path / "huge"
    for index in range(8):
        write_image(huge / f"{index}.png", 16, 16, seed=index)
    write_blank_png(huge / "huge.png", HUGE_SIDE, HUGE_SIDE)
    assert (huge / "huge.png").stat().st_size < 400_000
    small = tmp_path / "small"
    write_image(small / "keep.png", 16, 16)
    for index in range(7):
        write_image(small / f"big{index}.png", 32, 32, seed=index)  # 1024 pixels each
    lower = (
        *FOLDER_FLAGS,
        f"--dataset=folder:{small}",
        "--max_image_megapixels=0.0005",  # 500 pixels: keep.png (256) only
    )
    lowered = start(
        binary_command(f"--model_dir={tmp_path / 'lower'}", *lower), tmp_path / "lower.log"
    )
    # Bound: the decoded RGB image (1.59 GB), which a decode holds at once; the run without it
    # peaks at ~0.8 GB on this machine, and at af41975 went past the bound while indexing.
    bound = HUGE_SIDE * HUGE_SIDE * 3
    flags = (*FOLDER_FLAGS, f"--dataset=folder:{huge}")
    command = binary_command(f"--model_dir={tmp_path / 'run'}", *flags)
    log = tmp_path / "run.log"
    measured = run_python(MEASURED_RUN, str(bound), str(log), *command, check=True)
    status, peak = map(int, measured.stdout.split())
    output = log.read_text(encoding="utf-8", errors="replace")
    assert peak < bound, f"peak resident memory {peak / 2**30:.2f} GB\n{output[-3000:]}"
    assert status == 0, output[-3000:]
    assert (
        "skipped 1 of 9 image files whose header announces more than 50 megapixels (raise "
        f"--max_image_megapixels to read them): huge.png ({HUGE_SIDE}x{HUGE_SIDE})"
    ) in output
    assert "train: 8 images" in output
    assert read_json(tmp_path / "run" / "result.json")["train"]["global_step"] == 2

    finished = finish(lowered)
    assert finished.returncode == 0, finished.tail()
    assert "skipped 7 of 8 image files whose header announces more than 0.0005" in finished.output
    assert "big0.png (32x32), big1.png (32x32)" in finished.output
    assert "train: 1 images" in finished.output
    assert finished.output.count("the training data holds a single image") == 1
    assert read_json(tmp_path / "lower" / "result.json")["train"]["global_step"] == 2
