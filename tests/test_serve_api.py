"""`llm101n serve` over real HTTP on 127.0.0.1: the official openai client, limits, the API key, CORS, back-pressure,
cancellation, SQLite persistence and corruption, a short load run and a schemathesis fuzz (zero 5xx); and Chapter
17's pictures: the Images API, a story's pictures kept with its conversation, the database migrated from version 1.

The servers run uvicorn in a thread of this process, on a free port, with their database under tmp_path. The
storyteller (models/storyteller) answers the client tests; the fuzz and limit tests use a tiny random GPT of the
same context and vocabulary, so thousands of requests stay fast (what is tested there is the HTTP layer). Pictures
come from a tiny untrained illustrator (tests/illustrator_model.py): noise, in milliseconds.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch

from storylib import illustrate as I
from storylib import serve as S
from storylib.chat_template import render_chat
from storylib.checkpoint import default_storyteller
from storylib.fastbpe import encode_ordinary
from storylib.gpt2 import GPT, GPTConfig
from storylib.kvcache import generate_stream
from storylib.service import SCHEMA_VERSION, ConversationStore, StoreError, serve_in_thread
from storylib.tokenizer import eot_id
from tests.illustrator_model import tiny_illustrator
from tests.reply_gate import ReplyGate

ROOT = Path(__file__).resolve().parents[1]


live = serve_in_thread


@pytest.fixture(scope="module")
def storyteller():
    return default_storyteller()


@pytest.fixture(scope="module")
def tiny(storyteller):
    """A random 1-layer GPT with the storyteller's context and vocabulary: fast, and any token can come out."""
    _, tok = storyteller
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=256, vocab_size=4160, n_layer=1, n_head=2, n_embd=32)).eval(), tok


@pytest.fixture(scope="module")
def illustrator(tmp_path_factory):
    """A tiny untrained illustrator's folder (16 x 16 pictures of noise)."""
    return tiny_illustrator(tmp_path_factory.mktemp("illustrator"))


def _serving(model_and_tokenizer, tmp_path_factory):
    model, tok = model_and_tokenizer
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3",
                       illustrator=tiny_illustrator(tmp_path_factory.mktemp("illustrator")))
    with live(app) as url:
        yield url


@pytest.fixture(scope="module")
def server(storyteller, tmp_path_factory):
    yield from _serving(storyteller, tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_server(tiny, tmp_path_factory):
    yield from _serving(tiny, tmp_path_factory)


def client(url: str, key: str = "none") -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=60)


# ----------------------------------------------------------------------------- the openai client, unchanged


def test_openai_client_completions_match_the_chapter_12_generator(server, storyteller):
    model, tok = storyteller
    prompt = "Once upon a time, a small green frog"
    ids = [eot_id(tok), *encode_ordinary(tok, prompt)]
    want = "".join(generate_stream(model, tok, ids, 40, temperature=0.0))  # Chapter 12, one request, no server
    c = client(server)
    r = c.completions.create(model="storyteller", prompt=prompt, max_tokens=40, temperature=0)
    assert r.choices[0].text == want, "greedy /v1/completions must equal storylib.kvcache.generate_stream"
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens <= 40
    pieces = [ch.choices[0].text for ch in c.completions.create(model="storyteller", prompt=prompt, max_tokens=40,
                                                                temperature=0, stream=True)]
    assert "".join(pieces) == want and len(pieces) > 5, "streamed pieces add up to the same text"


