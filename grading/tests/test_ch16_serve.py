"""Chapter 16 — deployment: the SSE encoder, request validation, the streaming handler and continuous batching.

Oracles are independent of the code under test: a server-sent-events parser written here from the WHATWG spec
and the official `openai` client's own SSE decoder and response types; for the batch engine, a tiny random GPT in
float64 run by Chapter 5's plain (uncached) forward pass, one request at a time, and its keys and values read
from the model's own c_attn with a forward hook. Tokens are plain bytes of a made-up vocabulary (no tokenizer
exercise is needed). Nothing is downloaded and no server is started (tests/test_serve_api.py does that).
"""

from __future__ import annotations

import json
import math
import random
import re

import pytest
import torch
from openai._streaming import SSEDecoder
from openai.types.chat import ChatCompletionChunk

from grading import testmodels
from grading.testmodels import ByteTokenizer
from storylib import serve as S
from storylib.gpt2 import GPT, GPTConfig

# ----------------------------------------------------------------------------- an SSE parser from the spec


def parse_sse(raw: bytes) -> list[dict]:
    """Events of an SSE stream (WHATWG HTML §9.2.6): lines end in CRLF, LF or CR; a blank line dispatches;
    "field: value" with one leading space removed; data lines joined by LF; comment lines start with ':'."""
    events, cur = [], {"data": [], "event": None, "id": None}
    for line in re.split(r"\r\n|\n|\r", raw.decode("utf-8")):
        if line == "":
            if cur["data"]:
                events.append({"data": "\n".join(cur["data"]), "event": cur["event"], "id": cur["id"]})
            cur = {"data": [], "event": None, "id": None}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            cur["data"].append(value)
        elif name in ("event", "id"):
            cur[name] = value
    return events


def openai_events(raw: bytes) -> list:
    """The same bytes through the openai client's decoder, fed in awkward pieces (7 bytes at a time)."""
    return list(SSEDecoder().iter_bytes(iter([raw[i : i + 7] for i in range(0, len(raw), 7)])))


def random_texts(rng: random.Random, n: int) -> list[str]:
    alphabet = list("abcxyz ,.!?\"'\\{}[]:") + ["\n", "\r\n", "\r", "é", "日本", "🙂", "data: ", "\t", "  "]
    return [""] + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 23))) for _ in range(n)]


# ----------------------------------------------------------------------------- ch16.sse


@pytest.mark.exercise("ch16.sse")
def test_sse_event_survives_the_trip():
    rng = random.Random(16)
    for text in random_texts(rng, 60):
        raw = S.sse_event(text)
        assert isinstance(raw, bytes), f"sse_event should return bytes, got {type(raw).__name__}"
        assert raw.endswith(b"\n\n"), f"an event ends with an empty line (b'\\n\\n'); got {raw[-6:]!r}"
        assert raw.count(b"\n\n") == 1, f"one event must hold exactly one blank line, at its end: {raw!r}"
        want = re.sub(r"\r\n|\r", "\n", text)  # SSE lines may end in CR, LF or CRLF: all come back as "\n"
        got = parse_sse(raw)
        assert [e["data"] for e in got] == [want], f"data {text!r} should parse back as {want!r}, got {got}"
        assert got[0]["event"] is None and got[0]["id"] is None, "no event: or id: line unless asked for"


@pytest.mark.exercise("ch16.sse")
def test_sse_event_name_and_id_with_the_openai_decoder():
    rng = random.Random(7)
    for text in random_texts(rng, 25):
        event, eid = rng.choice([None, "message", "chunk", "ping"]), rng.choice([None, str(rng.randint(0, 999))])
        raw = S.sse_event(text, event=event, id=eid)
        ours = parse_sse(raw)
        assert len(ours) == 1 and ours[0]["event"] == event and ours[0]["id"] == eid, (
            f"event={event!r}, id={eid!r} should come back as event:/id: fields, got {ours}")
        theirs = openai_events(raw)
        assert len(theirs) == 1, f"the openai client should read one event from {raw!r}, read {len(theirs)}"
        assert theirs[0].data == re.sub(r"\r\n|\r", "\n", text) and theirs[0].event == event


