"""The built book: every toc page exists, assets are local, chapters with widgets render and run offline.

Needs the built book (`make book`). Chapter authors: add your widget's "responds" test in
tests/e2e/test_<stem>.py with the `open_chapter` fixture (see conftest.py).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from .conftest import ROOT, chapter_url, wait_for_book_page, widget_views

# Chapters whose built page must show at least one working anywidget. LLM101N_E2E_WIDGET_PAGES
# (comma-separated stems) replaces the list, e.g. to dry-run the tests on a preview page.
DEFAULT_WIDGET_PAGES = (
    "ch01_bigram,ch02_micrograd,ch03_mlp,ch04_attention,ch05_gpt2,ch06_tokenization,ch11_datasets,ch12_kvcache,"
    "ch09_precision,ch14_sft,ch15_rl,ch17_multimodal,appendix_a_tensors"
)
WIDGET_CHAPTERS = [s for s in os.environ.get("LLM101N_E2E_WIDGET_PAGES", DEFAULT_WIDGET_PAGES).split(",") if s]
MATH_CHAPTER = WIDGET_CHAPTERS[0] if WIDGET_CHAPTERS else "ch01_bigram"


def toc_files(toc: Path = ROOT / "_toc.yml") -> list[str]:
    """Every file of the table of contents, in order, without extension (e.g. 'book/ch01_bigram')."""
    data = yaml.safe_load(toc.read_text())
    out = [data["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                out.append(e["file"])
            walk(e.get("sections"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return out


def test_toc_lists_the_17_chapters_and_the_appendix():
    stems = [Path(f).name for f in toc_files()]
    chapters = [s for s in stems if re.fullmatch(r"ch\d\d_\w+", s)]
    assert [int(s[2:4]) for s in chapters] == list(range(1, 18)), f"chapters 1..17 in order, got {chapters}"
    assert {"ch01_bigram", "ch02_micrograd"} <= set(chapters)
    assert sum(s.startswith("appendix_") for s in stems) == 5, stems


@pytest.mark.parametrize("docname", toc_files())
def test_every_toc_page_is_built(book_dir, docname):
    page = book_dir / f"{docname}.html"
    assert page.is_file(), f"{docname} is in _toc.yml but {page.relative_to(ROOT)} was not built (run `make book`)"
    sources = [p for p in (ROOT / docname).parent.glob(Path(docname).name + ".*") if p.suffix in (".md", ".ipynb")]
    assert len(sources) == 1, f"{docname}: exactly one source expected (.md placeholder OR .ipynb), found {sources}"


_ASSET_PATTERNS = [
    re.compile(r"<script\b[^>]*\bsrc=[\"']([^\"']+)", re.I),
    re.compile(r"<link\b[^>]*\bhref=[\"']([^\"']+)[\"'][^>]*>", re.I),
    re.compile(r"<img\b[^>]*\bsrc=[\"']([^\"']+)", re.I),
    re.compile(r"<iframe\b[^>]*\bsrc=[\"']([^\"']+)", re.I),
    re.compile(r"url\(\s*[\"']?((?:https?:)?//[^\"')\s]+)", re.I),
    re.compile(r"@import\s+[\"']((?:https?:)?//[^\"']+)", re.I),
]
_LINK_RELS_THAT_LOAD = re.compile(
    r"\brel=[\"'](?:stylesheet|preload|modulepreload|icon|shortcut icon|prefetch|preconnect|dns-prefetch|manifest)"
    r"[\"']",
    re.I,
)


def _offsite(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.netloc) or parts.scheme not in ("", "data", "blob")


def test_no_page_or_stylesheet_loads_anything_off_site(book_dir):
    """Static audit of every HTML page and every CSS file: scripts, styles, fonts, images are local."""
    bad = []
    for f in sorted(book_dir.rglob("*.html")) + sorted((book_dir / "_static").rglob("*.css")):
        text = f.read_text(errors="replace")
        for pat in _ASSET_PATTERNS:
            for m in pat.finditer(text):
                if pat.pattern.startswith("<link") and not _LINK_RELS_THAT_LOAD.search(m.group(0)):
                    continue  # <link rel="next"> etc. are navigation, not loads
                if _offsite(m.group(1)):
                    bad.append(f"{f.relative_to(book_dir)}: {m.group(1)}")
    assert not bad, "off-site assets (the book must be self-contained):\n  " + "\n  ".join(bad[:40])


@pytest.mark.parametrize("docname", toc_files())
def test_no_directive_is_left_unparsed(book_dir, docname):
    """A MyST directive that did not parse shows up as its source text, e.g. a ```{admonition} fence whose title
    holds backticks (not allowed in a backtick fence's info string: use a ::: fence)."""
    html = (book_dir / f"{docname}.html").read_text()
    text = re.sub(r"<pre[\s\S]*?</pre>", "", html)  # code cells may show directives on purpose
    left = re.findall(r"(?:```|~~~|:::)\s*\{[a-z-]+\}[^<\n]{0,60}", text)
    assert not left, f"{docname}: directives rendered as text (not parsed): {left[:3]}"


