"""Chapter 11's loss-mask viewer works in the static book: hovering, the id toggle and the example picker respond."""

from __future__ import annotations

from playwright.sync_api import expect


def test_loss_mask_view_responds(open_chapter):
    page = open_chapter("ch11_datasets", min_widgets=1)
    root = page.locator('[data-testid="loss-mask-view"]')
    expect(root).to_have_count(1)
    summary = root.locator('[data-testid="lm-summary"]')
    expect(summary).to_contain_text("with loss mask 1")
    first = summary.inner_text()

    chips = root.locator(".lm-tokens .lm-chip")
    chips.first.hover()
    expect(root.locator('[data-testid="lm-readout"]')).to_contain_text("loss mask 0")
    root.locator(".lm-tokens .lm-learn").first.hover()
    expect(root.locator('[data-testid="lm-readout"]')).to_contain_text("loss mask 1")

    root.locator('[data-testid="lm-ids"]').check()
    expect(chips.first).to_have_text("4096")  # <|endoftext|>
    root.locator('[data-testid="lm-only"]').check()
    expect(root.locator(".lm-dim").first).to_be_visible()
    root.locator('[data-testid="lm-select"]').select_option("2")
    expect(summary).not_to_have_text(first)
