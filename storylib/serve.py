"""Chapter 16 — deployment: the storyteller behind an OpenAI-compatible HTTP API and a web app, top to bottom.

A model in a notebook serves one person. A server serves many at once, over HTTP, and must survive all of them:
slow readers, people who leave mid-answer, malformed or hostile requests, more requests than it can handle. The
pieces, in the order the book builds them:

    sse_event           one server-sent event, as the bytes on the wire                    (exercise ch16.sse)
    read_json_body      the request body: size limit, strict UTF-8, JSON, an object, no lone surrogates
    check_sampling      the sampling parameters of a request, checked and normalised      (exercise ch16.validate)
    check_messages      a chat's messages, checked
    check_generation    the rest of a request: the seed's range, OpenAI's fields this server cannot honour (refused)
    GenRequest, Engine  continuous batching over the Chapter 12 KV cache: one thread owns the model; requests
                        wait in a bounded queue, join a free row of the batch cache between decode steps and
                        leave it when done           (exercises ch16.admit and ch16.step)
    stream_chunks       engine events -> OpenAI streaming chunks, as SSE                 (exercise ch16.stream)
    render_story, fit   a request's prompt, and how many new tokens fit after it
    Reply               one generation on the HTTP side: streamed (sse_reply) or whole (whole_reply)
    Illustrations       Chapter 17's illustrator on the server: loaded at the first picture, drawn in a worker
                        thread, one at a time
    routes, create_app  the FastAPI app: /v1/chat/completions, /v1/completions, /v1/images/generations,
                        /v1/models, /health, /metrics, /api/conversations (with the pictures of their stories and
                        the ratings of their replies), /api/preferences and the web app at /

What a service needs around the lesson (the conversations in SQLite, /metrics' counters, the API key, starting a
server in a thread or a process) is in storylib/service.py. There too, what keeps pages on other sites out: a
request must name this server (an IP address, localhost, --host or --allowed-host: else 421), a POST, PUT, PATCH or
DELETE from a browser must come from its own page or a --cors-origin (else 403), and a body must be
application/json (else 415); every response says Content-Security-Policy, nosniff and no framing. With
`--users FILE` each user has a key of their own (kept hashed) and conversations of their own: another user's
conversation answers 404 (owned_conversation); an admin may list the users (GET /api/users).

By default the server runs the chat model (Chapter 15's models/storyteller-rl, else Chapter 14's) with
chat_format="template":
/v1/chat/completions renders a conversation through Chapter 11's chat template (role tokens, <|end|>) and the
reply is what follows <|assistant|>, up to <|end|>; /v1/completions continues plain text. A model trained on
stories only (`--model models/storyteller`) is served with chat_format="story": a conversation is rendered as the
story it is (<|endoftext|>, then the user's and the storyteller's words as one running text) and continued.

The context window is block_size tokens (512 for the storyteller), prompt and reply together, and a cached key
cannot move to a new position (Chapter 12). The rule here: a prompt (after the template) longer than block_size - 1
tokens, or a max_tokens that does not fit after the prompt, is refused with 400 `context_length_exceeded`; nothing
is truncated behind the caller's back. Without max_tokens, a reply gets min(default_max_tokens, what fits). A chat
request may ask for truncation "auto" (as in OpenAI's Responses API; the web app does): the oldest whole turns that
do not fit are dropped first (storylib.storyteller.fit_for_reply; the system message, the last request and the
story it refers to stay), and without max_tokens the reply may use what is left of the context (up to
Limits.max_tokens). Its usage then says how many messages were left out, "dropped_messages" (an extension of
OpenAI's usage; in a stream, in the usage chunk of stream_options.include_usage), so a conversation of hundreds of
messages (Limits.max_messages) goes on, reading its latest turns, and the client can tell its user.

Errors have OpenAI's shape everywhere, {"error": {"message", "type", "param", "code"}}: a field out of range (a seed
is an integer in 0..2^63-1), text that is not text (a lone surrogate escaped in the JSON), an OpenAI parameter this
server does not implement (tools, response_format other than text, echo, logit_bias, ...: refused, never ignored) or
a field that is neither OpenAI's for that endpoint nor this server's (a typo: "Unrecognized request argument
supplied: temprature", code unrecognized_argument) is a 400 naming the field; unknown routes are 404, wrong methods
405; a bug is a 500 that says no more (the traceback goes to the server's log). A reply can carry logprobs, those of
the distribution each token was drawn from: a chat's (logprobs: true, top_logprobs: 0 to 5) as OpenAI's chat
gives them, a completion's (logprobs: 0 to 5) in the legacy shape (tokens, token_logprobs, top_logprobs,
text_offset); streamed, each chunk carries the entries of the tokens its text completes (StreamedLogprobs).
/v1/models gives the model's context as max_model_len (vLLM's name).

Pictures (Chapter 17): POST /v1/images/generations is OpenAI's Images API for the illustrator: a sentence or a whole
story in, the most drawable sentence drawn (storylib.illustrate), the PNG back as b64_json with the caption drawn
as revised_prompt. POST /api/conversations/{id}/messages/{position}/illustration draws a stored storyteller message
(or a sentence of it) and keeps the picture with the conversation; the conversation's JSON names it (sentence,
caption, url) and GET on that url gives the PNG, so the JSON stays small and the browser fetches each picture once.
The illustrator's folder: --illustrator, else $LLM101N_ILLUSTRATOR, else models/illustrator; when it is missing or
cannot load, pictures are refused with 503 and one sentence why, and everything else goes on.

Conversations have a version, bumped by every write and sent as their ETag (and "version" in their JSON): a PUT with
If-Match of an older version (another tab or client wrote meanwhile) is refused with 409 `conflict` and writes
nothing; a PUT without If-Match replaces the conversation, as it always did. A streamed chat request may name
one of the caller's conversations ("conversation": id, this server's extension): its new user message and the reply
are then stored as the reply streams (every 0.5 s at most), the reply marked "interrupted": true until it ends
normally, so a reply cut by a dead server or network is not lost (KeptReply). "continue_final_message": true (as
vLLM names it) writes more of a last storyteller message that was cut: its words end the prompt.

Ratings (Chapter 15): PUT /api/conversations/{id}/messages/{position}/rating {"rating": 1 | -1 | 0} rates a
storyteller reply 👍 / 👎 (0 clears); the conversation's JSON gives each rated reply its "rating" and, for a
regenerated one, the "alternatives" it replaced (kept, and rated the same way with "content"). GET
/api/preferences downloads them as preference pairs (JSONL, as `llm101n prefs export` writes; storylib.prefs).

On SIGTERM (or Ctrl-C) the server stops gracefully (drain_on_signals): the replies in flight end with what they
have, finish_reason "length" (a stream with its final chunk and [DONE], not a cut connection), requests still
waiting and new ones get a 503 `server_shutting_down` (a stream: an error event), then the process exits.

    llm101n serve [--port 8080] [--max-batch 64] [--api-key KEY | --users FILE] [--db PATH] [--illustrator PATH]
                                                                                   (see `llm101n serve --help`)
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
import uuid
from bisect import bisect_right
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from storylib.chat_template import check_conversation, render_chat
from storylib.fastbpe import encode_ordinary
from storylib.kvcache import KVCache, StreamDecoder, forward_cached, process_logits, sample, utf8_complete
from storylib.service import (
    Conflict,
    ConversationStore,
    Guard,
    Metrics,
    NotFound,
    Refused,
    StoreError,
    Users,
    UsersError,
    default_db_path,
)
from storylib.tokenizer import eot_id

WEBAPP = Path(__file__).resolve().parent / "webapp"  # index.html, app.js, style.css: found next to this file
MODEL_ID = "storyteller"
ILLUSTRATOR_ID = "illustrator"  # the model an Images API request may name

# ----------------------------------------------------------------------------- HTTP and server-sent events


def sse_event(data: str, event: str | None = None, id: str | None = None) -> bytes:
    """One server-sent event (WHATWG HTML, §9.2 "Server-sent events"), UTF-8 bytes.  (exercise ch16.sse)

    Lines, each ending in "\\n": "event: <event>" if event is given, "id: <id>" if id is given, then one
    "data: <line>" for every line of data (split at "\\r\\n", "\\r" or "\\n"; an empty data gives one "data: "),
    then an empty line, which ends the event. The receiver joins the data lines with "\\n", so any text
    survives the trip. event and id must be single lines (ValueError otherwise; an id may not hold "\\0").
    """
    ### BEGIN SOLUTION ch16.sse (§16.2, 2 pts): event:/id: lines, one "data: " line per line of data, a blank line
    for name, value in (("event", event), ("id", id)):
        if value is not None and (re.search(r"[\r\n]", value) or (name == "id" and "\0" in value)):
            raise ValueError(f"an SSE {name} must be one line (no CR, LF or NUL), got {value!r}")
    lines = [f"event: {event}"] if event is not None else []
    lines += [f"id: {id}"] if id is not None else []
    lines += [f"data: {line}" for line in re.split(r"\r\n|\r|\n", data)]
    return ("\n".join(lines) + "\n\n").encode("utf-8")
    ### END SOLUTION


def sse_json(obj: Any) -> bytes:
    """A JSON object as one SSE event (compact JSON has no newlines: one data line)."""
    return sse_event(json.dumps(obj, ensure_ascii=False, separators=(",", ":")))


SSE_DONE = b"data: [DONE]\n\n"  # OpenAI's end-of-stream marker: sse_event("[DONE]")

# ----------------------------------------------------------------------------- validation


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and an OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        kinds = {401: "authentication_error", 403: "permission_error", 404: "not_found_error", 429: "rate_limit_error"}
        kind = kinds.get(self.status, "server_error" if self.status >= 500 else "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. block_size is the model's context (prompt + reply)."""

    block_size: int = 256
    max_tokens: int = 256  # the largest max_tokens accepted (it must also fit after the prompt)
    default_max_tokens: int = 160  # max_tokens when the request gives none (capped by what fits)
    max_messages: int = 512  # a long conversation is sent whole (truncation "auto"); the store keeps 500
    max_content_chars: int = 8000  # one message, one prompt
    max_stop: int = 4  # stop strings, as OpenAI
    max_stop_chars: int = 64
    max_body_bytes: int = 1024 * 1024  # room for those messages
    max_temperature: float = 2.0

    @property
    def max_prompt_tokens(self) -> int:
        return self.block_size - 1  # at least one token must fit after the prompt


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)  # JSON true is not 1


def _is_number(x: Any) -> bool:
    return _is_int(x) or (isinstance(x, float) and math.isfinite(x))  # an int is finite (isfinite(10**400) raises)


def check_sampling(body: dict, limits: Limits) -> dict:
    """The sampling parameters of a request body, checked against limits.  (exercise ch16.validate)

    body is a parsed JSON object (a dict: JSON true/false are bool, numbers int or float). Fields, all optional:
      max_tokens (or max_completion_tokens, which wins when both are given): an int in 1..limits.max_tokens;
      temperature: a number in [0, limits.max_temperature] (default 1.0); top_p: a number in (0, 1] (default 1.0);
      stream: a bool (default False); stop: a string or a list of at most limits.max_stop strings, each 1 to
      limits.max_stop_chars characters (default: none); seed: an int (default None); n: must be 1 if given.
    A JSON null counts as absent. bool is not a number here. Anything else: raise RequestError(400, message,
    param=<the field's name>), the message saying what was expected. Returns {"max_tokens": int | None,
    "temperature": float, "top_p": float, "stream": bool, "stop": list[str], "seed": int | None}.
    """
    ### BEGIN SOLUTION ch16.validate (§16.4, 3 pts): each field: absent/None -> default; wrong type or range -> 400
    def bad(param: str, what: str) -> RequestError:
        return RequestError(400, f"'{param}' must be {what}, got {body[param]!r}", param=param)

    out: dict[str, Any] = {"max_tokens": None, "temperature": 1.0, "top_p": 1.0, "stream": False, "stop": [],
                           "seed": None}
    for name in ("max_tokens", "max_completion_tokens"):
        if body.get(name) is not None:
            if not _is_int(body[name]) or not 1 <= body[name] <= limits.max_tokens:
                raise bad(name, f"an integer in 1..{limits.max_tokens}")
            out["max_tokens"] = body[name]
    if body.get("temperature") is not None:
        if not _is_number(body["temperature"]) or not 0 <= body["temperature"] <= limits.max_temperature:
            raise bad("temperature", f"a number in [0, {limits.max_temperature}]")
        out["temperature"] = float(body["temperature"])
    if body.get("top_p") is not None:
        if not _is_number(body["top_p"]) or not 0 < body["top_p"] <= 1:
            raise bad("top_p", "a number in (0, 1]")
        out["top_p"] = float(body["top_p"])
    if body.get("stream") is not None:
        if not isinstance(body["stream"], bool):
            raise bad("stream", "true or false")
        out["stream"] = body["stream"]
    if body.get("stop") is not None:
        stop = [body["stop"]] if isinstance(body["stop"], str) else body["stop"]
        if (not isinstance(stop, list) or len(stop) > limits.max_stop
                or not all(isinstance(s, str) and 1 <= len(s) <= limits.max_stop_chars for s in stop)):
            raise bad("stop", f"a string or a list of at most {limits.max_stop} strings of 1 to "
                              f"{limits.max_stop_chars} characters")
        out["stop"] = stop
    if body.get("seed") is not None:
        if not _is_int(body["seed"]):
            raise bad("seed", "an integer")
        out["seed"] = body["seed"]
    if body.get("n") is not None and (not _is_int(body["n"]) or body["n"] != 1):
        raise bad("n", "1 (one choice per request)")
    return out
    ### END SOLUTION


