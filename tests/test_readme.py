"""Every fenced code block of README.md and export/SIGNATURES.md runs, as written, on small data.

A block the tests cannot run must not exist: :func:`block_steps` turns each block into the steps
that run it and refuses a block (or a line of a shell block) it has no rule for, so a new block
fails :func:`test_every_code_block_has_a_rule` until it runs here. The blocks run in a scratch
directory holding ``photos/`` (a small folder of JPEGs, two classes, ``train/`` and ``test/``)
and ``photo.jpg``, with these substitutions and nothing else:

- ``make TARGET`` is checked with ``make -n TARGET`` in the repository (the target exists and
  its recipe expands; ``make demo`` and ``make test`` themselves take minutes);
- ``. .venv/bin/activate``: the activation script of the interpreter running the tests exists
  (the tests already run inside that environment);
- Python blocks run as files in a fresh interpreter (this one), ``TF_USE_LEGACY_KERAS`` unset;
  in them, a string that starts a flag with a repository path (``"--flagfile=flags/...``) is made
  absolute and every ``"--model_dir=..."`` string is followed by :data:`SHORTER`'s flags, as
  the commands are shortened;
- ``tf-simclr``, ``tf-simclr-export`` and ``tf-simclr-embed`` run as ``python -m
  tf_simclr.run``, ``python -m tf_simclr.export_hub`` and ``python -m tf_simclr.embed_main``
  with this interpreter;
- repository paths in flags (``--flagfile=flags/...``, ``--checkpoint=pretrained/...``) are made
  absolute, so the commands run from another directory, as a user's would;
- every ``tf-simclr`` command is shortened by :data:`SHORTER` (a few steps of small batches at
  32 px, a one-batch evaluation), appended after the command's own flags;
- the placeholder ``MODEL_DIR`` is the own-images fine-tuning run, ``runs/photos/finetune``;
- the placeholder ``STEP`` in ``RUN/hub/STEP`` and ``RUN/ckpt/ckpt-STEP`` is the step of the
  newest module or checkpoint of the run ``RUN``;
- ``/tmp/`` is a folder of the scratch directory.

The README's own-images commands (after the ``<!-- own-images:`` marker) run first: the other
blocks use the modules they write.
"""

from __future__ import annotations

import dataclasses
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
from binary_runs import (
    REPO_ROOT,
    assert_succeeded,
    child_env,
    finish,
    read_json,
    run_child,
    start,
)
from PIL import Image

from tf_simclr.hub import read_module_info

DOCUMENTS = ("README.md", "export/SIGNATURES.md")
MARKER = "<!-- own-images:"
CLASSES = ("circle", "square")
# Shorter than the recipes (which train for minutes): a few steps at 32 px.
SHORTER = (
    "--train_steps=3",
    "--image_size=32",
    "--train_batch_size=8",
    "--eval_batch_size=8",
    "--eval_steps=1",
    "--knn_bank_size=20",
    "--knn_k=5",
)
MODEL_DIR = "runs/photos/finetune"
PROGRAMS = {
    "tf-simclr": [sys.executable, "-m", "tf_simclr.run"],
    "tf-simclr-export": [sys.executable, "-m", "tf_simclr.export_hub"],
    "tf-simclr-embed": [sys.executable, "-m", "tf_simclr.embed_main"],
}


@dataclasses.dataclass(frozen=True)
class Block:
    """A fenced code block: the document, the line of its opening fence, language and text."""

    document: str
    line: int
    language: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.document}:{self.line}"


@dataclasses.dataclass(frozen=True)
class Step:
    """One way of running (part of) a block: ``kind`` is ``make``, ``activate``, ``command``
    (a tf-simclr binary with its arguments) or ``python`` (``text`` is the program)."""

    kind: str
    arguments: tuple[str, ...] = ()
    text: str = ""


def code_blocks(document: str) -> list[Block]:
    """The fenced code blocks of ``document`` (a path relative to the repository), in order."""
    blocks, opening, language, lines = [], 0, "", []
    path = REPO_ROOT / document
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.startswith("```") and not opening:
            opening, language, lines = number, line[3:].strip(), []
        elif line.startswith("```"):
            blocks.append(Block(document, opening, language, "\n".join(lines) + "\n"))
            opening = 0
        elif opening:
            lines.append(line)
    assert not opening, f"{document}:{opening}: a code block is never closed"
    return blocks


def shell_commands(text: str) -> list[list[str]]:
    """The commands of a shell block: continuation lines joined, comments dropped, each
    ``a && b`` split into its commands."""
    commands = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            end = words.index("&&") if "&&" in words else len(words)
            commands.append(words[:end])
            words = words[end + 1 :]
    return commands


