"""Long conversations and a clean shutdown (issue #20).

A conversation goes on for 50 turns with truncation "auto": the system prompt and the latest turns are read, the
oldest dropped, and usage.dropped_messages says how many (the real chat model, short replies, in a server thread).
On SIGTERM a real `llm101n serve` process ends the replies in flight with what they have (a stream: its final chunk
with finish_reason and [DONE]) and exits within seconds; its model is a random GPT that cannot draw an end token,
so its replies would run for many seconds more.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time

import httpx
import openai
import pytest
import torch

from storylib import serve as S
from storylib.chat_template import render_chat
from storylib.conversations import reference_index
from storylib.gpt2 import GPT, GPTConfig
from storylib.service import serve_in_thread, start_server_subprocess
from tests.chat_model import require_chat_model

SYSTEM = {"role": "system", "content": "You are a storyteller who writes short stories for children."}
REQUESTS = ["Write a story about a cat named Tom who finds a key.", "Give it a happy ending.", "Call the cat Max.",
            "Write a story about a little bird who is afraid of the rain.", "Make it shorter."]


def expected_window(messages: list[dict], tokenizer, block_size: int, reserve: int) -> list[dict]:
    """The documented rule, written out: the system message, the last request and the pair whose story it refers
    to always stay; of the other (user, assistant) pairs, the latest that fit with `reserve` tokens left."""
    last = len(messages) - 1
    ref = reference_index(messages, last)
    pinned = {0, last} | ({ref - 1, ref} if ref is not None else set())
    kept = set(pinned)
    for i in range(last - 2, 0, -2):  # the user message of each pair, newest first
        if i in pinned:
            continue
        trial = sorted(kept | {i, i + 1})
        if len(render_chat([messages[j] for j in trial], tokenizer, add_generation_prompt=True)[0]) + reserve \
                > block_size:
            break
        kept |= {i, i + 1}
    return [messages[j] for j in sorted(kept)]


def test_fit_for_reply_keeps_what_fit_conversation_keeps():
    """fit_for_reply counts tokens to drop the turns that surely cannot fit before it renders (hundreds of messages
    in milliseconds): its window is still exactly fit_conversation's, for random conversations and reserves."""
    import random

    from storylib.conversations import fit_conversation
    from storylib.storyteller import fit_for_reply

    _, tok = require_chat_model()
    rng = random.Random(0)
    sentence = "Once upon a time a cat found a key. "
    for trial in range(40):
        messages = [SYSTEM] if trial % 2 else []
        for i in range(rng.randint(1, 60)):
            messages += [{"role": "user", "content": f"Story {i}, please."},
                         {"role": "assistant", "content": sentence * rng.randint(0, 12) or "Tom"}]
        messages.append({"role": "user", "content": "Make it happy."})
        reserve = rng.choice([0, 16, 160, 400])
        try:
            want = fit_conversation(messages, tok, 512, reserve=reserve)
        except ValueError:
            continue  # too long even alone: fit_for_reply halves the reserve, another case
        assert fit_for_reply(messages, tok, 512, reserve) == want, (trial, reserve)


@pytest.fixture(scope="module")
def chat_server(tmp_path_factory):
    model, tok = require_chat_model()
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3")
    with serve_in_thread(app) as url:
        yield url, tok, model.config.block_size


def test_fifty_turns_read_the_system_prompt_and_the_latest_turns(chat_server):
    """50 turns (101 messages with the system prompt): every reply comes, the prompt it was given is the system
    message and the latest turns that fit, and usage.dropped_messages counts the rest (streamed turns: in the usage
    chunk)."""
    url, tok, block = chat_server
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    messages, max_tokens, dropped_seen = [SYSTEM], 16, []
    for turn in range(50):
        messages.append({"role": "user", "content": REQUESTS[turn % len(REQUESTS)]})
        ask = dict(model="storyteller", messages=messages, max_tokens=max_tokens, temperature=0.0,
                   extra_body={"truncation": "auto"})
        if turn % 2:  # streamed, with the usage chunk
            text, usage = "", None
            for chunk in client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    text += chunk.choices[0].delta.content
                usage = chunk.usage or usage
        else:
            r = client.chat.completions.create(**ask)
            text, usage = r.choices[0].message.content, r.usage
        window = expected_window(messages, tok, block, max_tokens)
        assert usage.prompt_tokens == len(render_chat(window, tok, add_generation_prompt=True)[0]), turn
        assert usage.dropped_messages == len(messages) - len(window), turn
        assert usage.prompt_tokens + max_tokens <= block
        dropped_seen.append(usage.dropped_messages)
        messages.append({"role": "assistant", "content": text})
    assert len(messages) == 101
    assert dropped_seen[0] == 0 and dropped_seen[-1] >= 60, dropped_seen  # the oldest turns went, the talk went on


