"""docs/README.md links every page of docs/ (and only existing ones), and the README links it."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


def test_every_doc_is_in_the_index_and_every_link_resolves() -> None:
    index = (DOCS / "README.md").read_text()
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", index)
    assert all((DOCS / link).resolve().exists() for link in links), [x for x in links if not (DOCS / x).exists()]
    pages = {p.name for p in DOCS.glob("*.md")} - {"README.md"}
    linked = {pathlib.PurePosixPath(link).name for link in links}
    assert sorted(pages - linked) == [], "pages missing from docs/README.md"


def test_the_readme_links_the_index() -> None:
    assert "(docs/README.md)" in (ROOT / "README.md").read_text()
