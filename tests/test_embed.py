"""tf-simclr-embed (``python -m tf_simclr.embed_main``, :mod:`tf_simclr.embed`): embeddings of
every image of a source, their metadata and TensorBoard's projector.

The binary embeds a small folder of JPEGs (two classes and one corrupt file) with the module of
a tiny pretraining run (``tests/binary_runs.py``'s small ResNet-18 at 16 px), and a synthetic
source with the run's checkpoint; each row is compared with the module's own signature on the
same images. The files are written batch by batch: :class:`EmbeddingFiles` holds one batch and
the sprite whatever the number of images, which a child process measures on 100,000 rows.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_hub as hub
from binary_runs import (
    SMALL_MODEL,
    assert_succeeded,
    child_env,
    finish,
    read_json,
    run_child,
    run_python,
    shared_runs,
    start,
)
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector import ProjectorConfig
from test_folder_safety import write_blank_png, write_bytes_named
from tolerances import ONEDNN_OFF, drift_tolerance

from tf_simclr import embed_main
from tf_simclr.data import load_source
from tf_simclr.embed import (
    Batch,
    EmbedConfig,
    Progress,
    plan,
    write_stream,
)
from tf_simclr.embed_files import (
    OUTPUTS,
    SPRITE_MAX_SIDE,
    EmbeddingFiles,
    check_output_dir,
    projector_positions,
    thumbnail_side,
)

SIZE = 16  # the image size of SMALL_MODEL, recorded in the run's config.json
# Two steps of pretraining on 16 px synthetic images; the run exports its module to hub/2/.
PRETRAIN_FLAGS = (
    "--train_mode=pretrain",
    "--mode=train",
    *SMALL_MODEL,
    "--train_batch_size=16",
    "--train_steps=2",
    "--steps_per_loop=1",
    "--noknn_monitor",
    "--nolineareval_while_pretraining",
    "--seed=1",
)
CLASSES = ("circle", "square")
PER_CLASS = 5
SYNTHETIC = "synthetic:size=16,count=32,classes=4,test_count=12"
EMBED = [sys.executable, "-m", "tf_simclr.embed_main"]


def embed_command(*flags: str) -> list[str]:
    return [*EMBED, *flags]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """The model_dir of the tiny pretraining run (shared by the session)."""
    return shared_runs(tmp_path_factory, {"embed_pretrain": PRETRAIN_FLAGS})["embed_pretrain"]


@pytest.fixture(scope="module")
def module(run_dir) -> Path:
    (path,) = (run_dir / "hub").iterdir()
    return path


def write_photos(folder: Path) -> list[Path]:
    """``folder/<class>/<i>.jpg`` (16 x 16: a bright disc or square on noise) and one corrupt
    ``folder/square/broken.jpg``; returns the readable files in the source's order."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:SIZE, :SIZE]
    files = []
    for label, name in enumerate(CLASSES):
        (folder / name).mkdir(parents=True)
        for index in range(PER_CLASS):
            pixels = rng.integers(0, 100, (SIZE, SIZE, 3), dtype=np.uint8)
            y, x = rng.integers(5, 11, 2)
            shape = (
                (rows - y) ** 2 + (columns - x) ** 2 < 16
                if label == 0
                else (abs(rows - y) < 4) & (abs(columns - x) < 4)
            )
            pixels[shape] = rng.integers(150, 256, 3)
            path = folder / name / f"{index}.jpg"
            Image.fromarray(pixels).save(path, quality=95)
            files.append(path)
    (folder / "square" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG after all")
    return files


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> tuple[Path, list[Path]]:
    folder = tmp_path_factory.mktemp("embed") / "photos"
    return folder, write_photos(folder)


def module_outputs(module: Path, images: np.ndarray, endpoint: str, batch: int) -> np.ndarray:
    """The module's own signature for ``endpoint`` on ``images`` (float32 [0, 1]), in batches
    of ``batch`` as the binary ran them (a kernel may pick its summation order by batch size)."""
    signature = hub.load(str(module)).signatures[endpoint]
    return np.concatenate(
        [
            signature(images=tf.constant(images[start : start + batch]))[endpoint].numpy()
            for start in range(0, len(images), batch)
        ]
    )


ONEDNN_OFF_OUTPUTS = """
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_hub as hub

    module, endpoint, images, output = sys.argv[1:]
    signature = hub.load(module).signatures[endpoint]
    np.save(output, signature(images=tf.constant(np.load(images)))[endpoint].numpy())
"""


def tolerance(module: Path, images: np.ndarray, expected: np.ndarray, endpoint: str, tmp: Path):
    """Bound of another computation of ``expected`` (the rebuilt model against the module):
    10x the spread of the module's outputs computed with oneDNN off (Eigen's kernels, another
    summation order everywhere) on this machine, floored at one float32 rounding
    (tests/tolerances.py, :func:`drift_tolerance`)."""
    np.save(tmp / "images.npy", images)
    arguments = (str(module), endpoint, str(tmp / "images.npy"), str(tmp / "other.npy"))
    run_python(ONEDNN_OFF_OUTPUTS, *arguments, env=child_env(**ONEDNN_OFF), check=True)
    spread = float(np.max(np.abs(np.load(tmp / "other.npy") - expected)))
    return drift_tolerance(spread, 1, float(np.abs(expected).max()))


def read_tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()]