def block_steps(block: Block) -> list[Step]:
    """How ``block`` runs here (see the module docstring); ValueError for a block, or a line of
    a shell block, without a rule."""
    if block.language == "python":
        return [Step("python", text=block.text)]
    if block.language != "sh":
        raise ValueError(f"{block.where}: no rule runs a ```{block.language} block")
    steps = []
    for words in shell_commands(block.text):
        if words[0] == "make" and len(words) == 2:
            steps.append(Step("make", (words[1],)))
        elif words == [".", ".venv/bin/activate"]:
            steps.append(Step("activate"))
        elif words[0] in PROGRAMS:
            steps.append(Step("command", tuple(words)))
        else:
            raise ValueError(f"{block.where}: no rule runs {shlex.join(words)!r}")
    if not steps:
        raise ValueError(f"{block.where}: an empty shell block")
    return steps


def substitute(text: str, scratch: Path) -> str:
    """``text`` with the placeholders ``MODEL_DIR``, ``STEP`` and ``/tmp/`` replaced."""
    text = text.replace("MODEL_DIR", MODEL_DIR).replace("/tmp/", f"{scratch / 'tmp'}/")

    def module(match: re.Match) -> str:
        steps = [int(path.name) for path in (scratch / match[1] / "hub").iterdir()]
        return f"{match[1]}/hub/{max(steps)}"

    def checkpoint(match: re.Match) -> str:
        steps = [int(path.stem[len("ckpt-") :]) for path in (scratch / match[1]).glob("*.index")]
        return f"{match[1]}/ckpt-{max(steps)}"

    text = re.sub(r"([\w./-]+)/hub/STEP", module, text)
    return re.sub(r"([\w./-]+)/ckpt-STEP", checkpoint, text)


def command_line(words: tuple[str, ...], scratch: Path) -> list[str]:
    """The process that runs a documented ``tf-simclr`` or ``tf-simclr-export`` command."""
    arguments = [
        re.sub(r"^(--\w+=)(flags|pretrained)/", rf"\g<1>{REPO_ROOT}/\g<2>/", word)
        for word in (substitute(word, scratch) for word in words[1:])
    ]
    shorter = SHORTER if words[0] == "tf-simclr" else ()
    return [*PROGRAMS[words[0]], *arguments, *shorter]


def python_program(text: str, scratch: Path) -> str:
    """A documented Python block as it runs here (see the module docstring)."""
    # Placeholders first: a checkout under /tmp/ must not have its own path substituted.
    text = substitute(text, scratch)
    text = re.sub(r'"(--\w+=)(flags|pretrained)/', rf'"\g<1>{REPO_ROOT}/\g<2>/', text)
    shorter = "".join(f', "{flag}"' for flag in SHORTER)
    return re.sub(r'("--model_dir=[^"]*")', rf"\g<1>{shorter}", text)


def run_step(step: Step, scratch: Path, name: str) -> str:
    """Run ``step`` in ``scratch`` and return its output; fails the test if it fails."""
    if step.kind == "make":
        run_child(["make", "-n", *step.arguments], check=True)
        return ""
    if step.kind == "activate":
        assert (Path(sys.prefix) / "bin" / "activate").is_file()
        return ""
    if step.kind == "command":
        command = command_line(step.arguments, scratch)
        finished = finish(start(command, scratch / f"{name}.log", cwd=scratch))
        assert_succeeded(finished)
        return finished.output
    program = scratch / f"{name}.py"
    program.write_text(python_program(step.text, scratch), encoding="utf-8")
    # As a user runs it: without the TF_USE_LEGACY_KERAS the binaries' environment sets.
    result = run_child(
        [sys.executable, str(program)], cwd=scratch, env=child_env(TF_USE_LEGACY_KERAS=None)
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr[-5000:]}"
    return result.stdout


def run_block(block: Block, scratch: Path) -> str:
    """Run every step of ``block`` in ``scratch``; their output."""
    name = f"{Path(block.document).stem}_{block.line}"
    return "".join(
        run_step(step, scratch, f"{name}_{index}") for index, step in enumerate(block_steps(block))
    )


def own_images_block() -> Block:
    """The README block after the own-images marker."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    line = text[: text.index(MARKER)].count("\n") + 2
    (block,) = [block for block in code_blocks("README.md") if block.line == line]
    return block


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


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """The scratch directory after the README's own-images commands ran in it."""
    folder = tmp_path_factory.mktemp("readme")
    write_photos(folder / "photos")
    (folder / "photo.jpg").write_bytes((folder / "photos/test/square/0.jpg").read_bytes())
    (folder / "tmp").mkdir()
    run_block(own_images_block(), folder)
    return folder


def test_every_code_block_has_a_rule():
    blocks = [block for document in DOCUMENTS for block in code_blocks(document)]
    assert {block.document for block in blocks} == set(DOCUMENTS)
    for block in blocks:
        assert block_steps(block)


