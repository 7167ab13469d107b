"""Chapter 4's attention explorer works in the static book: it runs the model in the browser, agrees with
PyTorch, and redraws when the reader types a sentence or picks another layer or head."""

from __future__ import annotations

import re

from playwright.sync_api import expect

PYTORCH_LINE = re.compile(r"PyTorch, layer 1, head 1: query (\d+) .* reads key (\d+) .* with weight ([0-9.]+)")
READOUT = re.compile(r"query (\d+) .*→ key (\d+) .*: weight ([0-9.]+)")


def digest(root) -> str:
    return root.locator('[data-testid="attention-heatmap"]').get_attribute("data-digest")


def test_attention_explorer_matches_pytorch_and_responds(open_chapter):
    page = open_chapter("ch04_attention", min_widgets=1)
    root = page.locator('[data-testid="attention-explorer"]')
    expect(root).to_have_count(1)
    readout = root.locator('[data-testid="attention-readout"]')
    expect(readout).to_contain_text("weight")

    # The first reading (layer 1, head 1, last query, its strongest key) is computed by the widget's
    # JavaScript; the line printed above it by PyTorch during the book build. They must agree.
    printed = PYTORCH_LINE.search(page.inner_text("body"))
    assert printed, "the chapter should print the PyTorch reading of layer 1, head 1 above the widget"
    shown = READOUT.search(readout.inner_text())
    assert shown, f"unexpected readout text: {readout.inner_text()!r}"
    assert shown.group(1, 2) == printed.group(1, 2), (
        f"the widget's first reading is query {shown.group(1)} -> key {shown.group(2)}, PyTorch's is "
        f"query {printed.group(1)} -> key {printed.group(2)}"
    )
    js_weight = float(readout.get_attribute("data-weight"))
    assert abs(js_weight - float(printed.group(3))) < 1e-4, (
        f"the browser computed weight {js_weight:.6f}, PyTorch printed {printed.group(3)}"
    )

    # Typing a sentence recomputes every map.
    before = digest(root)
    root.locator('[data-testid="attention-text"]').fill("the cat saw the cat")
    expect(root.locator('[data-testid="attention-heatmap"]')).not_to_have_attribute("data-digest", before)
    expect(root.locator('[data-testid="attention-row"]')).to_contain_text("c")
    typed = digest(root)

    # Another head shows another map; so does another layer.
    root.locator('[data-testid="attention-head-1"]').click()
    expect(root.locator('[data-testid="attention-head-1"]')).to_have_class(re.compile(r"\bax-on\b"))
    expect(root.locator('[data-testid="attention-heatmap"]')).not_to_have_attribute("data-digest", typed)
    head2 = digest(root)
    root.locator('[data-testid="attention-thumb-1-1"]').click()
    expect(root.locator('[data-testid="attention-layer-1"]')).to_have_class(re.compile(r"\bax-on\b"))
    expect(root.locator('[data-testid="attention-heatmap"]')).not_to_have_attribute("data-digest", head2)

    # A character the model never saw is skipped, and the widget says so.
    root.locator('[data-testid="attention-text"]').fill("the cat ☃")
    expect(root.locator('[data-testid="attention-note"]')).to_contain_text("skipped")
