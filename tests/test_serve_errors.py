"""`llm101n serve` never answers 500 to a request, and every error it gives has OpenAI's shape (issue #20, "API"):
integer fields out of range, invalid text (lone surrogates), unknown routes and methods, FastAPI's own checks, an
unexpected exception, OpenAI parameters the server cannot honour, and a non-streaming client that leaves.

The servers and helpers are tests/test_serve_api.py's (a tiny random GPT of the storyteller's context: the HTTP
layer is what is tested), with the official openai client where it applies.
"""

from __future__ import annotations

import copy
import json
import socket
import time

import httpx
import openai
import pytest
import torch

from storylib import serve as S
from storylib.chat_template import render_chat
from tests import test_serve_api as api
from tests.test_serve_api import client, live, metric, post, user

storyteller, tiny, tiny_server = api.storyteller, api.tiny, api.tiny_server  # the fixtures, shared

ERROR_KEYS = {"message", "type", "param", "code"}


def error_of(r: httpx.Response, status: int) -> dict:
    """The OpenAI-shaped error of a response that must have `status`."""
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


# ----------------------------------------------------------------------------- integer ranges


OUT_OF_RANGE = [
    ("/v1/chat/completions", {"messages": user("a"), "seed": 2**64}, "seed"),
    ("/v1/chat/completions", {"messages": user("a"), "seed": 2**63}, "seed"),
    ("/v1/chat/completions", {"messages": user("a"), "seed": -1}, "seed"),
    ("/v1/chat/completions", {"messages": user("a"), "seed": 2**64, "stream": True}, "seed"),
    ("/v1/chat/completions", {"messages": user("a"), "max_tokens": 2**64}, "max_tokens"),
    ("/v1/chat/completions", {"messages": user("a"), "max_completion_tokens": -(2**70)}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": user("a"), "n": 2**64}, "n"),
    ("/v1/chat/completions", {"messages": user("a"), "top_logprobs": 2**64}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": user("a"), "temperature": 10**400}, "temperature"),
    ("/v1/chat/completions", {"messages": user("a"), "top_p": -(10**400)}, "top_p"),
    ("/v1/completions", {"prompt": "a", "seed": 18446744073709551616}, "seed"),
    ("/v1/completions", {"prompt": "a", "seed": 18446744073709551616, "stream": True}, "seed"),
    ("/v1/completions", {"prompt": "a", "best_of": 2**64}, "best_of"),
    ("/v1/images/generations", {"prompt": "a cat.", "seed": 2**64}, "seed"),
    ("/v1/images/generations", {"prompt": "a cat.", "steps": 2**64}, "steps"),
    ("/v1/images/generations", {"prompt": "a cat.", "n": -(2**64)}, "n"),
    ("/v1/images/generations", {"prompt": "a cat.", "guidance": 10**400}, "guidance"),
]


@pytest.mark.parametrize("path,body,param", OUT_OF_RANGE, ids=[f"{p} {n}" for p, _, n in OUT_OF_RANGE])
def test_an_integer_out_of_range_is_a_400_naming_it(tiny_server, path, body, param):
    """Before: a seed outside int64 was a 500 ("Overflow when unpacking long long"); streamed, a 200 whose stream
    broke off without [DONE]."""
    err = error_of(post(tiny_server, path, json.dumps(body)), 400)
    assert err["param"] == param and err["type"] == "invalid_request_error", err
    assert param in err["message"], err


def test_seeds_from_0_to_2_63_minus_1_are_accepted_and_reproducible(tiny_server):
    c = client(tiny_server)
    for seed in (0, 2**63 - 1):
        replies = [c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=8, seed=seed,
                                             temperature=1.0).choices[0].message.content for _ in range(2)]
        assert replies[0] == replies[1], f"seed {seed}: the same seed gives the same reply"
    with pytest.raises(openai.BadRequestError) as e:  # the official client: refused before any stream starts
        c.chat.completions.create(model="storyteller", messages=user("a"), seed=2**64, stream=True)
    assert e.value.body["param"] == "seed" and "0..9223372036854775807" in e.value.body["message"]


# ----------------------------------------------------------------------------- invalid text


def bad_text(body: dict) -> str:
    """body as JSON, each "BAD" in it written as a JSON escape of a lone surrogate: valid JSON, but not text."""
    return json.dumps(body).replace("BAD", "bad \\ud800 text")


INVALID_TEXT = [
    ("POST", "/api/conversations", {"title": "BAD"}, "title"),
    ("POST", "/v1/chat/completions", {"messages": user("BAD")}, "messages[0].content"),
    ("POST", "/v1/chat/completions", {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": [
        {"type": "text", "text": "BAD"}]}]}, "messages[1].content[0].text"),
    ("POST", "/v1/completions", {"prompt": "BAD", "max_tokens": 2}, "prompt"),
    ("POST", "/v1/completions", {"prompt": "a", "stop": ["x", "BAD"]}, "stop[1]"),
    ("POST", "/v1/completions", {"prompt": "a", "BAD": 1}, "bad \\ud800 text"),
    ("POST", "/v1/images/generations", {"prompt": "BAD"}, "prompt"),
]