def test_openai_client_chat_streaming_and_not(server):
    c = client(server)
    assert [m.id for m in c.models.list()] == ["storyteller"]
    msgs = [{"role": "system", "content": "You tell stories."}, {"role": "user", "content": "A story about a kite."}]
    r = c.chat.completions.create(model="storyteller", messages=msgs, max_tokens=30, temperature=0.9, seed=5)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length") and 0 < r.usage.completion_tokens <= 30
    stream = c.chat.completions.create(model="storyteller", messages=msgs, max_tokens=30, temperature=0.9, seed=5,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    streamed = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert streamed == text, "the same seed gives the same reply, streamed or not"
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert "<|" not in text, "special tokens never appear in a reply"


# ----------------------------------------------------------------------------- limits: clear 4xx, never 500


def post(url: str, path: str, content: bytes | str, headers: dict | None = None) -> httpx.Response:
    h = {"content-type": "application/json", **(headers or {})}
    return httpx.post(url + path, content=content, headers=h, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


BAD_REQUESTS = [
    ("not json", b"{'messages': }", 400, "not valid JSON"),
    ("not utf-8", b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not UTF-8"),
    ("NaN", b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}', 400, "not valid JSON"),
    ("array body", b"[1, 2]", 400, "JSON object"),
    ("empty body", b"", 400, "not valid JSON"),
    ("no messages", {"model": "storyteller"}, 400, "messages"),
    ("too many messages", {"messages": user("a") * (S.Limits().max_messages + 1)}, 400,
     f"1 to {S.Limits().max_messages}"),
    ("bad role", {"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ("content not text", {"messages": [{"role": "user", "content": 7}]}, 400, "content"),
    ("two users in a row", {"messages": user("a") + user("b")}, 400, "roles must be"),
    ("ends with assistant", {"messages": [*user("a"), {"role": "assistant", "content": "b"}]}, 400, "user"),
    ("content too long", {"messages": user("x" * 8001)}, 400, "longer than"),
    ("prompt too long", {"messages": user("the cat sat on the mat. " * 60)}, 400, "context"),
    ("reply does not fit", {"messages": user("a story about " * 20), "max_tokens": 250}, 400, "fit"),
    ("max_tokens 0", {"messages": user("a"), "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens huge", {"messages": user("a"), "max_tokens": 10**9}, 400, "max_tokens"),
    ("temperature", {"messages": user("a"), "temperature": 2.5}, 400, "temperature"),
    ("top_p", {"messages": user("a"), "top_p": 0}, 400, "top_p"),
    ("n", {"messages": user("a"), "n": 3}, 400, "'n'"),
    ("stop", {"messages": user("a"), "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("unknown model", {"model": "gpt-4", "messages": user("a")}, 404, "does not exist"),
]


@pytest.mark.parametrize("what,body,status,says", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_chat_requests_get_a_clear_4xx(tiny_server, what, body, status, says):
    raw = body if isinstance(body, bytes) else json.dumps(body)
    r = post(tiny_server, "/v1/chat/completions", raw)
    assert r.status_code == status, f"{what}: expected {status}, got {r.status_code} {r.text[:300]}"
    err = r.json()["error"]
    assert says in err["message"], f"{what}: the message should say {says!r}: {err['message']!r}"
    assert err["type"] in ("invalid_request_error", "not_found_error")


def test_body_size_limit_is_413(tiny_server):
    limit = S.Limits().max_body_bytes
    big = json.dumps({"messages": user("x" * (limit + 1000))})
    assert post(tiny_server, "/v1/chat/completions", big).status_code == 413

    def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(limit // 1000 + 2):
            yield b" " * 1000

    r = httpx.post(tiny_server + "/v1/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "at most" in r.json()["error"]["message"]


def test_completion_limits(tiny_server):
    ok = post(tiny_server, "/v1/completions", json.dumps({"prompt": "<|end|><|endoftext|>", "max_tokens": 3}))
    assert ok.status_code == 200, "special-token text in a prompt is plain text, not a special token"
    assert ok.json()["usage"]["prompt_tokens"] > 3
    for body, status in [({"prompt": 5}, 400), ({"prompt": ["a", "b"]}, 400), ({}, 400),
                         ({"prompt": "a " * 300}, 400), ({"prompt": "a", "max_tokens": 256}, 400),
                         ({"prompt": "", "max_tokens": 255}, 200)]:
        r = post(tiny_server, "/v1/completions", json.dumps(body))
        assert r.status_code == status, f"{body}: expected {status}, got {r.status_code} {r.text[:200]}"


# ----------------------------------------------------------------------------- API key and CORS


def test_api_key_on_every_endpoint_but_health(tiny, tmp_path):
    model, tok = tiny
    app = S.create_app(model, tok, api_key="s3cret", db_path=tmp_path / "c.sqlite3")
    with live(app) as url:
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/").status_code == 200, "the page itself is public; it asks for the key"
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
                             ("GET", "/metrics"), ("GET", "/api/conversations"), ("GET", "/openapi.json"),
                             ("DELETE", "/api/conversations/x"), ("POST", "/v1/images/generations"),
                             ("POST", "/api/conversations/x/messages/1/illustration"),
                             ("GET", "/api/conversations/x/messages/1/illustration")]:
            for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "s3cret"}):
                r = httpx.request(method, url + path, headers=headers, json={})
                assert r.status_code == 401, f"{method} {path} with {headers}: expected 401, got {r.status_code}"
                assert r.headers["www-authenticate"] == "Bearer" and "API key" in r.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            client(url, "wrong").models.list()
        r = client(url, "s3cret").chat.completions.create(model="storyteller", messages=user("hi"), max_tokens=3)
        assert r.choices[0].finish_reason in ("stop", "length")


def test_cors_is_off_by_default(tiny_server):
    r = httpx.options(tiny_server + "/v1/chat/completions", headers={
        "origin": "http://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(tiny_server + "/v1/models", headers={"origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


# ----------------------------------------------------------------------------- back-pressure and cancellation


def metric(url: str, name: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_full_queue_is_429_with_retry_after(storyteller, tmp_path):
    model, tok = storyteller
    app = S.create_app(model, tok, max_batch=1, max_queue=1, db_path=tmp_path / "c.sqlite3")
    app.state.engine.banned[list(app.state.engine.end_ids)] = True  # no early end: the first reply holds its row
    body = {"model": "storyteller", "messages": user("A long story, please."), "max_tokens": 200, "stream": True}
    gate = ReplyGate(app.state.engine)  # and it cannot end (tests/reply_gate.py) before the third one is refused
    with live(app) as url, httpx.Client(timeout=60) as h:
        with gate.closed(), h.stream("POST", url + "/v1/chat/completions", json=body) as first:
            assert first.status_code == 200
            first_lines = first.iter_lines()  # kept: a dropped iterator closes the stream (the client leaves)
            next(first_lines)  # the first one holds the only row
            with h.stream("POST", url + "/v1/chat/completions", json=body) as second:
                assert second.status_code == 200  # the second waits in the queue
                third = h.post(url + "/v1/chat/completions", json=body)
                assert third.status_code == 429, third.text
                assert int(third.headers["retry-after"]) >= 1 and "busy" in third.json()["error"]["message"]
        deadline = time.time() + 20  # both left mid-stream: their rows and queue places are freed
        while (metric(url, "llm101n_active_rows"), metric(url, "llm101n_queue_length")) != (0, 0):
            assert time.time() < deadline, "closing the streams should free the row and the queue"
            time.sleep(0.1)
        assert metric(url, "llm101n_requests_rejected_total") == 1


def test_client_disconnect_cancels_the_generation(storyteller, tmp_path):
    model, tok = storyteller
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")
    app.state.engine.banned[list(app.state.engine.end_ids)] = True  # the reply cannot end before we leave:
    with live(app) as url, ReplyGate(app.state.engine).closed():  # neither early nor at its length, however slow we are
        disconnect_and_watch(url)


def disconnect_and_watch(server: str) -> None:
    before = metric(server, "llm101n_requests_cancelled_total")
    tokens_before = metric(server, "llm101n_generated_tokens_total")
    body = {"model": "storyteller", "messages": user("A very long story."), "max_tokens": 230, "stream": True,
            "temperature": 1.0, "stop": ["@@@@"]}
    with httpx.Client(timeout=60) as h, h.stream("POST", server + "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    deadline = time.time() + 20
    while metric(server, "llm101n_requests_cancelled_total") == before:
        assert time.time() < deadline, "the server should cancel a generation whose client left"
        time.sleep(0.1)
    assert metric(server, "llm101n_active_rows") == 0
    assert metric(server, "llm101n_generated_tokens_total") - tokens_before < 230, "it stopped early"


# ----------------------------------------------------------------------------- conversations in SQLite


def test_conversations_survive_a_restart(tiny, tmp_path):
    model, tok = tiny
    db = tmp_path / "conversations.sqlite3"
    msgs = [{"role": "user", "content": "A story about a fox 🦊"}, {"role": "assistant", "content": "Once…\n"}]
    with live(S.create_app(model, tok, db_path=db)) as url:
        c = httpx.post(url + "/api/conversations", json={"title": "Fox"}).json()
        r = httpx.put(url + f"/api/conversations/{c['id']}", json={"title": "Fox story", "messages": msgs})
        assert r.status_code == 200
        bad = httpx.put(url + f"/api/conversations/{c['id']}", json={"title": "x", "messages": [
            msgs[0], {"role": "assistant", "content": 5}]})
        assert bad.status_code == 400, "an invalid message is refused as a whole"
        assert httpx.get(url + "/api/conversations/nope").status_code == 404
    with live(S.create_app(model, tok, db_path=db)) as url:  # a new server on the same file
        listed = httpx.get(url + "/api/conversations").json()["data"]
        assert [x["id"] for x in listed] == [c["id"]]
        got = httpx.get(url + f"/api/conversations/{c['id']}").json()
        assert got["title"] == "Fox story" and got["messages"] == msgs, "the failed write left nothing behind"
        assert httpx.delete(url + f"/api/conversations/{c['id']}").status_code == 200
        assert httpx.get(url + "/api/conversations").json()["data"] == []


def test_a_corrupt_database_is_refused_and_left_untouched(tiny, tmp_path):
    model, tok = tiny
    junk = tmp_path / "junk.sqlite3"
    junk.write_bytes(b"these are not the bytes of a database\n" * 50)
    real = tmp_path / "real.sqlite3"
    store = ConversationStore(real)
    for i in range(40):
        store.put(store.create(f"c{i}")["id"], "t", [{"role": "user", "content": "word " * 400}])
    store.close()
    data = bytearray(real.read_bytes())
    data[4096 + 100 : 4096 + 3000] = bytes(range(256)) * 11 + bytes(84)  # a b-tree page scribbled over
    broken = tmp_path / "broken.sqlite3"
    broken.write_bytes(bytes(data))
    for path in (junk, broken):
        before = path.read_bytes()
        with pytest.raises(StoreError) as e:
            S.create_app(model, tok, db_path=path)
        assert str(path) in str(e.value) and "untouched" in str(e.value)
        assert path.read_bytes() == before, "a corrupt database must not be modified"
    # the command line says so and exits 2, before serving
    r = subprocess.run([sys.executable, "-m", "storylib.serve", "--db", str(junk), "--port", "9"],
                       capture_output=True, text=True, timeout=120, cwd=ROOT,
                       env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert r.returncode == 2 and "not an SQLite database" in r.stderr, r.stderr


def test_store_writes_are_transactions(tmp_path):
    store = ConversationStore(tmp_path / "c.sqlite3")
    cid = store.create("t")["id"]
    store.put(cid, "t", [{"role": "user", "content": "first"}])
    with pytest.raises(ValueError):
        store.put(cid, "t2", [{"role": "user", "content": "a"}] * 501)
    class Boom(sqlite3.Connection):
        def executemany(self, *a):
            raise sqlite3.OperationalError("disk I/O error (simulated)")

    store.db.close()
    store.db = sqlite3.connect(store.path, isolation_level=None, factory=Boom, check_same_thread=False)
    with pytest.raises(sqlite3.OperationalError):
        store.put(cid, "new title", [{"role": "user", "content": "second"}])
    got = store.get(cid)
    assert got["title"] == "t" and got["messages"] == [{"role": "user", "content": "first"}], "rolled back"


# ----------------------------------------------------------------------------- a short load run


def load_bench():
    spec = importlib.util.spec_from_file_location("serve_load", ROOT / "bench" / "serve_load.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_smoke_load_batches_without_errors(server):
    bench = load_bench()
    port = int(server.rsplit(":", 1)[1])
    steps, rows = metric(server, "llm101n_decode_steps_total"), metric(server, "llm101n_decode_rows_total")
    r = asyncio.run(bench.run_load("127.0.0.1", port, clients=6, seconds=4, max_tokens=24))
    assert r["errors"] == 0, r["first_errors"]
    assert r["ok"] >= 6 and r["tokens"] > 0 and r["ttft_p50_s"] is not None
    mean_batch = (metric(server, "llm101n_decode_rows_total") - rows) / (
        metric(server, "llm101n_decode_steps_total") - steps)
    assert mean_batch > 2, f"concurrent clients should share decode steps, mean batch was {mean_batch:.2f}"


# ----------------------------------------------------------------------------- fuzz: zero 5xx

# Examples per operation and mode: 25 in CI (< 30 s); the full run, e.g. 500:
#   LLM101N_FUZZ_EXAMPLES=500 PYTHONPATH=. python -m pytest tests/test_serve_api.py -k schemathesis
FUZZ_EXAMPLES = int(os.environ.get("LLM101N_FUZZ_EXAMPLES", "25"))


def test_schemathesis_finds_no_server_error(tiny_server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    schema = schemathesis.openapi.from_url(tiny_server + "/openapi.json")
    seen: dict[str, int] = {}
    t0 = time.time()
    for result in schema.get_all_operations():
        op = result.ok()
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):

            @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case):
                if isinstance(case.body, dict) and "max_tokens" not in case.body and "prompt" in case.body:
                    case.body["max_tokens"] = 4  # keep generation short; everything else as generated
                resp = case.call(base_url=tiny_server, timeout=30)
                key = f"{case.method.upper()} {case.operation.path} {resp.status_code}"
                seen[key] = seen.get(key, 0) + 1
                assert resp.status_code < 500, f"{case.method} {case.path} {case.body!r}: {resp.status_code}"

            try:
                fuzz()
            except Unsatisfiable:  # no parameters and no body (GET /health): nothing to make invalid
                assert mode == schemathesis.GenerationMode.NEGATIVE
    statuses = {}
    for k, n in seen.items():
        statuses[k.rsplit(" ", 1)[1]] = statuses.get(k.rsplit(" ", 1)[1], 0) + n
    print(f"schemathesis: {sum(seen.values())} requests, by status {dict(sorted(statuses.items()))}")
    assert len({k.rsplit(" ", 1)[0] for k in seen}) >= 8, f"every operation was fuzzed: {sorted(seen)}"
    assert any(k.endswith(" 200") for k in seen) and any(k.endswith(" 400") for k in seen), sorted(seen)
    assert time.time() - t0 < 90 or FUZZ_EXAMPLES > 25


def test_webapp_files_are_served(tiny_server):
    for path, kind in [("/", "text/html"), ("/app.js", "javascript"), ("/style.css", "text/css")]:
        r = httpx.get(tiny_server + path)
        assert r.status_code == 200 and kind in r.headers["content-type"], path
    html = httpx.get(tiny_server + "/").text
    assert "http://" not in html and "https://" not in html, "the page loads nothing from elsewhere"


def test_an_unfinished_workspace_gets_a_clear_error(tiny, tmp_path, monkeypatch):
    """`llm101n serve` in a workspace runs the learner's storylib: an unwritten exercise is named, not hidden."""
    model, tok = tiny

    def unwritten(*a, **k):
        raise NotImplementedError("ch16.admit: B=1 cache; prefill ... — see book §16.5")

    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", chat_format="template")
    monkeypatch.setattr(app.state.engine, "admit", unwritten)
    with live(app) as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3}, timeout=30)
        assert r.status_code == 500 and "ch16.admit" in r.json()["error"]["message"]
        chunks = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 3, "stream": True}).text
        assert "ch16.admit" in chunks and "[DONE]" not in chunks
        assert httpx.get(url + "/health").json()["active"] == 0, "the engine survived and holds no row"
        monkeypatch.setattr(S, "render_chat", unwritten)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "a"}]})
        assert r.status_code == 501 and "not finished" in r.json()["error"]["message"]


def test_story_chat_format_continues_the_conversation_as_one_text(tiny, tmp_path):
    """chat_format "story" (for a model that never saw a chat template): a chat reply is the greedy continuation of
    the conversation's words as one text, system messages left out; "template" differs."""
    model, tok = tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Once upon a time"},
                {"role": "assistant", "content": "there was a cat."}, {"role": "user", "content": " The cat"}]
    assert S.render_story(messages, tok) == [eot_id(tok),
                                             *tok.encode_ordinary("Once upon a time there was a cat. The cat")]
    with pytest.raises(ValueError, match="no user or assistant text"):
        S.render_story([{"role": "system", "content": "x"}, {"role": "user", "content": " "}], tok)
    with live(S.create_app(model, tok, db_path=tmp_path / "s.sqlite3", chat_format="story")) as url:
        body = {"messages": messages, "max_tokens": 8, "temperature": 0}
        chat = httpx.post(url + "/v1/chat/completions", json=body, timeout=60).json()
        plain = httpx.post(url + "/v1/completions", json={"prompt": "Once upon a time there was a cat. The cat",
                                                          "max_tokens": 8, "temperature": 0}, timeout=60).json()
        assert chat["choices"][0]["message"]["content"] == plain["choices"][0]["text"]
        only_system = httpx.post(url + "/v1/chat/completions", json={"messages": messages[:1]}, timeout=60)
        assert only_system.status_code == 400
    with pytest.raises(ValueError, match="chat_format"):
        S.create_app(model, tok, db_path=tmp_path / "t.sqlite3", chat_format="jinja")


def test_template_is_the_default_chat_format(tiny, tmp_path):
    """The server's chat replies go through Chapter 11's chat template by default (the chat model's format): a
    greedy reply equals storylib.kvcache's continuation of render_chat's generation prompt."""
    model, tok = tiny
    messages = [{"role": "user", "content": "Write a story about a cat named Tom who finds a key."}]
    ids, _ = render_chat(messages, tok, add_generation_prompt=True)
    want = "".join(generate_stream(model, tok, ids, 12, temperature=0.0))
    with live(S.create_app(model, tok, db_path=tmp_path / "t.sqlite3")) as url:
        r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 12, "temperature": 0},
                       timeout=60).json()
    assert r["choices"][0]["message"]["content"] == want and r["usage"]["prompt_tokens"] == len(ids)


def test_truncation_auto_keeps_the_last_turns_that_fit(tiny, tmp_path):
    """A conversation longer than the context: refused as is (400 context_length_exceeded); with truncation "auto"
    (what the web app sends) the prompt is storylib.conversations.fit_conversation's window, leaving max_tokens
    free; without max_tokens the reply may use the rest of the context."""
    from storylib.conversations import fit_conversation

    model, tok = tiny
    story = "Tom the cat found a shiny key under a big green tree. He was very happy and ran home. " * 5
    messages = [{"role": "user", "content": "Write a story about a cat named Tom."},
                {"role": "assistant", "content": story}, {"role": "user", "content": "Give it a happy ending."},
                {"role": "assistant", "content": story + "The end."}, {"role": "user", "content": "Call the cat Max."}]
    window = fit_conversation(messages, tok, 256, reserve=40)
    assert len(window) < len(messages)
    ids, _ = render_chat(window, tok, add_generation_prompt=True)
    short = user("Write a story about a cat named Tom.")
    short_ids, _ = render_chat(short, tok, add_generation_prompt=True)
    app = S.create_app(model, tok, db_path=tmp_path / "w.sqlite3")
    app.state.engine.banned[list(app.state.engine.end_ids)] = True  # every reply runs to its length
    with live(app) as url:
        body = {"messages": messages, "max_tokens": 40, "temperature": 0}
        refused = httpx.post(url + "/v1/chat/completions", json=body, timeout=60)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        r = httpx.post(url + "/v1/chat/completions", json={**body, "truncation": "auto"}, timeout=60).json()
        assert r["usage"]["prompt_tokens"] == len(ids), "the prompt is the window"
        asked = httpx.post(url + "/v1/chat/completions", json={**body, "messages": window}, timeout=60).json()
        assert r["choices"][0]["message"] == asked["choices"][0]["message"], "the reply is the window's"
        rest = 256 - len(short_ids)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": short, "truncation": "auto", "temperature": 0},
                       timeout=60).json()
        asked = httpx.post(url + "/v1/chat/completions", json={"messages": short, "max_tokens": rest,
                                                                "temperature": 0}, timeout=60).json()
        assert r["choices"][0] == asked["choices"][0] and r["usage"]["completion_tokens"] == rest, (
            "no max_tokens: the rest of the context")
        bad = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "truncation": "middle"})
        assert bad.status_code == 400 and "truncation" in bad.json()["error"]["message"]
        alone = httpx.post(url + "/v1/chat/completions", json={"messages": user("a cat " * 300), "truncation": "auto"})
        assert alone.status_code == 400 and "context" in alone.json()["error"]["message"]


