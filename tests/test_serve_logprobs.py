"""Logprobs on every reply of `llm101n serve` (issue #20): a streamed chat reply's chunks each carry the entries of
the tokens their text completes (OpenAI's chat shape), and /v1/completions gives the legacy shape (tokens,
token_logprobs, top_logprobs, text_offset), whole and streamed. Checked with the official openai client.

The server runs tests/test_serve_api.py's tiny random GPT with its end tokens banned (a reply runs to max_tokens,
any token can come out, half characters included); what is tested is the HTTP layer and the engine's bookkeeping.
"""

from __future__ import annotations

import json

import pytest

from storylib import serve as S
from storylib.kvcache import utf8_complete
from tests import test_serve_api as api
from tests.test_serve_api import client, live, post, user

storyteller, tiny = api.storyteller, api.tiny  # the fixtures, shared


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3")
    engine = app.state.engine
    engine.banned[list(engine.end_ids)] = True  # no reply ends before max_tokens
    with live(app) as url:
        yield url, tok


def streamed_chat(c, **ask) -> tuple[str, list, list]:
    """A streamed chat reply: its text, the logprobs entries of its chunks in order, and every chunk."""
    chunks = list(c.chat.completions.create(model="storyteller", stream=True, **ask))
    text, entries = "", []
    for ch in chunks:
        choice = ch.choices[0]
        if choice.delta.content:
            assert choice.logprobs is not None, "a chunk with text carries its tokens' logprobs"
            assert choice.logprobs.refusal is None
            text += choice.delta.content
            entries += choice.logprobs.content
        else:  # the role chunk and the finish chunk carry no tokens
            assert choice.logprobs is None, ch
    return text, entries, chunks


def decoded(entries) -> str:
    return b"".join(bytes(e.bytes) for e in entries).decode("utf-8", "replace")


@pytest.mark.parametrize("temperature,seed", [(0.0, None), (1.0, 7)])
def test_a_streamed_chat_reply_carries_the_logprobs_of_its_tokens(server, temperature, seed):
    """Before: logprobs with stream: true was a 400."""
    url, _ = server
    c = client(url)
    ask = dict(messages=user("Tell me a story about a kite."), max_tokens=40, temperature=temperature, seed=seed,
               logprobs=True, top_logprobs=2)
    text, entries, chunks = streamed_chat(c, **ask)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert len(entries) == 40, "every token, once: no reply ends before max_tokens here"
    assert decoded(entries) == text, "the entries' bytes are exactly the streamed text"
    for e in entries:
        assert e.logprob <= 0
        assert e.bytes == list(e.token.encode("utf-8")) or "\ufffd" in e.token, "a part of a character: U+FFFD"
        top = [t.logprob for t in e.top_logprobs]
        assert len(top) == 2 and top == sorted(top, reverse=True) and all(v <= 0 for v in top)
        assert e.logprob <= top[0] + 1e-9, "no token is likelier than the likeliest"
    whole = c.chat.completions.create(model="storyteller", **ask)
    assert whole.choices[0].message.content == text, "the same seed (or greedy) gives the same reply"
    want = whole.choices[0].logprobs.content
    assert [e.bytes for e in entries] == [e.bytes for e in want]
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in want], abs=1e-9)
    assert [t.logprob for e in entries for t in e.top_logprobs] == \
        pytest.approx([t.logprob for e in want for t in e.top_logprobs], abs=1e-9)


def complete_text(raw: bytes) -> str:
    """The text of the whole characters at the start of raw (what a stream can have sent of it)."""
    return raw[: utf8_complete(raw)].decode("utf-8", "replace")


def test_a_chunk_carries_the_tokens_its_text_completes(server):
    """Text is not sent token by token (half a character waits for the rest): after each chunk, the entries so far
    are those of the tokens whose text has been sent, no more (an entry never comes before its text) and no fewer
    (the text is never a whole token ahead of them)."""
    url, _ = server
    ask = dict(model="storyteller", messages=user("A dragon, please."), max_tokens=60, temperature=1.0, seed=3,
               logprobs=True)
    c = client(url)
    every = [bytes(e.bytes) for e in c.chat.completions.create(**ask).choices[0].logprobs.content]
    text, n, chunks = "", 0, 0
    for ch in c.chat.completions.create(**ask, stream=True):
        choice = ch.choices[0]
        if not choice.delta.content:
            continue
        chunks += 1
        assert all(e.top_logprobs == [] for e in choice.logprobs.content), "top_logprobs: 0 by default"
        got = [bytes(e.bytes) for e in choice.logprobs.content]
        assert got == every[n : n + len(got)], "the tokens in order, each once"
        n, text = n + len(got), text + choice.delta.content
        assert text.startswith(complete_text(b"".join(every[:n]))), "an entry never comes before its text"
        assert complete_text(b"".join(every[: n + 1])).startswith(text), "nor a whole token after it"
    assert n == len(every) == 60 and chunks > 10