def check_messages(body: dict, limits: Limits) -> list[dict]:
    """body["messages"] as [{"role", "content": str}]: at most max_messages, roles system/developer (as system),
    user, assistant; content a string or a list of {"type": "text", "text": ...} parts. 400 otherwise."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not 1 <= len(msgs) <= limits.max_messages:
        raise RequestError(400, f"'messages' must be a list of 1 to {limits.max_messages} messages", "messages")
    out = []
    for i, m in enumerate(msgs):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
            raise RequestError(400, f"messages[{i}] must be {{'role': 'system'|'user'|'assistant', 'content': "
                                    "string}", f"messages[{i}]")
        if len(content) > limits.max_content_chars:
            raise RequestError(400, f"messages[{i}].content is longer than {limits.max_content_chars} characters",
                               f"messages[{i}].content")
        out.append({"role": "system" if role == "developer" else role, "content": content})
    return out


def _only(*values: Any) -> Callable[[Any], bool]:
    """A field's values that ask for nothing this server does not do (of the same JSON type: false is not 0)."""
    return lambda v: any(type(v) is type(x) and v == x for x in values)


_NEVER, _TOOLS = _only(), "function calling is not implemented: the storyteller answers with text"
_PENALTIES = (_only(0, 0.0), "repetition penalties are not implemented (0 is accepted)")
_LOGIT_BIAS = (_only({}), "logit_bias is not implemented ({} is accepted)")
# OpenAI's fields that this server cannot honour, per endpoint: name -> (the values accepted as no-ops, why not).
CHAT_UNSUPPORTED = {
    "tools": (_NEVER, _TOOLS), "tool_choice": (_NEVER, _TOOLS), "parallel_tool_calls": (_NEVER, _TOOLS),
    "functions": (_NEVER, _TOOLS), "function_call": (_NEVER, _TOOLS),
    "response_format": (_only({"type": "text"}), 'the storyteller cannot promise JSON ({"type": "text"} is accepted)'),
    "logit_bias": _LOGIT_BIAS, "frequency_penalty": _PENALTIES, "presence_penalty": _PENALTIES,
    "audio": (_NEVER, "the storyteller writes, it does not speak"),
    "modalities": (_only(["text"]), 'the storyteller writes text only (["text"] is accepted)'),
    "prediction": (_NEVER, "predicted outputs are not implemented"),
    "reasoning_effort": (_NEVER, "the storyteller is not a reasoning model"),
    "verbosity": (_NEVER, "not implemented"),
    "web_search_options": (_NEVER, "the storyteller cannot search the web"),
    "service_tier": (_only("auto", "default"), 'this server has one tier ("auto" and "default" are accepted)'),
    "moderation": (_NEVER, "this server has no moderation"),
}
COMPLETION_UNSUPPORTED = {
    "echo": (_only(False), "echoing the prompt is not implemented (false is accepted)"),
    "best_of": (_only(1), "one completion is generated per request (1 is accepted)"),
    "suffix": (_only(""), "inserting text before a suffix is not implemented"),
    "conversation": (_NEVER, "only /v1/chat/completions keeps a reply in a conversation"),
    "logit_bias": _LOGIT_BIAS, "frequency_penalty": _PENALTIES, "presence_penalty": _PENALTIES,
}
IMAGE_UNSUPPORTED = {
    "quality": (_only("auto", "standard"), 'the illustrator has one quality ("auto" and "standard" are accepted)'),
    "style": (_NEVER, "the illustrator has one style"),
    "background": (_only("auto"), 'transparent backgrounds are not implemented ("auto" is accepted)'),
    "output_format": (_only("png"), 'pictures are PNG ("png" is accepted)'),
    "output_compression": (_NEVER, "pictures are PNG, not compressed"),
    "moderation": (_only("auto", "low"), 'this server has no moderation levels ("auto" and "low" are accepted)'),
    "partial_images": (_only(0), "pictures are sent whole (0 is accepted)"),
    "stream": (_only(False), "pictures are sent whole (false is accepted)"),
    "complexity": (_NEVER, "the illustrator has one way to draw"),
    "frame_count": (_NEVER, "pictures are PNG, not animated"),
    "frame_duration_ms": (_NEVER, "pictures are PNG, not animated"),
    "svg": (_NEVER, "pictures are PNG, not SVG"),
}
NO_OPS = {"user": str, "metadata": dict, "store": bool, "prompt_cache_key": str, "safety_identifier": str,
          "prompt_cache_options": dict, "prompt_cache_retention": str}

# Every field a request body may hold, per route: OpenAI's for that endpoint (as the official client sends them;
# those this server cannot honour are refused by name in *_UNSUPPORTED) and this server's own. Any other field is
# refused (check_known_fields) rather than ignored: a typo ("temprature") or another server's extension
# ("top_k") would otherwise do nothing without a word.
_SAMPLING_FIELDS = {"model", "max_tokens", "temperature", "top_p", "stream", "stream_options", "stop", "seed", "n",
                    "user", "logit_bias", "logprobs", "frequency_penalty", "presence_penalty"}
CHAT_FIELDS = frozenset(_SAMPLING_FIELDS | set(CHAT_UNSUPPORTED) | set(NO_OPS) | {
    "messages", "max_completion_tokens", "top_logprobs",  # OpenAI's, read here
    "conversation", "truncation", "continue_final_message"})  # this server's
COMPLETION_FIELDS = frozenset(_SAMPLING_FIELDS | set(COMPLETION_UNSUPPORTED) | {"prompt"})
IMAGE_FIELDS = frozenset(set(IMAGE_UNSUPPORTED) | {
    "prompt", "model", "n", "size", "response_format", "user", "safety_identifier",  # OpenAI's
    "seed", "steps", "guidance"})  # this server's (check_drawing)


def check_known_fields(body: dict, known: frozenset[str] | set[str]) -> None:
    """A 400 for a body field that is not in `known` (the route's fields: OpenAI's for its endpoint and this
    server's), with OpenAI's message for it ("Unrecognized request argument supplied: NAME"); param: the first
    such field, code "unrecognized_argument". Nothing is ignored without a word."""
    unknown = [name for name in body if name not in known]  # read_json_body refused keys that are not text
    if unknown:
        names = ", ".join(name[:100] for name in unknown[:10]) + (", ..." if len(unknown) > 10 else "")
        raise RequestError(400, f"Unrecognized request argument{'s' if len(unknown) > 1 else ''} supplied: {names}",
                           unknown[0][:200], "unrecognized_argument")


def check_openai_fields(body: dict, unsupported: dict) -> None:
    """Refuse what a request asks for that this server does not do, rather than ignore it: a 400 naming the first
    of `unsupported`'s fields given (not null) with a value other than its no-ops (code "unsupported_parameter").
    The fields OpenAI accepts and this server ignores (NO_OPS: user, metadata, store, ...) must have their type.
    Other fields, OpenAI's own ones that are checked elsewhere or unknown ones, are left to the caller."""
    for name, (accepted, why) in unsupported.items():
        value = body.get(name)
        if value is not None and not accepted(value):
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise RequestError(400, f"'{name}' is not supported by this server: {why}; got {shown}", name,
                               "unsupported_parameter")
    for name, kind in NO_OPS.items():
        if body.get(name) is not None and not isinstance(body[name], kind):
            what = {str: "a string", dict: "an object", bool: "true or false"}[kind]
            raise RequestError(400, f"'{name}' must be {what}", name)


MAX_TOP_LOGPROBS = 5  # as OpenAI's chat models (0..20 there)


