"""Every number a book page takes from a benchmark is traceable: the result file it names exists, and the page's
code opens it. And the book speaks to the reader, not about the project."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "book").glob("*.ipynb")) + sorted((ROOT / "book").glob("*.md"))
RESULT = re.compile(r"bench/results/([\w.-]+\.json)")
# phrases of a project report, not of a textbook (a lab may still set the reader a goal for their own kernel)
PROJECT_TALK = ("target not met", "the course's target", "issue #")


def _cells(page: Path) -> list[tuple[str, str]]:
    """(cell type, source) of a page: a notebook's cells, or a Markdown page as one markdown cell."""
    if page.suffix == ".md":
        return [("markdown", page.read_text(encoding="utf-8"))]
    return [(c.cell_type, c.source) for c in nbformat.read(page, as_version=4).cells]


def test_the_book_has_pages():
    assert len(PAGES) > 10 and any(p.suffix == ".md" for p in PAGES), PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_result_file_a_page_names_exists_and_is_loaded(page):
    cells = _cells(page)
    named = {m.group(1) for _, source in cells for m in RESULT.finditer(source)}
    missing = sorted(n for n in named if not (ROOT / "bench" / "results" / n).is_file())
    assert not missing, f"{page.name} names result files that do not exist: {missing}"
    if page.suffix == ".ipynb":
        code = "\n".join(source for kind, source in cells if kind == "code")
        unloaded = sorted(n for n in named if n not in code)
        assert not unloaded, (f"{page.name} names {unloaded} but no code cell of it loads them: a number the "
                              "reader is shown must come from a cell of the page")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_page_reads_like_a_project_report(page):
    prose = "\n".join(source for kind, source in _cells(page) if kind == "markdown").lower()
    found = [phrase for phrase in PROJECT_TALK if phrase in prose]
    assert not found, f"{page.name}: {found} (say what the measurement shows and why, not how the project did)"
