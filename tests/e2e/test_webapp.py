"""The storyteller's web app (Chapter 16) in Debian's Chromium: send, watch the reply stream, reload and find the
conversation, stop a reply midway, edit-and-resend, regenerate, copy, temperature, and a clear error for a refused
request; and the issue's conversation with the chat model (Chapter 14): a story asked for, given a happy ending,
its cat renamed, each reply checked by storylib.conversations' rules; and Illustrate (Chapter 17): a reply's picture,
drawn from its most drawable sentence or from the words selected in it, kept across a reload, and a clear line
under the message when there is nothing to draw or no illustrator. The server is the real one (FastAPI +
uvicorn, the shipped chat model with the chat template, SQLite under tmp_path) on 127.0.0.1; the `page` fixture
fails the test if the page makes a request elsewhere or logs a JavaScript error.

Screenshots are written to tmp_path; with LLM101N_UPDATE_SCREENSHOTS=1 the conversation's also to
docs/screenshots/webapp.png.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import expect

from storylib import illustrate as I
from storylib import serve as S
from storylib.service import serve_in_thread
from tests.chat_model import SCENARIO, check_turn, require_chat_model
from tests.illustrator_model import tiny_illustrator
from tests.reply_gate import ReplyGate

from .conftest import page_log, screenshot_path


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    model, tok = require_chat_model()  # what `llm101n serve` runs
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("webapp") / "conversations.sqlite3")
    engine = app.state.engine
    engine.banned[list(engine.end_ids)] = True  # replies run to their length: long enough to stop midway
    with serve_in_thread(app) as url:
        yield url, app


@pytest.fixture
def reply_gate(app_server) -> Iterator[ReplyGate]:
    """The app server's engine with a ReplyGate (tests/reply_gate.py): open until the test closes it (the reply can
    then not end before the test acts on it, however busy the machine); removed afterwards."""
    gate = ReplyGate(app_server[1].state.engine)
    yield gate
    gate.remove()


def send(page, text: str) -> None:
    page.get_by_test_id("prompt").fill(text)
    page.get_by_test_id("send").click()


def wait_done(page, timeout: int = 300_000) -> None:  # a reply of up to 256 tokens on a busy machine
    expect(page.get_by_test_id("send")).to_be_visible(timeout=timeout)


def test_chat_streams_persists_and_stops(page, app_server, reply_gate, tmp_path):
    url, app = app_server
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions")
            else None)
    page.goto(url + "/")
    expect(page.get_by_test_id("messages")).to_contain_text("Start a story")
    page.get_by_test_id("temperature").fill("0.5")

    # send: the reply streams in (text grows while the message is still marked as streaming)
    with reply_gate.closed():  # the reply cannot end before `partial` is read
        send(page, "Tell me a story about a brave little fox.")
        reply = page.get_by_test_id("assistant-message").last
        expect(reply).to_have_class("message assistant streaming", timeout=30_000)
        page.wait_for_function("() => { const m = document.querySelector('.message.assistant.streaming .text');"
                               " return m && m.textContent.length > 10; }", timeout=30_000)
        partial = reply.locator(".text").inner_text()
    wait_done(page)
    final = reply.locator(".text").inner_text()
    assert final.startswith(partial) and len(final) > len(partial), "the text arrived in pieces, not at once"
    assert bodies[-1]["stream"] is True and bodies[-1]["temperature"] == 0.5, bodies[-1]
    expect(page.get_by_test_id("conversations").locator("li")).to_have_count(1)

    # reload: the conversation comes back from the server's SQLite database
    page.reload()
    expect(page.get_by_test_id("user-message")).to_have_count(1)
    expect(page.get_by_test_id("assistant-message").locator(".text")).to_have_text(final)
    expect(page.get_by_test_id("conversations")).to_contain_text("Tell me a story about a brave")

    # stop midway: the reply keeps what came, the server cancels the rest
    cancelled = app.state.engine.stats["cancelled"]
    with reply_gate.closed():  # the reply cannot end before the server has seen the client leave
        send(page, "And then what happened to the fox?")
        page.wait_for_function("() => { const m = document.querySelector('.message.assistant.streaming .text');"
                               " return m && m.textContent.length > 5; }", timeout=30_000)
        page.get_by_test_id("stop").click()
        wait_done(page)
        expect(page.get_by_test_id("status")).to_have_text("Stopped.")
        stopped = page.get_by_test_id("assistant-message").last.locator(".text").inner_text()
        assert 0 < len(stopped), "the stopped reply keeps its first words"
        deadline = time.monotonic() + 60
        while app.state.engine.stats["cancelled"] <= cancelled and time.monotonic() < deadline:
            page.wait_for_timeout(100)
        assert app.state.engine.stats["cancelled"] > cancelled, "Stop must cancel the generation on the server"
    page.reload()
    expect(page.get_by_test_id("assistant-message")).to_have_count(2)
    expect(page.get_by_test_id("assistant-message").last.locator(".text")).to_have_text(stopped)

    page.screenshot(path=str(tmp_path / "webapp_stop.png"))  # the README's picture is the conversation (below)


def test_edit_regenerate_copy_and_errors(page, app_server):
    url, _ = app_server
    page.goto(url + "/")
    page.get_by_test_id("new-chat").click()
    send(page, "A story about a red kite.")
    wait_done(page)
    first_reply = page.get_by_test_id("assistant-message").locator(".text").inner_text()

    page.get_by_test_id("copy").click()
    expect(page.get_by_test_id("copy")).to_have_text("Copied")

    page.get_by_test_id("regenerate").click()
    wait_done(page)
    expect(page.get_by_test_id("assistant-message")).to_have_count(1)
    expect(page.get_by_test_id("assistant-message").locator(".text")).not_to_have_text(first_reply)

    page.get_by_test_id("edit").click()
    expect(page.get_by_test_id("prompt")).to_have_value("A story about a red kite.")
    send(page, "A story about a blue boat.")
    wait_done(page)
    expect(page.get_by_test_id("user-message")).to_have_count(1)
    expect(page.get_by_test_id("user-message").locator(".text")).to_have_text("A story about a blue boat.")
    expect(page.get_by_test_id("assistant-message")).to_have_count(1)

    # a request the server refuses: a clear message, the text back in the box, nothing half-saved
    long = "The little boat sailed on and on across the wide sea. " * 40
    send(page, long)
    expect(page.get_by_test_id("error")).to_contain_text("context", timeout=20_000)
    expect(page.get_by_test_id("error")).to_contain_text("The server refused the request")
    expect(page.get_by_test_id("prompt")).to_have_value(long.strip())
    page.reload()
    expect(page.get_by_test_id("user-message")).to_have_count(1)
    # Chromium logs every 4xx response as a console error; this one was expected, and it was the only one
    log = page_log(page)
    refused = [e for e in log.console_errors if "status of 400" in e]
    assert len(refused) == 1, log.console_errors
    log.console_errors.remove(refused[0])


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    """The server as `llm101n serve` runs it: the chat model, chat_format "template", replies end at <|end|>."""
    model, tok = require_chat_model()
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("webapp_chat") / "conversations.sqlite3")
    assert app.state.chat_format == "template"
    with serve_in_thread(app) as url:
        yield url


@pytest.mark.timeout(900)  # three stories of up to ~300 tokens on a busy CPU
def test_create_refine_rename(page, chat_server, tmp_path):
    """The issue's conversation, greedy (temperature 0: the same replies on every machine): each reply does what
    its message asks (storylib.conversations.check_reply), the whole conversation goes to the server each time
    with truncation "auto", and it is saved."""
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions")
            else None)
    page.goto(chat_server + "/")
    page.get_by_test_id("temperature").fill("0")
    previous = None
    for turn, (request, spec) in enumerate(SCENARIO):
        send(page, request)
        replies = page.get_by_test_id("assistant-message")
        expect(replies).to_have_count(turn + 1, timeout=120_000)
        wait_done(page, timeout=600_000)
        reply = replies.last.locator(".text").inner_text()
        check_turn(turn, spec, reply, previous)
        previous = reply
    assert [len(b["messages"]) for b in bodies] == [1, 3, 5], "each request carries the whole conversation"
    assert all(b["truncation"] == "auto" and b["temperature"] == 0 for b in bodies), bodies
    expect(page.get_by_test_id("error")).to_be_hidden()
    page.get_by_test_id("messages").evaluate("m => { m.scrollTop = 0; }")
    page.screenshot(path=str(screenshot_path("webapp.png", tmp_path)))
    page.reload()
    expect(page.get_by_test_id("assistant-message")).to_have_count(3)
    expect(page.get_by_test_id("assistant-message").last.locator(".text")).to_have_text(previous)


# -- Illustrate (Chapter 17) ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def illustrating_server(tmp_path_factory):
    """`llm101n serve --illustrator <a tiny untrained illustrator>`, the chat model's replies cut at 48 tokens (a
    story's first sentences: enough to draw, quick on a busy machine)."""
    model, tok = require_chat_model()
    folder = tiny_illustrator(tmp_path_factory.mktemp("illustrator"))
    app = S.create_app(model, tok, limits=S.Limits(block_size=model.config.block_size, max_tokens=48),
                       db_path=tmp_path_factory.mktemp("webapp_pictures") / "conversations.sqlite3", illustrator=folder)
    with serve_in_thread(app) as url:
        yield url, app