def check_logprobs(body: dict) -> int | None:
    """A chat request's logprobs (a bool) and top_logprobs (an int in 0..MAX_TOP_LOGPROBS, only with logprobs):
    how many alternatives to give with each token, or None when logprobs are not asked for. Whole replies and
    streams alike (each content chunk carries its tokens' entries: StreamedLogprobs)."""
    logprobs, top = body.get("logprobs"), body.get("top_logprobs")
    if logprobs is not None and not isinstance(logprobs, bool):
        raise RequestError(400, f"'logprobs' must be true or false, got {logprobs!r}", "logprobs")
    if top is not None and (not _is_int(top) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise RequestError(400, f"'top_logprobs' must be an integer in 0..{MAX_TOP_LOGPROBS}, got {top!r}",
                           "top_logprobs")
    if top is not None and not logprobs:
        raise RequestError(400, "'top_logprobs' needs logprobs: true", "top_logprobs")
    return (top or 0) if logprobs else None


def check_completion_logprobs(body: dict) -> int | None:
    """A legacy completion's logprobs: an int in 0..MAX_TOP_LOGPROBS, how many of the likeliest tokens to give
    with each token (the token drawn is always given too), or None (absent or null)."""
    k = body.get("logprobs")
    if k is not None and (not _is_int(k) or not 0 <= k <= MAX_TOP_LOGPROBS):
        raise RequestError(400, f"'logprobs' must be an integer in 0..{MAX_TOP_LOGPROBS} (the likeliest tokens to "
                                f"give with each token), got {k!r}", "logprobs")
    return k


def check_generation(body: dict, limits: Limits, unsupported: dict) -> dict:
    """check_sampling(body, limits), and what a request to generate needs beyond it, all before anything starts (a
    stream included): the fields in `unsupported` refused (check_openai_fields), the seed in 0..MAX_SEED (a torch
    generator's seed is 64 bits), stream_options an object ({"include_usage": bool}) and only with stream: true."""
    check_openai_fields(body, unsupported)
    params = check_sampling(body, limits)
    if params["seed"] is not None and not 0 <= params["seed"] <= MAX_SEED:
        raise RequestError(400, f"'seed' must be an integer in 0..{MAX_SEED}, got {params['seed']!r}", "seed")
    opts = body.get("stream_options")
    if opts is not None:
        if not isinstance(opts, dict) or not isinstance(opts.get("include_usage", False), bool):
            raise RequestError(400, "'stream_options' must be an object {\"include_usage\": true or false}",
                               "stream_options")
        if not params["stream"]:
            raise RequestError(400, "'stream_options' is only allowed with stream: true", "stream_options")
    return params


async def read_json_body(receive_chunks: AsyncIterator[bytes], content_length: str | None, limits: Limits) -> dict:
    """A request body as a JSON object: 413 if larger than limits.max_body_bytes (by its Content-Length or while
    reading), 400 for bytes that are not UTF-8, text that is not JSON (NaN and Infinity included) or not an object.
    """
    if content_length is not None and (not content_length.isdigit() or int(content_length) > limits.max_body_bytes):
        raise RequestError(413, f"the request body must be at most {limits.max_body_bytes} bytes")
    raw = bytearray()
    async for chunk in receive_chunks:
        raw += chunk
        if len(raw) > limits.max_body_bytes:
            raise RequestError(413, f"the request body must be at most {limits.max_body_bytes} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RequestError(400, f"the request body is not UTF-8 (byte {e.start})") from None

    def no_constant(name: str):
        raise ValueError(f"{name} is not JSON")

    try:
        body = json.loads(text, parse_constant=no_constant)
    except (ValueError, RecursionError) as e:
        raise RequestError(400, f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise RequestError(400, "the request body must be a JSON object")
    where = invalid_text(body)
    if where is not None:
        raise RequestError(400, f"{where} is not valid text: it holds a lone UTF-16 surrogate (a JSON escape "
                                "\\ud800 to \\udfff that is not half of a pair), which is no character", where)
    return body


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def invalid_text(value: Any, path: str = "") -> str | None:
    """Where a parsed JSON value holds a string (or an object's key) with a lone surrogate, e.g. "messages[0].content"
    ("body" for the body itself), else None. JSON may escape one ("\\ud800"); it is no character, so no UTF-8 can
    encode it and nothing downstream (the tokenizer, SQLite, the JSON answer) could take it. Valid UTF-8 bytes never
    decode to one, and an escaped pair (an emoji) decodes to its character. Iterative: as deep as json.loads went."""
    todo = [(value, path)]
    while todo:
        v, where = todo.pop()
        if isinstance(v, str) and _SURROGATE.search(v):
            return where or "body"
        if isinstance(v, dict):
            for k, x in reversed(v.items()):
                if _SURROGATE.search(k):  # a key: named with its surrogates escaped, so the answer can say it
                    return f"{where}.{ascii(k)[1:-1]}" if where else ascii(k)[1:-1]
                todo.append((x, f"{where}.{k}" if where else k))
        elif isinstance(v, list):
            todo.extend((x, f"{where}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None



# The engine's rows (`llm101n serve --max-batch`): the batch with the most goodput (tokens/s of replies whose first
# token came within a second) for 64 streaming clients on the course's 2-core machine, measured by
# bench/serve_load.py into bench/results/serve_load.json (tests/test_serve_load.py keeps the two equal).
DEFAULT_MAX_BATCH = 64

# ----------------------------------------------------------------------------- continuous batching


class QueueFull(Exception):
    """The engine's queue is full: the caller should come back later (HTTP 429)."""


class ShuttingDown(Exception):
    """The engine takes no more requests: the server is stopping (HTTP 503)."""


SHUTTING_DOWN = "the server is shutting down; send the request again in a moment"


@dataclass
class GenRequest:
    """One generation: prompt ids in, events out through emit (called from the engine's thread).

    Events are ("text", piece) as the text becomes certain, then one ("done", finish_reason) with finish_reason
    "stop" (an end token or a stop string), "length" (max_tokens) or "cancelled". With logprobs = k (0..5), each
    new token's log-probability and its k likeliest alternatives go to token_logprobs (Engine._logprobs).
    Text does not come token by token (half a character, or the start of a stop string, waits for the next
    token): before each ("text", piece) is emitted, text_tokens gets how many of `tokens` the text so far covers
    (those whose bytes have all been sent), so a stream can give each piece the entries of its own tokens.
    """

    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: Sequence[str] = ()
    seed: int | None = None
    emit: Callable[[tuple[str, Any]], None] = lambda event: None
    cancelled: bool = False  # set by whoever waits for the answer (a client left); the engine drops the row
    tokens: list[int] = field(default_factory=list)  # the new token ids
    finish_reason: str | None = None
    submitted: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    logprobs: int | None = None  # None: not asked for
    token_logprobs: list[tuple[float, list[tuple[int, float]]]] = field(default_factory=list)  # one per token
    text_tokens: list[int] = field(default_factory=list)  # one per ("text", piece) event, set before it


@dataclass
class Row:
    """A request while it holds a row of the batch cache. `last` is its newest token, not yet in the cache."""

    req: GenRequest
    decoder: StreamDecoder
    generator: torch.Generator
    last: int = -1
    logprobs: tuple | None = None  # the newest sampled token's (Engine._logprobs), until _deliver keeps it
    ends: list[int] = field(default_factory=list)  # where each new token's bytes end, in the reply's bytes
    sent: int = 0  # the reply's bytes sent as text so far


class Engine:
    """Continuous batching (Orca, Yu et al. 2022; vLLM) over one KVCache of max_batch rows.

    Row i of the cache belongs to self.rows[i]; rows 0..len(self.rows)-1 are active, the rest free. Between two
    decode steps, waiting requests are admitted into free rows (each prompt prefilled alone, its keys and values
    copied into the row) and finished or cancelled rows leave (the last row moves into the hole, so the active
    rows stay 0..n-1 and a decode step runs on the first n rows only). max_batch = 1 is no batching at all.
    One thread (start()) owns the model; submit() and the counters may be used from any thread.
    """

    def __init__(self, model, tokenizer, max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = 64):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"need max_batch >= 1 and max_queue >= 0, got {max_batch}, {max_queue}")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.block_size = model.config.block_size
        self.max_batch, self.max_queue = max_batch, max_queue
        self.cache = KVCache.for_model(model, max_batch, self.block_size)
        self.device = next(model.parameters()).device
        # A reply ends at <|end|> or <|endoftext|>, and at any other special token too (<|user|>: a new turn).
        # Ids the tokenizer cannot decode (the model's vocabulary is padded to a multiple of 64) are never drawn.
        self.end_ids = set(getattr(tokenizer, "special_tokens", {}).values())
        V = model.config.vocab_size
        self.banned = torch.tensor([i not in tokenizer.vocab and i not in self.end_ids for i in range(V)],
                                   device=self.device)
        self.rows: list[Row] = []
        self.waiting: deque[GenRequest] = deque()
        self.wake = threading.Condition()
        self.stats = {"steps": 0, "rows_decoded": 0, "tokens": 0, "prompt_tokens": 0, "requests": 0,
                      "cancelled": 0, "rejected": 0, "ttft_sum": 0.0, "ttft_count": 0}
        self.pending = 0  # requests submitted and not finished: in a row, waiting, or being admitted
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._draining = False  # drain(): end every reply at the next step, take no more

    # -- from any thread

    def submit(self, req: GenRequest) -> None:
        """Queue a request (QueueFull when max_queue requests already wait, ShuttingDown after drain()) and wake
        the engine."""
        if not req.prompt_ids or len(req.prompt_ids) + req.max_tokens > self.block_size or req.max_tokens < 1:
            raise ValueError(f"prompt ({len(req.prompt_ids)}) + max_tokens ({req.max_tokens}) must fit in "
                             f"1..{self.block_size}")
        with self.wake:
            if self._draining:  # under the lock: drain() cannot slip in between
                raise ShuttingDown(SHUTTING_DOWN)
            if self.pending >= self.max_batch + self.max_queue:  # every row taken, max_queue waiting
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self.waiting)} requests are waiting already")
            self.pending += 1
            self.waiting.append(req)
            self.wake.notify()

    def drain(self) -> None:
        """The server is stopping (SIGTERM): before its next step the engine ends every reply in a row with what
        it has so far, finish_reason "length" (OpenAI's "cut short"), and every waiting request with an
        ("error", SHUTTING_DOWN); submit() refuses from now on. Returns at once; the engine thread goes on."""
        with self.wake:
            self._draining = True
            self.wake.notify_all()

    def load(self) -> dict:
        return {"active": len(self.rows), "waiting": len(self.waiting), "max_batch": self.max_batch,
                "max_queue": self.max_queue}

    # -- the engine's own thread

    def _finish(self, req: GenRequest, reason: str, row: Row | None = None) -> None:
        if row is not None and reason != "cancelled":
            tail = row.decoder.flush()
            if tail:
                self._emit_text(row, tail, last=True)
        req.finish_reason = reason
        self.stats["cancelled"] += reason == "cancelled"
        self._release()
        req.emit(("done", reason))

    def _release(self) -> None:
        with self.wake:
            self.pending -= 1

    def _deliver(self, i: int, token: int) -> None:
        """Row i sampled `token`: record it, emit the text it completes, mark the row done when it is."""
        row = self.rows[i]
        req = row.req
        if req.first_token_at is None:
            req.first_token_at = time.perf_counter()
            self.stats["ttft_sum"] += req.first_token_at - req.submitted
            self.stats["ttft_count"] += 1
        if token in self.end_ids:
            req.finish_reason = "stop"
            return
        req.tokens.append(token)
        if req.logprobs is not None:
            req.token_logprobs.append(row.logprobs)
        self.stats["tokens"] += 1
        row.last = token
        row.ends.append((row.ends[-1] if row.ends else 0) + len(self.tokenizer.vocab[token]))
        piece = row.decoder.push(token)
        if piece:
            self._emit_text(row, piece)
        if row.decoder.stopped:
            req.finish_reason = "stop"
        elif len(req.tokens) >= req.max_tokens:
            req.finish_reason = "length"

    @staticmethod
    def _emit_text(row: Row, piece: str, last: bool = False) -> None:
        """Emit ("text", piece), after noting in req.text_tokens how many tokens the text so far covers: the bytes
        sent are all of the tokens' but those the decoder still holds (an unfinished character, the start of a
        stop string); once a stop string showed, nothing after the piece is sent. `last`: the decoder's flush."""
        d = row.decoder
        if last or not d.stopped:
            held = 0 if last else len(d.pending) + len(d.held.encode("utf-8", "replace"))
            row.sent = row.ends[-1] - held if row.ends else 0
        else:
            row.sent += len(piece.encode("utf-8", "replace"))
        row.req.text_tokens.append(bisect_right(row.ends, row.sent))
        row.req.emit(("text", piece))

    def _sample(self, logits: torch.Tensor, row: Row) -> int:
        """The next token of one row from its logits (1, V), with the row's own settings and generator (and its
        log-probabilities in row.logprobs when the request asks for them)."""
        req = row.req
        top_p = req.top_p if req.top_p < 1 else None
        logits = logits.masked_fill(self.banned, float("-inf"))
        token = int(sample(logits, temperature=req.temperature, top_p=top_p, generator=row.generator)[0])
        if req.logprobs is not None:
            row.logprobs = self._logprobs(logits, req, token)
        return token

    @staticmethod
    def _logprobs(logits: torch.Tensor, req: GenRequest, token: int) -> tuple[float, list[tuple[int, float]]]:
        """(log-probability of token, [(id, log-probability)] of the req.logprobs likeliest tokens, likeliest first)
        under the distribution the token was drawn from: softmax(process_logits) of logits (1, V), with the
        request's temperature and top_p (tokens top_p cut have none and are not listed). A greedy pick (temperature
        0) has no distribution: it is scored under the model's own, temperature 1."""
        top_p = req.top_p if req.top_p < 1 else None
        z = logits if req.temperature == 0 else process_logits(logits, temperature=req.temperature, top_p=top_p)
        logp = z[0].double().log_softmax(-1)
        values, ids = logp.topk(min(req.logprobs, logp.numel()))
        top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True) if math.isfinite(v)]
        return float(logp[token]), top

    def _new_row(self, req: GenRequest) -> Row:
        generator = torch.Generator(device=self.device)
        if req.seed is None:
            generator.seed()
        else:
            generator.manual_seed(req.seed)
        return Row(req, StreamDecoder(self.tokenizer, req.stop), generator)

    def _move_row(self, src: int, dst: int) -> None:
        """Copy row src of the batch cache (its filled slots) into row dst."""
        n = int(self.cache.lengths[src])
        self.cache.k[:, dst, :, :n] = self.cache.k[:, src, :, :n]
        self.cache.v[:, dst, :, :n] = self.cache.v[:, src, :, :n]
        self.cache.lengths[dst] = n

    def retire(self, i: int) -> None:
        """Row i leaves: its request is finished; the last active row moves into its place."""
        row, last = self.rows[i], len(self.rows) - 1
        self._finish(row.req, "cancelled" if row.req.cancelled else row.req.finish_reason, row)
        if i != last:
            self._move_row(last, i)
            self.rows[i] = self.rows[last]
        self.rows.pop()
        self.cache.lengths[last] = 0

    @torch.no_grad()
    def admit(self, req: GenRequest) -> None:
        """Give req the next free row: prefill, copy, first token.  (exercise ch16.admit)

        The row is i = len(self.rows) (precondition: i < max_batch). Prefill req.prompt_ids alone: a
        KVCache.for_model(self.model, 1, L) for the prompt's L tokens and forward_cached on (1, L) ids. Copy its
        keys and values (all layers, all heads, slots 0..L-1) into row i of self.cache and set
        self.cache.lengths[i] = L. Append a Row for req (self._new_row(req)) to self.rows, then sample the first
        new token from the prefill's last logits (self._sample(logits (1, V), row)) and hand it to
        self._deliver(i, token). self.stats["prompt_tokens"] grows by L.
        """
        i, L = len(self.rows), len(req.prompt_ids)
        assert i < self.max_batch, "admit needs a free row"
        ### BEGIN SOLUTION ch16.admit (§16.5, 3 pts): B=1 cache; prefill; copy K/V into row i; lengths[i] = L; sample
        one = KVCache.for_model(self.model, 1, L)
        logits = forward_cached(self.model, torch.tensor([req.prompt_ids], device=self.device), one)[:, -1]
        self.cache.k[:, i, :, :L] = one.k[:, 0]
        self.cache.v[:, i, :, :L] = one.v[:, 0]
        self.cache.lengths[i] = L
        row = self._new_row(req)
        self.rows.append(row)
        self.stats["prompt_tokens"] += L
        self._deliver(i, self._sample(logits, row))
        ### END SOLUTION

    @torch.no_grad()
    def step(self) -> None:
        """One decode step of every active row, all together.  (exercise ch16.step)

        With n = len(self.rows) > 0: run forward_cached on the (n, 1) ids of each row's `last` token with the
        cache of the first n rows (view = self.cache.rows(n)); it writes at each row's own length and
        gives the view new lengths, one more each: copy them back into self.cache.lengths[:n]. Sample each
        row's next token from its logits (self._sample(logits[i : i + 1], row)) and self._deliver(i, token) it.
        Count the step: self.stats["steps"] += 1, self.stats["rows_decoded"] += n.
        Rows that are finished or cancelled are not retired here (run_once does it).
        """
        n = len(self.rows)
        if n == 0:
            return
        ### BEGIN SOLUTION ch16.step (§16.5, 3 pts): (n, 1) last tokens through self.cache.rows(n); sample each row
        idx = torch.tensor([[row.last] for row in self.rows], device=self.device)
        view = self.cache.rows(n)
        logits = forward_cached(self.model, idx, view)[:, -1]  # (n, V)
        self.cache.lengths[:n] = view.lengths  # forward_cached gave the view new lengths: copy them back
        for i, row in enumerate(self.rows):
            self._deliver(i, self._sample(logits[i : i + 1], row))
        self.stats["steps"] += 1
        self.stats["rows_decoded"] += n
        ### END SOLUTION

    def run_once(self) -> bool:
        """Between two steps: retire done rows, admit waiting requests into free rows, decode one step.
        Returns False when there was nothing to do."""
        if self._draining:
            self._end_all()
        for i in reversed(range(len(self.rows))):  # backwards: retire moves the last row into i
            if self.rows[i].req.cancelled or self.rows[i].req.finish_reason is not None:
                self.retire(i)
        while len(self.rows) < self.max_batch:
            with self.wake:
                req = self.waiting.popleft() if self.waiting else None
            if req is None:
                break
            if req.cancelled:
                self._finish(req, "cancelled")
                continue
            self.stats["requests"] += 1
            try:
                self.admit(req)
            except Exception as e:  # e.g. a learner's unwritten exercise: this request ends, the others go on
                traceback.print_exc()
                if self.rows and self.rows[-1].req is req:
                    self.rows.pop()
                self._release()
                req.emit(("error", f"{type(e).__name__}: {e}"))
                continue
            if req.finish_reason is not None:  # done at its first token
                self.retire(len(self.rows) - 1)
        if not self.rows:
            return False
        self.step()
        return True

    def _end_all(self) -> None:
        """drain()'s work, in the engine's thread: the rows' replies are cut here (retired just after), the
        waiting requests are told the server is going."""
        for row in self.rows:
            if row.req.finish_reason is None:
                row.req.finish_reason = "length"
        with self.wake:
            waiting, self.waiting = list(self.waiting), deque()
        for req in waiting:
            self._release()
            req.emit(("error", SHUTTING_DOWN))

    def start(self) -> None:
        """Run the engine in its own thread (daemon) until stop()."""
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="llm101n-engine", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stopping:
            try:
                busy = self.run_once()
            except Exception as e:  # a bug must not hang every client: end them all, keep serving
                traceback.print_exc()
                for row in self.rows:
                    self._release()
                    row.req.emit(("error", f"{type(e).__name__}: {e}"))
                self.rows.clear()
                self.cache.reset()
                busy = True
            if not busy:
                with self.wake:
                    if not self.waiting and not self._stopping:
                        self.wake.wait(timeout=0.5)

    def stop(self) -> None:
        self._stopping = True
        with self.wake:
            self.wake.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for req in [r.req for r in self.rows] + list(self.waiting):
            self._finish(req, "cancelled")
        self.rows.clear()
        self.waiting.clear()