@pytest.mark.parametrize("method,path,body,param", INVALID_TEXT, ids=[f"{p} {n}" for _, p, _, n in INVALID_TEXT])
def test_a_lone_surrogate_is_a_400_and_the_connection_stays_usable(tiny_server, method, path, body, param):
    """Before: a title with one was a plain-text 500 from the SQLite write, and the kept-alive connection was reset
    without Connection: close."""
    with httpx.Client(base_url=tiny_server, timeout=60) as h:
        r = h.request(method, path, content=bad_text(body), headers={"content-type": "application/json"})
        err = error_of(r, 400)
        assert err["param"] == param and "surrogate" in err["message"], err
        assert r.headers.get("connection", "").lower() != "close"
        ok = h.post("/v1/completions", content='{"prompt": "a fox \\ud83e\\udd8a", "max_tokens": 2}',
                    headers={"content-type": "application/json"})  # an escaped pair is its character (🦊)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1
        assert local_port(ok) == local_port(r), "the kept-alive connection was used again"


def local_port(r: httpx.Response) -> int:
    return r.extensions["network_stream"].get_extra_info("client_addr")[1]


# ----------------------------------------------------------------------------- one error shape everywhere


def test_unknown_routes_and_wrong_methods_answer_openai_errors(tiny_server):
    """Before: FastAPI's {"detail": "Not Found"} and {"detail": "Method Not Allowed"}."""
    err = error_of(post(tiny_server, "/v1/embeddings", json.dumps({"input": "a"})), 404)
    assert "POST /v1/embeddings" in err["message"] and err["code"] == "unknown_url"
    with pytest.raises(openai.NotFoundError) as e:  # the official client reads it
        client(tiny_server).embeddings.create(model="storyteller", input="a")
    assert "/v1/embeddings" in e.value.body["message"]
    r = httpx.get(tiny_server + "/v1/chat/completions")
    err = error_of(r, 405)
    assert err["type"] == "invalid_request_error" and err["code"] == "method_not_allowed"
    assert r.headers["allow"] == "POST" and "POST" in err["message"], "the Allow header is kept"
    err = error_of(httpx.delete(tiny_server + "/v1/models"), 405)
    assert "GET" in err["message"]


def test_fastapis_own_checks_answer_openai_errors(tiny_server):
    """A declared parameter FastAPI checks (before: a 422 {"detail": [...]})."""
    err = error_of(httpx.get(tiny_server + "/api/preferences", params={"ratings": "maybe"}), 400)
    assert err["param"] == "ratings" and err["type"] == "invalid_request_error", err