def test_a_conversation_of_hundreds_of_long_messages_is_read_from_its_end(tmp_path):
    """A conversation as the store keeps it, 500 messages of 900 characters (a body of ~450 KB), is answered with
    truncation "auto", fast: its last turns are read (dropped_messages) and its first never block the server. Without
    truncation the same conversation is a 400 context_length_exceeded, in OpenAI's shape."""
    _, tok = require_chat_model()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=4160, n_layer=1, n_head=2, n_embd=32)).eval()  # fast
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")
    story = "Once upon a time a small cat found a shiny key under a big old tree, and she was happy. " * 10
    messages = [SYSTEM]
    for i in range(249):
        messages += [{"role": "user", "content": f"Story {i}, please."}, {"role": "assistant", "content": story[:900]}]
    messages.append({"role": "user", "content": "Make it longer."})
    with serve_in_thread(app) as url:
        body = {"model": "storyteller", "messages": messages, "max_tokens": 8}
        r = httpx.post(url + "/v1/chat/completions", json={**body, "truncation": "auto"}, timeout=60)
        assert r.status_code == 200, r.text[:300]
        usage = r.json()["usage"]
        assert 490 <= usage["dropped_messages"] < 500 and usage["prompt_tokens"] + 8 <= 512, usage
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text[:300]


# ----------------------------------------------------------------------------- SIGTERM


def endless_model_dir(path, tok):
    """A random GPT saved as a model folder, big enough that a reply of 250 tokens takes seconds (some 20 ms a
    token), whose special tokens (every end of a reply) have zero embeddings: their logits are 0 while the largest
    of the others is positive, so a greedy reply never ends before max_tokens."""
    from storylib.checkpoint import (
        MODEL_FORMAT,
        _config_doc,
        _model_tensors,
        _save_tensors,
        tokenizer_json,
        write_dir_atomic,
    )

    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=4160, n_layer=8, n_head=4, n_embd=512)).eval()
    with torch.no_grad():
        for i in tok.special_tokens.values():
            model.transformer.wte.weight[i] = 0
    files = {"model.safetensors": _save_tensors(_model_tensors(model), {"format": "pt"}),
             "config.json": _config_doc(MODEL_FORMAT, {}, model.config, {}, 0),
             "tokenizer.json": tokenizer_json(tok)}
    return write_dir_atomic(path, files)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_ends_the_replies_in_flight_and_exits(tmp_path):
    """SIGTERM while a stream and a whole reply are being written: the stream gets its final chunk
    (finish_reason "length") and [DONE], the whole reply its text so far, and the process exits in seconds."""
    _, tok = require_chat_model()
    folder = endless_model_dir(tmp_path / "endless", tok)
    proc, url = start_server_subprocess(_free_port(), args=["--model", str(folder), "--chat-format", "story",
                                                            "--db", str(tmp_path / "c.sqlite3"), "--threads", "1"])
    try:
        whole: dict = {}
        ask = {"model": "storyteller", "max_tokens": 250, "temperature": 0}

        def whole_reply():
            try:
                whole["r"] = httpx.post(url + "/v1/completions", json={**ask, "prompt": "Once upon a time"},
                                        timeout=120)
            except httpx.HTTPError as e:  # the connection cut
                whole["error"] = e

        waiter = threading.Thread(target=whole_reply)
        waiter.start()
        chat = {**ask, "messages": [{"role": "user", "content": "Tell me a story."}], "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=chat, timeout=120) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            events = []
            while sum('"content"' in e for e in events) < 4:  # the role chunk, then a few pieces
                line = next(lines)
                if line.startswith("data: "):
                    events.append(line[6:])
            deadline = time.time() + 60
            while httpx.get(url + "/health").json()["active"] < 2:  # both replies are being written
                assert time.time() < deadline, "the whole reply never started"
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            stopped = time.time()
            events += [line[6:] for line in lines if line.startswith("data: ")]  # to the end of the stream
        assert events[-1] == "[DONE]", events[-3:]
        last = json.loads(events[-2])
        assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
        pieces = sum(bool(json.loads(e)["choices"][0]["delta"].get("content")) for e in events[:-1])
        assert pieces < 250, "the reply was cut by the shutdown, not by max_tokens"
        waiter.join(timeout=30)
        assert "r" in whole, f"the whole reply got no answer: {whole.get('error')!r}"
        body = whole["r"].json()
        assert whole["r"].status_code == 200 and body["choices"][0]["finish_reason"] == "length", body
        assert 0 < body["usage"]["completion_tokens"] < 250 and body["choices"][0]["text"]
        proc.wait(timeout=15)
        assert time.time() - stopped < 15
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_drain_cuts_the_rows_refuses_the_waiting_and_the_new():
    """Engine.drain (what SIGTERM does first): the reply in a row ends with its tokens so far, finish_reason
    "length"; one still waiting gets the shutdown error; a new one is refused (ShuttingDown, a 503 in HTTP)."""
    _, tok = require_chat_model()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=4160, n_layer=1, n_head=2, n_embd=16)).eval()
    with torch.no_grad():
        for i in tok.special_tokens.values():  # no reply ends on its own (endless_model_dir)
            model.transformer.wte.weight[i] = 0
    engine = S.Engine(model, tok, max_batch=1, max_queue=4)
    events: dict[str, list] = {"row": [], "waiting": []}
    started = threading.Event()

    def into(name):
        def emit(event):
            events[name].append(event)
            started.set()
        return emit

    row = S.GenRequest([tok.special_tokens["<|endoftext|>"]], 500, temperature=0.0, emit=into("row"))
    waiting = S.GenRequest([tok.special_tokens["<|endoftext|>"]], 500, temperature=0.0, emit=into("waiting"))
    engine.submit(row)
    engine.submit(waiting)
    engine.start()
    try:
        assert started.wait(30)
        engine.drain()
        deadline = time.time() + 30
        while not (events["row"] and events["row"][-1][0] == "done" and events["waiting"]
                   and engine.load()["active"] == 0):  # the row is freed just after its "done"
            assert time.time() < deadline, events
            time.sleep(0.01)
        assert events["row"][-1] == ("done", "length") and 0 < len(row.tokens) < 500
        assert events["waiting"] == [("error", S.SHUTTING_DOWN)] and not waiting.tokens
        with pytest.raises(S.ShuttingDown):
            engine.submit(S.GenRequest([1], 5))
        assert engine.pending == 0
    finally:
        engine.stop()


