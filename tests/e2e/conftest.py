"""End-to-end fixtures: the built book, served on 127.0.0.1, read by headless Chromium.

The book must be built first (`make book`, i.e. scripts/build_book.sh); these tests never build it
and never skip when it is missing.

For chapter authors, a widget test is three lines::

    def test_counts_widget_responds(open_chapter):
        page = open_chapter("ch01_bigram")            # loaded, widgets rendered, MathJax done
        page.locator(".bigram-cell").first.click()
        expect(page.locator(".bigram-readout")).to_contain_text("P(")

Every page made by the `page` fixture records its requests and console; at teardown the test fails
if any request left 127.0.0.1 or the page raised an uncaught JavaScript error. `assert_offline`
and `assert_no_console_errors` check the same thing mid-test.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOK_HTML = ROOT / "_build" / "html"
CHROMIUM = os.environ.get("LLM101N_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1"}
LOCAL_SCHEMES = {"blob", "data", "about"}  # anywidget imports its _esm from a blob: URL
# Console errors that are not ours to fix and do not affect the reader (substrings); none so far.
IGNORED_CONSOLE: tuple[str, ...] = ()

# DOM of a rendered widget (ipywidgets html-manager): <div class="widget-subarea"> holds the view,
# whose root is a Lumino widget. anywidget views render into that root element.
WIDGET_VIEW_SCRIPT = 'script[type="application/vnd.jupyter.widget-view+json"]'
WIDGET_ROOT = ".widget-subarea > .lm-Widget"


@dataclass
class PageLog:
    """What a page did: every request URL, console errors, uncaught exceptions."""

    requests: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def offsite(self) -> list[str]:
        bad = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in LOCAL_SCHEMES:
                continue
            if parts.scheme not in ("http", "https", "ws", "wss") or parts.hostname not in LOCAL_HOSTS:
                bad.append(url)
        return bad

    def errors(self) -> list[str]:
        errs = [f"uncaught: {e}" for e in self.page_errors]
        errs += [f"console.error: {e}" for e in self.console_errors if not any(i in e for i in IGNORED_CONSOLE)]
        return errs


_LOGS: dict[int, PageLog] = {}


def page_log(page) -> PageLog:
    """The PageLog of a page made by the `page` or `open_chapter` fixtures."""
    return _LOGS[id(page)]


def assert_offline(page) -> None:
    bad = page_log(page).offsite()
    assert not bad, "the page made requests that left 127.0.0.1 (the book must work offline):\n  " + "\n  ".join(bad)


def assert_no_console_errors(page) -> None:
    errs = page_log(page).errors()
    assert not errs, "JavaScript errors on the page:\n  " + "\n  ".join(errs)


def pytest_configure(config):
    config.addinivalue_line("markers", "e2e: end-to-end test of the built book in a browser")
    # A busy machine (issue #15) is slow, not wrong: every `expect` waits 15 s for its condition, not Playwright's 5 s
    from playwright.sync_api import expect

    expect.set_options(timeout=15_000)


# -- the built book and a server for it ------------------------------------------------------------


@pytest.fixture(scope="session")
def book_dir() -> Path:
    """The built site, _build/html. Fails (never skips) if it is not there."""
    if not (BOOK_HTML / "index.html").is_file():
        pytest.fail(f"the book is not built ({BOOK_HTML / 'index.html'} is missing): run `make book` first",
                    pytrace=False)
    return BOOK_HTML


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - signature of the base class
        pass


@pytest.fixture(scope="session")
def book_server(book_dir: Path) -> Iterator[str]:
    """Serves the built book on 127.0.0.1 at a free port; yields the base URL, ending in '/'."""
    with serve_directory(book_dir) as url:
        yield url


@contextlib.contextmanager
def serve_directory(directory: Path) -> Iterator[str]:
    """A static HTTP server for `directory` on 127.0.0.1 at a free port; yields its base URL, ending in '/'."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name=f"serve-{directory.name}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# -- the browser -----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    """Headless Debian Chromium through Playwright (never `playwright install`)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (apt-get install chromium, or set LLM101N_CHROMIUM)",
                    pytrace=False)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser):
    """A fresh page (own context) that records requests and errors; checked for both at teardown."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, service_workers="block")
    pg = context.new_page()
    log = PageLog()
    _LOGS[id(pg)] = log
    pg.on("request", lambda r: log.requests.append(r.url))
    pg.on("console", lambda m: log.console_errors.append(f"{m.text} ({m.location.get('url', '')})")
          if m.type == "error" else None)
    pg.on("pageerror", lambda e: log.page_errors.append(str(e)))
    try:
        yield pg
        assert_offline(pg)
        assert_no_console_errors(pg)
    finally:
        _LOGS.pop(id(pg), None)
        context.close()


# -- opening a chapter -----------------------------------------------------------------------------


def chapter_url(base_url: str, stem: str) -> str:
    return f"{base_url}book/{stem}.html"


def widget_views(page) -> list[dict]:
    """One entry per widget view on the page: its model id, model module ("anywidget", ...), model
    name, whether it rendered (its root element has content) and the root's text, from the embedded
    widget state and the DOM."""
    return page.evaluate("""() => {
      const models = {};
      for (const s of document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]')) {
        Object.assign(models, JSON.parse(s.textContent).state || {});
      }
      return [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')].map(s => {
        const id = JSON.parse(s.textContent).model_id;
        const m = models[id] || {};
        const area = s.previousElementSibling;
        const root = area && area.classList.contains("widget-subarea") ? area.firstElementChild : null;
        return {
          model_id: id, model_module: m.model_module || null, model_name: m.model_name || null,
          rendered: !!root && (root.childElementCount > 0 || root.textContent.trim().length > 0),
          text: root ? root.textContent.trim().slice(0, 200) : "",
        };
      });
    }""")


def wait_for_book_page(page, *, min_widgets: int = 0, timeout_ms: int = 60_000) -> int:
    """Wait until every widget view on the page rendered and MathJax (if loaded) finished.

    Returns the number of widget views. Fails if the page holds fewer than `min_widgets` views or one
    of them did not render (an error widget counts as not rendered).
    """
    expected = page.locator(WIDGET_VIEW_SCRIPT).count()
    assert expected >= min_widgets, (
        f"{page.url}: expected at least {min_widgets} widget view(s), the page holds {expected} "
        "(was the widget the cell's last expression, and was widget state saved when the book executed?)"
    )
    if expected:
        page.wait_for_function(
            "([sel, n]) => document.querySelectorAll(sel).length >= n",
            arg=[WIDGET_ROOT, expected], timeout=timeout_ms,
        )
        broken = page.locator(".widget-subarea").evaluate_all(
            "els => els.filter(e => /Error displaying widget|Could not create a view/.test(e.textContent))"
            ".map(e => e.textContent.slice(0, 200))"
        )
        assert not broken, f"{page.url}: widget(s) failed to render: {broken}"
    # MathJax 3 resolves startup.promise when the first typesetting pass is done
    page.evaluate("async () => { if (window.MathJax && MathJax.startup && MathJax.startup.promise)"
                  " await MathJax.startup.promise; }")
    return expected


@pytest.fixture
def open_chapter(page, book_server) -> Callable[..., object]:
    """open_chapter("ch01_bigram", min_widgets=1) -> the Playwright page, ready to interact with."""

    def _open(stem: str, *, min_widgets: int = 1, timeout_ms: int = 60_000):
        resp = page.goto(chapter_url(book_server, stem), wait_until="load")
        assert resp is not None and resp.ok, f"book/{stem}.html did not load: {resp and resp.status}"
        wait_for_book_page(page, min_widgets=min_widgets, timeout_ms=timeout_ms)
        return page

    return _open


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send `sig` to the process group that `proc` leads (start_new_session=True); SIGKILL it after `timeout` s."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def screenshot_path(name: str, tmp_path: Path) -> Path:
    """Where a test saves a screenshot: docs/screenshots/<name> with LLM101N_UPDATE_SCREENSHOTS=1 (the README's
    pictures: `make screenshots`), else tmp_path, so that running the tests never changes a tracked file."""
    if os.environ.get("LLM101N_UPDATE_SCREENSHOTS") == "1":
        return ROOT / "docs" / "screenshots" / name
    return tmp_path / name


# -- one widget in a static page, outside the book (fast to build; the same embed the book uses) -----------

STATIC_ASSETS = ROOT / ".assets" / "static"
_STANDALONE_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><link rel="icon" href="data:,">
<script type="application/vnd.jupyter.widget-state+json">{state}</script>
<script src="../_static/require.js"></script>
<script src="../_static/llm101n-widgets-config.js"></script>
<script src="../_static/jupyter-widgets/embed-amd.js"></script>
</head><body><main style="max-width: 900px; margin: 1em auto;">
<h1>{title}</h1>
<div class="cell_output docutils container">
<script type="application/vnd.jupyter.widget-view+json">{view}</script></div>
</main></body></html>
"""