def test_an_unexpected_exception_is_a_500_without_internals_and_logged(tiny, tmp_path, capfd):
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")

    def broken():
        raise RuntimeError("secret-internal-detail /srv/path")

    app.state.engine.load = broken  # /health calls it
    with live(app) as url:
        with httpx.Client(base_url=url, timeout=60) as h:
            r = h.get("/health")
            err = error_of(r, 500)
            assert err["type"] == "server_error" and err["code"] == "internal_error"
            assert "secret" not in r.text and "RuntimeError" not in r.text, "no internals in the answer"
            assert r.headers["connection"] == "close", "the server closes the connection after a 500: it says so"
            assert h.get("/v1/models").status_code == 200, "the client goes on (on a new connection)"
        logged, deadline = "", time.time() + 20
        while "secret-internal-detail" not in logged and time.time() < deadline:  # logged by the server's thread
            logged += capfd.readouterr().err
            time.sleep(0.05)
    assert "Traceback" in logged and "secret-internal-detail" in logged, "the server's log has the traceback"


def test_error_types_follow_openais_by_status():
    """Before: a 500 (and 501) said invalid_request_error, a 403 too."""
    types = {status: S.RequestError(status, "m").body()["error"]["type"] for status in (400, 403, 404, 429, 500, 501)}
    assert types == {400: "invalid_request_error", 403: "permission_error", 404: "not_found_error",
                     429: "rate_limit_error", 500: "server_error", 501: "server_error"}


def test_an_engine_error_has_the_same_shape(tiny, tmp_path, monkeypatch):
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")

    def unwritten(*a, **k):
        raise NotImplementedError("ch16.admit: not written yet")

    monkeypatch.setattr(app.state.engine, "admit", unwritten)
    with live(app) as url:
        err = error_of(post(url, "/v1/completions", json.dumps({"prompt": "a", "max_tokens": 3})), 500)
        assert err["type"] == "server_error" and "ch16.admit" in err["message"]


# ----------------------------------------------------------------------------- parameters the server cannot honour


