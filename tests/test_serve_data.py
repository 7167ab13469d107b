"""Data that is never lost (issue #20): every conversation has a version, bumped by every write and given as its
ETag; a PUT made from an older version (If-Match) is refused with 409 `conflict` and writes nothing, so two tabs
or two clients appending to one conversation cannot undo each other. A PUT without If-Match writes as before.
A streamed chat request with "conversation": id stores its reply in that conversation as it comes, marked
interrupted until it ends, so a reply cut off (server killed, network dropped) is not lost.

The server is tests/test_serve_api.py's tiny random GPT (the HTTP layer and the store are what is tested).
"""

from __future__ import annotations

import sqlite3
import threading
import time

import httpx
import pytest

from storylib import serve as S
from storylib.service import Conflict, ConversationStore
from tests import test_serve_api as api
from tests.reply_gate import ReplyGate
from tests.test_serve_api import client, live, user

storyteller, tiny = api.storyteller, api.tiny  # the fixtures, shared

ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def server(tiny, tmp_path_factory):
    model, tok = tiny
    with live(S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3")) as url:
        yield url


def conversation_path(url: str, cid: str) -> str:
    return f"{url}/api/conversations/{cid}"


def new_conversation(url: str, title: str = "Two tabs") -> dict:
    r = httpx.post(url + "/api/conversations", json={"title": title})
    assert r.status_code == 201, r.text
    return r.json()


def turn(user_text: str, reply: str) -> list[dict]:
    return [{"role": "user", "content": user_text}, {"role": "assistant", "content": reply}]


def put(url: str, cid: str, messages: list[dict], if_match: str | None = None, title: str = "Two tabs"):
    headers = {"If-Match": if_match} if if_match is not None else {}
    return httpx.put(conversation_path(url, cid), json={"title": title, "messages": messages}, headers=headers)


def openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code}: {r.text[:300]}"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
    return body["error"]


def test_a_put_from_an_older_version_is_a_409_and_loses_nothing(server):
    """Two tabs open one conversation; the first appends a turn, the second appends from the copy it loaded: 409
    conflict, the first tab's turn still there. The second tab reloads, re-applies its turn and both are kept."""
    cid = new_conversation(server)["id"]
    first = put(server, cid, turn("a cat", "Once a cat."))
    assert first.status_code == 200
    tab_a, tab_b = (httpx.get(conversation_path(server, cid)) for _ in range(2))
    assert tab_a.headers["ETag"] == tab_b.headers["ETag"] == f'"{tab_a.json()["version"]}"'
    loaded = tab_a.json()

    a = put(server, cid, loaded["messages"] + turn("a dog", "Then a dog."), tab_a.headers["ETag"])
    assert a.status_code == 200, a.text
    assert a.json()["version"] == loaded["version"] + 1 and a.headers["ETag"] == f'"{a.json()["version"]}"'

    b = put(server, cid, loaded["messages"] + turn("a fox", "Then a fox."), tab_b.headers["ETag"])
    err = openai_error(b, 409)
    assert err["code"] == "conflict" and err["param"] == "If-Match" and "changed elsewhere" in err["message"]
    assert b.headers["ETag"] == a.headers["ETag"], "the 409 names the version to reload"
    stored = httpx.get(conversation_path(server, cid))
    assert stored.json()["messages"] == a.json()["messages"] and stored.headers["ETag"] == a.headers["ETag"]

    again = put(server, cid, stored.json()["messages"] + turn("a fox", "Then a fox."), stored.headers["ETag"])
    assert again.status_code == 200, again.text
    said = [m["content"] for m in httpx.get(conversation_path(server, cid)).json()["messages"] if m["role"] == "user"]
    assert said == ["a cat", "a dog", "a fox"]


