"""The Bazel BUILD file stays in step with the package: every module belongs to a target."""

from __future__ import annotations

import glob
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def covered_files() -> set[str]:
    """Files named by the BUILD file's ``srcs``, with its globs expanded."""
    with open(os.path.join(ROOT, "BUILD"), encoding="utf-8") as handle:
        text = handle.read()
    covered: set[str] = set()
    for pattern in re.findall(r'glob\(\["([^"]+)"', text):
        covered.update(
            os.path.relpath(path, ROOT)
            for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)
        )
    for block in re.findall(r"srcs = \[([^\]]*)\]", text):
        covered.update(re.findall(r'"([^"$]+\.py)"', block))
    return covered


def test_every_module_is_in_a_build_target():
    modules = {
        os.path.relpath(path, ROOT)
        for folder in ("tf_simclr", "export")
        for path in glob.glob(os.path.join(ROOT, folder, "**", "*.py"), recursive=True)
        if not path.startswith(os.path.join(ROOT, "export", "examples"))
    }
    missing = sorted(modules - covered_files())
    assert not missing, f"add these modules to a target in BUILD: {missing}"


def test_every_test_file_has_a_py_test():
    tests = {
        os.path.relpath(path, ROOT) for path in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
    }
    assert tests and tests <= covered_files()