def read_projector(output: Path) -> ProjectorConfig:
    config = ProjectorConfig()
    text_format.Parse((output / "projector_config.pbtxt").read_text(), config)
    return config


@pytest.fixture(scope="module")
def folder_run(run_dir, module, photos, tmp_path_factory):
    """The binary on the folder with the run's module (image size from the run's config.json),
    four images a batch and a progress line after every batch."""
    output = tmp_path_factory.mktemp("folder_embedding") / "out"
    flags = (
        f"--checkpoint={module}",
        f"--dataset=folder:{photos[0]}",
        f"--output_dir={output}",
        "--batch_size=4",
        "--log_every_seconds=0",
    )
    finished = finish(start(embed_command(*flags), output.with_suffix(".log")))
    assert_succeeded(finished)
    return output, finished.output


# ---------------------------------------------------------------------- the binary, end to end


@pytest.mark.slow
def test_rows_are_the_modules_final_avg_pool_in_the_folders_order(
    folder_run, module, photos, tmp_path
):
    output, _ = folder_run
    rows = np.load(output / "embeddings.npy")
    # Decoded as the folder source decodes them; 16 px, the size the model reads.
    decoded = np.stack([tf.io.decode_jpeg(path.read_bytes(), channels=3) for path in photos[1]])
    images = decoded.astype(np.float32) / 255.0
    expected = module_outputs(module, images, "final_avg_pool", batch=4)  # --batch_size=4
    assert rows.dtype == np.float32 and rows.shape == expected.shape
    atol = tolerance(module, images, expected, "final_avg_pool", tmp_path)
    np.testing.assert_allclose(rows, expected, rtol=0, atol=atol)
    assert np.abs(rows).max() > 100 * atol  # the comparison is not of round-off alone


@pytest.mark.slow
def test_metadata_follows_the_rows_and_the_corrupt_file_is_counted(folder_run, photos):
    output, log = folder_run
    folder, files = photos
    metadata = read_tsv(output / "metadata.tsv")
    assert metadata[0] == ["row", "key", "label"]
    assert metadata[1:] == [
        [str(row), str(path.relative_to(folder)), path.parent.name]
        for row, path in enumerate(files)
    ]
    summary = read_json(output / "embed.json")
    assert summary["skipped"] == 1 and summary["num_images"] == len(files)
    assert summary["images_per_second"] > 0 and summary["width"] == 64
    assert "square/broken.jpg" in log and "1 file(s) skipped" in log
    assert "embedded 4/10 images (40%)" in log and "embedded 10/10 images (100%)" in log


