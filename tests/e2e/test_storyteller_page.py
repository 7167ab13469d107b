"""The storyteller chat in a static page (no kernel): the recorded turns show, every control is disabled, a line
says how to run it live, and the page raises no JavaScript error (the `page` fixture checks at teardown).

Two pages: one written here the way the book embeds widgets (like tests/e2e/test_ch06_widget.py), whose story
is known exactly, and the built book's book/storyteller.html (needs `make book`), which shows the chat model's
answers to a request and a change (storylib.storyteller.FIRST_TURNS["chat"]).
"""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from .conftest import static_widget_site, wait_for_book_page


def check_static_chat(page, story: list[dict] | None = None) -> None:
    """The chat on `page` shows a recorded story (exactly `story` when given; else the book's conversation) and
    cannot be used."""
    from storylib.storyteller import FIRST_TURNS

    chat = page.locator('[data-testid="story-chat"]')
    expect(chat).to_have_count(1)
    page.wait_for_timeout(500)  # time for a kernel to answer the hello, were there one
    expect(chat).to_have_attribute("data-kernel", "false")
    note = chat.locator('[data-testid="chat-static-note"]')
    expect(note).to_be_visible()
    expect(note).to_contain_text("Live in JupyterLab: run make start")
    for testid in ("chat-send", "chat-continue", "chat-stop", "chat-refine", "chat-illustrate", "chat-new",
                   "chat-prompt", "chat-temperature", "chat-max_tokens", "chat-top_k", "chat-top_p", "chat-seed",
                   "chat-mode"):
        expect(chat.locator(f'[data-testid="{testid}"]')).to_be_disabled()
    user = chat.locator('[data-testid="chat-user"]').all_text_contents()
    told = chat.locator('[data-testid="chat-model"]').all_text_contents()
    if story is None:  # the book: the chat model asked for a story, then for a change (chat mode, the default)
        expect(chat).to_have_attribute("data-mode", "chat")
        assert user == list(FIRST_TURNS["chat"]), (
            f"the book should show the chat model's conversation (is models/storyteller-chat there?): {user}")
        told = chat.locator('[data-testid="chat-message-model"]').all_text_contents()  # a picture splits a reply's text
        assert len(told) == 2 and all(len(t) > 50 for t in told), told
        # and the picture drawn for it at build time (StoryChat(illustrate=True)), under the story's words
        picture = chat.locator('[data-testid="chat-picture"] img')
        expect(picture).to_have_count(1)
        assert picture.evaluate("img => img.decode().then(() => img.naturalWidth)") == 64, "the 64 × 64 picture"
        expect(chat.locator('[data-testid="chat-picture-sentence"]')).to_contain_text(
            picture.get_attribute("alt"))
    else:
        assert user == ["".join(s["pieces"]) for s in story if s["role"] == "user"]
        assert told == ["".join(s["pieces"]) for s in story if s["role"] == "model"]
    expect(chat.locator('[data-testid="chat-status"]')).to_contain_text("tokens/s")
    expect(chat.locator('[data-testid="chat-footer"]')).to_contain_text("M parameters")
    chat.locator('[data-testid="chat-model"] .sc-piece').nth(3).click()  # no kernel: no cut point either
    expect(chat.locator(".sc-cut")).to_have_count(0)


@pytest.fixture(scope="module")
def chat_site(tmp_path_factory):
    """A one-page site embedding a StoryChat that recorded a short story; yields (URL, the recorded story)."""
    from storylib.widgets import StoryChat

    w = StoryChat(max_tokens=60)
    assert w.status == "done", w.notice
    with static_widget_site(w, tmp_path_factory.mktemp("storyteller_site"), "The storyteller") as url:
        yield url, w.story


def test_recorded_story_in_a_static_page(page, chat_site):
    url, story = chat_site
    resp = page.goto(url, wait_until="load")
    assert resp is not None and resp.ok
    wait_for_book_page(page, min_widgets=1)
    check_static_chat(page, story)


def test_storyteller_page_of_the_book(open_chapter):
    page = open_chapter("storyteller", min_widgets=1)
    check_static_chat(page)
    assert "make start" in page.locator("main").inner_text()