UNSUPPORTED = [
    ("/v1/chat/completions", "tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("/v1/chat/completions", "tool_choice", "auto"),
    ("/v1/chat/completions", "functions", [{"name": "f", "parameters": {}}]),
    ("/v1/chat/completions", "function_call", "auto"),
    ("/v1/chat/completions", "parallel_tool_calls", True),
    ("/v1/chat/completions", "response_format", {"type": "json_object"}),
    ("/v1/chat/completions", "logit_bias", {"50": 10}),
    ("/v1/chat/completions", "frequency_penalty", 0.5),
    ("/v1/chat/completions", "presence_penalty", -1),
    ("/v1/chat/completions", "audio", {"voice": "alloy", "format": "wav"}),
    ("/v1/chat/completions", "modalities", ["text", "audio"]),
    ("/v1/chat/completions", "reasoning_effort", "high"),
    ("/v1/chat/completions", "n", 2),
    ("/v1/chat/completions", "user", 7),
    ("/v1/chat/completions", "store", "yes"),
    ("/v1/chat/completions", "stream_options", {"include_usage": True}),  # without stream: true
    ("/v1/completions", "echo", True),
    ("/v1/completions", "best_of", 3),
    ("/v1/completions", "suffix", " The end."),
    ("/v1/completions", "logit_bias", {"50": -100}),
    ("/v1/images/generations", "style", "vivid"),
    ("/v1/images/generations", "quality", "hd"),
    ("/v1/images/generations", "output_format", "jpeg"),
    ("/v1/images/generations", "svg", {"model": "x"}),
    ("/v1/images/generations", "frame_count", 4),
    ("/v1/chat/completions", "moderation", {"model": "omni-moderation-latest"}),
]


@pytest.mark.parametrize("path,name,value", UNSUPPORTED, ids=[f"{p} {n}" for p, n, _ in UNSUPPORTED])
def test_a_parameter_the_server_cannot_honour_is_refused_naming_it(tiny_server, path, name, value):
    """Before: accepted and silently ignored (a 200 that did not do what was asked)."""
    body = {"messages": user("a")} if "chat" in path else {"prompt": "a cat sat."}
    err = error_of(post(tiny_server, path, json.dumps({**body, name: value, "max_tokens": 2} if "images" not in path
                                                       else {**body, name: value})), 400)
    assert err["param"] == name and f"'{name}'" in err["message"], err


def test_the_official_client_is_told_which_parameter(tiny_server):
    c = client(tiny_server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=2, tools=[
            {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
    assert e.value.body["param"] == "tools" and e.value.body["code"] == "unsupported_parameter"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=2,
                                  response_format={"type": "json_object"})
    assert e.value.body["param"] == "response_format"


def test_no_op_values_and_openai_no_op_fields_are_accepted(tiny_server):
    c = client(tiny_server)
    r = c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=2, user="learner-7",
                                  metadata={"lesson": "16"}, store=False, response_format={"type": "text"},
                                  frequency_penalty=0, presence_penalty=0.0, logit_bias={}, logprobs=False,
                                  n=1, modalities=["text"], service_tier="auto")
    assert r.choices[0].finish_reason in ("stop", "length")
    r = c.completions.create(model="storyteller", prompt="a", max_tokens=2, echo=False, best_of=1, user="x")
    assert r.choices[0].finish_reason in ("stop", "length")


# ----------------------------------------------------------------------------- logprobs on /v1/chat/completions


def recomputed_logprobs(model, tok, banned: torch.Tensor, messages: list[dict], reply: list[int]) -> torch.Tensor:
    """log p(· | prompt, reply[:t]) for each t, (len(reply), V) in float64, by one plain forward pass of the model
    (no KV cache), over the tokens the server may draw (not `banned`)."""
    prompt, _ = render_chat(messages, tok, add_generation_prompt=True)
    model64 = copy.deepcopy(model).double()
    with torch.no_grad():
        logits, _ = model64(torch.tensor([prompt + reply]))
    logp = logits[0].masked_fill(banned, float("-inf")).log_softmax(-1)
    return logp[len(prompt) - 1 : len(prompt) - 1 + len(reply)]


def test_chat_logprobs_are_those_of_the_distribution_sampled_from(tiny, tmp_path):
    """Before: logprobs: true was accepted and ignored (choices[0].logprobs was null)."""
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")
    banned = app.state.engine.banned
    banned[list(app.state.engine.end_ids)] = True  # the random model's reply goes on to max_tokens
    ids_of = {raw: i for i, raw in tok.vocab.items()}
    msgs = user("Tell me a story about a kite.")
    with live(app) as url:
        c = client(url)
        replies = [c.chat.completions.create(model="storyteller", messages=msgs, max_tokens=24, temperature=t,
                                             seed=11, logprobs=True, top_logprobs=5) for t in (1.0, 0.0)]
    for temperature, r in zip((1.0, 0.0), replies, strict=True):
        content = r.choices[0].logprobs.content
        assert len(content) == r.usage.completion_tokens > 0, "one entry per new token"
        reply = [ids_of[bytes(e.bytes)] for e in content]
        assert b"".join(bytes(e.bytes) for e in content).decode() == r.choices[0].message.content
        logp = recomputed_logprobs(model, tok, banned, msgs, reply)
        want = logp.gather(1, torch.tensor(reply)[:, None])[:, 0]
        got = torch.tensor([e.logprob for e in content], dtype=torch.float64)
        assert abs(got.sum() - want.sum()) < 1e-3, f"sum of logprobs {got.sum():.5f} vs {want.sum():.5f} (float64)"
        assert torch.allclose(got, want, atol=1e-4), "each token's logprob, at temperature 1"
        argmax_seen = 0
        for e, row, token in zip(content, logp, reply, strict=True):
            top = [t.logprob for t in e.top_logprobs]
            assert len(top) == 5 and top == sorted(top, reverse=True), "top_logprobs: 5, likeliest first"
            assert torch.allclose(torch.tensor(top, dtype=torch.float64), row.topk(5).values, atol=1e-4)
            if token == int(row.argmax()):
                argmax_seen += 1
                assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].bytes == e.bytes
        if temperature == 0:
            assert argmax_seen == len(content), "a greedy reply takes the argmax every time"


LOGPROB_REFUSALS = [
    ({"logprobs": True, "top_logprobs": 6}, "top_logprobs"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"logprobs": 1}, "logprobs"),
]