@pytest.mark.slow
def test_projector_names_its_files_and_the_sprite_holds_the_thumbnails(folder_run, photos):
    output, _ = folder_run
    (embedding,) = read_projector(output).embeddings
    assert embedding.tensor_name == "final_avg_pool"
    tensors = np.loadtxt(output / embedding.tensor_path, delimiter="\t", ndmin=2)
    np.testing.assert_allclose(tensors, np.load(output / "embeddings.npy"), rtol=1e-6)
    assert read_tsv(output / embedding.metadata_path) == read_tsv(output / "metadata.tsv")
    assert list(embedding.sprite.single_image_dim) == [SIZE, SIZE]  # the images' own size
    sprite = np.asarray(Image.open(output / embedding.sprite.image_path))
    # 10 thumbnails, 4 a row (ceil(sqrt(10))), row-major in the rows' order.
    assert sprite.shape == (3 * SIZE, 4 * SIZE, 3)
    for index, path in enumerate(photos[1]):
        row, column = divmod(index, 4)
        cell = sprite[row * SIZE : (row + 1) * SIZE, column * SIZE : (column + 1) * SIZE]
        decoded = tf.io.decode_jpeg(path.read_bytes(), channels=3).numpy()
        assert np.abs(cell.astype(int) - decoded).max() <= 1, path


@pytest.mark.slow
def test_a_checkpoint_embeds_any_endpoint_and_caps_the_projector(run_dir, module, tmp_path):
    output = tmp_path / "synthetic"
    flags = (
        f"--checkpoint={run_dir}",
        f"--dataset={SYNTHETIC}",
        "--split=test",
        "--endpoint=proj_head_1",
        "--projector_max_images=5",
        f"--output_dir={output}",
    )
    run_child(embed_command(*flags), check=True)
    source, info = load_source(SYNTHETIC, "test")
    images = np.stack([image for image, _ in source.as_numpy_iterator()]) / np.float32(255)
    expected = module_outputs(module, images.astype(np.float32), "proj_head_1", batch=256)
    rows = np.load(output / "embeddings.npy")
    atol = tolerance(module, images.astype(np.float32), expected, "proj_head_1", tmp_path)
    np.testing.assert_allclose(rows, expected, rtol=0, atol=atol)
    keys, labels = info.source.index()
    metadata = read_tsv(output / "metadata.tsv")[1:]
    assert metadata == [
        [str(row), key, info.class_names[label]]
        for row, (key, label) in enumerate(zip(keys, labels, strict=True))
    ]
    shown = [0, 2, 4, 7, 9]  # floor(j * 12 / 5)
    assert read_tsv(output / "projector/metadata.tsv")[1:] == [metadata[row] for row in shown]
    tensors = np.loadtxt(output / "projector/tensors.tsv", delimiter="\t")
    np.testing.assert_allclose(tensors, rows[shown], rtol=1e-6)
    sprite = Image.open(output / "projector/sprite.png")
    assert sprite.size == (3 * SIZE, 2 * SIZE)  # 5 thumbnails, 3 a row


@pytest.mark.slow
def test_bad_inputs_exit_2_before_writing_anything(run_dir, tmp_path):
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "notes.txt").write_text("mine")
    cases = {
        "missing checkpoint": (
            (f"--checkpoint={tmp_path / 'no_such_run'}", f"--output_dir={tmp_path / 'a'}"),
            "no_such_run does not exist",
        ),
        "unknown endpoint": (
            (
                f"--checkpoint={run_dir}",
                "--endpoint=block_group9",
                f"--output_dir={tmp_path / 'b'}",
            ),
            "it has initial_conv, initial_max_pool, block_group1",
        ),
        "occupied output": (
            (f"--checkpoint={run_dir}", f"--output_dir={occupied}", "--overwrite"),
            "holds files tf-simclr-embed did not write (notes.txt)",
        ),
    }
    processes = {
        name: start(
            embed_command(f"--dataset={SYNTHETIC}", *flags),
            tmp_path / f"{name}.log".replace(" ", "_"),
        )
        for name, (flags, _) in cases.items()
    }
    for name, process in processes.items():
        finished = finish(process)
        assert finished.returncode == 2, f"{name}: {finished.tail()}"
        assert cases[name][1] in finished.output, f"{name}: {finished.tail()}"
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert sorted(path.name for path in occupied.iterdir()) == ["notes.txt"]