def test_leaving_serve_in_thread_ends_the_replies_in_flight_as_sigterm_does(tmp_path):
    """serve_in_thread's exit drains the engine first (as SIGTERM does for `llm101n serve`): the stream in flight
    gets its final chunk (finish_reason "length") and [DONE], the request still waiting a 503. Before: the server
    was told to exit and nothing more, so after uvicorn's 2 s of grace the stream was cut (no final chunk, no
    [DONE]) and the waiting request got no answer."""
    _, tok = require_chat_model()
    torch.manual_seed(0)
    model = GPT(GPTConfig(block_size=512, vocab_size=4160, n_layer=1, n_head=2, n_embd=16)).eval()
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", max_batch=1)
    engine = app.state.engine
    engine.banned[list(engine.end_ids)] = True  # no reply ends on its own
    step = engine.step

    def slow_step():  # a token every 20 ms at least: 250 tokens take 5 s, more than uvicorn's 2 s of grace
        time.sleep(0.02)
        step()

    engine.step = slow_step
    events: list[str] = []
    got: dict = {}
    ask = {"model": "storyteller", "max_tokens": 250, "messages": [{"role": "user", "content": "A story."}]}

    def read_stream(url: str) -> None:
        try:
            with httpx.stream("POST", url + "/v1/chat/completions", json={**ask, "stream": True}, timeout=60) as r:
                events.extend(line[6:] for line in r.iter_lines() if line.startswith("data: "))
        except httpx.HTTPError as e:  # the connection cut
            got["stream_error"] = e

    def wait_whole(url: str) -> None:
        try:
            got["whole"] = httpx.post(url + "/v1/chat/completions", json=ask, timeout=60)
        except httpx.HTTPError as e:
            got["whole_error"] = e

    with serve_in_thread(app) as url:
        reader = threading.Thread(target=read_stream, args=(url,))
        reader.start()
        deadline = time.time() + 30
        while sum('"content"' in e for e in events) < 4:  # the role chunk and a few pieces
            assert time.time() < deadline and reader.is_alive(), events
            time.sleep(0.02)
        waiter = threading.Thread(target=wait_whole, args=(url,))
        waiter.start()
        while engine.load()["waiting"] < 1:  # the second request waits for the only row
            assert time.time() < deadline, engine.load()
            time.sleep(0.02)
        left = time.time()
    reader.join(timeout=30)
    waiter.join(timeout=30)
    assert time.time() - left < 10
    assert "stream_error" not in got, f"the stream was cut: {got['stream_error']!r}"
    assert events[-1] == "[DONE]", events[-3:]
    last = json.loads(events[-2])
    assert last["choices"][0]["finish_reason"] == "length" and last["choices"][0]["delta"] == {}
    pieces = sum(bool(json.loads(e)["choices"][0]["delta"].get("content")) for e in events[:-1])
    assert pieces < 250, "the reply was cut by the shutdown, not by max_tokens"
    assert "whole" in got, f"the waiting request got no answer: {got.get('whole_error')!r}"
    assert got["whole"].status_code == 503, got["whole"].text
    assert got["whole"].json()["error"]["code"] == "server_shutting_down"