@pytest.mark.exercise("ch16.sse")
def test_sse_event_refuses_a_broken_field():
    assert S.sse_event("ok", event="a b", id="12").startswith(b"event: a b\n"), "the event: line comes first"
    for bad in ("two\nlines", "cr\rhere", "crlf\r\nx"):
        with pytest.raises(ValueError):
            S.sse_event("x", event=bad)
        with pytest.raises(ValueError):
            S.sse_event("x", id=bad)
    with pytest.raises(ValueError):
        S.sse_event("x", id="nul\0")


# ----------------------------------------------------------------------------- ch16.validate

LIMITS = S.Limits(block_size=128, max_tokens=97, max_stop=3, max_stop_chars=11, max_temperature=1.7)


@pytest.mark.exercise("ch16.validate")
def test_validate_defaults_and_nulls():
    want = {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "stream": False, "stop": [], "seed": None}
    assert S.check_sampling({}, LIMITS) == want, "an empty body gets every default"
    nulls = {k: None for k in ("max_tokens", "max_completion_tokens", "temperature", "top_p", "stream", "stop",
                               "seed", "n")}
    assert S.check_sampling(nulls, LIMITS) == want, "JSON null counts as absent"
    extra = {"model": "storyteller", "user": "x", "messages": [], "frequency_penalty": 0}
    assert S.check_sampling(extra, LIMITS) == want, "fields that are not sampling parameters are ignored"


@pytest.mark.exercise("ch16.validate")
def test_validate_accepts_valid_values():
    rng = random.Random(3)
    for _ in range(200):
        body = {"max_tokens": rng.randint(1, LIMITS.max_tokens),
                "temperature": rng.choice([0, 0.0, LIMITS.max_temperature, rng.uniform(0, LIMITS.max_temperature),
                                           rng.randint(0, 1)]),
                "top_p": rng.choice([1, 1.0, rng.uniform(1e-6, 1)]), "stream": rng.random() < 0.5,
                "seed": rng.randint(-(2**40), 2**40), "n": 1}
        stops = ["".join(rng.choice("ab\n.") for _ in range(rng.randint(1, LIMITS.max_stop_chars)))
                 for _ in range(rng.randint(0, LIMITS.max_stop))]
        body["stop"] = stops[0] if len(stops) == 1 and rng.random() < 0.5 else stops
        got = S.check_sampling(body, LIMITS)
        assert got["max_tokens"] == body["max_tokens"] and got["seed"] == body["seed"], got
        assert got["stream"] is body["stream"], got
        for k in ("temperature", "top_p"):
            assert isinstance(got[k], float) and got[k] == body[k], f"{k} should come back as a float: {got}"
        assert got["stop"] == stops, f"stop {body['stop']!r} should come back as the list {stops!r}"
    got = S.check_sampling({"max_tokens": 5, "max_completion_tokens": 9}, LIMITS)
    assert got["max_tokens"] == 9, "max_completion_tokens (the newer name) wins over max_tokens"


BAD = [
    ("max_tokens", [0, -3, LIMITS.max_tokens + 1, 2.0, 1.5, "12", True, [4]]),
    ("max_completion_tokens", [0, LIMITS.max_tokens + 1, False, "7"]),
    ("temperature", [-0.01, LIMITS.max_temperature + 0.01, True, "0.7", math.nan, math.inf, [1]]),
    ("top_p", [0, 0.0, -0.5, 1.0001, False, "1", math.nan]),
    ("stream", [1, 0, "true", [True]]),
    ("stop", ["", [""], [1], ["a"] * (LIMITS.max_stop + 1), "x" * (LIMITS.max_stop_chars + 1), 7, {"a": 1}]),
    ("seed", [1.5, True, "3"]),
    ("n", [2, 0, True, "1", 1.0]),
]


