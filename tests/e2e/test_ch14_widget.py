"""Chapter 14's side-by-side replies work in the static book: every model's column shows, the picker switches the
request, and without a kernel the ask box is disabled and says how to get one."""

from __future__ import annotations

from playwright.sync_api import expect


def test_reply_compare_responds(open_chapter):
    page = open_chapter("ch14_sft", min_widgets=1)
    root = page.locator('[data-testid="reply-compare"]')
    expect(root).to_have_count(1)
    expect(root.locator('[data-testid="rc-column"]')).to_have_count(2)
    request = root.locator('[data-testid="rc-request"]')
    first = request.inner_text()
    assert first.startswith("Write a story"), first
    replies = root.locator('[data-testid="rc-reply"]')
    assert all(len(t.strip()) > 20 for t in replies.all_inner_texts()), replies.all_inner_texts()

    root.locator('[data-testid="rc-select"]').select_option("1")
    expect(request).not_to_have_text(first)

    expect(root).to_have_attribute("data-kernel", "false")
    expect(root.locator('[data-testid="rc-static-note"]')).to_contain_text("make start")
    expect(root.locator('[data-testid="rc-ask"]')).to_be_disabled()