def test_without_if_match_a_put_writes_as_before(server):
    """Old clients send no If-Match (or "*"): the PUT replaces the conversation as it always did, and still
    counts as a write (the version goes up)."""
    created = new_conversation(server)
    assert created["version"] == 1
    v = created["version"]
    for headers in ({}, {"If-Match": "*"}):
        r = httpx.put(conversation_path(server, created["id"]), json={"messages": user(f"try {v}")}, headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == v + 1 and r.json()["messages"] == user(f"try {v}")
        v += 1


@pytest.mark.parametrize("if_match", ['W/"1"', "1", '"1", "2"', '"one"', '"99999999999999999999"'])
def test_an_if_match_that_names_no_version_is_a_400_and_writes_nothing(server, if_match):
    created = new_conversation(server)
    err = openai_error(put(server, created["id"], user("lost?"), if_match), 400)
    assert err["param"] == "If-Match" and "If-Match" in err["message"]
    got = httpx.get(conversation_path(server, created["id"])).json()
    assert got["messages"] == [] and got["version"] == created["version"]


def test_every_write_bumps_the_version(server, tmp_path):
    """A rating and a picture change the conversation's JSON: its version (and ETag) goes up, so a PUT made
    before them is refused rather than trusted blindly; the list gives each conversation's version too."""
    cid = new_conversation(server)["id"]
    saved = put(server, cid, turn("a cat", "Once a cat.")).json()
    rated = httpx.put(conversation_path(server, cid) + "/messages/1/rating", json={"rating": 1})
    assert rated.status_code == 200 and rated.json()["version"] == saved["version"] + 1
    got = httpx.get(conversation_path(server, cid))
    assert got.json()["version"] == rated.json()["version"] and got.headers["ETag"] == f'"{got.json()["version"]}"'
    listed = {c["id"]: c for c in httpx.get(server + "/api/conversations").json()["data"]}
    assert listed[cid]["version"] == got.json()["version"]
    assert put(server, cid, turn("a dog", "A dog."), f'"{saved["version"]}"').status_code == 409

    store = ConversationStore(tmp_path / "c.sqlite3")
    cid = store.create("pictures")["id"]
    v = store.put(cid, "pictures", turn("an owl", "An owl sat."))["version"]
    assert store.set_illustration(cid, 1, "An owl sat.", "An owl sat.", "an owl", b"png")["version"] == v + 1
    assert store.get(cid)["version"] == v + 1
    store.close()


def test_concurrent_writes_from_one_version_exactly_one_wins(tmp_path):
    """Eight writers append to the same version at once: one is kept, the seven others get Conflict and write
    nothing (the check and the write are one transaction)."""
    store = ConversationStore(tmp_path / "c.sqlite3")
    cid = store.create("race")["id"]
    start, results = threading.Barrier(8), []

    def write(i: int) -> None:
        start.wait()
        try:
            store.put(cid, "race", user(f"writer {i}"), expected=1)
            results.append(i)
        except Conflict as e:
            assert e.version == 2
            results.append(None)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i in results if i is not None]
    assert len(results) == 8 and len(winners) == 1
    got = store.get(cid)
    assert got["version"] == 2 and got["messages"] == user(f"writer {winners[0]}")
    store.close()


def test_a_file_from_before_versions_opens_at_version_1(tiny, tmp_path):
    """A database without the version column (every database before it) opens with everything kept: each
    conversation is at version 1, and If-Match works on it at once."""
    db = tmp_path / "c.sqlite3"
    store = ConversationStore(db)
    cid = store.create("Old story")["id"]
    store.put(cid, "Old story", turn("a cat", "Once a cat."))
    store.db.execute("ALTER TABLE conversations DROP COLUMN version")  # as every database was before
    store.close()
    with sqlite3.connect(db) as con:
        assert "version" not in [r[1] for r in con.execute("PRAGMA table_info(conversations)")]
    model, tok = tiny
    with live(S.create_app(model, tok, db_path=db)) as url:
        got = httpx.get(conversation_path(url, cid))
        assert got.json()["version"] == 1 and got.headers["ETag"] == '"1"'
        assert got.json()["messages"] == turn("a cat", "Once a cat.")
        assert put(url, cid, turn("a cat", "Once a cat.") + user("more"), '"1"').json()["version"] == 2
        assert openai_error(put(url, cid, user("stale"), '"1"'), 409)["code"] == "conflict"