@pytest.mark.exercise("ch16.validate")
@pytest.mark.parametrize("param,values", BAD, ids=[p for p, _ in BAD])
def test_validate_refuses_with_400_naming_the_field(param, values):
    for value in values:
        with pytest.raises(S.RequestError) as e:
            S.check_sampling({"temperature": 0.5, param: value}, LIMITS)
        assert e.value.status == 400, f"{param}={value!r}: expected status 400, got {e.value.status}"
        assert e.value.param == param, f"{param}={value!r}: the error should name {param!r}, not {e.value.param!r}"
        assert e.value.message, "the error needs a message that says what was expected"


# ----------------------------------------------------------------------------- ch16.stream


@pytest.fixture
def run_stream(worker):
    """testmodels.run_stream where the learner's code runs: in the grader's worker, or here when unsandboxed."""
    helpers = worker.module("grading.testmodels") if worker is not None else testmodels
    return lambda script, fill=None, **kw: helpers.run_stream(S.stream_chunks, script, fill, **kw)


@pytest.mark.exercise("ch16.stream")
def test_stream_chat_chunks_are_openai_chunks(run_stream):
    rng = random.Random(11)
    pieces = [p for p in random_texts(rng, 17) if p]
    fill = {"prompt_tokens": 13, "completion_tokens": len(pieces), "total_tokens": 13 + len(pieces)}
    script = [("text", p) for p in pieces] + [("done", "length")]
    raw = run_stream(script, fill, completion_id="chatcmpl-x9", created=1234567, model="tiny", chat=True)
    events = openai_events(raw)
    assert events and events[-1].data == "[DONE]", "the stream must end with data: [DONE]"
    chunks = [ChatCompletionChunk.model_validate(json.loads(e.data)) for e in events[:-1]]  # openai's own type
    assert all(c.id == "chatcmpl-x9" and c.created == 1234567 and c.model == "tiny" for c in chunks)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant", "the first chunk announces the assistant's role"
    body = [c for c in chunks if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text == "".join(pieces), "the deltas must add up to the text, every character, in order"
    assert len(body) == len(pieces) + 2, "one chunk for the role, one per piece, one for the finish"
    assert [c.choices[0].finish_reason for c in body] == [None] * (len(pieces) + 1) + ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage is not None, "a usage chunk, with no choices, comes last"
    assert chunks[-1].usage.model_dump(exclude_none=True) == fill, "usage must be read after the done event"


@pytest.mark.exercise("ch16.stream")
def test_stream_completion_chunks(run_stream):
    rng = random.Random(5)
    pieces = [p for p in random_texts(rng, 9) if p]
    script = [("text", p) for p in pieces] + [("done", "stop")]
    raw = run_stream(script, completion_id="cmpl-1", created=7, model="m", chat=False)
    events = parse_sse(raw)
    assert events[-1]["data"] == "[DONE]"
    chunks = [json.loads(e["data"]) for e in events[:-1]]
    assert all(c["object"] == "text_completion" and c["id"] == "cmpl-1" for c in chunks)
    assert len(chunks) == len(pieces) + 1, "no role chunk for completions; one per piece and one finish chunk"
    assert "".join(c["choices"][0]["text"] for c in chunks) == "".join(pieces)
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None] * len(pieces) + ["stop"]
    assert all(c["choices"][0]["index"] == 0 and "logprobs" in c["choices"][0] for c in chunks)


@pytest.mark.exercise("ch16.stream")
def test_stream_error_ends_the_stream(run_stream):
    script = [("text", "Once"), ("error", "the engine broke"), ("text", "never sent")]
    raw = run_stream(script, completion_id="c", created=1, model="m", chat=True)
    data = [e["data"] for e in parse_sse(raw)]
    assert json.loads(data[-1]) == {"error": {"message": "the engine broke", "type": "server_error"}}, data[-1]
    assert "[DONE]" not in data and "never sent" not in raw.decode(), "nothing may follow the error"
    assert json.loads(data[1])["choices"][0]["delta"]["content"] == "Once"


# ----------------------------------------------------------------------------- the batch engine