def test_serve_runs_the_chat_model_with_the_template(tiny, tmp_path, monkeypatch):
    """`llm101n serve` (and `make start`) load Chapter 14's chat model by default, with chat_format "template"."""
    import argparse

    import uvicorn

    import storylib.sft

    served = {}
    monkeypatch.setattr(storylib.sft, "load_chat_model", lambda: tiny)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    args = vars(p.parse_args(["--db", str(tmp_path / "c.sqlite3")]))
    assert args["chat_format"] == "template" and args["model_dir"] is None
    assert S.serve(**args) == 0
    assert served["app"].state.chat_format == "template" and served["app"].state.engine.model is tiny[0]


def test_serve_without_chapter_14_serves_stories_and_says_why(tiny, tmp_path, monkeypatch, capsys):
    """In a workspace whose Chapter 14 is unfinished the chat model cannot load: `llm101n serve` says which
    exercise in one sentence and serves the storyteller with chat_format "story"."""
    import uvicorn

    import storylib.checkpoint
    import storylib.sft

    def unwritten():
        raise NotImplementedError("ch14.lora_merge: W += sign * scale * B @ A — see book §14.4")

    served = {}
    monkeypatch.setattr(storylib.sft, "load_chat_model", unwritten)
    monkeypatch.setattr(storylib.checkpoint, "default_storyteller", lambda: tiny)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    assert S.serve(db_path=str(tmp_path / "c.sqlite3")) == 0
    assert served["app"].state.chat_format == "story" and served["app"].state.engine.model is tiny[0]
    err = capsys.readouterr().err
    assert "Chat mode needs Chapter 14: exercise ch14.lora_merge" in err and "continuing stories instead" in err, err


