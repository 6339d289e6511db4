"""The wheel built from this repository stands on its own: installed into an empty folder and
used from outside the checkout, every module of ``tf_simclr`` imports, both console scripts start,
and ``tf_simclr`` is the only top-level package it ships.

The wheel is built offline (no index, no build isolation) from a copy of the checkout, so that a
stale ``build/`` folder cannot leak into it and the checkout is not written to. The installed
package runs in a Python started with ``-S``: the venv's editable install of this repository
(a ``.pth`` file) would otherwise find in the checkout any module the wheel lacks, so
``PYTHONPATH`` names the install folder and then the venv's site-packages (TensorFlow and the
other dependencies) explicitly.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import sysconfig
import zipfile
from importlib.metadata import distributions

import pytest
from binary_runs import REPO_ROOT, ChildResult, child_env, run_child

pytestmark = pytest.mark.slow

# What a checkout holds besides its sources (.git, .venv, caches, build output, runs).
NOT_SOURCES = shutil.ignore_patterns(
    ".*", "build", "dist", "*.egg-info", "__pycache__", "runs", "*_run", "bazel-*"
)
CONSOLE_SCRIPTS = {
    "tf-simclr": "tf_simclr.run:run_main",
    "tf-simclr-export": "tf_simclr.export_hub:run_main",
    "tf-simclr-embed": "tf_simclr.embed_main:run_main",
}
# Imports every module of the installed package; prints {module name: file}.
IMPORT_EVERY_MODULE = """
import importlib, json, pkgutil
import tf_simclr
files = {"tf_simclr": tf_simclr.__file__}
for info in pkgutil.walk_packages(tf_simclr.__path__, "tf_simclr."):
    files[info.name] = importlib.import_module(info.name).__file__
print(json.dumps(files))
"""
# Calls the console script named by argv[1] whose entry point is argv[2], with argv[3:].
RUN_CONSOLE_SCRIPT = """
import sys
from importlib.metadata import EntryPoint
name, value, *flags = sys.argv[1:]
sys.argv = [name, *flags]
EntryPoint(name, value, "console_scripts").load()()
"""


@dataclasses.dataclass(frozen=True)
class Installed:
    """A wheel built from the checkout, installed with ``pip install --target site``."""

    wheel: pathlib.Path
    site: pathlib.Path
    workdir: pathlib.Path  # empty, outside the checkout: the installed package's working directory


def pip(*args: str) -> None:
    """Run ``python -m pip ARGS`` offline."""
    run_child(
        [sys.executable, "-m", "pip", *args, "--no-index", "--disable-pip-version-check"],
        check=True,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    shutil.copytree(REPO_ROOT, source, symlinks=True, ignore=NOT_SOURCES)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source))
    (wheel,) = (root / "dist").glob("*.whl")
    pip("install", "--no-deps", "--target", str(root / "site"), str(wheel))
    (root / "work").mkdir()
    return Installed(wheel=wheel, site=root / "site", workdir=root / "work")


def run_installed(installed: Installed, code: str, *args: str) -> ChildResult:
    """``python -S -c CODE ARGS`` seeing the installed wheel and the venv's dependencies only."""
    paths = sysconfig.get_paths()
    site_packages = dict.fromkeys([paths["purelib"], paths["platlib"]])
    pythonpath = os.pathsep.join([str(installed.site), *site_packages])
    return run_child(
        [sys.executable, "-S", "-c", code, *args],
        cwd=installed.workdir,
        env=child_env(PYTHONPATH=pythonpath),
    )


def source_modules() -> set[str]:
    """Dotted names of every module of the checkout's ``tf_simclr``."""
    names = set()
    for path in (REPO_ROOT / "tf_simclr").rglob("*.py"):
        parts = path.relative_to(REPO_ROOT).with_suffix("").parts
        names.add(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_wheel_ships_tf_simclr_alone(installed):
    with zipfile.ZipFile(installed.wheel) as wheel:
        top_level = {name.split("/")[0] for name in wheel.namelist()}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"tf_simclr"}
    installed_names = {path.name for path in installed.site.iterdir()}
    assert not installed_names & {"export", "export.py"}


def test_every_module_imports_from_the_installed_wheel(installed):
    result = run_installed(installed, IMPORT_EVERY_MODULE)
    assert result.returncode == 0, f"stderr:\n{result.stderr[-5000:]}"
    files = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(files) == source_modules()
    outside = {
        name: file
        for name, file in files.items()
        if installed.site not in pathlib.Path(file).parents
    }
    assert not outside, f"modules not imported from the installed wheel: {outside}"


def test_console_scripts_start(installed):
    (distribution,) = distributions(name="tf-simclr", path=[str(installed.site)])
    declared = {
        entry_point.name: entry_point.value
        for entry_point in distribution.entry_points.select(group="console_scripts")
    }
    assert declared == CONSOLE_SCRIPTS
    for name, value in declared.items():
        # absl's --only_check_flags parses the flags and exits with 0 before main().
        result = run_installed(installed, RUN_CONSOLE_SCRIPT, name, value, "--only_check_flags")
        assert result.returncode == 0, f"{name}\nstderr:\n{result.stderr[-5000:]}"
        assert "All Abseil flags are valid" in result.stdout