@pytest.mark.parametrize("fields,param", LOGPROB_REFUSALS, ids=[json.dumps(f) for f, _ in LOGPROB_REFUSALS])
def test_logprobs_out_of_range_are_refused(tiny_server, fields, param):
    err = error_of(post(tiny_server, "/v1/chat/completions", json.dumps({"messages": user("a"), **fields})), 400)
    assert err["param"] == param, err


# ----------------------------------------------------------------------------- fields nobody knows


UNKNOWN_FIELDS = [
    ("POST", "/v1/chat/completions", {"messages": user("a"), "max_tokens": 2}, "temprature"),
    ("POST", "/v1/chat/completions", {"messages": user("a"), "max_tokens": 2, "stream": True}, "top_k"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, "repetition_penalty"),
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, "truncation"),  # a chat's, not a completion's
    ("POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, "metadata"),  # OpenAI's chat's only
    ("POST", "/v1/images/generations", {"prompt": "a cat sat."}, "negative_prompt"),
    ("POST", "/api/conversations", {"title": "a"}, "colour"),
    ("PUT", "/api/conversations/{cid}", {"title": "a", "messages": []}, "tags"),
    ("PUT", "/api/conversations/{cid}/messages/1/rating", {"rating": 1}, "stars"),
    ("POST", "/api/conversations/{cid}/messages/1/illustration", {"steps": 1}, "size"),
]


@pytest.mark.parametrize("method,path,body,name", UNKNOWN_FIELDS, ids=[f"{p} {n}" for _, p, _, n in UNKNOWN_FIELDS])
def test_an_unknown_field_is_refused_naming_it(tiny_server, method, path, body, name):
    """Before: ignored without a word (a typo like "temprature" gave a reply at temperature 1)."""
    cid = httpx.post(tiny_server + "/api/conversations", json={"title": "fields"}).json()["id"]
    path = path.replace("{cid}", cid)
    before = httpx.get(f"{tiny_server}/api/conversations/{cid}").json()
    err = error_of(httpx.request(method, tiny_server + path, json={**body, name: 1}), 400)
    assert err == {"message": f"Unrecognized request argument supplied: {name}", "type": "invalid_request_error",
                   "param": name, "code": "unrecognized_argument"}, err
    assert httpx.get(f"{tiny_server}/api/conversations/{cid}").json() == before, "nothing was written"
    assert httpx.request(method, tiny_server + path, json=body).status_code in (200, 201, 400, 404, 503), \
        "without it the request is not refused for its fields"


def test_several_unknown_fields_are_named_together(tiny_server):
    err = error_of(post(tiny_server, "/v1/chat/completions", json.dumps({"messages": user("a"), "top_k": 5,
                                                                          "min_p": 0.1, "max_tokens": 2})), 400)
    assert err["message"] == "Unrecognized request arguments supplied: top_k, min_p" and err["param"] == "top_k"


def test_the_official_client_is_told_of_an_unknown_field(tiny_server):
    c = client(tiny_server)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=2, extra_body={"top_k": 40})
    assert e.value.body["param"] == "top_k" and e.value.body["code"] == "unrecognized_argument"
    with pytest.raises(openai.BadRequestError) as e:
        c.completions.create(model="storyteller", prompt="a", max_tokens=2, extra_body={"min_tokens": 1})
    assert e.value.body["param"] == "min_tokens"
    r = c.chat.completions.create(model="storyteller", messages=user("a"), max_tokens=2,  # this server's own
                                  extra_body={"truncation": "auto", "continue_final_message": False},
                                  prompt_cache_key="k", safety_identifier="s", stream_options=None)
    assert r.choices[0].finish_reason in ("stop", "length")


