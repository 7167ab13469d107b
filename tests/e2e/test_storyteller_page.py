"""The storyteller chat in a static page (no kernel): it runs in the reader's browser (storylib/web).

A page written here the way the book embeds widgets (like tests/e2e/test_ch06_widget.py), served by a plain static
server under a sub-path, with the browser engine's files exported the way scripts/build_book.sh exports them into
_static/storyteller/: the recorded turns show, then the controls work in Chromium. Its greedy story is Chapter 12's
golden story, its greedy chat reply is storylib's on the same fp16 weights, Stop stops, and the test measures tokens/s
and the time to the first token (bench/results/browser_engine.json with LLM101N_UPDATE_RESULTS=1). Without the engine
files, or without WebAssembly SIMD, the recorded turns stay with the controls disabled and a line saying why. The
built book's book/storyteller.html (needs `make book`) is checked too. Every page raises no JavaScript error and
loads nothing off site (the `page` fixture checks at teardown).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import pytest
from playwright.sync_api import expect

from bench.machine import cpu_name

from .conftest import ROOT, page_log, screenshot_path, static_widget_site, wait_for_book_page

GOLDEN = ROOT / "grading" / "tests" / "golden" / "ch12_once_upon_a_time.txt"
RESULTS = ROOT / "bench" / "results" / "browser_engine.json"
# The goals (>= 100 tokens/s, first token <= 3 s) hold on a quiet machine, where the committed results are measured
# (LLM101N_UPDATE_RESULTS=1, `make screenshots`). Elsewhere, e.g. CI beside other work on 2 cores, the test allows 4x
# (a busy machine is slow, not wrong) and still fails an engine that lost its SIMD or its KV cache (10x and more).
SLACK = 1 if os.environ.get("LLM101N_UPDATE_RESULTS") == "1" else 4
PREFIX = "projects/llm101n/"  # a static host's sub-path
CHAT_REQUEST = "Write a story about a dog named Max who loves the rain."
CONTROLS = ("chat-send", "chat-continue", "chat-stop", "chat-refine", "chat-new", "chat-prompt", "chat-temperature",
            "chat-max_tokens", "chat-top_k", "chat-top_p", "chat-seed", "chat-mode")


def golden_text() -> str:
    return GOLDEN.read_text(encoding="utf-8").split("\n---\n", 1)[1][:-1]


def check_recorded_chat(page, story: list[dict] | None = None) -> None:
    """The chat on `page` shows a recorded story (exactly `story` when given; else the book's conversation) and
    cannot be used (no kernel and no browser engine)."""
    from storylib.storyteller import FIRST_TURNS

    chat = page.locator('[data-testid="story-chat"]')
    expect(chat).to_have_count(1)
    expect(chat).to_have_attribute("data-engine", "recorded")
    expect(chat).to_have_attribute("data-kernel", "false")
    note = chat.locator('[data-testid="chat-static-note"]')
    expect(note).to_be_visible()
    expect(note).to_contain_text("Live in JupyterLab: run make start")
    for testid in (*CONTROLS, "chat-illustrate"):
        expect(chat.locator(f'[data-testid="{testid}"]')).to_be_disabled()
    user = chat.locator('[data-testid="chat-user"]').all_text_contents()
    told = chat.locator('[data-testid="chat-model"]').all_text_contents()
    if story is None:  # the book: the chat model asked for a story, then for a change (chat mode, the default)
        expect(chat).to_have_attribute("data-mode", "chat")
        assert user == list(FIRST_TURNS["chat"]), (
            f"the book should show the chat model's conversation (is models/storyteller-chat there?): {user}")
        told = chat.locator('[data-testid="chat-message-model"]').all_text_contents()  # a picture splits a reply's text
        assert len(told) == 2 and all(len(t) > 50 for t in told), told
    else:
        assert user == ["".join(s["pieces"]) for s in story if s["role"] == "user"]
        assert told == ["".join(s["pieces"]) for s in story if s["role"] == "model"]
    expect(chat.locator('[data-testid="chat-status"]')).to_contain_text("tokens/s")
    expect(chat.locator('[data-testid="chat-footer"]')).to_contain_text("M parameters")
    chat.locator('[data-testid="chat-model"] .sc-piece').nth(3).click()  # nothing runs: no cut point either
    expect(chat.locator(".sc-cut")).to_have_count(0)


# ----------------------------------------------------------------------------- the sites


@pytest.fixture(scope="module")
def recorded():
    """A StoryChat that recorded a short chat (the Python chat model), as the book records its first turns."""
    from storylib.widgets import StoryChat

    w = StoryChat(max_tokens=60)
    assert w.status == "done", w.notice
    return w


@pytest.fixture(scope="module")
def engine_files(tmp_path_factory) -> Path:
    """The browser engine's files, exported as scripts/build_book.sh exports them for _static/storyteller/."""
    from storylib import web

    out = tmp_path_factory.mktemp("engine") / "storyteller"
    web.export_site(out)
    return out


@pytest.fixture(scope="module")
def chat_oracle(engine_files) -> str:
    """storylib's greedy reply to CHAT_REQUEST on the exported (fp16) chat model: what the browser must write."""
    from storylib import web
    from storylib.kvcache import generate_stream
    from storylib.sft import load_chat_model
    from storylib.storyteller import chat_prompt

    _, tok = load_chat_model()
    model = web.load_exported(engine_files / "chat.safetensors")
    ids = chat_prompt(model, tok, [{"role": "user", "content": CHAT_REQUEST}], 200)
    return "".join(generate_stream(model, tok, ids, 200, temperature=0.0))


@pytest.fixture
def live_site(recorded, engine_files, tmp_path):
    with static_widget_site(recorded, tmp_path / "www", "The storyteller", prefix=PREFIX) as url:
        shutil.copytree(engine_files, tmp_path / "www" / PREFIX / "_static" / "storyteller")
        yield url


@pytest.fixture
def bare_site(recorded, tmp_path):
    with static_widget_site(recorded, tmp_path / "www", "The storyteller", prefix=PREFIX) as url:
        yield url


# ----------------------------------------------------------------------------- driving the chat


def chat_of(page):
    return page.locator('[data-testid="story-chat"]')


def set_control(chat, testid: str, value: str) -> None:
    box = chat.locator(f'[data-testid="{testid}"]')
    if box.get_attribute("type") == "range":
        box.evaluate("(e, v) => { e.value = v; e.dispatchEvent(new Event('input')); }", value)
    else:
        box.fill(value)
        box.dispatch_event("change")


def send(chat, text: str) -> None:
    chat.locator('[data-testid="chat-prompt"]').fill(text)
    chat.locator('[data-testid="chat-send"]').click()


def wait_told(page, chat, n_turns: int, timeout: int = 120_000) -> dict:
    """Wait until the browser engine finished turn n_turns (1-based); returns its log entry."""
    page.wait_for_function("([el, n]) => el.llm101nBrowser.turns.length >= n", arg=[chat.element_handle(), n_turns],
                           timeout=timeout)
    expect(chat).not_to_have_attribute("data-status", "generating")
    return chat.evaluate(f"el => el.llm101nBrowser.turns[{n_turns - 1}]")


def last_model_text(chat) -> str:
    return chat.locator('[data-testid="chat-model"]').last.text_content()


# ----------------------------------------------------------------------------- the tests


def test_storyteller_runs_in_the_browser(page, live_site, chat_oracle, tmp_path, browser):
    load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    sizes: dict[str, int] = {}
    page.on("response", lambda r: sizes.__setitem__(r.url.rsplit("/", 1)[-1], int(r.headers.get("content-length", 0)))
            if "/_static/storyteller/" in r.url else None)
    resp = page.goto(live_site, wait_until="load")
    assert resp is not None and resp.ok
    assert "/" + PREFIX in live_site
    wait_for_book_page(page, min_widgets=1)
    chat = chat_of(page)
    expect(chat).to_have_attribute("data-engine", "browser", timeout=30_000)
    # the recorded turns are still there; now every control but Illustrate works
    expect(chat.locator('[data-testid="chat-user"]')).not_to_have_count(0)
    for testid in CONTROLS:
        if testid != "chat-stop":
            expect(chat.locator(f'[data-testid="{testid}"]')).to_be_enabled()
    expect(chat.locator('[data-testid="chat-static-note"]')).to_be_hidden()
    expect(chat.locator('[data-testid="chat-engine-note"]')).to_contain_text("Running in your browser")
    expect(chat.locator('[data-testid="chat-footer"]')).to_contain_text("your browser")
    ready_ms = chat.evaluate("el => el.llm101nBrowser.readyAt")

    # 1. a chat request, greedy: storylib's reply on the same weights; the first token within 3 s of the page load
    # (New, the settings and Send in one step, as a reader's clicks would follow each other, not a test's round trips)
    chat.evaluate("""(el, text) => {
      const q = (id) => el.querySelector(`[data-testid="${id}"]`);
      q("chat-new").click();
      const t = q("chat-temperature"); t.value = "0"; t.dispatchEvent(new Event("input"));
      const m = q("chat-max_tokens"); m.value = "200"; m.dispatchEvent(new Event("change"));
      q("chat-prompt").value = text;
      q("chat-send").click();
    }""", CHAT_REQUEST)
    turn = wait_told(page, chat, 1)
    expect(chat.locator('[data-testid="chat-temperature"]')).to_have_value("0")
    ttft_ms = turn["firstTokenAt"]  # performance.now(): milliseconds since the page load started
    assert last_model_text(chat) == chat_oracle, "the browser's greedy reply differs from storylib's (same weights)"
    assert ttft_ms <= 3000 * SLACK, f"first token {ttft_ms:.0f} ms after the page load started (> {3 * SLACK} s)"
    expect(chat.locator('[data-testid="chat-status"]')).to_contain_text("tokens/s")
    # ... then a change to it (create -> refine): the conversation goes through the chat template again
    send(chat, "Give it a happy ending.")
    wait_told(page, chat, 2)
    expect(chat.locator('[data-testid="chat-message-model"]')).to_have_count(2)
    assert len(chat.locator('[data-testid="chat-message-model"]').last.text_content()) > 20
    chat.screenshot(path=str(screenshot_path("storyteller_browser.png", tmp_path)))  # the README's picture

    # 2. story mode (models/storyteller), greedy, 60 tokens after "Once upon a time": Chapter 12's golden story
    chat.locator('[data-testid="chat-mode"]').select_option("story")
    set_control(chat, "chat-max_tokens", "60")
    send(chat, "Once upon a time")
    wait_told(page, chat, 3)
    assert last_model_text(chat) == golden_text()
    expect(chat.locator('[data-testid="chat-footer"]')).to_contain_text("models/storyteller)")
    chat.locator('[data-testid="chat-continue"]').click()  # Continue: more of the same story
    wait_told(page, chat, 4)
    assert chat.locator('[data-testid="chat-model"]').count() == 2

    # 3. speed: a sampled story (temperature, top-k, top-p, seed), 300 tokens
    chat.locator('[data-testid="chat-new"]').click()
    expect(chat.locator('[data-testid="chat-model"]')).to_have_count(0)
    set_control(chat, "chat-temperature", "0.8")
    set_control(chat, "chat-top_k", "200")
    set_control(chat, "chat-top_p", "0.95")
    set_control(chat, "chat-seed", "7")
    set_control(chat, "chat-max_tokens", "300")
    send(chat, "Once upon a time, there was a little fox")
    speed = wait_told(page, chat, 5)
    seeded = last_model_text(chat)
    assert speed["n_tokens"] >= 40, speed
    # the same seed tells the same story (Refine: the last part again), and times it again: the faster of the two
    # counts (the machine is shared: a busy machine is slow, not wrong)
    chat.locator('[data-testid="chat-refine"]').click()
    again = wait_told(page, chat, 6)
    assert last_model_text(chat) == seeded and again["ids"] == speed["ids"]
    sampled = max(speed, again, key=lambda t: t["decode_tokens_per_s"])
    speed = max(sampled, turn, key=lambda t: t["decode_tokens_per_s"])  # turn: the greedy chat reply
    assert speed["decode_tokens_per_s"] >= 100 / SLACK, f"{speed['decode_tokens_per_s']:.0f} tokens/s in the browser"

    # 4. Stop: a long story, stopped after its first pieces
    chat.locator('[data-testid="chat-new"]').click()
    set_control(chat, "chat-seed", "")
    set_control(chat, "chat-max_tokens", "1000")
    set_control(chat, "chat-temperature", "1")
    send(chat, "Once upon a time")
    expect(chat.locator('[data-testid="chat-stop"]')).to_be_enabled()
    page.wait_for_function("el => el.querySelectorAll('.sc-model .sc-piece').length >= 5", arg=chat.element_handle())
    chat.locator('[data-testid="chat-stop"]').click()
    stopped = wait_told(page, chat, 7)
    assert stopped["reason"] == "stopped" and stopped["n_tokens"] < 1000, stopped
    expect(chat).to_have_attribute("data-status", "stopped")

    chat_bytes = sizes.get("chat.safetensors", 0)
    transferred = sum(v for k, v in sizes.items() if k != "story.safetensors")
    assert 0 < chat_bytes <= 23_000_000 and transferred <= 23_500_000, sizes
    record = {
        "what": "the static book's storyteller in headless Chromium: storylib/web (C -> WebAssembly SIMD128, one "
                "thread), fp16 weights widened to fp32 at load; served by a plain static server under a sub-path",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "chromium": browser.version,
                    "platform": platform.platform(), "load_average_at_start": load_at_start,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())},
        "models": "chat: storylib.sft.default_chat_folder(), LoRA adapters merged (loaded with the page); story "
                  "mode: models/storyteller (loaded when story mode is chosen); both 11.3 M parameters, fp16 files",
        "decode_tokens_per_s": round(speed["decode_tokens_per_s"], 1),
        "greedy_chat_reply_decode_tokens_per_s": round(turn["decode_tokens_per_s"], 1),
        "greedy_chat_reply_tokens": turn["n_tokens"],
        "sampled_story_decode_tokens_per_s": round(sampled["decode_tokens_per_s"], 1),
        "sampled_story_tokens": sampled["n_tokens"],
        "turn_tokens_per_s": round(speed["tokens_per_s"], 1),  # prompt (prefill) included
        "speed_turn": "the fastest of three turns (the greedy chat reply; a sampled story, temperature 0.8, top-k "
                      f"200, top-p 0.95, seed 7, and its repeat): {speed['mode']} mode",
        "speed_turn_tokens": speed["n_tokens"],
        "engine_ready_ms_after_page_load_start": round(ready_ms),
        "time_to_first_token_ms_after_page_load_start": round(ttft_ms),
        "model_file_mb": round(chat_bytes / 1e6, 2),
        "transferred_mb_engine_files": round(transferred / 1e6, 2),
        "files": sizes,
        "greedy_chat_reply_equals_storylib_fp16": True,
        "greedy_story_equals_ch12_golden": True,
    }
    out = RESULTS if os.environ.get("LLM101N_UPDATE_RESULTS") == "1" else tmp_path / RESULTS.name
    out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(record, indent=1))