def test_tokens_of_a_stop_string_get_no_entry(server):
    """A stop string is held back and never sent: the tokens that spelled it have no entry in the stream."""
    url, tok = server
    c = client(url)
    ask = dict(messages=user("Tell me a story."), max_tokens=40, temperature=0.0, logprobs=True, top_logprobs=1)
    whole = c.chat.completions.create(model="storyteller", **ask).choices[0].logprobs.content
    texts = [bytes(e.bytes) for e in whole]
    # a stop string of two whole tokens of plain text, that does not show earlier in the reply
    for k in range(5, len(texts) - 2):
        stop = (texts[k] + texts[k + 1]).decode("utf-8", "replace")
        before = b"".join(texts[:k]).decode("utf-8", "replace")
        if stop.isascii() and stop.strip() and stop not in before + stop[:-1] and "\ufffd" not in before:
            break
    else:
        pytest.skip("no plain-text pair of tokens in this reply")
    text, entries, chunks = streamed_chat(c, **ask, stop=stop)
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert text == before, "the reply ends before the stop string"
    assert len(entries) == k and decoded(entries) == text, "the stop string's tokens have no entry"
    assert [e.logprob for e in entries] == pytest.approx([e.logprob for e in whole[:k]], abs=1e-9)


def legacy_ok(lp, k: int, prompt: str, text: str) -> None:
    """A completion's legacy logprobs, checked against its text."""
    n = len(lp.tokens)
    assert n == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) > 0
    assert lp.text_offset[0] == len(prompt), "offsets count the prompt's characters too"
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[-1] <= len(prompt) + len(text)
    full = prompt + text
    for token, logprob, top, offset in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, lp.text_offset,
                                           strict=True):
        assert logprob <= 0 and all(v <= 0 for v in top.values())
        assert len(top) <= k + 1, "the k likeliest, and the token drawn"
        if "\ufffd" not in token:
            assert full[offset:].startswith(token), (offset, token)
            assert top[token] == pytest.approx(logprob, abs=1e-9), "the token drawn is always in top_logprobs"
        values = list(top.values())
        assert values[:k] == sorted(values[:k], reverse=True)


def test_completion_logprobs_whole_and_streamed(server):
    """Before: logprobs on /v1/completions was refused (unsupported_parameter)."""
    url, _ = server
    c = client(url)
    prompt = "Once upon a time, a fox"
    ask = dict(model="storyteller", prompt=prompt, max_tokens=30, temperature=0, logprobs=3)
    r = c.completions.create(**ask)
    lp, text = r.choices[0].logprobs, r.choices[0].text
    assert len(lp.tokens) == r.usage.completion_tokens == 30
    legacy_ok(lp, 3, prompt, text)
    assert all(len(top) >= 1 for top in lp.top_logprobs)
    streamed, tokens, logprobs, offsets = "", [], [], []
    for ch in c.completions.create(**ask, stream=True):
        choice = ch.choices[0]
        if choice.text:
            streamed += choice.text
            tokens += choice.logprobs.tokens
            logprobs += choice.logprobs.token_logprobs
            offsets += choice.logprobs.text_offset
        else:
            assert choice.logprobs is None and choice.finish_reason == "length"
    assert streamed == text and tokens == lp.tokens and offsets == lp.text_offset
    assert logprobs == pytest.approx(lp.token_logprobs, abs=1e-9)


def test_completion_logprobs_0_gives_the_token_drawn_only(server):
    url, _ = server
    r = client(url).completions.create(model="storyteller", prompt="A cat", max_tokens=5, temperature=0.7, seed=1,
                                       logprobs=0)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == 5 and all(len(top) == 1 for top in lp.top_logprobs)
    assert r.choices[0].text and lp.text_offset[0] == len("A cat")
    plain = client(url).completions.create(model="storyteller", prompt="A cat", max_tokens=5)
    assert plain.choices[0].logprobs is None, "no logprobs unless asked for"


@pytest.mark.parametrize("value", [6, -1, True, "2", 2.5, [1]])
def test_completion_logprobs_out_of_range_or_of_the_wrong_type_are_a_400(server, value):
    url, _ = server
    for stream in (False, True):
        r = post(url, "/v1/completions", json.dumps({"prompt": "a", "max_tokens": 2, "logprobs": value,
                                                     "stream": stream}))
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "logprobs" and "'logprobs'" in err["message"] and "0..5" in err["message"], err