def picture_shown(page, figure) -> None:
    """The figure's <img> has loaded a real picture (naturalWidth > 0), scaled with square pixels."""
    img = figure.locator("img")
    expect(img).to_be_visible()
    img.evaluate("i => i.complete && i.naturalWidth ? true : new Promise((ok, no) => "
                 "{ i.onload = () => ok(true); i.onerror = () => no(new Error('the picture did not load')); })")
    assert img.evaluate("i => i.naturalWidth") > 0
    assert img.evaluate("i => getComputedStyle(i).imageRendering") == "pixelated"


def select_in_message(message, words: str) -> None:
    """Select `words` in the message's text, as a reader dragging over them would."""
    message.locator(".text").evaluate("""(el, words) => {
      const node = el.firstChild, i = node.textContent.indexOf(words);
      const range = document.createRange();
      range.setStart(node, i);
      range.setEnd(node, i + words.length);
      getSelection().removeAllRanges();
      getSelection().addRange(range);
    }""", words)


def test_illustrate_a_story_keep_it_and_say_why_not(page, illustrating_server, tmp_path, monkeypatch):
    url, app = illustrating_server
    bodies: list[dict] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data or "{}")) if r.url.endswith("/illustration")
            and r.method == "POST" else None)
    page.goto(url + "/")
    page.get_by_test_id("temperature").fill("0")
    send(page, "Write a story about a cat named Tom who finds a key.")
    expect(page.get_by_test_id("assistant-message")).to_have_count(1, timeout=120_000)
    wait_done(page)
    reply = page.get_by_test_id("assistant-message").last
    expect(reply).not_to_have_class(re.compile("streaming"))
    story = reply.locator(".text").inner_text()
    sentence = I.pick_sentence(story)  # the greedy story has its cat (else this test's premise is gone: it fails)

    # click: a busy state while the picture is drawn (held until the test has seen it), then the picture
    drawing, real = threading.Event(), I.Illustrator.illustrate

    def held(self, *a, **k):
        assert drawing.wait(60), "the test never let the picture be drawn"
        return real(self, *a, **k)

    monkeypatch.setattr(I.Illustrator, "illustrate", held)
    reply.get_by_test_id("illustrate").click()
    expect(reply.get_by_test_id("illustrate")).to_be_disabled()
    expect(reply.get_by_test_id("picture-busy")).to_be_visible()
    drawing.set()
    figure = reply.get_by_test_id("illustration")
    picture_shown(page, figure)
    expect(figure.locator("img")).to_have_attribute("alt", I.caption_for(sentence, story))
    expect(figure.locator("figcaption")).to_have_text(f"Drawn from “{sentence}”")
    expect(reply.get_by_test_id("picture-busy")).to_have_count(0)
    expect(reply.get_by_test_id("illustrate")).to_be_enabled()
    assert bodies[-1] == {}, "nothing selected: the server picks the sentence"

    # reload: the picture comes back from the server's database
    page.reload()
    reply = page.get_by_test_id("assistant-message").last
    figure = reply.get_by_test_id("illustration")
    picture_shown(page, figure)
    expect(figure.locator("img")).to_have_attribute("alt", I.caption_for(sentence, story))

    # words selected in the message are drawn instead
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", story) if s.strip()]
    drawable = [s for s in sentences if I._score(s) >= 0 and I.caption_for(s, story) != I.caption_for(sentence, story)]
    chosen = (drawable or [sentence])[0]
    select_in_message(reply, chosen)
    reply.get_by_test_id("illustrate").click()
    expect(figure.locator("figcaption")).to_have_text(f"Drawn from “{chosen}”")
    expect(figure.locator("img")).to_have_attribute("alt", I.caption_for(chosen, story))
    picture_shown(page, figure)
    assert bodies[-1]["sentence"] == chosen and isinstance(bodies[-1]["seed"], int), "drawn again: another seed"

    # a phone: the picture fits the message, nothing overflows sideways
    page.set_viewport_size({"width": 390, "height": 844})
    assert page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")
    box, inside = reply.bounding_box(), figure.locator("img").bounding_box()
    assert box["x"] <= inside["x"] and inside["x"] + inside["width"] <= box["x"] + box["width"] + 0.5
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(tmp_path / "webapp_illustrate.png"))

    # a story with nothing to draw: NothingToDraw's words under the message, nothing else changes
    c = httpx.post(url + "/api/conversations", json={"title": "Happy"}).json()
    httpx.put(url + f"/api/conversations/{c['id']}", json={"title": "Happy", "messages": [
        {"role": "user", "content": "A short story."}, {"role": "assistant", "content": "They were happy. The end."}]})
    page.goto(url + f"/#{c['id']}")
    page.reload()
    happy = page.get_by_test_id("assistant-message")
    expect(happy.locator(".text")).to_have_text("They were happy. The end.")
    happy.get_by_test_id("illustrate").click()
    expect(happy.get_by_test_id("picture-error")).to_contain_text("nothing to draw in this story")
    expect(happy.get_by_test_id("illustration")).to_have_count(0)
    expect(page.get_by_test_id("error")).to_be_hidden()
    expect(happy.get_by_test_id("illustrate")).to_be_enabled()

    # no illustrator (not trained yet): one sentence under the message, the conversation as it was
    app.state.illustrations = S.Illustrations(tmp_path / "no-illustrator")
    page.get_by_test_id("conversations").locator("li", has_text="Write a story").get_by_role("button").first.click()
    reply = page.get_by_test_id("assistant-message").last
    picture_shown(page, reply.get_by_test_id("illustration"))
    reply.get_by_test_id("illustrate").click()
    expect(reply.get_by_test_id("picture-error")).to_contain_text("there is none at")
    picture_shown(page, reply.get_by_test_id("illustration"))  # the picture it had stays
    expect(reply.locator(".text")).to_have_text(story)
    # Chromium logs every 4xx/5xx response as a console error: these two were expected, and the only ones
    log = page_log(page)
    refused = [e for e in log.console_errors if "status of 400" in e or "status of 503" in e]
    assert len(refused) == 2, log.console_errors
    for e in refused:
        log.console_errors.remove(e)