# ----------------------------------------------------------------------------- a reply kept as it streams


@pytest.fixture(scope="module")
def gated(tiny, tmp_path_factory):
    """A server whose replies cannot end while the gate is closed (tests/reply_gate.py)."""
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3")
    gate = ReplyGate(app.state.engine)
    with live(app) as url:
        yield url, gate
    gate.remove()


def stream_into(url: str, cid: str, messages: list[dict], **extra):
    """A streamed chat request that keeps its reply in conversation `cid` (the official client, extra_body)."""
    return client(url).chat.completions.create(model="storyteller", messages=messages, stream=True, max_tokens=12,
                                               seed=1, extra_body={"conversation": cid, **extra})


def stored_messages(url: str, cid: str) -> list[dict]:
    return httpx.get(conversation_path(url, cid)).json()["messages"]


def test_a_streamed_reply_is_kept_as_it_comes_and_whole_at_its_end(gated):
    """With "conversation": the user's message and the first words are stored as soon as they come, the reply
    marked interrupted (what a killed server leaves); at the end the whole reply, unmarked, before [DONE]."""
    url, gate = gated
    cid = new_conversation(url)["id"]
    asked = user("A story about a cat.")
    with gate.closed():
        stream = stream_into(url, cid, asked)
        words = ""
        for chunk in stream:
            words += chunk.choices[0].delta.content or "" if chunk.choices else ""
            if words:
                break
        kept = stored_messages(url, cid)
        assert kept[0] == asked[0] and kept[1]["role"] == "assistant" and kept[1]["interrupted"] is True
        assert kept[1]["content"] and words.startswith(kept[1]["content"]), "the first words, stored at once"
    words += "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    kept = stored_messages(url, cid)
    assert kept == [asked[0], {"role": "assistant", "content": words}], "whole, and no longer interrupted"


def test_a_reply_cut_off_stays_marked_interrupted(gated):
    """The client leaves mid-reply (the network drops): the words stored as they came stay, marked interrupted; a
    later save that leaves that reply as it is keeps the mark, one that changes it drops it."""
    url, gate = gated
    cid = new_conversation(url)["id"]
    put(url, cid, turn("A fox.", "Red ran."))
    asked = turn("A fox.", "Red ran.") + user("And then?")
    with gate.closed():
        with httpx.stream("POST", url + "/v1/chat/completions", json={
                "model": "storyteller", "messages": asked, "stream": True, "max_tokens": 12, "seed": 1,
                "conversation": cid}) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if '"content":"' in line and '"content":""' not in line:
                    break  # the first words came: leave
        deadline = time.monotonic() + 30
        while (len(kept := stored_messages(url, cid)) < 4 or not kept[-1]["content"]) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert kept[:3] == asked and kept[3]["role"] == "assistant" and kept[3]["content"]
    assert kept[3]["interrupted"] is True
    resaved = put(url, cid, [{"role": m["role"], "content": m["content"]} for m in kept]).json()
    assert resaved["messages"][3]["interrupted"] is True, "the same reply: still cut"
    changed = put(url, cid, asked + [{"role": "assistant", "content": "A new ending."}]).json()
    assert "interrupted" not in changed["messages"][3]


REFUSED_KEEPING = [
    ("not streamed", {"stream": False}, 400, "conversation"),
    ("not an id", {"conversation": ["x"]}, 400, "conversation"),
    ("unknown id", {"conversation": "0" * 32}, 404, None),
    ("other messages", {"messages": user("Something else.")}, 409, "conversation"),
]