# ----------------------------------------------------------------------------- pictures (Chapter 17)

STORY = ("Once upon a time, Tom was sad. Then he saw two red birds on a house at night. He smiled. "
         "They were friends.")
DRAWN = "Then he saw two red birds on a house at night."


def png_size(b64: str) -> tuple[int, int]:
    """The size of a base64 PNG, decoded by Pillow (it must be a real picture)."""
    from PIL import Image

    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    assert img.format == "PNG"
    img.load()
    return img.size


def test_images_api_draws_the_caption_of_the_storys_sentence(tiny, illustrator, tmp_path):
    """POST /v1/images/generations, as OpenAI's Images API: the story's most drawable sentence, its caption drawn
    (revised_prompt), a PNG of the size asked for; the same seed draws the same picture."""
    model, tok = tiny
    with live(S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", illustrator=illustrator)) as url:
        body = {"prompt": STORY, "size": "64x64", "seed": 3, "steps": 2, "response_format": "b64_json", "n": 1}
        r = httpx.post(url + "/v1/images/generations", json=body, timeout=60)
        assert r.status_code == 200, r.text
        item = r.json()["data"][0]
        assert item["sentence"] == DRAWN == I.pick_sentence(STORY)
        assert item["revised_prompt"] == I.caption_for(DRAWN) and png_size(item["b64_json"]) == (64, 64)
        again = httpx.post(url + "/v1/images/generations", json=body, timeout=60).json()["data"][0]
        assert again["b64_json"] == item["b64_json"], "the same seed draws the same picture"
        other = httpx.post(url + "/v1/images/generations", json={**body, "seed": 4}, timeout=60).json()["data"][0]
        assert other["b64_json"] != item["b64_json"], "another seed, another picture"
        one = httpx.post(url + "/v1/images/generations", json={"prompt": "A dog next to a car.", "steps": 2},
                         timeout=60).json()
        assert one["data"][0]["revised_prompt"] == I.caption_for("A dog next to a car.")
        assert png_size(one["data"][0]["b64_json"]) == (256, 256), "256x256 by default"
        assert abs(one["created"] - time.time()) < 120
        pic = client(url).images.generate(model="illustrator", prompt=STORY, size="128x128",
                                          response_format="b64_json", extra_body={"steps": 2})
        assert png_size(pic.data[0].b64_json) == (128, 128) and pic.data[0].revised_prompt == I.caption_for(DRAWN)


BAD_IMAGE_REQUESTS = [
    ("no prompt", {"prompt": None}, "prompt"),
    ("prompt not text", {"prompt": ["a red ball"]}, "prompt"),
    ("prompt blank", {"prompt": "  "}, "prompt"),
    ("prompt too long", {"prompt": "A red ball. " * 700}, "prompt"),
    ("n", {"n": 2}, "n"),
    ("size", {"size": "100x100"}, "size"),
    ("size not square", {"size": "1024x1792"}, "size"),
    ("size a list", {"size": ["64x64"]}, "size"),
    ("url", {"response_format": "url"}, "response_format"),
    ("seed negative", {"seed": -1}, "seed"),
    ("seed huge", {"seed": 2**64}, "seed"),
    ("seed text", {"seed": "7"}, "seed"),
    ("steps 0", {"steps": 0}, "steps"),
    ("steps 101", {"steps": 101}, "steps"),
    ("steps float", {"steps": 2.5}, "steps"),
    ("guidance low", {"guidance": 0.5}, "guidance"),
    ("guidance high", {"guidance": 11}, "guidance"),
    ("guidance bool", {"guidance": True}, "guidance"),
]


@pytest.mark.parametrize("what,fields,param", BAD_IMAGE_REQUESTS, ids=[b[0] for b in BAD_IMAGE_REQUESTS])
def test_bad_image_requests_get_a_400_naming_the_field(tiny_server, what, fields, param):
    r = post(tiny_server, "/v1/images/generations", json.dumps({"prompt": "A red ball.", "steps": 2, **fields}))
    assert r.status_code == 400, f"{what}: expected 400, got {r.status_code} {r.text[:300]}"
    err = r.json()["error"]
    assert err["param"] == param and f"'{param}'" in err["message"] and err["type"] == "invalid_request_error", err


def test_nothing_to_draw_and_another_model_are_refused(tiny_server):
    r = post(tiny_server, "/v1/images/generations", json.dumps({"prompt": "They were happy. The end."}))
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "nothing_to_draw", r.text
    with pytest.raises(I.NothingToDraw) as want:
        I.pick_sentence("They were happy. The end.")
    assert err["message"] == str(want.value), "NothingToDraw's own words reach the caller"
    r = post(tiny_server, "/v1/images/generations", json.dumps({"prompt": "A red ball.", "model": "dall-e-3"}))
    assert r.status_code == 404 and "illustrator" in r.json()["error"]["message"]


def test_without_an_illustrator_pictures_are_503_and_chat_goes_on(tiny, illustrator, tmp_path, monkeypatch):
    """No illustrator (not trained, or a learner's Chapter 17 unfinished): one sentence why, a 503; stories are
    served as before. The folder comes from --illustrator, else $LLM101N_ILLUSTRATOR, and is looked for again."""
    model, tok = tiny
    missing = tmp_path / "no-illustrator"
    monkeypatch.setenv("LLM101N_ILLUSTRATOR", str(missing))
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")
    with live(app) as url:
        r = httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2})
        err = r.json()["error"]
        assert r.status_code == 503 and err["type"] == "server_error" and err["code"] == "illustrator_unavailable"
        assert str(missing) in err["message"] and "--illustrator" in err["message"], err["message"]
        chat = httpx.post(url + "/v1/chat/completions", json={"messages": user("A story."), "max_tokens": 3})
        assert chat.status_code == 200 and chat.json()["choices"][0]["message"]["content"] is not None
        tiny_illustrator(missing)  # the folder appears (training finished): the next picture loads it
        assert httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2}).status_code == 200

    def unwritten(*a, **k):
        raise NotImplementedError("ch17.sample: integrate the flow from noise to latents — see book §17.4")

    monkeypatch.setattr(I.Illustrator, "load", unwritten)
    with live(S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", illustrator=illustrator)) as url:
        r = httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2})
        assert r.status_code == 503 and "ch17.sample" in r.json()["error"]["message"], r.text
        assert httpx.get(url + "/health").status_code == 200
        import storylib  # a workspace from before Chapter 17: its storylib has no illustrate.py

        monkeypatch.delattr(storylib, "illustrate")
        monkeypatch.setitem(sys.modules, "storylib.illustrate", None)
        r = httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2})
        assert r.status_code == 503 and "no illustrate.py yet" in r.json()["error"]["message"], r.text