# ----------------------------------------------------------------------------- the streaming handler


async def stream_chunks(events: AsyncIterator[tuple[str, Any]], *, completion_id: str, created: int, model: str,
                        chat: bool, usage: dict | None = None) -> AsyncIterator[bytes]:
    """Engine events -> the SSE bytes of an OpenAI streaming response.  (exercise ch16.stream)

    Every chunk is sse_json(obj) with obj = {"id": completion_id, "object": ..., "created": created,
    "model": model, "choices": [choice]}. chat=True (object "chat.completion.chunk"): first a chunk whose choice
    is {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}, then one chunk per
    ("text", piece) event with delta {"content": piece}, and at ("done", reason) a chunk with delta {} and
    finish_reason reason. chat=False (object "text_completion"): choices {"index": 0, "text": piece,
    "logprobs": None, "finish_reason": None} per piece, and {"index": 0, "text": "", "logprobs": None,
    "finish_reason": reason} at the end (no role chunk). Then, if usage is a dict, one more chunk with
    "choices": [] and "usage": usage (read it only after "done": the caller fills it in). The last line of the
    function sends SSE_DONE. An ("error", message) event ends the stream at once (return) with
    sse_json({"error": {"message": message, "type": "server_error"}}), nothing after it, not even SSE_DONE.
    """
    ### BEGIN SOLUTION ch16.stream (§16.3, 3 pts): role chunk (chat); a chunk per piece; a finish chunk; the usage chunk
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(piece: str, reason: str | None, first: bool = False) -> bytes:
        if chat:
            delta = {"role": "assistant", "content": ""} if first else {"content": piece} if reason is None else {}
            choice = {"index": 0, "delta": delta, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": piece, "logprobs": None, "finish_reason": reason}
        return sse_json({"id": completion_id, "object": kind, "created": created, "model": model,
                         "choices": [choice]})

    if chat:
        yield chunk("", None, first=True)
    async for kind_of, value in events:
        if kind_of == "error":
            yield sse_json({"error": {"message": value, "type": "server_error"}})
            return
        if kind_of == "text":
            yield chunk(value, None)
        elif kind_of == "done":
            yield chunk("", value)
            break
    if usage is not None:
        yield sse_json({"id": completion_id, "object": kind, "created": created, "model": model, "choices": [],
                        "usage": usage})
    ### END SOLUTION
    yield SSE_DONE


# ----------------------------------------------------------------------------- prompts


CHAT_FORMATS = ("story", "template")


def render_story(messages: Sequence[dict], tokenizer) -> list[int]:
    """A conversation for a model that has only read stories: <|endoftext|>, then the user's and assistant's words
    as one running text (a space between turns unless one is there already), to be continued. System messages
    are left out: a story model cannot follow instructions. The conversation must be well formed as for the chat
    template (storylib.chat_template.check_conversation), so the two formats accept the same requests."""
    check_conversation(messages, add_generation_prompt=True)
    text = ""
    for m in messages:
        if m["role"] == "system" or not m["content"]:
            continue
        sep = "" if not text or text[-1].isspace() or m["content"][0].isspace() else " "
        text += sep + m["content"]
    if not text.strip():
        raise ValueError("the conversation has no user or assistant text to continue")
    return [eot_id(tokenizer), *encode_ordinary(tokenizer, text)]


def fit(prompt_ids: list[int], max_tokens: int | None, limits: Limits, param: str) -> int:
    """max_tokens for this prompt (the default when None), or a 400 `context_length_exceeded` when the prompt and
    the reply do not fit in the context. param names the prompt's field in the request."""
    room = limits.block_size - len(prompt_ids)
    if len(prompt_ids) > limits.max_prompt_tokens:
        raise RequestError(400, f"the prompt is {len(prompt_ids)} tokens; the storyteller's context holds "
                                f"{limits.block_size} tokens, prompt and reply together (at most "
                                f"{limits.max_prompt_tokens} for the prompt)", param, "context_length_exceeded")
    if max_tokens is None:
        return min(limits.default_max_tokens, room)
    if max_tokens > room:
        raise RequestError(400, f"the prompt is {len(prompt_ids)} tokens, so at most {room} new tokens fit in the "
                                f"{limits.block_size}-token context; max_tokens is {max_tokens}", "max_tokens",
                           "context_length_exceeded")
    return max_tokens


# ----------------------------------------------------------------------------- one reply, streamed or whole


@dataclass
class Reply:
    """A generation as the HTTP side sees it: the engine's request, the queue its events arrive in (put there
    from the engine's thread), and the ids of the OpenAI response."""

    req: GenRequest
    events: asyncio.Queue
    chat: bool
    model: str
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    dropped: int | None = None  # messages that truncation "auto" left out; None: no truncation asked for
    text_offset: int = 0  # a completion's: the prompt's length in characters (its logprobs' text_offset start)
    on_event: Callable[[tuple], None] | None = None  # sees every event first (KeptReply: the reply kept as it comes)

    def usage(self) -> dict:
        """OpenAI's token counts, and with truncation "auto" dropped_messages (this server's: how many of the
        oldest messages did not fit the context and were not read)."""
        p, n = len(self.req.prompt_ids), len(self.req.tokens)
        extra = {} if self.dropped is None else {"dropped_messages": self.dropped}
        return {"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n, **extra}

    async def until_done(self, usage: dict | None = None) -> AsyncIterator[tuple[str, Any]]:
        """The events up to ("done", reason) or ("error", message). At "done" the token counts are final: they
        are written into `usage` (for stream_chunks, which reads it after "done") before "done" is passed on."""
        while True:
            event = await self.events.get()
            if self.on_event is not None:
                self.on_event(event)
            if event[0] == "done" and usage is not None:
                usage.update(self.usage())
            yield event
            if event[0] in ("done", "error"):
                return

    def json_body(self, text: str, reason: str, logprobs: dict | None = None) -> dict:
        """The whole reply as OpenAI's JSON (a chat.completion or a text_completion), with its logprobs (a chat's
        as logprobs_json gives them, a completion's as legacy_logprobs does)."""
        choice = ({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason,
                   "logprobs": logprobs} if self.chat else
                  {"index": 0, "text": text, "finish_reason": reason, "logprobs": logprobs})
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": [choice], "usage": self.usage()}


def start_reply(engine: Engine, prompt_ids: list[int], max_tokens: int, params: dict, chat: bool,
                model: str) -> Reply:
    """Queue a generation in the engine; a 429 with Retry-After when its queue is full."""
    loop, events = asyncio.get_running_loop(), asyncio.Queue()

    def emit(event):  # called in the engine's thread: hand the event to this request's event loop
        try:
            loop.call_soon_threadsafe(events.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown)
            pass

    req = GenRequest(prompt_ids, max_tokens, params["temperature"], params["top_p"], params["stop"], params["seed"],
                     emit=emit, logprobs=params.get("logprobs"))
    try:
        engine.submit(req)
    except ShuttingDown as e:
        raise RequestError(503, str(e), code="server_shutting_down", headers={"Retry-After": "5"}) from None
    except QueueFull:
        retry = max(1, math.ceil(len(engine.waiting) / max(1, engine.max_batch)))
        raise RequestError(429, f"the server is busy ({engine.max_queue} requests are waiting); retry in {retry} s",
                           code="queue_full", headers={"Retry-After": str(retry)}) from None
    return Reply(req, events, chat, model, ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24])


async def sse_reply(reply: Reply, include_usage: bool, tokenizer=None) -> AsyncIterator[bytes]:
    """The reply as OpenAI's stream of SSE chunks (with logprobs asked for, each content chunk carries its tokens':
    StreamedLogprobs, which needs the tokenizer). Ends the generation when the client leaves."""
    usage = {} if include_usage else None
    events, logprobs = reply.until_done(usage), None
    if reply.req.logprobs is not None:
        logprobs = StreamedLogprobs(reply, tokenizer)
        events = logprobs.counted(events)
    try:
        async for chunk in stream_chunks(events, completion_id=reply.id, created=reply.created,
                                         model=reply.model, chat=reply.chat, usage=usage):
            yield chunk if logprobs is None else logprobs.add_to(chunk)
    finally:  # finished, or the client went away (the response task is cancelled): free the row
        reply.req.cancelled = reply.req.cancelled or reply.req.finish_reason is None


async def _client_left(request: Request, reply: Reply) -> None:
    """Wait until the client of a whole reply leaves, then cancel its generation (the engine retires the row before
    its next decode step) and tell whole_reply. The body is read already: the next ASGI message is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    reply.req.cancelled = True
    reply.events.put_nowait(("gone", None))


async def whole_reply(request: Request, reply: Reply) -> Response | dict:
    """The reply in one JSON response once it is done; a client that leaves meanwhile ends the generation at once
    (499), as a stream's does."""
    text, reason = [], None
    watcher = asyncio.create_task(_client_left(request, reply))
    try:
        while reason is None:
            kind, value = await reply.events.get()
            if kind == "gone":
                return Response(status_code=499)
            if kind == "error" and value == SHUTTING_DOWN:  # the server stopped before this request had a row
                return _error(503, value, code="server_shutting_down", headers={"Retry-After": "5"})
            if kind == "error":
                return _error(500, value)
            if kind == "text":
                text.append(value)
            else:
                reason = value
    finally:
        watcher.cancel()
        reply.req.cancelled = reply.req.cancelled or reason is None
    tokenizer = request.app.state.tokenizer
    logprobs = (logprobs_json(reply.req, tokenizer) if reply.chat else
                legacy_logprobs(reply.req, tokenizer, text_offset=reply.text_offset))
    return reply.json_body("".join(text), reason, logprobs)


def logprobs_json(req: GenRequest, tokenizer, start: int = 0, end: int | None = None) -> dict | None:
    """A chat reply's logprobs as OpenAI gives them: {"content": [{"token", "logprob", "bytes", "top_logprobs":
    [{"token", "logprob", "bytes"}]}], "refusal": None}, one entry per new token (tokens[start:end]: a stream
    chunk's); None when not asked for. A token that is part of a character (a byte of an emoji) has its bytes, and
    U+FFFD in its text."""
    if req.logprobs is None:
        return None

    def entry(token: int, logprob: float) -> dict:
        raw = tokenizer.vocab[token]
        return {"token": raw.decode("utf-8", "replace"), "logprob": logprob, "bytes": list(raw)}

    return {"content": [{**entry(t, lp), "top_logprobs": [entry(i, v) for i, v in top]}
                        for t, (lp, top) in zip(req.tokens[start:end], req.token_logprobs[start:end], strict=True)],
            "refusal": None}


def legacy_logprobs(req: GenRequest, tokenizer, start: int = 0, end: int | None = None,
                    text_offset: int = 0) -> dict | None:
    """A completion's logprobs as OpenAI's legacy Completions give them, for tokens[start:end]: {"tokens": [text],
    "token_logprobs": [logprob], "top_logprobs": [{text: logprob}] (the req.logprobs likeliest and the token drawn,
    which is always there), "text_offset": [where each token starts, in characters of the prompt and the reply:
    the prompt's length (text_offset) for the first]}; None when not asked for. A token that is part of a
    character has U+FFFD in its text and starts where that character does."""
    if req.logprobs is None:
        return None
    end = len(req.tokens) if end is None else end

    def text(token: int) -> str:
        return tokenizer.vocab[token].decode("utf-8", "replace")

    before = b"".join(tokenizer.vocab[t] for t in req.tokens[:start])  # the reply's bytes before tokens[start]
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for t, (lp, top) in zip(req.tokens[start:end], req.token_logprobs[start:end], strict=True):
        out["tokens"].append(text(t))
        out["token_logprobs"].append(lp)
        likeliest: dict[str, float] = {}
        for i, v in top:
            likeliest.setdefault(text(i), v)  # two byte tokens may both read U+FFFD: the likelier is kept
        likeliest.setdefault(text(t), lp)
        out["top_logprobs"].append(likeliest)
        out["text_offset"].append(text_offset + len(before[: utf8_complete(before)].decode("utf-8", "replace")))
        before += tokenizer.vocab[t]
    return out


class StreamedLogprobs:
    """Logprobs on a stream: each chunk that carries text carries the entries of the tokens that text completes
    (logprobs_json's shape for a chat chunk, legacy_logprobs' for a completion's); the other chunks say
    "logprobs": null. The engine notes with each ("text", piece) how many tokens the text so far covers
    (GenRequest.text_tokens); counted() reads it as stream_chunks takes each event, add_to() puts the entries
    into the chunk stream_chunks makes of it (one chunk per text event, in order). Tokens whose text is never
    sent (a stop string) have no entry."""

    def __init__(self, reply: Reply, tokenizer):
        self.reply, self.tokenizer = reply, tokenizer
        self.covers: deque[int] = deque()  # per text event taken and not yet in a chunk: tokens covered by then
        self.events = 0  # text events taken
        self.sent = 0  # tokens whose entries went out

    async def counted(self, events: AsyncIterator[tuple[str, Any]]) -> AsyncIterator[tuple[str, Any]]:
        async for event in events:
            if event[0] == "text":
                self.covers.append(self.reply.req.text_tokens[self.events])
                self.events += 1
            yield event

    def add_to(self, chunk: bytes) -> bytes:
        text = chunk.decode("utf-8")
        if not text.startswith("data: {") or text.count("\n") != 2:  # not one JSON chunk: [DONE], an error, ...
            return chunk
        obj = json.loads(text[len("data: "):])
        if not obj.get("choices") or "error" in obj:  # the usage chunk
            return chunk
        choice = obj["choices"][0]
        if self.reply.chat:
            delta = choice.get("delta", {})
            carries_text = "role" not in delta and bool(delta.get("content"))
        else:
            carries_text = bool(choice.get("text"))
        choice["logprobs"] = None
        if carries_text and self.covers:
            start, self.sent = self.sent, max(self.sent, self.covers.popleft())
            req, tok = self.reply.req, self.tokenizer
            choice["logprobs"] = (logprobs_json(req, tok, start, self.sent) if self.reply.chat else
                                  legacy_logprobs(req, tok, start, self.sent, self.reply.text_offset))
        return sse_json(obj)


async def respond(request: Request, body: dict, prompt_ids: list[int], params: dict, chat: bool,
                  dropped: int | None = None, keeper: KeptReply | None = None, text_offset: int = 0):
    """Generate a reply to prompt_ids and send it: streamed as SSE (params["stream"]) or whole. `dropped`: how
    many of the conversation's messages truncation "auto" left out (its usage says so), None without it.
    `keeper`: the conversation the streamed reply is kept in as it comes (conversation_keeper). `text_offset`: a
    completion's prompt length in characters (where its logprobs' text_offset starts)."""
    state = request.app.state
    max_tokens = fit(prompt_ids, params["max_tokens"], state.limits, "messages" if chat else "prompt")
    reply = start_reply(state.engine, prompt_ids, max_tokens, params, chat, state.model_id)
    reply.dropped, reply.text_offset = dropped, text_offset
    if not params["stream"]:
        return await whole_reply(request, reply)
    opts = body.get("stream_options")
    include_usage = isinstance(opts, dict) and opts.get("include_usage") is True
    stream = sse_reply(reply, include_usage, state.tokenizer)
    if keeper is not None:
        reply.on_event, stream = keeper.on_event, keeper.kept(stream)
    return StreamingResponse(stream, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ----------------------------------------------------------------------------- pictures (Chapter 17)


IMAGE_SIZES = {"64x64": 64, "128x128": 128, "256x256": 256}  # OpenAI's Images API names sizes so; squares only
MAX_STEPS, MAX_GUIDANCE, MAX_SEED = 100, 10.0, 2**63 - 1


def check_drawing(body: dict) -> dict:
    """How to draw: seed (an int in 0..2^63-1, default 0: the same sentence draws the same picture), steps (an int
    in 1..MAX_STEPS, default 25) and guidance (a number in [1, MAX_GUIDANCE], default 3.0). A JSON null counts as
    absent; anything else is a 400 naming the field."""
    out: dict[str, Any] = {"seed": 0, "steps": 25, "guidance": 3.0}
    for name, ok, what in [("seed", lambda x: _is_int(x) and 0 <= x <= MAX_SEED, f"an integer in 0..{MAX_SEED}"),
                           ("steps", lambda x: _is_int(x) and 1 <= x <= MAX_STEPS, f"an integer in 1..{MAX_STEPS}"),
                           ("guidance", lambda x: _is_number(x) and 1 <= x <= MAX_GUIDANCE,
                            f"a number in [1, {MAX_GUIDANCE:g}]")]:
        if body.get(name) is not None:
            if not ok(body[name]):
                raise RequestError(400, f"'{name}' must be {what}, got {body[name]!r}", param=name)
            out[name] = float(body[name]) if name == "guidance" else body[name]
    return out


def check_image_request(body: dict, limits: Limits) -> dict:
    """An Images API request (POST /v1/images/generations): prompt (required: a sentence or a whole story, at most
    limits.max_content_chars characters), n (1 only), size (IMAGE_SIZES, default 256x256), response_format
    ("b64_json" only: this server keeps no files to link to), model ("illustrator" if given), and check_drawing's
    fields; OpenAI's fields it cannot honour are refused (IMAGE_UNSUPPORTED). Returns {"prompt", "size": int, "seed",
    "steps", "guidance"}; a 400 (404 for another model) otherwise."""
    check_openai_fields(body, IMAGE_UNSUPPORTED)
    prompt = body.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(400, "'prompt' must be a non-empty string (a sentence or a story)", "prompt")
    if len(prompt) > limits.max_content_chars:
        raise RequestError(400, f"'prompt' is longer than {limits.max_content_chars} characters", "prompt")
    check_model(body, ILLUSTRATOR_ID)
    if body.get("n") is not None and (not _is_int(body["n"]) or body["n"] != 1):
        raise RequestError(400, f"'n' must be 1 (one picture per request), got {body['n']!r}", "n")
    size = body.get("size")
    if size is not None and (not isinstance(size, str) or size not in IMAGE_SIZES):
        raise RequestError(400, f"'size' must be one of {', '.join(IMAGE_SIZES)}, got {size!r}", "size")
    fmt = body.get("response_format")
    if fmt is not None and fmt != "b64_json":
        raise RequestError(400, f"'response_format' must be \"b64_json\" (this server keeps no picture files to "
                                f"link to), got {fmt!r}", "response_format")
    return {"prompt": prompt, "size": IMAGE_SIZES[size or "256x256"], **check_drawing(body)}


class Illustrations:
    """Chapter 17's illustrator on the server. Found at illustrate.illustrator_folder(folder) and loaded at the first
    picture, then kept (a failed load is tried again next time: the folder may appear). Pictures are drawn in a
    worker thread, one at a time (they share the CPU with the engine), so the event loop goes on serving; at most
    max_waiting more wait their turn, the next gets a 429."""

    def __init__(self, folder: str | os.PathLike | None = None, max_waiting: int = 4):
        self.given, self.max_waiting = folder, max_waiting
        self.illustrator = None
        self.lock = threading.Lock()  # one picture (or load) at a time
        self.pending = 0  # pictures asked for and not finished (only touched on the event loop)

    def _illustrator(self):
        """The loaded illustrator (holding self.lock), or a 503 saying why there is none."""
        if self.illustrator is None:
            from storylib.storyteller import illustrate_error, load_illustrator

            try:
                self.illustrator = load_illustrator(self.given)
            except Exception as e:  # noqa: BLE001 - whatever it is, pictures are off and the rest goes on
                raise RequestError(503, illustrate_error(e, then="restart the server"),
                                   code="illustrator_unavailable", headers={"Retry-After": "60"}) from e
        return self.illustrator

    def _draw(self, story: str, sentence: str | None, size: int, steps: int, guidance: float, seed: int,
              param: str | None):
        """In a worker thread: (Picture, PNG bytes of size x size). NothingToDraw -> 400 with its message (param:
        the request's field that held the story)."""
        with self.lock:
            ill = self._illustrator()
            from storylib import illustrate  # there: the illustrator loaded

            try:
                picture = ill.illustrate(story, sentence=sentence, steps=steps, guidance=guidance, seed=seed)
            except illustrate.NothingToDraw as e:
                raise RequestError(400, str(e), "sentence" if sentence else param, "nothing_to_draw") from None
            except NotImplementedError as e:  # a learner's Chapter 17 (the DiT's sampler, ...) not written yet
                from storylib.storyteller import illustrate_error

                raise RequestError(503, illustrate_error(e, then="restart the server"),
                                   code="illustrator_unavailable") from e
        side = picture.pixels.shape[0]
        if size % side:
            raise RequestError(400, f"the illustrator draws {side}x{side} pictures: 'size' must be a multiple of "
                                    f"{side}", "size")
        return picture, picture.png(scale=size // side)

    async def picture(self, story: str, sentence: str | None, size: int, steps: int, guidance: float, seed: int,
                      param: str | None = None):
        """(Picture, PNG bytes): drawn off the event loop; 429 when max_waiting pictures wait already."""
        if self.pending > self.max_waiting:
            raise RequestError(429, f"the illustrator is busy ({self.pending} pictures are waiting); retry in 5 s",
                               code="queue_full", headers={"Retry-After": "5"})
        self.pending += 1
        try:
            return await asyncio.to_thread(self._draw, story, sentence, size, steps, guidance, seed, param)
        finally:
            self.pending -= 1


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode("ascii")


# ----------------------------------------------------------------------------- the routes


def _schema(properties: dict, required: Sequence[str] = ()) -> dict:
    body = {"type": "object", "properties": properties, "required": list(required)}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


_SAMPLING = {
    "model": {"type": "string"},
    "max_tokens": {"type": ["integer", "null"]},
    "max_completion_tokens": {"type": ["integer", "null"]},
    "temperature": {"type": ["number", "null"]},
    "top_p": {"type": ["number", "null"]},
    "stream": {"type": ["boolean", "null"]},
    "stop": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}, {"type": "null"}]},
    "seed": {"type": ["integer", "null"]},
    "n": {"type": ["integer", "null"]},
    "stream_options": {"type": ["object", "null"]},
}
CHAT_SCHEMA = _schema({**_SAMPLING, "messages": {"type": "array", "items": {"type": "object", "properties": {
    "role": {"type": "string"}, "content": {"type": "string"}}}}, "truncation": {"type": ["string", "null"]},
    "logprobs": {"type": ["boolean", "null"]}, "top_logprobs": {"type": ["integer", "null"]}}, ["messages"])
