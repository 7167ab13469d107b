"""Chapter 5's generation explorer works in the static book: stepping, temperature and top-k respond."""

from __future__ import annotations

from playwright.sync_api import expect


def test_generation_lens_responds(open_chapter):
    page = open_chapter("ch05_gpt2", min_widgets=1)
    root = page.locator('[data-testid="generation-lens"]')
    expect(root).to_have_count(1)
    where = root.locator('[data-testid="gl-where"]')
    expect(where).to_contain_text("byte 1 of")
    root.locator('[data-testid="gl-next"]').click()
    expect(where).to_contain_text("byte 2 of")

    chosen = root.locator('[data-testid="gl-chosen-p"]')
    before = chosen.inner_text()
    root.locator('[data-testid="gl-topk"]').select_option("1")  # top-1: the argmax gets probability 1
    expect(root.locator(".gl-bars .gl-p").first).to_have_text("100.0%")
    root.locator('[data-testid="gl-topk"]').select_option("0")
    root.locator('[data-testid="gl-temp"]').fill("0.3")
    expect(chosen).not_to_have_text(before)
    # one logit-lens row per layer: the embeddings and each of the 4 blocks
    expect(root.locator(".gl-lens")).to_have_count(5)
