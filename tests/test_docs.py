"""The documentation's links resolve: every relative link (and image) in README.md,
BENCHMARKS.md, docs/*.md and export/*.md names a file or folder of the repository, and a
``#anchor`` names a heading of the target Markdown file under GitHub's slug rules. Every page of
docs/ is linked from the README, and every file in docs/ is linked from some document (nothing
stale is left there)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from binary_runs import REPO_ROOT

# Inline links and images, [text](target "title") / ![alt](target), and reference definitions.
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)


def documents() -> list[Path]:
    """The Markdown files whose links are checked."""
    paths = [REPO_ROOT / "README.md", REPO_ROOT / "BENCHMARKS.md"]
    paths += sorted((REPO_ROOT / "docs").glob("*.md")) + sorted((REPO_ROOT / "export").glob("*.md"))
    return paths


def prose(markdown: str) -> str:
    """``markdown`` without its fenced code blocks and inline code spans, whose brackets and
    ``#`` lines are not links or headings."""
    without_blocks = re.sub(r"^(`{3,}|~{3,}).*?^\1[ \t]*$", "", markdown, flags=re.M | re.S)
    return re.sub(r"(`+)(?!`).+?(?<!`)\1(?!`)", lambda match: _link_text(match[0]), without_blocks)


def _link_text(span: str) -> str:
    """A code span as the text it shows, kept where it is the text of a link (``[`a`](b)``)
    but unable to open a link or a heading of its own."""
    return span.replace("[", "(").replace("]", ")").replace("#", "")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: Markdown emphasis, code marks and link targets dropped,
    lowercased, punctuation other than ``-`` and ``_`` removed, each space a ``-``."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[*`]", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of the headings of the Markdown file ``path`` (repeats get ``-1``, ``-2``)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for match in re.finditer(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", prose(path.read_text()), re.M):
        slug = github_slug(match[1])
        repeat = counts.get(slug, 0)
        counts[slug] = repeat + 1
        found.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return found


def relative_links(path: Path) -> list[str]:
    """The targets of the relative links (and images) of the Markdown file ``path``."""
    text = prose(path.read_text(encoding="utf-8"))
    targets = [match[1] for match in INLINE_LINK.finditer(text)]
    targets += [match[1] for match in REFERENCE_DEFINITION.finditer(text)]
    return [target for target in targets if not EXTERNAL.match(target)]


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that name no file, or no heading of their target."""
    broken = []
    for link in relative_links(path):
        target, _, anchor = link.partition("#")
        resolved = (path.parent / target).resolve() if target else path
        if not resolved.exists() or REPO_ROOT not in (resolved, *resolved.parents):
            broken.append(f"{link}: no such file in the repository")
        elif anchor and (resolved.suffix != ".md" or anchor not in anchors(resolved)):
            broken.append(f"{link}: no heading #{anchor} in {resolved.relative_to(REPO_ROOT)}")
    return broken


@pytest.mark.parametrize("path", documents(), ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_every_relative_link_resolves(path):
    assert not broken_links(path), f"{path.relative_to(REPO_ROOT)}: {broken_links(path)}"


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO_ROOT / "README.md"
    linked = {(readme.parent / link.partition("#")[0]).resolve() for link in relative_links(readme)}
    pages = set((REPO_ROOT / "docs").glob("*.md"))
    assert pages, "docs/ holds the reference pages"
    assert not pages - linked, f"link these pages from README.md: {sorted(pages - linked)}"


def test_every_file_in_docs_is_linked():
    linked = {
        (path.parent / link.partition("#")[0]).resolve()
        for path in documents()
        for link in relative_links(path)
    }
    files = {path for path in (REPO_ROOT / "docs").rglob("*") if path.is_file()}
    assert not files - linked, f"unlinked (stale?) files in docs/: {sorted(files - linked)}"


def test_slugs_follow_github():
    assert github_slug("Label efficiency on Fashion-MNIST (`bench/label_efficiency.py`)") == (
        "label-efficiency-on-fashion-mnist-benchlabel_efficiencypy"
    )
    assert github_slug("The demo (`make demo`)") == "the-demo-make-demo"
    assert (
        github_slug("What happens when **things** go wrong?") == "what-happens-when-things-go-wrong"
    )
    assert github_slug("Distribution, precision, XLA") == "distribution-precision-xla"


def test_a_broken_link_or_anchor_is_reported(tmp_path, monkeypatch):
    monkeypatch.setitem(globals(), "REPO_ROOT", tmp_path)
    (tmp_path / "a.md").write_text("# Title\n\n## Same\n\n## Same\n\n```sh\n# not a heading\n```\n")
    page = tmp_path / "b.md"
    page.write_text(
        "[ok](a.md#title) [repeat](a.md#same-1) [gone](missing.md) [bad](a.md#not-a-heading)\n"
        "[code](a.md#same-2) `[not a link](nowhere.md)` [web](https://example.com/x.md)\n"
        "![image](pic.png)\n\n[ref]: other.md\n"
    )
    assert relative_links(page) == [
        "a.md#title",
        "a.md#same-1",
        "missing.md",
        "a.md#not-a-heading",
        "a.md#same-2",
        "pic.png",
        "other.md",
    ]
    assert broken_links(page) == [
        "missing.md: no such file in the repository",
        "a.md#not-a-heading: no heading #not-a-heading in a.md",
        "a.md#same-2: no heading #same-2 in a.md",
        "pic.png: no such file in the repository",
        "other.md: no such file in the repository",
    ]