def _plotting_notebooks() -> list[str]:
    """Book notebooks whose code draws with matplotlib (their built pages must show the figures)."""
    out = []
    for nb in sorted((ROOT / "book").glob("*.ipynb")):
        cells = json.loads(nb.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        if re.search(r"\bplt\.|matplotlib", code):
            out.append(nb.stem)
    return out


@pytest.mark.parametrize("stem", _plotting_notebooks())
def test_plots_are_in_the_built_page(book_dir, stem):
    """A notebook that plots must show its figures (an Agg backend once made every plt.show() a no-op)."""
    html = (book_dir / "book" / f"{stem}.html").read_text()
    images = re.findall(r'<img\b[^>]*\bsrc="([^"]+\.(?:png|svg|jpg))"', html)
    assert images, f"{stem}: the notebook plots with matplotlib but its built page has no image"
    for src in images:
        assert (book_dir / "book" / src).resolve().is_file(), f"{stem}: image {src} is missing from the site"


@pytest.mark.parametrize("stem", WIDGET_CHAPTERS)
def test_widget_state_was_saved_when_the_chapter_executed(book_dir, stem):
    html = (book_dir / "book" / f"{stem}.html")
    assert html.is_file(), f"book/{stem}.html was not built"
    text = html.read_text()
    m = re.search(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', text, re.S)
    assert m, f"{stem}: no widget state in the page (was the notebook executed with its widgets displayed?)"
    state = json.loads(m.group(1))["state"]
    modules = {v.get("model_module") for v in state.values()}
    assert "anywidget" in modules, (
        f"{stem}: the saved widget state holds no anywidget model, only {sorted(map(str, modules))}")
    for p in ("_static/require.js", "_static/jupyter-widgets/embed-amd.js", "_static/llm101n-widgets-config.js"):
        assert p in text, f"{stem}: {p} is not loaded by the page"


@pytest.mark.parametrize("stem", WIDGET_CHAPTERS)
def test_chapter_renders_its_anywidgets_without_errors(open_chapter, stem):
    page = open_chapter(stem, min_widgets=1)
    views = widget_views(page)
    any_views = [v for v in views if v["model_module"] == "anywidget"]
    assert any_views, f"{stem}: no anywidget view on the page; views: {views}"
    not_rendered = [v for v in views if not v["rendered"]]
    assert not not_rendered, f"{stem}: widget view(s) rendered nothing: {not_rendered}"
    # the page fixture also fails the test on console errors and off-site requests


def test_mathjax_typesets_the_first_widget_chapter(open_chapter):
    page = open_chapter(MATH_CHAPTER, min_widgets=0)
    n = page.locator("mjx-container").count()
    assert n >= 1, f"{MATH_CHAPTER}: MathJax typeset no formula (is there $...$ math in the chapter?)"
    assert page.evaluate("() => !!(window.MathJax && MathJax.version && MathJax.version.startsWith('3'))")


def test_the_site_root_serves_a_favicon_ico(book_dir):
    """Chromium asks for /favicon.ico for a page without <link rel="icon">: jupyter-book's redirecting index.html.
    On a busy machine it asks before the redirect lands, and a 404 is a console error (issue #15)."""
    ico = book_dir / "favicon.ico"
    assert ico.is_file(), "no favicon.ico at the site root (_config.yml: html_extra_path: [book/favicon.ico])"
    assert ico.read_bytes()[:4] == b"\0\0\1\0", f"{ico} is not an ICO file"


def test_landing_page_and_every_toc_page_load_offline(page, book_server):
    resp = page.goto(book_server, wait_until="load")  # index.html redirects to book/intro.html
    assert resp is not None and resp.ok
    page.wait_for_url("**/book/intro.html")
    assert "Storyteller" in page.title(), page.title()
    for docname in toc_files():
        resp = page.goto(f"{book_server}{docname}.html", wait_until="load")
        assert resp is not None and resp.ok, f"{docname}: HTTP {resp and resp.status}"
        wait_for_book_page(page)


def test_chapter_url_helper(book_server):
    assert chapter_url(book_server, "ch01_bigram").endswith("/book/ch01_bigram.html")