V = 61


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(1616)
    model = GPT(GPTConfig(block_size=48, vocab_size=V, n_layer=2, n_head=3, n_embd=24)).double().eval()
    with torch.no_grad():  # larger, non-uniform weights: greedy choices are far from ties
        for p in model.parameters():
            p.mul_(1 + 2 * torch.rand_like(p))
    return model, ByteTokenizer(V)


@torch.no_grad()
def greedy_alone(model, prompt: list[int], max_tokens: int, end_ids: set[int]) -> list[int]:
    """The oracle: Chapter 5's full forward over the whole sequence for every new token (no cache)."""
    ids, out = list(prompt), []
    for _ in range(max_tokens):
        logits, _ = model(torch.tensor([ids]))
        nxt = int(logits[0, -1].argmax())
        if nxt in end_ids:
            break
        out.append(nxt)
        ids.append(nxt)
    return out


@torch.no_grad()
def keys_values(model, prompt: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, the (n_head, T, hs) keys and values of the prompt, read from c_attn's output by a hook."""
    got = []
    hooks = [b.attn.c_attn.register_forward_hook(lambda m, i, o: got.append(o)) for b in model.transformer.h]
    try:
        model(torch.tensor([prompt]))
    finally:
        for h in hooks:
            h.remove()
    C, nh = model.config.n_embd, model.config.n_head
    out = []
    for o in got:
        _, k, v = o[0].split(C, dim=-1)
        out.append((k.view(-1, nh, C // nh).transpose(0, 1), v.view(-1, nh, C // nh).transpose(0, 1)))
    return out


def prompts_for(seed: int, n: int, lo: int = 1, hi: int = 17) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V - 2, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


@pytest.mark.exercise("ch16.admit")
def test_admit_copies_the_prefill_into_a_free_row(tiny):
    model, tok = tiny
    eng = S.Engine(model, tok, max_batch=4, max_queue=2)
    torch.manual_seed(0)
    eng.cache.k.normal_()  # stale garbage in every slot: admit must overwrite what it uses
    eng.cache.v.normal_()
    prompts = prompts_for(3, 3, lo=5)
    for i, p in enumerate(prompts):
        before_k = eng.cache.k[:, :i].clone()
        req = S.GenRequest(p, max_tokens=9, temperature=0.0)
        eng.admit(req)
        assert len(eng.rows) == i + 1 and eng.rows[i].req is req, "the request takes row len(rows) and a Row"
        assert int(eng.cache.lengths[i]) == len(p), f"row {i}'s length should be the prompt's {len(p)}"
        for layer, (k, v) in enumerate(keys_values(model, p)):
            L = len(p)
            assert torch.allclose(eng.cache.k[layer, i, :, :L], k, atol=1e-10), f"row {i}, layer {layer}: keys"
            assert torch.allclose(eng.cache.v[layer, i, :, :L], v, atol=1e-10), f"row {i}, layer {layer}: values"
        assert torch.equal(eng.cache.k[:, :i], before_k), "admitting a request must not touch the other rows"
        first = greedy_alone(model, p, 1, set())[0]
        assert req.tokens[:1] == [first] or (first in eng.end_ids and req.finish_reason == "stop"), (
            f"the first token is sampled from the prefill's last logits: expected {first}, got {req.tokens}")
        assert req.first_token_at is not None, "the first token was delivered (self._deliver)"
    assert eng.stats["prompt_tokens"] == sum(map(len, prompts)), "stats['prompt_tokens'] counts prefilled tokens"


@pytest.mark.exercise("ch16.admit")
def test_admit_seeded_first_token(tiny):
    model, tok = tiny
    p = prompts_for(8, 1, lo=9)[0]
    firsts = []
    for _ in range(2):
        eng = S.Engine(model, tok, max_batch=2, max_queue=0)
        req = S.GenRequest(p, max_tokens=3, temperature=1.3, top_p=0.9, seed=99)
        eng.admit(req)
        firsts.append(req.tokens[:1])
    assert firsts[0] == firsts[1], "the same seed must give the same first token (the row's own generator)"


def drain(eng: S.Engine, limit: int = 500) -> None:
    for _ in range(limit):
        if not eng.run_once():
            return
    raise AssertionError("the engine did not finish its requests")


@pytest.mark.exercise("ch16.step")
def test_step_advances_every_row_by_one(tiny):
    model, tok = tiny
    eng = S.Engine(model, tok, max_batch=5, max_queue=0)
    prompts = prompts_for(21, 3, lo=3)
    for p in prompts:
        eng.admit(S.GenRequest(p, max_tokens=20, temperature=0.0))
    alive = [r.req.finish_reason is None for r in eng.rows]
    assert all(alive), "pick a seed where no prompt ends at once"
    before = eng.cache.lengths[:3].clone()
    eng.step()
    assert torch.equal(eng.cache.lengths[:3], before + 1), (
        f"each active row's cache length should grow by one: {before.tolist()} -> {eng.cache.lengths[:3].tolist()}")
    assert [len(r.req.tokens) for r in eng.rows] == [2, 2, 2], "each row got its second token"
    assert eng.stats["steps"] == 1 and eng.stats["rows_decoded"] == 3, eng.stats
    for r, p in zip(eng.rows, prompts, strict=True):
        assert r.req.tokens == greedy_alone(model, p, 2, eng.end_ids)


@pytest.mark.exercise("ch16.step")
def test_continuous_batching_matches_each_request_alone(tiny):
    """5 requests, 3 rows: they arrive at different steps, wait, join free rows, leave when done."""
    model, tok = tiny
    eng = S.Engine(model, tok, max_batch=3, max_queue=8)
    prompts = prompts_for(5, 6)
    budgets = [13, 5, 21, 8, 17, 11]
    reqs = [S.GenRequest(p, max_tokens=m, temperature=0.0) for p, m in zip(prompts, budgets, strict=True)]
    for r in reqs[:2]:
        eng.submit(r)
    eng.run_once()
    eng.run_once()
    for r in reqs[2:]:
        eng.submit(r)
    sizes = []
    for _ in range(500):
        sizes.append(len(eng.rows))
        if not eng.run_once():
            break
    assert max(sizes) == 3, f"with 6 requests and 3 rows the batch should fill up, sizes were {sorted(set(sizes))}"
    for r, p, m in zip(reqs, prompts, budgets, strict=True):
        want = greedy_alone(model, p, m, eng.end_ids)
        assert r.tokens == want, f"a batched request must get the tokens it gets alone:\n{r.tokens}\n{want}"
        assert r.finish_reason == ("length" if len(want) == m else "stop")
    assert eng.rows == [] and eng.stats["requests"] == 6


@pytest.mark.exercise("ch16.step")
def test_cancelled_row_leaves_and_sampled_rows_are_reproducible(tiny):
    model, tok = tiny
    prompts = prompts_for(9, 4, lo=4)
    outs = []
    for _ in range(2):
        events: list = []
        eng = S.Engine(model, tok, max_batch=4, max_queue=0)
        reqs = [S.GenRequest(p, max_tokens=25, temperature=0.8 + 0.1 * i, seed=100 + i, emit=events.append)
                for i, p in enumerate(prompts)]
        for r in reqs:
            eng.submit(r)
        eng.run_once()
        eng.run_once()
        reqs[1].cancelled = True
        drain(eng)
        assert reqs[1].finish_reason == "cancelled" and ("done", "cancelled") in events
        outs.append([r.tokens for r in reqs if not r.cancelled])
    assert outs[0] == outs[1], "seeded requests must sample the same tokens, whatever else is in the batch"
    # one request alone, with the same seed, samples the same tokens as in the batch
    eng = S.Engine(model, tok, max_batch=1, max_queue=0)
    alone = S.GenRequest(prompts[2], max_tokens=25, temperature=1.0, seed=102)
    eng.submit(alone)
    drain(eng)
    assert alone.tokens == outs[0][1], "a row's samples depend only on its own generator, not on its batch-mates"