COMPLETION_SCHEMA = _schema({**_SAMPLING, "prompt": {"anyOf": [{"type": "string"},
                                                               {"type": "array", "items": {"type": "string"}}]},
                             "logprobs": {"type": ["integer", "null"]}}, ["prompt"])
CONVERSATION_SCHEMA = _schema({"title": {"type": "string"}, "messages": {"type": "array", "items": {
    "type": "object", "properties": {"role": {"type": "string"}, "content": {"type": "string"}}}}})
GENERATION_ERRORS = {400: {"description": "a bad request"}, 413: {"description": "body too large"},
                     429: {"description": "busy"}}
_DRAWING = {"seed": {"type": ["integer", "null"]}, "steps": {"type": ["integer", "null"]},
            "guidance": {"type": ["number", "null"]}}
IMAGE_SCHEMA = _schema({"prompt": {"type": "string"}, "model": {"type": "string"}, "n": {"type": ["integer", "null"]},
                        "size": {"type": ["string", "null"]}, "response_format": {"type": ["string", "null"]},
                        **_DRAWING}, ["prompt"])
ILLUSTRATION_SCHEMA = _schema({"sentence": {"type": ["string", "null"]}, **_DRAWING})
RATING_SCHEMA = _schema({"rating": {"type": "integer", "enum": [-1, 0, 1]}, "content": {"type": ["string", "null"]}},
                        ["rating"])