def client_fields(module: str, name: str) -> set[str]:
    """The fields the official openai client sends for an endpoint (its TypedDict of parameters), stream included."""
    import importlib

    params = importlib.import_module(f"openai.types.{module}")
    fields: set[str] = set()
    for cls in (getattr(params, name + "Base", None), getattr(params, name + "NonStreaming", None),
                getattr(params, name + "Streaming", None), getattr(params, name, None)):
        for klass in getattr(cls, "__mro__", ()):
            fields |= set(getattr(klass, "__annotations__", {}))
    return fields


@pytest.mark.parametrize("module,name,ours,unsupported", [
    ("chat.completion_create_params", "CompletionCreateParams", S.CHAT_FIELDS, S.CHAT_UNSUPPORTED),
    ("completion_create_params", "CompletionCreateParams", S.COMPLETION_FIELDS, S.COMPLETION_UNSUPPORTED),
    ("image_generate_params", "ImageGenerateParams", S.IMAGE_FIELDS, S.IMAGE_UNSUPPORTED),
], ids=["chat", "completions", "images"])
def test_every_field_of_the_official_client_is_known(module, name, ours, unsupported):
    """The openai client's fields are never "unrecognized" here: each is read by the route or refused by name
    as one this server cannot honour (never ignored, unless it asks for nothing: S.NO_OPS)."""
    theirs = client_fields(module, name)
    assert {"model", "prompt" if "messages" not in theirs else "messages"} <= theirs, theirs  # read it right
    assert theirs <= ours, f"fields of the openai client refused as unknown: {sorted(theirs - ours)}"


# ----------------------------------------------------------------------------- the command line


def test_llm101n_serve_help_shows_every_option_of_the_server(capsys):
    """`llm101n --help`'s line for serve names real options, --users among them (before: not), and `llm101n serve
    --help` shows every option storylib.serve takes."""
    import argparse
    import re

    from llm101n import cli

    parser = argparse.ArgumentParser()
    S.add_arguments(parser)
    options = {o for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    top = " ".join(capsys.readouterr().out.split())
    line = re.search(r"serve (the chat model's API and web app: .*?) sft ", top)
    assert line, top
    named = set(re.findall(r"--[a-z][a-z-]*", line.group(1)))
    assert named <= options and "--users" in named, (named, options)
    with pytest.raises(SystemExit) as e:
        cli.main(["serve", "--help"])
    assert e.value.code == 0
    shown = capsys.readouterr().out
    assert {o for o in options if o not in shown} == set(), "every option of storylib.serve is in its --help"


# ----------------------------------------------------------------------------- a whole reply whose client leaves


def test_a_non_streaming_client_that_leaves_is_cancelled_at_once(tiny, tmp_path):
    """Before: the check ran only after 0.5 s without a token, so while tokens flowed the reply ran to its end."""
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")
    engine = app.state.engine
    engine.banned[list(engine.end_ids)] = True  # the reply cannot end early
    step = engine.step

    def slow_step():  # a token every 20 ms at most: 240 tokens take at least 4.8 s
        time.sleep(0.02)
        step()

    engine.step = slow_step
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 240, "stop": ["@@@@"]}).encode()
    with live(app) as url:
        tokens_before, cancelled_before = (metric(url, "llm101n_generated_tokens_total"),
                                           metric(url, "llm101n_requests_cancelled_total"))
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as s:
            s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: "
                      b"application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            deadline = time.time() + 30
            while metric(url, "llm101n_generated_tokens_total") - tokens_before < 5:  # it is generating
                assert time.time() < deadline, "the reply should start"
                time.sleep(0.02)
        deadline = time.time() + 30  # the client left
        while metric(url, "llm101n_requests_cancelled_total") == cancelled_before:
            assert time.time() < deadline, "the server should cancel a generation whose client left"
            time.sleep(0.05)
        generated = metric(url, "llm101n_generated_tokens_total") - tokens_before
        assert generated < 120, f"cancelled long before its end ({generated} of 240 tokens)"
        assert metric(url, "llm101n_active_rows") == 0
