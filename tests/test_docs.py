"""The README and docs/ hold together: every link points at a file that exists or a heading that does
(GitHub's anchors), and the README's contents list names every section of the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.mocks import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path: Path) -> set[str]:
    """GitHub's anchor of each heading: lower case, punctuation but `-` and `_` dropped, spaces to `-`."""
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    found = set()
    for heading in re.findall(r"(?m)^#{1,6} (.+)$", text):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        found.add(slug)
    return found


def links(path: Path) -> list[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", path.read_text())
    return [target for target in LINK.findall(text) if not target.startswith(("http://", "https://"))]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_link_resolves(doc: Path) -> None:
    for target in links(doc):
        file_part, _, anchor = target.partition("#")
        linked = (doc.parent / file_part).resolve() if file_part else doc
        assert linked.exists(), f"{doc.name}: {target} names no file"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{doc.name}: {target} names no heading of {linked.name}"


def test_the_contents_list_names_every_section_of_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    contents = readme.split("## Contents", 1)[1].split("\n## ", 1)[0]
    listed = {target.partition("#")[2] for target in LINK.findall(contents) if target.startswith("#")}
    sections = {
        re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"(?m)^## (.+)$", re.sub(r"(?ms)^```.*?^```", "", readme))
    }
    assert sections - {"contents"} <= listed, sections - {"contents"} - listed


def test_the_readme_opens_with_the_quick_start_and_its_cost_before_any_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert quick.index("What it costs") < quick.index("```sh"), "the cost comes before the first command"
    assert "pulumi up" in quick and "venv/bin/python -m pytest" in quick and "pulumi destroy" in quick