PICTURE_ERRORS = {**GENERATION_ERRORS, 503: {"description": "no illustrator (one sentence says why)"}}

routes = APIRouter()  # every route finds the engine, limits and store in request.app.state (create_app)


async def read_body(request: Request) -> dict:
    return await read_json_body(request.stream(), request.headers.get("content-length"), request.app.state.limits)


def check_model(body: dict, model_id: str) -> None:
    """A request may name the model (OpenAI clients always do): 404 unless it is this server's."""
    m = body.get("model")
    if m is not None and m != model_id:
        if not isinstance(m, str):
            raise RequestError(400, "'model' must be a string", "model")
        raise RequestError(404, f"the model {m!r} does not exist; this server has {model_id!r}", "model",
                           "model_not_found")


@routes.post("/v1/chat/completions", openapi_extra=CHAT_SCHEMA, responses=GENERATION_ERRORS)
async def chat_completions(request: Request):
    """A reply to a conversation (OpenAI's Chat Completions): the conversation as a story to continue
    (chat_format "story"), or through Chapter 11's chat template, the reply after <|assistant|> ("template");
    it ends at a special token (<|end|>, <|endoftext|>, ...) or a stop string."""
    state, body = request.app.state, await read_body(request)
    check_known_fields(body, CHAT_FIELDS)
    check_model(body, state.model_id)
    params = check_generation(body, state.limits, CHAT_UNSUPPORTED)
    params["logprobs"] = check_logprobs(body)
    messages = check_messages(body, state.limits)
    messages, so_far = continued(body, messages)  # continue_final_message: more of the last reply
    keeper = await conversation_keeper(request, body, messages, params, so_far)  # "conversation": kept there
    tail = encode_ordinary(state.tokenizer, so_far) if so_far else []
    truncation, dropped = body.get("truncation"), None
    if truncation not in (None, "auto", "disabled"):
        raise RequestError(400, f"'truncation' must be \"auto\" or \"disabled\", got {truncation!r}", "truncation")
    try:
        if truncation == "auto":  # the last whole turns that leave room for the reply
            from storylib.storyteller import fit_for_reply  # Chapter 14's windowing (a learner's Ch. 16 runs without)

            check_conversation(messages, add_generation_prompt=True)
            reserve, block = params["max_tokens"] or state.limits.default_max_tokens, state.limits.block_size
            reserve += len(tail)  # the reply so far (continue_final_message) is part of the prompt
            try:
                kept = fit_for_reply(messages, state.tokenizer, block, reserve)
                dropped, messages = len(messages) - len(kept), kept
            except ValueError as e:  # the last request (and the story it refers to) alone are too long
                raise RequestError(400, f"the conversation does not fit the {block}-token context: {e}", "messages",
                                   "context_length_exceeded") from None
        if state.chat_format == "story":
            ids = render_story(messages, state.tokenizer)
        else:
            ids, _ = render_chat(messages, state.tokenizer, add_generation_prompt=True)
        ids = ids + tail
    except ValueError as e:  # a conversation the template refuses (roles out of order, ...)
        raise RequestError(400, str(e), "messages") from None
    if truncation == "auto" and params["max_tokens"] is None:  # what is left of the context, up to the limit
        params = {**params, "max_tokens": max(1, min(state.limits.max_tokens, state.limits.block_size - len(ids)))}
    return await respond(request, body, ids, params, chat=True, dropped=dropped, keeper=keeper)


@routes.post("/v1/completions", openapi_extra=COMPLETION_SCHEMA, responses=GENERATION_ERRORS)
async def completions(request: Request):
    """A story's continuation (OpenAI's legacy Completions): <|endoftext|> + the prompt, encoded as plain
    text (a "<|end|>" typed in a prompt is seven characters, never the special token)."""
    state, body = request.app.state, await read_body(request)
    check_known_fields(body, COMPLETION_FIELDS)
    check_model(body, state.model_id)
    params, prompt = check_generation(body, state.limits, COMPLETION_UNSUPPORTED), body.get("prompt")
    params["logprobs"] = check_completion_logprobs(body)
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise RequestError(400, "'prompt' must be a string (or a list of one string)", "prompt")
    if len(prompt) > state.limits.max_content_chars:
        raise RequestError(400, f"'prompt' is longer than {state.limits.max_content_chars} characters", "prompt")
    ids = [eot_id(state.tokenizer), *encode_ordinary(state.tokenizer, prompt)]
    return await respond(request, body, ids, params, chat=False, text_offset=len(prompt))


@routes.post("/v1/images/generations", openapi_extra=IMAGE_SCHEMA, responses=PICTURE_ERRORS)
async def images_generations(request: Request):
    """A picture for a sentence or a story (OpenAI's Images API): the story's most drawable sentence (or the
    sentence) read as a caption the illustrator knows (storylib.illustrate) and drawn; revised_prompt is that
    caption, sentence the words it came from."""
    state, body = request.app.state, await read_body(request)
    check_known_fields(body, IMAGE_FIELDS)
    req = check_image_request(body, state.limits)
    picture, png = await state.illustrations.picture(req["prompt"], None, req["size"], req["steps"],
                                                     req["guidance"], req["seed"], param="prompt")
    return {"created": int(time.time()), "data": [{"b64_json": _b64(png), "revised_prompt": picture.caption,
                                                   "sentence": picture.sentence}]}


def _model_card(state) -> dict:
    """OpenAI's model object, and the model's context in tokens, prompt and reply together, as vLLM names it
    (max_model_len): the web app says it when a long conversation's oldest turns are left out."""
    return {"id": state.model_id, "object": "model", "created": 0, "owned_by": "llm101n",
            "max_model_len": state.limits.block_size}


@routes.get("/v1/models")
async def models(request: Request):
    return {"object": "list", "data": [_model_card(request.app.state)]}


@routes.get("/v1/models/{name}")
async def one_model(name: str, request: Request):
    if name != request.app.state.model_id:
        raise RequestError(404, f"the model {name!r} does not exist", "model", "model_not_found")
    return _model_card(request.app.state)


@routes.get("/health")
async def health(request: Request):
    return {"status": "ok", "model": request.app.state.model_id, **request.app.state.engine.load()}


@routes.get("/metrics", response_class=PlainTextResponse)
async def prometheus(request: Request):
    engine = request.app.state.engine
    return PlainTextResponse(request.app.state.metrics.render(engine.stats, engine.load()),
                             media_type="text/plain; version=0.0.4")


# -- the web app's conversations (storylib.service.ConversationStore). Reads are sync handlers: FastAPI runs them
# in its thread pool; SQLite locks. Its NotFound and Refused become 404 and 400 (EXCEPTION_HANDLERS).


async def owned_conversation(request: Request) -> None:
    """Every route with a conversation's id ({cid}) serves its owner only: another user's id is 404, as if it did
    not exist (create_app gives the routes this dependency)."""
    cid = request.path_params.get("cid")
    if cid is not None and request.app.state.store.owner(cid) != request.user.name:
        raise NotFound(f"no conversation {cid!r}")


