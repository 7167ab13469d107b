"""Chapter 14's side-by-side widget without a browser: ReplyCompare's handlers driven as the front end would.

The recorded requests must hold every replier's own answer, in the column order; an "ask" must add one more
example, answered off the kernel's thread; only a live kernel answers "hello"; a replier that raises (a learner's
unfinished exercise) must come back as a notice, never a traceback.
"""

from __future__ import annotations

import pytest

from storylib.widgets import ReplyCompare


def repliers():
    return {"upper": str.upper, "reversed": lambda r: r[::-1]}


def recorded(w: ReplyCompare) -> list[dict]:
    sent: list[dict] = []
    w.send = lambda content, buffers=None: sent.append(content)
    return sent


def test_requests_are_answered_by_every_model_in_order():
    w = ReplyCompare(repliers(), requests=["a cat", "Tom's key"], notes=lambda q, r: [f"{len(r)} chars"])
    assert w.models == ["upper", "reversed"]
    assert [e["request"] for e in w.examples] == ["a cat", "Tom's key"]
    assert w.examples[1]["replies"] == [{"text": "TOM'S KEY", "notes": ["9 chars"]},
                                        {"text": "yek s'moT", "notes": ["9 chars"]}]


def test_ask_adds_an_example_and_selects_it():
    w = ReplyCompare(repliers(), requests=["one"])
    w.handle({"type": "ask", "text": "  two words "})
    assert w.wait(10)
    assert w.examples[-1]["request"] == "two words"
    assert w.examples[-1]["replies"][1]["text"] == "sdrow owt"
    assert (w.selected, w.status, w.notice) == (1, "idle", "")
    w.handle({"type": "ask", "text": "   "})  # nothing to ask: nothing happens
    assert w.wait(10) and len(w.examples) == 2


def test_only_hello_is_answered():
    w = ReplyCompare(repliers())
    sent = recorded(w)
    w.handle({"type": "hello", "nonce": "abc:1"})
    w.handle({"type": "unknown"})
    assert sent == [{"type": "hello", "nonce": "abc:1"}]


def test_a_failing_replier_becomes_a_notice():
    def unfinished(_request):
        raise NotImplementedError("ch14.lora_forward: add the low-rank path — see book §14.4")

    w = ReplyCompare({"ok": str.upper, "chat": unfinished})
    w.handle({"type": "ask", "text": "hello"})
    assert w.wait(10)
    assert w.status == "error" and "ch14.lora_forward" in w.notice and w.examples == []


def test_needs_a_replier():
    with pytest.raises(ValueError, match="at least one replier"):
        ReplyCompare({})