@contextlib.contextmanager
def static_widget_site(widget, site: Path, title: str, prefix: str = "") -> Iterator[str]:
    """Serve `widget`'s static embed (no kernel) as site/book/page.html with the book's _static; yields its URL.
    prefix ("docs/llm101n/"): the page and _static go under that sub-path of the server (a project site's
    hosting), site/<prefix>."""
    if not (STATIC_ASSETS / "jupyter-widgets" / "embed-amd.js").is_file() or not (
            STATIC_ASSETS / "anywidget" / "index.js").is_file():
        pytest.fail(f"the offline assets are missing ({STATIC_ASSETS}): run scripts/assets.sh first", pytrace=False)
    import json
    import shutil

    from ipywidgets.embed import embed_data

    data = embed_data(views=[widget], drop_defaults=False)
    served, site = site, site / prefix
    shutil.copytree(STATIC_ASSETS, site / "_static", ignore=shutil.ignore_patterns("mathjax"))
    (site / "book").mkdir()
    esc = lambda obj: json.dumps(obj).replace("</", "<\\/")  # noqa: E731 - no "</script>" inside the JSON
    (site / "book" / "page.html").write_text(_STANDALONE_PAGE.format(
        title=title, state=esc(data["manager_state"]), view=esc(data["view_specs"][0])), encoding="utf-8")
    with serve_directory(served) as url:
        yield url + prefix + "book/page.html"