@pytest.mark.parametrize("what,change,status,param", REFUSED_KEEPING, ids=[r[0] for r in REFUSED_KEEPING])
def test_keeping_a_reply_is_refused_when_it_cannot_be_kept(server, what, change, status, param):
    """A reply is kept only streamed, in a conversation of the caller's that these messages continue (the stored
    ones, or them and one new user message): else a clear error, nothing written; /v1/completions keeps none."""
    cid = new_conversation(server)["id"]
    before = put(server, cid, turn("A fox.", "Red ran.")).json()
    body = {"model": "storyteller", "messages": turn("A fox.", "Red ran.") + user("More."), "stream": True,
            "max_tokens": 2, "conversation": cid, **change}
    err = openai_error(httpx.post(server + "/v1/chat/completions", json=body), status)
    assert err["param"] == param, err
    assert httpx.get(conversation_path(server, cid)).json()["version"] == before["version"], "nothing written"
    err = openai_error(httpx.post(server + "/v1/completions", json={"prompt": "Once", "conversation": cid}), 400)
    assert err["param"] == "conversation"


def test_a_cut_reply_is_continued_and_kept_whole(tiny, gated):
    """"continue_final_message": true continues the storyteller's last message: its words are the end of the
    prompt (after the chat template's <|assistant|>), the stream gives the new words, and the conversation keeps
    the reply whole (its words so far and the new ones), no longer interrupted. Only a storyteller's message is
    continued, and only the one stored."""
    from storylib.chat_template import render_chat
    from storylib.fastbpe import encode_ordinary

    url, _ = gated
    _, tok = tiny
    cid = new_conversation(url)["id"]
    so_far = turn("A story about a cat.", "Once upon a time, a cat")
    put(url, cid, so_far)
    stream = stream_into(url, cid, so_far, continue_final_message=True, stream_options={"include_usage": True})
    chunks = list(stream)
    more = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    prompt = render_chat(so_far[:1], tok, add_generation_prompt=True)[0] + encode_ordinary(tok, so_far[1]["content"])
    assert chunks[-1].usage.prompt_tokens == len(prompt), "the reply so far is the end of the prompt"
    assert stored_messages(url, cid) == [so_far[0], {"role": "assistant", "content": so_far[1]["content"] + more}]

    body = {"model": "storyteller", "messages": user("Hi."), "stream": True, "continue_final_message": True}
    assert openai_error(httpx.post(url + "/v1/chat/completions", json=body), 400)["param"] == "continue_final_message"
    body = {**body, "messages": so_far, "conversation": cid}  # the stored reply is longer now
    assert openai_error(httpx.post(url + "/v1/chat/completions", json=body), 409)["code"] == "conflict"


def test_a_reply_is_kept_only_in_a_conversation_of_the_callers(tiny, tmp_path):
    """With --users, "conversation" naming another user's conversation is a 404 (as if it did not exist), and
    nothing is written to it; the owner's own request keeps its reply there."""
    from storylib.service import Users
    from tests.test_serve_security import as_user, users_file

    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path / "c.sqlite3", users=Users.load(users_file(tmp_path)))
    with live(app) as url:
        r = httpx.post(url + "/api/conversations", json={"title": "Alice's"}, headers=as_user("alice"))
        cid = r.json()["id"]
        body = {"model": "storyteller", "messages": user("Mine now."), "stream": True, "max_tokens": 2,
                "conversation": cid}
        assert openai_error(httpx.post(url + "/v1/chat/completions", json=body, headers=as_user("bob")), 404)
        got = httpx.get(conversation_path(url, cid), headers=as_user("alice")).json()
        assert got["messages"] == [] and got["version"] == 1, "nothing written"
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers=as_user("alice")) as r:
            assert r.status_code == 200 and "[DONE]" in r.read().decode()
        got = httpx.get(conversation_path(url, cid), headers=as_user("alice")).json()["messages"]
        assert got[0] == user("Mine now.")[0] and got[1]["role"] == "assistant"