def open_fallback(page, site: str, why: str):
    """The chat of the page at `site`, once it has said why it cannot run in this browser (data-engine-why)."""
    resp = page.goto(site, wait_until="load")
    assert resp is not None and resp.ok
    wait_for_book_page(page, min_widgets=1)
    chat = chat_of(page)
    expect(chat).to_have_attribute("data-engine-why", why, timeout=30_000)
    return chat


def test_without_the_engine_files_the_recorded_story_stays(page, bare_site, recorded):
    chat = open_fallback(page, bare_site, "no-engine")
    check_recorded_chat(page, recorded.story)
    expect(chat.locator('[data-testid="chat-why-static"]')).to_contain_text("cannot run in this browser here")
    # the 404s of the missing engine are the point of this test, not a page error
    log = page_log(page)
    log.console_errors[:] = [e for e in log.console_errors if "/_static/storyteller/" not in e]


def test_without_webassembly_simd_the_page_says_so(page, live_site, recorded):
    page.add_init_script("WebAssembly.validate = () => false;")  # a browser without SIMD
    chat = open_fallback(page, live_site, "no-simd")
    check_recorded_chat(page, recorded.story)
    expect(chat.locator('[data-testid="chat-why-static"]')).to_contain_text("no WebAssembly SIMD")


def test_storyteller_page_of_the_book(open_chapter):
    """The built book (`make book`): the recorded conversation and its picture, then the browser engine runs."""
    from storylib.storyteller import FIRST_TURNS

    page = open_chapter("storyteller", min_widgets=1)
    chat = chat_of(page)
    expect(chat).to_have_attribute("data-engine", "browser", timeout=30_000)
    expect(chat.locator('[data-testid="chat-send"]')).to_be_enabled()
    expect(chat).to_have_attribute("data-mode", "chat")
    assert chat.locator('[data-testid="chat-user"]').all_text_contents() == list(FIRST_TURNS["chat"])
    told = chat.locator('[data-testid="chat-message-model"]').all_text_contents()
    assert len(told) == 2 and all(len(t) > 50 for t in told), told
    picture = chat.locator('[data-testid="chat-picture"] img')
    expect(picture).to_have_count(1)
    assert picture.evaluate("img => img.decode().then(() => img.naturalWidth)") == 64, "the 64 × 64 picture"
    expect(chat.locator('[data-testid="chat-illustrate"]')).to_be_disabled()  # the illustrator needs Python
    text = page.locator("main").inner_text()
    assert "make start" in text and "WebAssembly" in text
    chat.locator('[data-testid="chat-new"]').click()
    set_control(chat, "chat-max_tokens", "20")
    send(chat, "Write a story about a frog.")
    turn = wait_told(page, chat, 1)
    assert turn["n_tokens"] > 0
