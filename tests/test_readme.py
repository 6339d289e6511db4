"""The README's "Your own images" commands, run as written on a small folder of JPEGs from
another working directory (only the training length and batch sizes shortened): pretraining,
fine-tuning on 10% of the labels and distillation each succeed, and the fine-tuned module
carries the folder's class names."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from binary_runs import REPO_ROOT, assert_succeeded, binary_command, finish, read_json, start
from PIL import Image

from tf_simclr.hub import read_module_info

MARKER = "<!-- own-images:"
CLASSES = ("circle", "square")
# Shorter than the recipes (which train for minutes): a few steps at 32 px.
SHORTER = (
    "--train_steps=3",
    "--image_size=32",
    "--train_batch_size=8",
    "--eval_batch_size=8",
    "--knn_bank_size=20",
    "--knn_k=5",
)


def own_images_commands() -> list[list[str]]:
    """The ``tf-simclr`` commands of the README block after the own-images marker."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], flags=re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("tf-simclr ")]


def write_photos(folder: Path) -> None:
    """``folder/{train,test}/<class>/<i>.jpg``: bright discs or squares on noise, 48x40 px."""
    rng = np.random.default_rng(0)
    rows, columns = np.mgrid[:40, :48]
    for split, count in (("train", 12), ("test", 4)):
        for label, name in enumerate(CLASSES):
            (folder / split / name).mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 120, (40, 48, 3), dtype=np.uint8)
                y, x = rng.integers(12, 28), rng.integers(12, 36)
                shape = (
                    (rows - y) ** 2 + (columns - x) ** 2 < 80
                    if label == 0
                    else (abs(rows - y) < 8) & (abs(columns - x) < 8)
                )
                pixels[shape] = rng.integers(180, 256, 3)
                Image.fromarray(pixels).save(folder / split / name / f"{index}.jpg", quality=90)


def test_the_readme_names_four_commands_three_of_them_runs():
    commands = own_images_commands()
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```sh\n(.*?)```", text[text.index(MARKER) :], flags=re.S).group(1)
    assert len(block.strip().splitlines()) == 4
    assert [command[1] for command in commands] == [
        "--flagfile=flags/folder/pretrain.flags",
        "--flagfile=flags/folder/finetune_10pct.flags",
        "--flagfile=flags/folder/distill.flags",
    ]


@pytest.mark.slow
def test_the_own_images_commands_work_from_another_directory(tmp_path):
    write_photos(tmp_path / "photos")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    results = {}
    for command in own_images_commands():
        arguments = [
            arg.replace("--flagfile=flags/", f"--flagfile={REPO_ROOT / 'flags'}/")
            .replace("folder:photos", f"folder:{tmp_path / 'photos'}")
            .replace("runs/photos/", f"{tmp_path / 'runs'}/")
            for arg in command[1:]
        ]
        model_dir = Path(next(a for a in arguments if a.startswith("--model_dir=")).split("=")[1])
        log = tmp_path / f"{model_dir.name}.log"
        assert_succeeded(finish(start(binary_command(*arguments, *SHORTER), log, cwd=elsewhere)))
        results[model_dir.name] = read_json(model_dir / "result.json")

    assert set(results) == {"pretrain", "finetune", "distill"}
    assert 0 <= results["pretrain"]["eval"]["knn_top_1_accuracy"] <= 1
    for phase in ("finetune", "distill"):
        assert results[phase]["eval"]["num_examples"] == 2 * 4  # photos/test/
    module = tmp_path / "runs" / "finetune" / "hub" / "3"
    assert read_module_info(str(module)).class_names == CLASSES
    labeled = (tmp_path / "runs" / "finetune" / "labels_subset.txt").read_text().splitlines()
    assert len([line for line in labeled if line and not line.startswith("#")]) == 2  # 10% of 24