class KeptReply:
    """A streamed chat reply kept in its conversation as it comes (`"conversation": id` on /v1/chat/completions):
    the request's messages and the reply so far are written at most every SAVE_EVERY seconds with the reply
    marked interrupted, and once more at its end: whole and unmarked before the stream's [DONE], or marked after
    an error. When the client leaves (Stop, a network gone) nothing more is written: the page saves the words it
    got (a later write here would undo that). A server killed mid-reply loses at most SAVE_EVERY seconds of
    words. Another write to the conversation meanwhile (Conflict), or its deletion, ends the keeping; the stream
    goes on."""

    SAVE_EVERY = 0.5  # seconds

    def __init__(self, store: ConversationStore, cid: str, title: str, messages: list[dict], version: int,
                 so_far: str = ""):
        self.store, self.cid, self.title, self.messages, self.version = store, cid, title, messages, version
        self.text: list[str] = [so_far]  # a reply continued (continue_final_message) starts with its words so far
        self.saved_at, self.done, self.stopped = -math.inf, False, False

    def on_event(self, event: tuple) -> None:
        kind, value = event
        if kind == "text":
            self.text.append(value)
            if time.monotonic() - self.saved_at >= self.SAVE_EVERY:
                self.write(interrupted=True)
        elif kind == "done":
            self.done = True
            self.write(interrupted=False)

    async def kept(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The stream as it is; when it ends before its last token (an error), the words so far are written,
        marked interrupted. A client that leaves closes this generator: nothing is written then."""
        async for chunk in stream:
            yield chunk
        if not self.done:
            self.write(interrupted=True)

    def write(self, interrupted: bool) -> None:
        if self.stopped:
            return
        reply = {"role": "assistant", "content": "".join(self.text)}
        try:
            self.version = self.store.put(self.cid, self.title, [*self.messages, reply], self.version,
                                          interrupted=interrupted)["version"]
        except (Conflict, NotFound, Refused):  # written elsewhere meanwhile, deleted, or too long: keep no more
            self.stopped = True
        self.saved_at = time.monotonic()


def continued(body: dict, messages: list[dict]) -> tuple[list[dict], str | None]:
    """`"continue_final_message": true` (as vLLM names it): the last message is a storyteller's reply that was cut
    off, and the model writes more of it (the stream gives the new words only). Returns the messages before it
    and its text; (messages, None) without the field. A 400 when the last message is not the storyteller's."""
    flag = body.get("continue_final_message")
    if flag is None or flag is False:
        return messages, None
    if flag is not True:
        raise RequestError(400, f"'continue_final_message' must be true or false, got {flag!r}",
                           "continue_final_message")
    if messages[-1]["role"] != "assistant":
        raise RequestError(400, "'continue_final_message' continues the storyteller's last message: the last "
                                f"message is the {messages[-1]['role']}'s", "continue_final_message")
    return messages[:-1], messages[-1]["content"]


async def conversation_keeper(request: Request, body: dict, messages: list[dict], params: dict,
                              so_far: str | None = None) -> KeptReply | None:
    """`"conversation": id` on a streamed chat request: the reply is kept in that conversation of the caller's
    (another user's id: 404) as it comes (KeptReply). The request's messages must be the stored ones, the stored
    ones and one new user message, or the stored ones but their last reply (Regenerate: the new reply replaces it,
    which is kept as its alternative); else 409 conflict (the conversation changed since the page loaded it).
    `so_far`: the reply being continued (continued()): the stored messages must be `messages` and it. None
    without the field."""
    cid = body.get("conversation")
    if cid is None:
        return None
    if not isinstance(cid, str) or not re.fullmatch(r"[0-9a-f]{32}", cid):
        raise RequestError(400, "'conversation' must be the id of one of your conversations", "conversation")
    if not params["stream"]:
        raise RequestError(400, "'conversation' keeps a streamed reply as it comes: it needs \"stream\": true",
                           "conversation")
    store = request.app.state.store
    if await asyncio.to_thread(store.owner, cid) != request.user.name:
        raise NotFound(f"no conversation {cid!r}")
    stored = await asyncio.to_thread(store.get, cid)
    asked = [{"role": m["role"], "content": m["content"]} for m in messages]
    had = [{"role": m["role"], "content": m["content"]} for m in stored["messages"]]
    appended = asked[:-1] == had and asked[-1]["role"] == "user"
    regenerated = asked == had[:-1] and bool(had) and had[-1]["role"] == "assistant"
    if so_far is not None:  # only the reply being continued may follow
        appended, regenerated = False, had == [*asked, {"role": "assistant", "content": so_far}]
    if (asked != had or so_far is not None) and not appended and not regenerated:
        raise RequestError(409, f"conversation {cid!r} is not the one these messages continue (it changed "
                                "meanwhile?): load it again", "conversation", "conflict")
    return KeptReply(store, cid, stored["title"], asked, stored["version"], so_far or "")


@routes.get("/api/users")
def list_users(request: Request):
    """The users of this server (--users), [{"name", "admin"}], for an admin (else 403); without --users the one
    user, "default"."""
    if not request.user.admin:
        raise RequestError(403, "only an admin may list the users", code="permission_denied")
    users = request.app.state.users
    return {"data": users.describe() if users is not None else [{"name": request.user.name, "admin": True}]}


@routes.get("/api/conversations")
def list_conversations(request: Request):
    return {"data": request.app.state.store.conversations(owner=request.user.name)}


@routes.post("/api/conversations", status_code=201, openapi_extra=CONVERSATION_SCHEMA)
async def create_conversation(request: Request, response: Response):
    body = await read_body(request)
    check_known_fields(body, {"title"})
    return _versioned(await asyncio.to_thread(request.app.state.store.create, body.get("title", "New story"),
                                              owner=request.user.name), response)


def etag(version: int) -> str:
    """A conversation's version as an HTTP entity tag ("3"): GET and PUT send it, PUT's If-Match names one."""
    return f'"{version}"'


def if_match_version(request: Request) -> int | None:
    """The version a PUT was made from: its If-Match header, one entity tag of a version ("3", as etag() writes
    it). None without the header or with "*" (no check: clients that know no versions write as before). Anything
    else (a list, a weak tag, not a version) is a 400 naming If-Match."""
    value = request.headers.get("if-match")
    if value is None or value.strip() == "*":
        return None
    m = re.fullmatch(r'\s*"(\d{1,15})"\s*', value)
    if m is None:
        raise RequestError(400, f"'If-Match' must be one version of the conversation as its ETag gives it (\"3\"), "
                                f"got {value[:40]!r}", "If-Match")
    return int(m.group(1))


def _versioned(conversation: dict, response: Response) -> dict:
    response.headers["ETag"] = etag(conversation["version"])
    return conversation


@routes.get("/api/conversations/{cid}")
def get_conversation(cid: str, request: Request, response: Response):
    """One conversation with its messages and version (also its ETag)."""
    return _versioned(request.app.state.store.get(cid), response)


@routes.put("/api/conversations/{cid}", openapi_extra=CONVERSATION_SCHEMA)
async def put_conversation(cid: str, request: Request, response: Response):
    """Replace a conversation's title and messages. With If-Match (the ETag of the version the change was made
    from) the write happens only if nobody wrote since: else 409 `conflict`, nothing written, the ETag of the
    stored version in the answer. A last message with "interrupted": true (a reply that did not end) is marked so;
    without it, a mark stays while its message is unchanged. Returns the conversation as stored, with its new
    version (and ETag)."""
    body = await read_body(request)
    check_known_fields(body, {"title", "messages"})
    expected, messages = if_match_version(request), body.get("messages", [])
    cut = isinstance(messages, list) and bool(messages) and isinstance(messages[-1], dict) and \
        messages[-1].get("interrupted") is True  # the page's reply that did not end: stays marked
    saved = await asyncio.to_thread(request.app.state.store.put, cid, body.get("title", "New story"), messages,
                                    expected, True if cut else None)
    return _versioned(saved, response)


@routes.delete("/api/conversations/{cid}")
def delete_conversation(cid: str, request: Request):
    request.app.state.store.delete(cid)
    return {"id": cid, "deleted": True}


def _position(cid: str, position: str) -> int:
    if not re.fullmatch(r"\d{1,6}", position):  # a message's index; SQLite's integers stop at 2^63
        raise NotFound(f"conversation {cid!r} has no message {position!r}")
    return int(position)


@routes.post("/api/conversations/{cid}/messages/{position}/illustration", openapi_extra=ILLUSTRATION_SCHEMA,
             responses=PICTURE_ERRORS)
async def illustrate_message(cid: str, position: str, request: Request):
    """Draw a storyteller message (its most drawable sentence, or `sentence`, which must be part of it) and keep
    the picture with it, replacing one it had. Returns the picture's description (as the conversation lists it)
    and the PNG as b64_json."""
    state, body = request.app.state, await read_body(request)
    check_known_fields(body, {"sentence", "seed", "steps", "guidance"})
    i, params, sentence = _position(cid, position), check_drawing(body), body.get("sentence")
    message = await asyncio.to_thread(state.store.message, cid, i)
    if message["role"] != "assistant":
        raise RequestError(400, f"message {i} is the {message['role']}'s: only the storyteller's are illustrated",
                           "position")
    if sentence is not None:
        if not isinstance(sentence, str) or len(sentence) > state.limits.max_content_chars:
            raise RequestError(400, f"'sentence' must be a string of at most {state.limits.max_content_chars} "
                                    "characters", "sentence")
        if " ".join(sentence.split()) not in " ".join(message["content"].split()):  # as selected in a browser
            raise RequestError(400, f"'sentence' must be part of message {i}, got {sentence[:80]!r}", "sentence")
    picture, png = await state.illustrations.picture(message["content"], sentence, 256, params["steps"],
                                                     params["guidance"], params["seed"])
    kept = await asyncio.to_thread(state.store.set_illustration, cid, i, message["content"], picture.sentence,
                                   picture.caption, png)
    return {**kept, "b64_json": _b64(png)}


@routes.get("/api/conversations/{cid}/messages/{position}/illustration", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
def get_illustration(cid: str, position: str, request: Request):
    """A message's picture, image/png (the url its conversation gives)."""
    png = request.app.state.store.illustration_png(cid, _position(cid, position))
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})


# -- thumbs up / down (Chapter 15): ratings kept with the conversation, exported as preference pairs


@routes.put("/api/conversations/{cid}/messages/{position}/rating", openapi_extra=RATING_SCHEMA)
async def rate_message(cid: str, position: str, request: Request):
    """Rate the storyteller's reply at `position`: {"rating": 1 (👍) | -1 (👎) | 0 (cleared)}, and "content" to
    rate one of its alternatives (the replies it replaced, as the conversation lists them) or to say which text
    was rated (a reply that is not saved yet is then refused, not mistaken for the one before it). Returns
    {"position", "content", "rating", "rated"}; the conversation shows it from then on."""
    state, body = request.app.state, await read_body(request)
    check_known_fields(body, {"rating", "content"})
    rating, content = body.get("rating"), body.get("content")
    if not _is_int(rating) or rating not in (-1, 0, 1):
        raise RequestError(400, f"'rating' must be 1 (thumbs up), -1 (thumbs down) or 0 (cleared), got {rating!r}",
                           "rating")
    if content is not None and (not isinstance(content, str) or len(content) > state.limits.max_content_chars * 4):
        raise RequestError(400, "'content' must be the text of the reply rated", "content")
    return await asyncio.to_thread(state.store.rate, cid, _position(cid, position), rating, content)


@routes.get("/api/preferences", response_class=PlainTextResponse,
            responses={200: {"content": {"application/x-ndjson": {}}}})
