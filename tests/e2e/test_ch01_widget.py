"""Chapter 1's next-character explorer works in the static book: picking, clicking, temperature, sampling."""

from __future__ import annotations

from playwright.sync_api import expect


def set_range(slider, value: str) -> None:
    """Move an <input type=range> the way a drag does: set the value, fire "input"."""
    slider.evaluate("(el, v) => { el.value = v; el.dispatchEvent(new Event('input', { bubbles: true })); }", value)


def bar_labels(root) -> list[str]:
    return root.locator('[data-testid="bigram-bar"] .bx-label').all_inner_texts()


def test_bigram_explorer_responds(open_chapter):
    page = open_chapter("ch01_bigram", min_widgets=1)
    root = page.locator('[data-testid="bigram-explorer"]')
    expect(root).to_have_count(1)
    bars = root.locator('[data-testid="bigram-bar"]')
    title = root.locator('[data-testid="bigram-title"]')
    expect(bars).to_have_count(15)
    expect(title).to_contain_text("P(next | T)")  # the book opens it on "T"

    # Pick "q" in the menu: the title and the bars change, and "u" leads the chart.
    before = bar_labels(root)
    root.locator('[data-testid="bigram-char"]').select_option(label="q")
    expect(title).to_contain_text("P(next | q)")
    expect(bars.first).to_have_attribute("data-token", "u")
    assert bar_labels(root) != before, "the bars should change with the selected character"

    # Typing a character selects it too; clicking a bar walks to that character.
    root.locator('[data-testid="bigram-type"]').fill("e")
    expect(title).to_contain_text("P(next | e)")
    target = bars.nth(1).get_attribute("data-token")
    bars.nth(1).click()
    expect(title).to_contain_text(f"P(next | {target})")

    # Temperature 0: all the mass on the most likely character.
    set_range(root.locator('[data-testid="bigram-temperature"]'), "0")
    expect(root.locator('[data-testid="bigram-temperature-value"]')).to_have_text("0.00")
    expect(bars.first.locator(".bx-p")).to_have_text("100.0%")

    # Sampling writes a story; pressing again (next seed, higher temperature) writes another.
    story = root.locator('[data-testid="bigram-story"]')
    set_range(root.locator('[data-testid="bigram-temperature"]'), "1")
    root.locator('[data-testid="bigram-sample"]').click()
    expect(story).not_to_be_empty()
    first = story.inner_text()
    assert len(first.strip()) > 1, f"a sampled story should hold some text, got {first!r}"
    root.locator('[data-testid="bigram-sample"]').click()
    expect(story).not_to_have_text(first)
