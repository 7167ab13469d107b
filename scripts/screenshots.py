"""Screenshots of built book pages for the README: docs/screenshots/<stem>.png (first viewport) and
docs/screenshots/<stem>-widget.png (the page's first widget, with its cell output around it).

    .venv/bin/python scripts/screenshots.py                      # ch01_bigram ch02_micrograd storyteller
    .venv/bin/python scripts/screenshots.py intro ch01_bigram --full-page

storyteller is the book's storyteller page: the chat model's conversation recorded at build time (a story asked
for, then changed; storylib.storyteller.FIRST_TURNS). The live pictures (the chat in JupyterLab, the web app) are
taken by the browser tests: `make screenshots` runs both.

Serves _build/html on 127.0.0.1 (build it first: `make book`), drives Debian's Chromium through
Playwright, waits for widgets and MathJax, and refuses to write a screenshot of a page that made an
off-site request or logged a JavaScript error.
"""

from __future__ import annotations

import argparse
import functools
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "_build" / "html"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEW_SCRIPT = 'script[type="application/vnd.jupyter.widget-view+json"]'


# Mark the widget to capture: the first anywidget view (the chapter's own widget), else the first view.
_MARK_FIRST_ANYWIDGET = """() => {
  const models = {};
  for (const s of document.querySelectorAll('script[type="application/vnd.jupyter.widget-state+json"]'))
    Object.assign(models, JSON.parse(s.textContent).state || {});
  const areas = [...document.querySelectorAll('script[type="application/vnd.jupyter.widget-view+json"]')]
    .map(s => [s.previousElementSibling, (models[JSON.parse(s.textContent).model_id] || {}).model_module])
    .filter(([a]) => a && a.classList.contains("widget-subarea"));
  const pick = areas.find(([, m]) => m === "anywidget") || areas[0];
  if (pick) pick[0].setAttribute("data-shot", "1");
}"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002
        pass


def _page_path(stem: str) -> str:
    return f"{stem}.html" if "/" in stem else f"book/{stem}.html"


def shoot(stems: list[str], out: Path, *, full_page: bool, width: int, height: int, scale: float,
          chromium: str) -> int:
    from playwright.sync_api import sync_playwright

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(BOOK)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}/"
    out.mkdir(parents=True, exist_ok=True)
    failures = 0
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            for stem in stems:
                ctx = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=scale)
                page = ctx.new_page()
                requests: list[str] = []
                errors: list[str] = []
                page.on("request", lambda r, rq=requests: rq.append(r.url))
                page.on("console", lambda m, er=errors: er.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e, er=errors: er.append(str(e)))
                resp = page.goto(base + _page_path(stem), wait_until="load")
                if resp is None or not resp.ok:
                    print(f"{stem}: HTTP {resp and resp.status} (is it in the built book?)", file=sys.stderr)
                    failures += 1
                    ctx.close()
                    continue
                n_views = page.locator(VIEW_SCRIPT).count()
                if n_views:
                    page.wait_for_function("n => document.querySelectorAll('.widget-subarea > .lm-Widget').length >= n",
                                           arg=n_views, timeout=20_000)
                page.evaluate("async () => { if (window.MathJax && MathJax.startup) await MathJax.startup.promise; }")
                page.wait_for_timeout(300)  # let fonts and layout settle
                offsite = [u for u in requests
                           if urlsplit(u).scheme not in ("blob", "data") and urlsplit(u).hostname != "127.0.0.1"]
                if offsite or errors:
                    print(f"{stem}: not captured: off-site requests {offsite}, JS errors {errors}", file=sys.stderr)
                    failures += 1
                    ctx.close()
                    continue
                name = stem.replace("/", "_")
                page.screenshot(path=str(out / f"{name}.png"), full_page=full_page)
                written = [f"{name}.png"]
                if n_views:
                    page.evaluate(_MARK_FIRST_ANYWIDGET)
                    widget = page.locator(".cell_output:has([data-shot])").first
                    if not widget.count():
                        widget = page.locator("[data-shot]").first
                    widget.scroll_into_view_if_needed()
                    widget.screenshot(path=str(out / f"{name}-widget.png"))
                    written.append(f"{name}-widget.png")
                print(f"{stem}: {n_views} widget view(s) -> " + ", ".join(str(out / w) for w in written))
                ctx.close()
            browser.close()
    finally:
        httpd.shutdown()
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stems", nargs="*", default=["ch01_bigram", "ch02_micrograd", "storyteller"],
                    help="page stems under book/ (e.g. ch01_bigram, intro)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    ap.add_argument("--full-page", action="store_true", help="the whole page instead of the first viewport")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=860)
    ap.add_argument("--scale", type=float, default=1.0, help="device pixel ratio (2 for crisp README images)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args(argv)
    if not (BOOK / "index.html").is_file():
        print(f"no built book at {BOOK}: run `make book` first", file=sys.stderr)
        return 2
    return shoot(args.stems, args.out, full_page=args.full_page, width=args.width, height=args.height,
                 scale=args.scale, chromium=args.chromium)


if __name__ == "__main__":
    sys.exit(main())