@pytest.mark.slow
def test_the_plan_refuses_an_empty_folder_a_previous_embedding_and_an_unknown_size(
    run_dir, module, folder_run, tmp_path
):
    (tmp_path / "empty" / "cats").mkdir(parents=True)
    base = {"checkpoint": str(run_dir), "dataset": SYNTHETIC, "output_dir": str(tmp_path / "o")}
    with pytest.raises(ValueError, match="holds no images"):
        plan(EmbedConfig(**{**base, "dataset": f"folder:{tmp_path / 'empty'}"}))
    with pytest.raises(FileExistsError, match=r"already holds an embedding.*--overwrite"):
        plan(EmbedConfig(**{**base, "output_dir": str(folder_run[0])}))
    assert plan(EmbedConfig(**{**base, "output_dir": str(folder_run[0]), "overwrite": True}))
    moved = tmp_path / "module"  # a module outside its run: no config.json records its size
    shutil.copytree(module, moved)
    with pytest.raises(ValueError, match="pass --image_size"):
        plan(EmbedConfig(**{**base, "checkpoint": str(moved)}))
    assert (
        plan(EmbedConfig(**{**base, "checkpoint": str(moved), "image_size": 24})).image_size == 24
    )
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_the_plan_skips_huge_images_and_names_not_in_utf8(run_dir, tmp_path, caplog):
    folder = tmp_path / "photos"
    files = write_photos(folder)
    write_blank_png(folder / "circle" / "huge.png", 8000, 8000)  # 64 megapixels, over 50
    write_bytes_named(folder, b"square/\xe9t\xe9.jpg", files[-1].read_bytes())  # Latin-1
    config = EmbedConfig(
        checkpoint=str(run_dir), dataset=f"folder:{folder}", output_dir=str(tmp_path / "out")
    )
    with caplog.at_level(logging.WARNING):
        info = plan(config).info
    assert (info.num_examples, info.skipped) == (len(files), 3)
    assert "circle/huge.png (8000x8000)" in caplog.text
    assert repr(b"square/\xe9t\xe9.jpg") in caplog.text and "square/broken.jpg" in caplog.text
    assert info.source.index()[0] == [str(path.relative_to(folder)) for path in files]


# The binary's flags: their names are the binary's contract (docs/embed.md).
EMBED_FLAGS = {
    "checkpoint", "endpoint", "image_size", "dataset", "split", "data_dir", "batch_size",
    "output_dir", "overwrite", "projector_max_images", "thumbnail_size", "log_every_seconds",
    "max_image_megapixels",
}  # fmt: skip
# The console script as pip installs it: its __main__ is not tf_simclr.embed_main.
AS_CONSOLE_SCRIPT = """
import sys
from importlib.metadata import EntryPoint
sys.argv = ["tf-simclr-embed", *sys.argv[1:]]
EntryPoint("tf-simclr-embed", "tf_simclr.embed_main:run_main", "console_scripts").load()()
"""