def test_a_picture_is_drawn_off_the_event_loop(tiny, illustrator, tmp_path, monkeypatch):
    """While a picture is being drawn, the server answers other requests; pictures beyond its queue get a 429."""
    model, tok = tiny
    started, release = threading.Event(), threading.Event()
    real = I.Illustrator.illustrate

    def slow(self, *a, **k):
        started.set()
        assert release.wait(30), "the test never released the picture"
        return real(self, *a, **k)

    monkeypatch.setattr(I.Illustrator, "illustrate", slow)
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", illustrator=illustrator)
    with live(app) as url:
        got = {}
        drawing = threading.Thread(target=lambda: got.update(r=httpx.post(
            url + "/v1/images/generations", json={"prompt": STORY, "steps": 2}, timeout=60)))
        drawing.start()
        try:
            assert started.wait(30)
            assert httpx.get(url + "/health", timeout=5).status_code == 200
            chat = httpx.post(url + "/v1/completions", json={"prompt": "a", "max_tokens": 2}, timeout=10)
            assert chat.status_code == 200 and "r" not in got, "the picture is still being drawn"
            app.state.illustrations.max_waiting = 0  # no more may wait: the next picture is refused, not queued
            busy = httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2}, timeout=10)
            assert busy.status_code == 429 and int(busy.headers["retry-after"]) >= 1, busy.text
        finally:
            release.set()
            drawing.join(30)
        assert got["r"].status_code == 200


