"""The Bazel BUILD file stays in step with the package: every module belongs to a target, every
``tf_simclr`` import of a target is provided by the target or one of its direct deps, and exactly
the test files with ``@pytest.mark.slow`` tests carry the ``slow`` tag.

A BUILD file is Starlark, a dialect of Python: it is read here by executing it with stand-ins for
Bazel's functions that record each target's attributes.
"""

from __future__ import annotations

import ast
import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def bazel_glob(include: list[str], exclude: tuple[str, ...] = ()) -> list[str]:
    """Bazel's ``glob``: workspace-relative files matching ``include`` and not ``exclude``."""

    def expand(patterns) -> set[str]:
        return {
            os.path.relpath(path, ROOT)
            for pattern in patterns
            for path in glob.glob(os.path.join(ROOT, pattern), recursive=True)
            if os.path.isfile(path)
        }

    return sorted(expand(include) - expand(exclude))


def read_build() -> dict[str, dict]:
    """The targets of BUILD by name: each one's kind and attributes, globs expanded."""
    targets: dict[str, dict] = {}

    def rule(kind: str):
        def record(**attributes) -> None:
            targets[attributes["name"]] = {"kind": kind, **attributes}

        return record

    namespace = {"package": lambda **_: None, "glob": bazel_glob}
    namespace.update((kind, rule(kind)) for kind in ("py_library", "py_binary", "py_test"))
    with open(os.path.join(ROOT, "BUILD"), encoding="utf-8") as handle:
        exec(compile(handle.read(), "BUILD", "exec"), namespace)
    return targets


def module_file(name: str) -> str | None:
    """The source file of module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    base = name.replace(".", "/")
    for path in (f"{base}.py", f"{base}/__init__.py"):
        if os.path.isfile(os.path.join(ROOT, path)):
            return path
    return None


def tf_simclr_imports(source: str) -> set[str]:
    """Files of the ``tf_simclr`` modules that ``source`` imports, at any depth of its code.

    ``from package import name`` imports the submodule ``package.name`` when there is one, else
    ``package`` itself. The parent packages' ``__init__.py`` files, which Python runs too, are not
    counted: every library would otherwise need the ``tf_simclr`` target, and Python 3 imports a
    package whose ``__init__.py`` is absent from the runfiles as a namespace package.
    """
    with open(os.path.join(ROOT, source), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), source)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            package = node.module or ""
            if node.level:  # relative: from the importing file's package, up level - 1 times
                parts = os.path.dirname(source).split("/")
                parts = parts[: len(parts) - node.level + 1]
                package = ".".join([*parts, package] if package else parts)
            for alias in node.names:
                submodule = f"{package}.{alias.name}"
                names.add(submodule if module_file(submodule) else package)
    files = {module_file(name) for name in names if name.split(".")[0] == "tf_simclr"}
    assert None not in files, f"{source} imports a tf_simclr module that does not exist"
    return files


def label_name(label: str) -> str:
    """``":name"`` or ``"//:name"`` -> ``"name"``."""
    return label.split(":")[-1]


def covered_files() -> set[str]:
    """Files named by the targets' ``srcs``."""
    return {source for target in read_build().values() for source in target.get("srcs", [])}


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


def test_deps_provide_every_tf_simclr_import():
    targets = read_build()
    missing = {}
    for name, target in targets.items():
        provided = set(target.get("srcs", []))
        for dep in target.get("deps", []):
            provided.update(targets[label_name(dep)].get("srcs", []))
        for source in target.get("srcs", []):
            for module in sorted(tf_simclr_imports(source) - provided):
                missing.setdefault(name, []).append(f"{module} (imported by {source})")
    assert not missing, f"add deps to these BUILD targets: {missing}"


def uses_slow_mark(source: str) -> bool:
    """Whether ``source`` marks tests with ``pytest.mark.slow``."""
    with open(os.path.join(ROOT, source), encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), source)
    return any(
        isinstance(node, ast.Attribute) and ast.unparse(node) == "pytest.mark.slow"
        for node in ast.walk(tree)
    )


def test_slow_tag_marks_the_files_with_slow_tests():
    for target in read_build().values():
        if target["kind"] == "py_test":
            (test_file,) = [source for source in target["srcs"] if "/test_" in source]
            has_slow_tests = uses_slow_mark(test_file)
            tagged = "slow" in target.get("tags", [])
            assert tagged == has_slow_tests, f"{target['name']}: tag 'slow' iff it has slow tests"