def preferences(request: Request, ratings: bool = False):
    """This server's ratings as JSONL (a download, preferences.jsonl): one preference pair {"messages", "chosen",
    "rejected", "source"} per liked and disliked reply to the same request, as `llm101n prefs export` writes;
    ?ratings=true: every rated reply {"messages", "reply", "rating", "source"} (KTO-style)."""
    from storylib.prefs import preference_pairs, rated_examples, to_jsonl

    rows = request.app.state.store.rated_replies(None if request.user.admin else request.user.name)  # admin: all
    name = "ratings.jsonl" if ratings else "preferences.jsonl"
    return Response(to_jsonl(rated_examples(rows) if ratings else preference_pairs(rows)),
                    media_type="application/x-ndjson",
                    headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"})


# -- the web app itself: three files and an icon, no build step


def _webapp_file(name: str, media: str):
    """A route handler for one file of storylib/webapp."""

    async def serve_file():
        return FileResponse(WEBAPP / name, media_type=media, headers={"Cache-Control": "no-cache"})

    return serve_file


routes.add_api_route("/", _webapp_file("index.html", "text/html"), methods=["GET"], include_in_schema=False)
routes.add_api_route("/app.js", _webapp_file("app.js", "text/javascript"), methods=["GET"], include_in_schema=False)
routes.add_api_route("/style.css", _webapp_file("style.css", "text/css"), methods=["GET"], include_in_schema=False)
routes.add_api_route("/favicon.svg", _webapp_file("favicon.svg", "image/svg+xml"), methods=["GET"],
                     include_in_schema=False)


# ----------------------------------------------------------------------------- the app


# The layers below know nothing of HTTP: create_app maps their exceptions to responses.


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(RequestError(status, message, param, code).body(), status_code=status, headers=headers)


async def on_request_error(request: Request, e: RequestError) -> JSONResponse:
    return _error(e.status, e.message, e.param, e.code, e.headers)


async def on_not_found(request: Request, e: NotFound) -> JSONResponse:  # the store: no such conversation
    return _error(404, e.args[0] if e.args else "not found", code="not_found")


async def on_refused(request: Request, e: Refused) -> JSONResponse:  # the store: a title or messages it refuses
    return _error(400, str(e))


async def on_conflict(request: Request, e: Conflict) -> JSONResponse:  # the store: written meanwhile (If-Match)
    return _error(409, str(e), "If-Match", "conflict", headers={"ETag": etag(e.version)})


async def on_unwritten_exercise(request: Request, e: NotImplementedError) -> JSONResponse:  # a workspace's storylib
    return _error(501, f"this server runs your storylib, which is not finished: {e}", code="not_implemented")


async def on_http_exception(request: Request, e: StarletteHTTPException) -> Response:
    """Starlette's own refusals in OpenAI's shape: no such route (404), a method the route does not take (405, its
    Allow header kept), ..."""
    if e.status_code in (204, 304):  # no body allowed
        return Response(status_code=e.status_code, headers=e.headers)
    where = f"{request.method} {request.scope.get('path', '')[:200]}"  # not request.url: a bad Host breaks it
    if e.status_code == 404 and e.detail == "Not Found":  # the router's own: no route matched
        message, code = f"Invalid URL ({where}): this server has no such route", "unknown_url"
    elif e.status_code == 405:
        allowed = (e.headers or {}).get("Allow", "")
        message = f"Method not allowed ({where}): this route takes {allowed or 'other methods'}"
        code = "method_not_allowed"
    else:
        message, code = str(e.detail), None
    return _error(e.status_code, message, code=code, headers=e.headers)


async def on_validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    """FastAPI's checks of a route's declared parameters (e.g. ?ratings=maybe): a 400 naming the first one."""
    first = (e.errors() or [{}])[0]
    param = ".".join(str(x) for x in first.get("loc", ())[1:]) or None  # loc: ("query" | "path" | ..., name, ...)
    return _error(400, f"'{param}': {first.get('msg', 'invalid')}", param)


async def on_unexpected(request: Request, e: Exception) -> JSONResponse:
    """Any other exception: a bug. A 500 in OpenAI's shape that shows nothing of the server's insides; Starlette
    raises the exception again after it, so uvicorn logs it with its traceback, then closes the connection (so the
    response says Connection: close)."""
    return _error(500, "the server failed on this request (an internal error, logged on the server)",
                  code="internal_error", headers={"Connection": "close"})


EXCEPTION_HANDLERS = {RequestError: on_request_error, NotFound: on_not_found, Refused: on_refused,
                      Conflict: on_conflict, NotImplementedError: on_unwritten_exercise,
                      StarletteHTTPException: on_http_exception, RequestValidationError: on_validation_error,
                      Exception: on_unexpected}


def drain_on_signals(engine: Engine) -> Callable[[], None]:
    """SIGTERM and SIGINT (Ctrl-C) drain the engine (Engine.drain: the replies in flight end with what they have),
    then do what they did before: under `llm101n serve`, uvicorn's graceful shutdown, which lets those last
    responses go out before the connections close. Only in the main thread, where signals arrive (a server in a
    thread is stopped by its owner). Returns what puts the handlers back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(sig: int, frame) -> None:
        engine.drain()
        before = previous[sig]
        if callable(before):
            before(sig, frame)
        elif before == signal.SIG_DFL:  # nobody handled it: what it does by default (the process ends)
            signal.signal(sig, before)
            signal.raise_signal(sig)

    for sig in previous:
        signal.signal(sig, handler)

    def restore() -> None:
        for sig, before in previous.items():
            if signal.getsignal(sig) is handler:
                signal.signal(sig, before)

    return restore


@asynccontextmanager
async def lifespan(app: FastAPI):
    """The engine's thread runs while the app is served (a SIGTERM drains it first: drain_on_signals); the database
    closes after it."""
    app.state.engine.start()
    restore = drain_on_signals(app.state.engine)
    try:
        yield
    finally:
        restore()
        app.state.engine.stop()
        app.state.store.close()


def create_app(model, tokenizer, *, limits: Limits | None = None, max_batch: int = DEFAULT_MAX_BATCH,
               max_queue: int = 64, api_key: str | None = None, db_path: str | os.PathLike | None = None,
               cors_origins: Sequence[str] = (), model_id: str = MODEL_ID, chat_format: str = "template",
               illustrator: str | os.PathLike | None = None, allowed_hosts: Sequence[str] = (),
               users: Users | None = None) -> FastAPI:
    """The FastAPI app. The engine thread starts and stops with the app (its lifespan); the database is opened
    here, so a corrupt one fails now (StoreError), before anything is served. The illustrator (`illustrator`,
    else $LLM101N_ILLUSTRATOR, else models/illustrator) loads at the first picture. Requests may name as their
    Host an IP address, localhost or one of `allowed_hosts`, and come from this server's page or one of
    `cors_origins` (storylib.service.Guard). With `users` (--users) each user's key is theirs and their
    conversations only theirs (owned_conversation). ValueError for a chat_format not in CHAT_FORMATS, limits of
    another block_size than the model's, or both api_key and users."""
    if api_key is not None and users is not None:
        raise ValueError("a server has one API key (api_key) or users with keys of their own (users), not both")
    if chat_format not in CHAT_FORMATS:
        raise ValueError(f"chat_format must be one of {CHAT_FORMATS}, got {chat_format!r}")
    limits = limits or Limits(block_size=model.config.block_size)
    if limits.block_size != model.config.block_size:
        raise ValueError(f"limits.block_size ({limits.block_size}) must be the model's ({model.config.block_size})")
    app = FastAPI(title="LLM101n storyteller", version="1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="OpenAI-compatible API of the course's storyteller (Chapter 16).",
                  exception_handlers=EXCEPTION_HANDLERS)
    s = app.state
    s.engine = Engine(model, tokenizer, max_batch=max_batch, max_queue=max_queue)
    s.store, s.metrics = ConversationStore(db_path or default_db_path()), Metrics()
    s.tokenizer, s.limits, s.model_id, s.chat_format = tokenizer, limits, model_id, chat_format
    s.illustrations, s.users = Illustrations(illustrator), users
    app.include_router(routes, dependencies=[Depends(owned_conversation)])
    if cors_origins:  # off unless asked for: a browser page from another origin cannot call this server
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"], allow_headers=["*"],
                           expose_headers=["ETag"])  # a conversation's version (If-Match)
    # Added last: the outermost layer (Host, Origin, the key, JSON bodies, security headers; storylib.service).
    app.add_middleware(Guard, api_key=api_key, metrics=s.metrics, allowed_hosts=allowed_hosts,
                       cors_origins=cors_origins, users=users)
    return app


# ----------------------------------------------------------------------------- running it


def serve(host: str = "127.0.0.1", port: int = 8080, *, model_dir: str | None = None,
          max_batch: int = DEFAULT_MAX_BATCH, max_queue: int = 64, api_key: str | None = None,
          db_path: str | None = None,
          cors_origins: Sequence[str] = (), threads: int | None = None, log_level: str = "warning",
          chat_format: str = "template", illustrator: str | None = None, allowed_hosts: Sequence[str] = (),
          users_file: str | None = None) -> int:
    """Load the users (--users; their keys hashed now), the model (default: Chapter 14's chat model; where it
    cannot load, e.g. in a workspace whose Chapter 14 is unfinished, the storyteller with chat_format "story",
    saying why), check the database, serve until Ctrl-C. Returns the exit status (2: a bad database or users
    file, or both --users and --api-key)."""
    import uvicorn

    from storylib.checkpoint import default_storyteller, load_model
    from storylib.storyteller import chat_unavailable, default_chat_model

    users = None
    if users_file:
        if api_key:
            print("llm101n serve: --users gives each user a key of their own: leave out --api-key (and "
                  "$LLM101N_API_KEY)", file=sys.stderr)
            return 2
        try:
            users = Users.load(users_file)
        except UsersError as e:
            print(f"llm101n serve: {e}", file=sys.stderr)
            return 2
    if threads:
        torch.set_num_threads(threads)
    which = "the model"
    if model_dir:
        model, tok = load_model(model_dir)
    else:
        try:
            (model, tok), which = default_chat_model(), "the chat model"
        except Exception as e:  # the learner's Chapter 14 unfinished (or no chat model): stories are still served
            print(f"llm101n serve: {chat_unavailable(e)}", file=sys.stderr)
            (model, tok), which, chat_format = default_storyteller(), "the storyteller", "story"
    db = Path(db_path) if db_path else default_db_path()
    try:
        app = create_app(model, tok, max_batch=max_batch, max_queue=max_queue, api_key=api_key, db_path=db,
                         cors_origins=cors_origins, chat_format=chat_format, illustrator=illustrator,
                         allowed_hosts=[host, *allowed_hosts], users=users)
    except StoreError as e:
        print(f"llm101n serve: {e}", file=sys.stderr)
        return 2
    print(f"llm101n serve: {which} ({model.num_params() / 1e6:.1f} M parameters) on http://{host}:{port}/ "
          f"(API: http://{host}:{port}/v1, max batch {max_batch}, queue {max_queue}, conversations in {db}"
          f"{', API key required' if api_key else ''}{f', {len(users.hashes)} users' if users else ''})", flush=True)
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=3)
    return 0


def _host_name(text: str) -> str:
    """--allowed-host's value, checked now (NAME or NAME:PORT), so a typo is an error at start."""
    import argparse

    from storylib.service import split_host

    try:
        split_host(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def add_arguments(p) -> None:
    """The options of `llm101n serve` (and `python -m storylib.serve`)."""
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1: this machine)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--model", dest="model_dir", default=None,
                   help="a model folder (default: the chat model, models/storyteller-rl, else models/storyteller-chat)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help=f"rows decoded together (1: no batching; default {DEFAULT_MAX_BATCH})")
    p.add_argument("--max-queue", type=int, default=64, help="requests that may wait for a row; more get 429")
    p.add_argument("--api-key", default=os.environ.get("LLM101N_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $LLM101N_API_KEY; none: no key)")
    p.add_argument("--users", dest="users_file", default=None,
                   help='a JSON file {"name": {"key": "...", "admin": false}, ...}: each user has an API key and '
                        "conversations of their own; admins may list the users (GET /api/users). Keys written in "
                        "plain text are hashed and the file rewritten. Default: one user, no key or --api-key")
    p.add_argument("--db", dest="db_path", default=None, help=f"conversations database (default {default_db_path()})")
    p.add_argument("--cors-origin", dest="cors_origins", action="append", default=[],
                   help="allow browser pages from this origin, e.g. https://example.org (repeatable; default: none)")
    p.add_argument("--allowed-host", dest="allowed_hosts", action="append", default=[], type=_host_name,
                   help="also answer requests for this host name (NAME or NAME:PORT, repeatable; default: only IP "
                        "addresses, localhost and --host; '*': any), e.g. behind a proxy or a DNS name")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--log-level", default="warning")
    p.add_argument("--illustrator", default=None,
                   help="the illustrator's folder, for pictures (Chapter 17; default: $LLM101N_ILLUSTRATOR, else "
                        "models/illustrator); loaded at the first picture")
    p.add_argument("--chat-format", choices=CHAT_FORMATS, default="template",
                   help="template (default): Chapter 11's chat template, for an instruction-tuned model like the "
                        "chat model (Chapter 14); story: a chat is a story to continue (a model trained on stories "
                        "only, e.g. --model models/storyteller)")


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="llm101n serve", description=__doc__.splitlines()[0])
    add_arguments(p)
    return serve(**vars(p.parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
