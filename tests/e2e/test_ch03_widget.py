"""Chapter 3's embedding explorer, in the built book: hovering a character lists its neighbours, and
switching tables moves the characters (all in the page's JavaScript, no kernel)."""

from __future__ import annotations

import re

from playwright.sync_api import expect


def test_embedding_explorer_responds(open_chapter):
    page = open_chapter("ch03_mlp", min_widgets=1)
    root = page.locator('[data-testid="embedding-explorer"]')
    expect(root).to_have_count(1)
    assert root.locator(".ee-mark").count() > 40, "one mark per frequent character of the vocabulary"

    panel = root.locator('[data-testid="neighbours"]')
    expect(panel).to_contain_text("Hover")
    # Trained characters can sit on top of each other: send the hover to the mark itself.
    root.locator('.ee-mark[data-char="e"]').dispatch_event("mouseenter")
    expect(panel).to_contain_text("nearest, by cosine similarity")
    expect(panel.locator("li")).to_have_count(6)
    expect(root.locator(".ee-link")).to_have_count(6)

    mark = root.locator('.ee-mark[data-char="a"]')
    before = mark.get_attribute("style")
    root.locator('[data-testid="snapshot-1"]').click()
    expect(root.locator('[data-testid="note"]')).to_contain_text("initialisation")
    expect(mark).not_to_have_attribute("style", before or "")

    root.locator('[data-testid="find"]').fill("T")
    expect(panel).to_contain_text(re.compile(r"T\s*capital"))