def test_a_block_without_a_rule_is_refused():
    with pytest.raises(ValueError, match="no rule runs 'pip install tf-simclr'"):
        block_steps(Block("README.md", 1, "sh", "make demo\npip install tf-simclr\n"))
    with pytest.raises(ValueError, match="no rule runs a ```text block"):
        block_steps(Block("README.md", 1, "text", "step 10/20\n"))


def test_the_substitutions_name_existing_runs(tmp_path):
    (tmp_path / MODEL_DIR / "hub" / "3").mkdir(parents=True)
    (tmp_path / MODEL_DIR / "hub" / "12").mkdir()
    (tmp_path / MODEL_DIR / "ckpt").mkdir()
    (tmp_path / MODEL_DIR / "ckpt" / "ckpt-9.index").touch()
    text = 'hub.load("MODEL_DIR/hub/STEP"); --checkpoint=MODEL_DIR/ckpt/ckpt-STEP --x=/tmp/m'
    assert substitute(text, tmp_path) == (
        f'hub.load("{MODEL_DIR}/hub/12"); --checkpoint={MODEL_DIR}/ckpt/ckpt-9 --x={tmp_path}/tmp/m'
    )


def test_python_blocks_are_shortened_like_the_commands(tmp_path):
    text = 'argv = ["--flagfile=flags/folder/", "--model_dir=runs/pt"]  # --model_dir=x\n'
    shorter = ", ".join(f'"{flag}"' for flag in SHORTER)
    assert python_program(text, tmp_path) == (
        f'argv = ["--flagfile={REPO_ROOT}/flags/folder/", "--model_dir=runs/pt", {shorter}]'
        "  # --model_dir=x\n"
    )


def test_the_own_images_block_is_install_and_three_phases():
    commands = shell_commands(own_images_block().text)
    assert commands[:2] == [["make", "install"], [".", ".venv/bin/activate"]]
    assert [command[:2] for command in commands[2:]] == [
        ["tf-simclr", "--flagfile=flags/folder/pretrain.flags"],
        ["tf-simclr", "--flagfile=flags/folder/finetune_10pct.flags"],
        ["tf-simclr", "--flagfile=flags/folder/finetune_10pct.flags"],
        ["tf-simclr", "--flagfile=flags/folder/distill.flags"],
    ]
    # The fine-tuning command, first with --print_config (which trains and writes nothing).
    assert commands[3] == [*commands[4], "--print_config"]


def test_make_n_fails_for_a_missing_target():
    with pytest.raises(AssertionError, match="exited with 2"):
        run_step(Step("make", ("no-such-target",)), REPO_ROOT, "make")


@pytest.mark.slow
def test_the_own_images_commands_train_evaluate_and_export(scratch):
    runs = scratch / "runs" / "photos"
    results = {phase: read_json(runs / phase / "result.json") for phase in ("pretrain", "distill")}
    results["finetune"] = read_json(scratch / MODEL_DIR / "result.json")
    assert 0 <= results["pretrain"]["eval"]["knn_top_1_accuracy"] <= 1
    for phase in ("finetune", "distill"):
        assert results[phase]["eval"]["num_examples"] == 8  # one batch of photos/test/
    assert read_module_info(str(scratch / MODEL_DIR / "hub" / "3")).class_names == CLASSES
    labeled = (scratch / MODEL_DIR / "labels_subset.txt").read_text().splitlines()
    assert len([line for line in labeled if line and not line.startswith("#")]) == 2  # 10% of 24


@pytest.mark.slow
def test_every_readme_block_runs(scratch):
    outputs = {
        block.line: run_block(block, scratch)
        for block in code_blocks("README.md")
        if block != own_images_block()
    }
    # The photo classified with the fine-tuned module's class names.
    assert any(output.strip() in CLASSES for output in outputs.values())
    assert read_json(scratch / "runs" / "finetune_1pct" / "result.json")["eval"]
    # Pretraining, fine-tuning and export from Python (tf_simclr.train).
    assert read_json(scratch / "runs" / "ft" / "result.json")["train"]["global_step"] == 3
    assert read_module_info(str(scratch / "runs" / "module")).class_names == CLASSES


@pytest.mark.slow
def test_every_signatures_block_runs(scratch):
    for block in code_blocks("export/SIGNATURES.md"):
        run_block(block, scratch)
    info = read_module_info(str(scratch / "tmp" / "module"))
    assert not info.class_names and "proj_head_output" not in info.signatures


def test_a_python_block_that_fails_fails_the_test(tmp_path):
    with pytest.raises(AssertionError, match="NameError: name 'hidden' is not defined"):
        run_step(Step("python", text="print(hidden)\n"), tmp_path, "undefined")