def put_story(url: str, messages: list[dict]) -> str:
    cid = httpx.post(url + "/api/conversations", json={"title": "Birds"}).json()["id"]
    r = httpx.put(url + f"/api/conversations/{cid}", json={"title": "Birds", "messages": messages})
    assert r.status_code == 200, r.text
    return cid


def test_a_storys_picture_is_kept_with_its_conversation(tiny, illustrator, tmp_path):
    """POST .../messages/{i}/illustration draws a storyteller message (or a sentence of it) and keeps the picture:
    the conversation names it, GET gives the PNG, after a restart too; changing the message drops it, deleting the
    conversation deletes it."""
    model, tok = tiny
    db = tmp_path / "c.sqlite3"
    msgs = [{"role": "user", "content": "A story about birds."}, {"role": "assistant", "content": STORY},
            {"role": "user", "content": "And then?"}, {"role": "assistant", "content": "They were happy. The end."}]
    with live(S.create_app(model, tok, db_path=db, illustrator=illustrator)) as url:
        cid = put_story(url, msgs)
        path = f"/api/conversations/{cid}/messages"
        r = httpx.post(url + f"{path}/1/illustration", json={"steps": 2, "seed": 1}, timeout=60)
        assert r.status_code == 200, r.text
        pic = r.json()
        assert pic["sentence"] == DRAWN and pic["caption"] == I.caption_for(DRAWN)
        assert pic["url"] == f"{path}/1/illustration"
        assert png_size(pic["b64_json"]) == (256, 256)
        png = httpx.get(url + pic["url"])
        assert png.headers["content-type"] == "image/png" and png.content == base64.b64decode(pic["b64_json"])
        got = httpx.get(url + f"/api/conversations/{cid}").json()["messages"]
        assert got[1]["illustration"] == {k: pic[k] for k in ("sentence", "caption", "created", "url")}
        assert all("illustration" not in m for i, m in enumerate(got) if i != 1)
        assert len(httpx.get(url + f"/api/conversations/{cid}").content) < 2000, "no picture bytes in the JSON"

        chosen = httpx.post(url + f"{path}/1/illustration", json={"sentence": " He smiled.\n", "steps": 2})
        assert chosen.status_code == 400 and chosen.json()["error"]["code"] == "nothing_to_draw"
        assert httpx.get(url + pic["url"]).content == png.content, "a refused picture changes nothing"
        for position, fields, status, says in [
                (3, {}, 400, "nothing to draw"), (0, {}, 400, "storyteller"), (9, {}, 404, "no message 9"),
                ("x", {}, 404, "no message"), (1, {"sentence": "A dog next to a car."}, 400, "part of message 1"),
                (1, {"sentence": 5}, 400, "'sentence'"), (1, {"steps": 0}, 400, "'steps'")]:
            r = httpx.post(url + f"{path}/{position}/illustration", json={"steps": 2, **fields})
            assert r.status_code == status and says in r.json()["error"]["message"], (position, fields, r.text)
        assert httpx.post(url + "/api/conversations/nope/messages/1/illustration", json={}).status_code == 404
        assert httpx.get(url + f"{path}/3/illustration").status_code == 404
        sentence = "Then he saw two red birds\non a house at night."  # a selection across a line break
        assert httpx.post(url + f"{path}/1/illustration", json={"sentence": sentence, "steps": 2}).status_code == 200

    with live(S.create_app(model, tok, db_path=db, illustrator=illustrator)) as url:  # a restart: still there
        assert httpx.get(url + f"/api/conversations/{cid}").json()["messages"][1]["illustration"]["caption"] == (
            I.caption_for(DRAWN))
        assert png_size(base64.b64encode(httpx.get(url + pic["url"]).content).decode()) == (256, 256)
        longer = [*msgs, {"role": "user", "content": "More!"}]
        httpx.put(url + f"/api/conversations/{cid}", json={"title": "Birds", "messages": longer})
        assert httpx.get(url + pic["url"]).status_code == 200, "the message is unchanged: its picture stays"
        edited = [msgs[0], {"role": "assistant", "content": "A red ball."}]
        httpx.put(url + f"/api/conversations/{cid}", json={"title": "Birds", "messages": edited})
        assert httpx.get(url + pic["url"]).status_code == 404, "a changed message loses its picture"
        assert httpx.post(url + f"{path}/1/illustration", json={"steps": 2}).status_code == 200
        assert httpx.delete(url + f"/api/conversations/{cid}").status_code == 200
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0, "deleted with its conversation"