@pytest.fixture(scope="module")
def tiny_app_server(tmp_path_factory):
    """The server with a tiny random GPT (the chat model's tokenizer): replies of noise, in a moment."""
    import torch

    from storylib.gpt2 import GPT, GPTConfig

    _, tok = require_chat_model()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=4160, n_layer=1, n_head=2, n_embd=16)).eval()
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("webapp_tiny") / "conversations.sqlite3")
    with serve_in_thread(app) as url:
        yield url


def test_thumbs_up_is_kept_after_a_reload_and_regenerated_replies_are_rated_too(page, tiny_app_server):
    """👍 / 👎 (Chapter 15) under a reply: pressed, kept on the server, still pressed after a reload; Regenerate
    keeps the reply it replaces as an earlier try (its 👍 with it), the new one is rated with the keyboard, and the
    two are a preference pair (GET /api/preferences); at phone width the thumbs are there without sideways
    scrolling; a rating the server cannot keep is one clear line, and the story stays."""
    url = tiny_app_server
    page.goto(url + "/")
    send(page, "Write a story about a fox named Red who finds a bell.")
    message = page.get_by_test_id("assistant-message")
    up = message.get_by_test_id("rate-up")
    expect(up).to_be_visible(timeout=60_000)  # hidden while the reply streams
    first = message.locator(".text").text_content()
    expect(up).to_have_attribute("aria-pressed", "false")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(message.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "false")
    page.reload()
    expect(page.get_by_test_id("assistant-message").get_by_test_id("rate-up")).to_have_attribute("aria-pressed", "true")

    page.get_by_test_id("regenerate").click()
    earlier = message.get_by_test_id("alternatives")
    expect(earlier.locator("summary")).to_have_text("1 earlier try", timeout=60_000)  # once the new one is saved
    second = message.locator(".text").text_content()
    assert second != first
    earlier.locator("summary").click()
    assert earlier.locator(".alt-text").text_content() == first
    expect(earlier.get_by_test_id("rate-up")).to_have_attribute("aria-pressed", "true")
    own = message.locator(".tools").first
    expect(own.get_by_test_id("rate-up")).to_have_attribute("aria-pressed", "false")
    own.get_by_test_id("rate-down").focus()
    page.keyboard.press("Enter")
    expect(own.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "true")
    pairs = [json.loads(line) for line in httpx.get(url + "/api/preferences").text.splitlines()]
    ask = {"role": "user", "content": "Write a story about a fox named Red who finds a bell."}
    assert pairs == [{"messages": [ask], "chosen": first, "rejected": second, "source": "web"}]

    page.set_viewport_size({"width": 390, "height": 844})
    for thumb in (own.get_by_test_id("rate-up"), own.get_by_test_id("rate-down")):
        thumb.scroll_into_view_if_needed()  # a long reply: the messages scroll, up and down only
        expect(thumb).to_be_in_viewport()
        box = thumb.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["height"] >= 20, box
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"), "nothing scrolls sideways"

    cid = page.evaluate("location.hash.slice(1)")
    httpx.delete(url + f"/api/conversations/{cid}").raise_for_status()  # gone meanwhile (another tab)
    own.get_by_test_id("rate-up").click()
    expect(page.get_by_test_id("error")).to_have_text(re.compile(r"^The rating was not saved: no conversation"))
    assert message.locator(".text").text_content() == second
    expect(own.get_by_test_id("rate-down")).to_have_attribute("aria-pressed", "true")
    log = page_log(page)  # Chromium logs the expected 404 as a console error
    log.console_errors[:] = [e for e in log.console_errors if "status of 404" not in e]
