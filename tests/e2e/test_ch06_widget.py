"""Chapter 6's token viewer in a static page, with no kernel: the storyteller row re-tokenizes in the browser
and agrees with Python's `tok.encode`, GPT-2 / cl100k show their saved examples, ids show on hover.

Unlike the other widget tests this one does not need the built book: it writes a small page the way the
book embeds widgets (the widget state, then require.js, our config and the ipywidgets embed manager, all
from the offline assets of scripts/assets.sh) and serves it on 127.0.0.1.
"""

from __future__ import annotations

import os

import pytest
from playwright.sync_api import expect

from storylib.data import HARD_STRINGS, synthetic_stories
from storylib.tokenizer import storyteller_tokenizer

from .conftest import screenshot_path, static_widget_site, wait_for_book_page

INITIAL = "Once upon a time, a little dog named Max found a shiny red ball.\nHe was very happy!"

# Typed into the widget (what the text box keeps of them) and given to its tokenizer as they are.
CATALOGUE = [
    *HARD_STRINGS,
    "I'LL can't WE'RE it'S",
    "12345678",
    "a\r\nb",
    "runs of spaces:      six, then   three",
    "naïve café, crème brûlée, Zoë, Ångström",
    "안녕하세요 세계",
    "emoji 🐶🌈👍🏽 and a family 👩‍👩‍👧",
    "'ſ x'ſhe it'LLama we'vEry I'Dlike",
    "next line\x85 and a BOM\ufeff, no-break\xa0space",
    synthetic_stories(1, 3, unicode=True)[0],
]

@pytest.fixture(scope="module")
def tok():
    return storyteller_tokenizer()


@pytest.fixture(scope="module")
def site_url(tmp_path_factory):
    """The TokenViewer's static embed in a one-page site, like a book page."""
    from storylib.data import course_file
    from storylib.widgets import TokenViewer

    os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(course_file(".assets/tiktoken")))
    w = TokenViewer.default(text=INITIAL)
    assert not w.notes, f"every standard tokenizer should load offline: {w.notes}"
    with static_widget_site(w, tmp_path_factory.mktemp("ch06_site"), "Chapter 6: tokenizers side by side") as url:
        yield url


def row(root, name: str):
    return root.locator(f'[data-testid="tokens-row"][data-name="{name}"]')


def shown_ids(r) -> list[int]:
    ids = r.get_attribute("data-ids")
    return [int(x) for x in ids.split(",")] if ids else []


def test_token_viewer_is_live_in_the_static_page(page, site_url, tok, tmp_path):
    from storylib.widgets.tokens import bytes_per_token, token_label

    resp = page.goto(site_url, wait_until="load")
    assert resp is not None and resp.ok
    wait_for_book_page(page, min_widgets=1)
    root = page.locator('[data-testid="token-viewer"]')
    expect(root).to_have_count(1)
    story = row(root, "storyteller")
    expect(story).to_have_attribute("data-source", "python")

    # No kernel: the widget says which rows are live, and its handshake never got an answer.
    note = root.locator('[data-testid="tokens-note"]')
    expect(note).to_contain_text("live for storyteller")
    expect(note).to_contain_text("GPT-2 / cl100k_base live only with a running kernel")
    expect(root).to_have_attribute("data-kernel", "false")

    # The initial text: tokens saved by Python, and the browser's own tokenizer agrees with them.
    assert shown_ids(story) == tok.encode(INITIAL)
    expect(story).to_have_attribute("data-js-agrees", "true")

    # Type the hard strings: the storyteller row is re-tokenized by the browser, exactly as Python does.
    box = root.locator('[data-testid="tokens-text"]')
    typed_as_is = 0
    for text in CATALOGUE:
        box.fill(text)
        kept = box.input_value()  # a text box turns "\r\n" into "\n"
        typed_as_is += kept == text
        want = tok.encode(kept, allowed_special="all")
        expect(story).to_have_attribute("data-ids", ",".join(map(str, want)))
        assert story.get_attribute("data-source") == ("python" if kept == INITIAL else "browser")
        labels = story.locator(".tv-tok").all_inner_texts()
        assert labels == [token_label(tok.vocab[i]) for i in want], f"token labels of {kept!r}: {labels}"
        stats = story.locator('[data-testid="tokens-stats"]')
        assert int(stats.get_attribute("data-n")) == len(want)
        assert float(stats.get_attribute("data-bpt")) == pytest.approx(bytes_per_token(kept, len(want)))
        # and the exact string, "\r" and all, through the widget's tokenizer
        js = root.evaluate("(el, t) => el.llm101nTokenize('storyteller', t)", text)
        assert js == tok.encode(text, allowed_special="all"), f"the browser encodes {text!r} as {js}"
        if "<|" not in text:  # the split regex itself (two splits can give the same ids by luck)
            chunks = root.evaluate("(el, t) => el.llm101nSplit('storyteller', t)", text)
            assert chunks == tok.split(text), f"the browser splits {text!r} as {chunks}, Python as {tok.split(text)}"
        # GPT-2 and cl100k need a kernel for text that is not an example
        if kept != INITIAL:
            expect(row(root, "GPT-2")).to_have_attribute("data-source", "none")
    assert typed_as_is >= len(CATALOGUE) - 3, "most of the catalogue should go through the text box unchanged"

    # Key by key, as a reader types (contractions and a long number).
    box.fill("")
    box.press_sequentially("I'LL can't 12345678")
    expect(story).to_have_attribute("data-ids", ",".join(map(str, tok.encode("I'LL can't 12345678"))))

    # Hover: the token's id shows in a readout and in the span's title.
    first = story.locator(".tv-tok").nth(1)
    first.hover()
    tid = first.get_attribute("data-id")
    expect(root.locator('[data-testid="tokens-hover"]')).to_contain_text(f"id {tid}")
    assert first.get_attribute("title").startswith(f"id {tid} ")
    assert int(tid) == tok.encode("I'LL can't 12345678")[1]

    # An example: GPT-2 and cl100k show their saved tokenization, identical to tiktoken's.
    import tiktoken

    from storylib.widgets.tokens import DEFAULT_EXAMPLES

    label, korean = next(ex for ex in DEFAULT_EXAMPLES if ex[0] == "Korean")
    root.locator('[data-testid="tokens-examples"]').select_option(label=label)
    for name, enc in (("GPT-2", "gpt2"), ("cl100k_base", "cl100k_base")):
        r = row(root, name)
        expect(r).to_have_attribute("data-source", "example")
        assert shown_ids(r) == tiktoken.get_encoding(enc).encode(korean), f"{name} row of the Korean example"
    assert shown_ids(story) == tok.encode(korean)
    assert any("⟨" in t for t in story.locator(".tv-tok").all_inner_texts()), (
        "Korean syllables the storyteller never merged show as partial bytes ⟨..⟩")

    # the screenshot: accents and emoji, a hovered token
    label, accents = next(ex for ex in DEFAULT_EXAMPLES if ex[0] == "emoji & accents")
    root.locator('[data-testid="tokens-examples"]').select_option(label=label)
    expect(box).to_have_value(accents)
    story.locator(".tv-tok").nth(4).hover()
    shot = screenshot_path("ch06_tokens.png", tmp_path)
    shot.parent.mkdir(parents=True, exist_ok=True)
    root.screenshot(path=str(shot))
    assert shot.stat().st_size > 10_000