V1_SCHEMA = [  # the conversation database before pictures (SCHEMA_VERSION 1), as it was created
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, "
    "updated REAL NOT NULL)",
    "CREATE TABLE messages (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
    "position INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (conversation, position))",
    "PRAGMA user_version = 1",
]


def test_a_version_1_database_is_migrated_in_place(tmp_path):
    """A database from before pictures opens with every conversation and message, gains the images table and the
    replies table (version 3, in one go), and then keeps pictures and ratings; a newer one than this server knows
    is refused and left untouched. (From version 2: tests/test_prefs.py.)"""
    db = tmp_path / "old.sqlite3"
    con = sqlite3.connect(db)
    for statement in V1_SCHEMA:
        con.execute(statement)
    old = {f"c{i}": [("user", f"A story about {i} birds."), ("assistant", STORY + f" {i}")] for i in range(3)}
    for i, (cid, msgs) in enumerate(old.items()):
        con.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (cid, f"Story {i}", i, 10 + i))
        con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", [(cid, j, *m) for j, m in enumerate(msgs)])
    con.commit()
    con.close()
    store = ConversationStore(db)
    assert [c["id"] for c in store.conversations()] == ["c2", "c1", "c0"]
    for i, (cid, msgs) in enumerate(old.items()):
        got = store.get(cid)
        assert (got["title"], got["created"], got["updated"]) == (f"Story {i}", i, 10 + i)
        assert [(m["role"], m["content"]) for m in got["messages"]] == msgs
    store.set_illustration("c1", 1, STORY + " 1", DRAWN, I.caption_for(DRAWN), b"\x89PNG...")
    assert store.illustration_png("c1", 1) == b"\x89PNG..."
    store.rate("c2", 1, -1)
    store.close()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    store = ConversationStore(db)  # opened again: no second migration
    assert store.get("c1")["messages"][1]["illustration"]["sentence"] == DRAWN
    assert store.get("c2")["messages"][1]["rating"] == -1
    store.delete("c1")
    assert store.db.execute("SELECT COUNT(*) FROM images").fetchone()[0] == 0
    store.close()
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as con:
        con.execute("PRAGMA user_version = 4")
    before = newer.read_bytes()
    with pytest.raises(StoreError, match="version 4"):
        ConversationStore(newer)
    assert newer.read_bytes() == before


def test_serve_takes_the_illustrator_option(tiny, illustrator, tmp_path, monkeypatch):
    """`llm101n serve --illustrator PATH` draws with the illustrator at PATH."""
    import argparse

    import uvicorn

    import storylib.sft

    served = {}
    monkeypatch.setattr(storylib.sft, "load_chat_model", lambda: tiny)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    assert S.serve(**vars(p.parse_args(["--db", str(tmp_path / "c.sqlite3"), "--illustrator", str(illustrator)]))) == 0
    with live(served["app"]) as url:
        r = httpx.post(url + "/v1/images/generations", json={"prompt": STORY, "steps": 2, "size": "64x64"})
        assert r.status_code == 200 and png_size(r.json()["data"][0]["b64_json"]) == (64, 64)