@pytest.mark.parametrize("command", ["console_script", "module"])
def test_help_lists_the_flags_by_group_and_exits_0(command):
    if command == "module":
        result = run_child(embed_command("--help"))
    else:
        result = run_python(AS_CONSOLE_SCRIPT, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(embed_main.__doc__)
    schema = embed_main.FLAG_SCHEMA
    headings = [schema.module_name(title) + ":" for title, _ in schema.groups]
    positions = [result.stdout.index(f"\n{heading}\n") for heading in headings]
    assert positions == sorted(positions)
    listed = {flag.name for flag in schema.flags()}
    assert listed == EMBED_FLAGS
    for name in EMBED_FLAGS:
        assert f"--{name}" in result.stdout


# --------------------------------------------------------------------- the library, in-process


def test_a_missing_required_setting_is_named():
    with pytest.raises(ValueError, match="--dataset is required"):
        EmbedConfig(checkpoint="run", output_dir="out")
    with pytest.raises(ValueError, match="projector_max_images=0"):
        EmbedConfig(
            checkpoint="run", dataset="fashion_mnist", output_dir="o", projector_max_images=0
        )


def test_projector_rows_are_spread_evenly_over_the_source():
    assert list(projector_positions(7, 10)) == list(range(7))
    chosen = projector_positions(100_000, 10_000)
    assert len(chosen) == 10_000 and chosen[0] == 0 and chosen[-1] == 99_990
    assert np.all(np.diff(chosen) == 10)
    assert len(np.unique(projector_positions(12, 5))) == 5


def test_the_sprite_stays_within_the_projectors_limit():
    assert thumbnail_side(10, 32) == 32
    for count in (10_000, 100_000, 1_000_000):
        side = thumbnail_side(count, 64)
        columns = int(np.ceil(np.sqrt(count)))
        assert side * columns <= SPRITE_MAX_SIDE
        assert (side + 1) * columns > SPRITE_MAX_SIDE or side == 64


def test_the_output_directory_must_be_new_empty_or_a_previous_embedding(tmp_path):
    check_output_dir(str(tmp_path / "new" / "deeper"), overwrite=False)
    check_output_dir(str(tmp_path), overwrite=False)  # empty
    (tmp_path / "embeddings.npy").write_bytes(b"")
    with pytest.raises(FileExistsError, match="--overwrite to replace it"):
        check_output_dir(str(tmp_path), overwrite=False)
    check_output_dir(str(tmp_path), overwrite=True)
    (tmp_path / "photo.jpg").write_bytes(b"")
    with pytest.raises(FileExistsError, match=r"did not write \(photo.jpg\)"):
        check_output_dir(str(tmp_path), overwrite=True)
    with pytest.raises(NotADirectoryError):
        check_output_dir(str(tmp_path / "photo.jpg"), overwrite=True)


def small_batches(count: int, width: int, files: EmbeddingFiles, size: int = 4):
    """Batches of random rows with keys ``img<i>`` and random thumbnails for ``files``."""
    rng = np.random.default_rng(1)
    for first in range(0, count, size):
        stop = min(first + size, count)
        shown = files.projector_rows(first, stop)
        thumbnails = rng.integers(0, 256, (len(shown), 8, 8, 3), dtype=np.uint8)
        rows = rng.standard_normal((stop - first, width)).astype(np.float32)
        yield Batch(rows, [(f"img{i}",) for i in range(first, stop)], thumbnails)


def test_each_batch_is_written_before_the_next_is_read(tmp_path):
    files = EmbeddingFiles(
        str(tmp_path), 10, ("key",), tensor_name="x", projector_max_images=3, thumbnail_size=8
    )
    produced = []

    def watched():
        for batch in small_batches(10, 5, files):
            # The previous batches are in the files already: nothing is held back.
            assert files.rows_written == sum(len(rows) for rows in produced)
            produced.append(batch.rows)
            yield batch

    write_stream(watched(), files, Progress(10, every_seconds=1e9, log=lambda line: None))
    files.finish({"num_images": 10})
    np.testing.assert_array_equal(np.load(tmp_path / "embeddings.npy"), np.concatenate(produced))
    assert [line[1] for line in read_tsv(tmp_path / "projector/metadata.tsv")[1:]] == [
        "img0",
        "img3",
        "img6",
    ]
    assert json.loads((tmp_path / "embed.json").read_text()) == {"num_images": 10}
    assert not (tmp_path / ".embed-partial").exists()


def test_a_short_stream_is_refused_and_leaves_nothing(tmp_path):
    files = EmbeddingFiles(
        str(tmp_path), 10, ("key",), tensor_name="x", projector_max_images=3, thumbnail_size=8
    )
    write_stream(
        list(small_batches(10, 5, files))[:2], files, Progress(10, 1e9, log=lambda line: None)
    )
    with pytest.raises(ValueError, match="gave 8 images, not the 10"):
        files.finish({})
    files.discard()
    assert list(tmp_path.iterdir()) == []


def test_a_second_embedding_replaces_the_first(tmp_path):
    for count in (10, 6):
        files = EmbeddingFiles(
            str(tmp_path),
            count,
            ("key",),
            tensor_name="x",
            projector_max_images=4,
            thumbnail_size=8,
        )
        write_stream(small_batches(count, 5, files), files, Progress(count, 1e9, log=print))
        files.finish({"num_images": count})
    assert np.load(tmp_path / "embeddings.npy").shape == (6, 5)
    assert [line[1] for line in read_tsv(tmp_path / "projector/metadata.tsv")[1:]] == [
        "img0",
        "img1",
        "img3",
        "img4",
    ]
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(OUTPUTS)


def test_progress_lines_give_images_per_second_and_time_left():
    now = [100.0]
    lines = []
    progress = Progress(1000, every_seconds=10, clock=lambda: now[0], log=lines.append)
    for _ in range(4):
        now[0] += 4
        progress.update(100)
    now[0] += 4
    progress.update(600)  # the last batch is always logged
    assert lines == [
        "embedded 300/1,000 images (30%), 25 images/s, 28 s left",
        "embedded 1,000/1,000 images (100%), 50 images/s, 0 s left",
    ]
    assert progress.rate() == 50


# 100,000 rows of 512 floats (205 MB) through EmbeddingFiles in batches of 1,000, in a fresh
# process without TensorFlow: the resident memory it gains (VmRSS, sampled after every batch)
# is printed with the sizes of a batch and of the sprite.
BOUNDED_MEMORY = """
    import json, sys
    import numpy as np
    from tf_simclr.embed_files import EmbeddingFiles

    def rss() -> int:
        with open("/proc/self/status") as status:
            line = next(line for line in status if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    count, width, size = 100_000, 512, 1_000
    files = EmbeddingFiles(sys.argv[1], count, ("key",), tensor_name="x",
                           projector_max_images=2_000, thumbnail_size=32)
    rng = np.random.default_rng(0)
    base = peak = rss()
    for start in range(0, count, size):
        shown = files.projector_rows(start, start + size)
        thumbnails = rng.integers(0, 256, (len(shown), 32, 32, 3), dtype=np.uint8)
        rows = rng.standard_normal((size, width), dtype=np.float32)
        files.write(rows, [(f"image{i}",) for i in range(start, start + size)], thumbnails)
        peak = max(peak, rss())
    files.finish({})
    print(json.dumps({"growth": peak - base, "batch": rows.nbytes, "sprite": files.sprite.nbytes}))
"""


def test_memory_stays_bounded_on_100000_rows(tmp_path):
    result = run_python(BOUNDED_MEMORY, str(tmp_path), check=True)
    sizes = json.loads(result.stdout.strip().splitlines()[-1])
    # Bound: the sprite, a few batches (the rows, their metadata lines and TSV text, numpy's
    # temporaries) and 32 MB for the allocator; holding the rows would add 205 MB.
    assert sizes["growth"] < sizes["sprite"] + 4 * sizes["batch"] + 32 * 2**20, sizes
    rows = np.load(tmp_path / "embeddings.npy", mmap_mode="r")
    assert rows.shape == (100_000, 512) and rows.dtype == np.float32
