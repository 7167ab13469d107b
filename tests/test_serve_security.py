"""A server a class can share: the API key's scheme, CORS on refusals, security headers, a private database file,
and pages on other sites kept out (CSRF: JSON bodies and the Origin; DNS rebinding: the Host).

The servers run uvicorn in a thread of this process (tests/test_serve_api.py's helpers) with a tiny random GPT:
what is tested is the HTTP layer.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import stat
from pathlib import Path

import httpx
import pytest

from storylib import serve as S
from storylib.service import DEFAULT_USER, ConversationStore, User, Users, UsersError
from tests.test_serve_api import client, live, storyteller, tiny, user  # noqa: F401 (fixtures)

CLASS = "http://class.example"  # the one other origin allowed (--cors-origin)
EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def open_server(tiny, tmp_path_factory):  # noqa: F811
    """The default: no API key. Pages on other sites are what it must keep out."""
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3", cors_origins=[CLASS],
                       allowed_hosts=["stories.example", "proxy.example:9000"])
    with live(app) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tiny, tmp_path_factory):  # noqa: F811
    model, tok = tiny
    app = S.create_app(model, tok, db_path=tmp_path_factory.mktemp("db") / "c.sqlite3", api_key="s3cret",
                       cors_origins=[CLASS])
    with live(app) as url:
        yield url


def titles(url: str) -> list[str]:
    return [c["title"] for c in httpx.get(url + "/api/conversations").json()["data"]]


def is_openai_error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, f"expected {status}, got {r.status_code} {r.text[:300]}"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"], err
    return err


# ----------------------------------------------------------------------------- the key, CORS, headers


def test_the_bearer_scheme_is_case_insensitive(keyed_server):
    for scheme in ("Bearer", "bearer", "BEARER", "beArer"):
        r = httpx.get(keyed_server + "/v1/models", headers={"authorization": f"{scheme} s3cret"})
        assert r.status_code == 200, f"{scheme}: {r.status_code}"
    for value in ("Basic s3cret", "bearer wrong", "s3cret", "bearers3cret", "Token s3cret"):
        r = httpx.get(keyed_server + "/v1/models", headers={"authorization": value})
        assert is_openai_error(r, 401)["code"] == "invalid_api_key", value
    r = client(keyed_server, "s3cret").chat.completions.create(model="storyteller", messages=user("hi"), max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length"), "the official client sends 'Bearer'"


def test_a_401_carries_the_cors_headers_for_an_allowed_origin(keyed_server):
    r = httpx.get(keyed_server + "/v1/models", headers={"origin": CLASS})
    is_openai_error(r, 401)
    assert r.headers["access-control-allow-origin"] == CLASS, "the page from --cors-origin can read why"
    r = httpx.post(keyed_server + "/v1/chat/completions", headers={"origin": CLASS}, json={"messages": user("a")})
    assert r.status_code == 401 and r.headers["access-control-allow-origin"] == CLASS
    r = httpx.get(keyed_server + "/v1/models", headers={"origin": EVIL})
    assert r.status_code == 401 and "access-control-allow-origin" not in r.headers
    ok = httpx.get(keyed_server + "/v1/models", headers={"origin": CLASS, "authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == CLASS


@pytest.mark.parametrize("method,path", [("GET", "/"), ("GET", "/app.js"), ("GET", "/v1/models"),
                                         ("GET", "/api/conversations/nothing"), ("POST", "/v1/completions")])
def test_every_response_sends_the_security_headers(keyed_server, method, path):
    for auth in ({}, {"authorization": "Bearer s3cret"}):  # refusals (401) too
        r = httpx.request(method, keyed_server + path, headers=auth, json={"prompt": "a", "max_tokens": 1})
        csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
        assert csp["frame-ancestors"] == ["'none'"] and r.headers["x-frame-options"] == "DENY", (path, auth)
        assert csp["default-src"] == ["'self'"] and "'unsafe-inline'" not in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
        assert len(r.headers.get_list("content-security-policy")) == 1


def test_the_content_security_policy_lets_the_web_app_load(keyed_server):
    """The page's scripts and styles are its own files; its pictures are data: and blob: URLs (app.js)."""
    r = httpx.get(keyed_server + "/")
    csp = {d.split()[0]: d.split()[1:] for d in r.headers["content-security-policy"].split("; ")}
    html, js = r.text, httpx.get(keyed_server + "/app.js").text
    assert "<script>" not in html and " style=" not in html and "javascript:" not in html, "no inline code"
    assert "createObjectURL" in js and "data:image/png;base64," in js, "app.js shows pictures as blob: and data:"
    assert {"'self'", "data:", "blob:"} <= set(csp["img-src"])


# ----------------------------------------------------------------------------- the database file


def test_the_database_file_is_readable_by_its_owner_only(tmp_path):
    old = os.umask(0o022)  # the usual umask: files would be world-readable
    try:
        store = ConversationStore(tmp_path / "new" / "c.sqlite3")
        store.db.execute("PRAGMA journal_mode = WAL")  # then SQLite writes -wal and -shm files beside it
        store.create("a story")
        for name in ("c.sqlite3", "c.sqlite3-wal", "c.sqlite3-shm"):
            mode = stat.S_IMODE((tmp_path / "new" / name).stat().st_mode)
            assert mode == 0o600, f"{name}: {oct(mode)}"
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700, "the folder it made too"
        store.close()
        (tmp_path / "empty.sqlite3").touch(mode=0o644)  # an empty file given: it becomes the database
        ConversationStore(tmp_path / "empty.sqlite3").close()
        assert stat.S_IMODE((tmp_path / "empty.sqlite3").stat().st_mode) == 0o600
    finally:
        os.umask(old)


# ----------------------------------------------------------------------------- CSRF: JSON bodies, the Origin


@pytest.mark.parametrize("kind", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                  None])
def test_json_endpoints_refuse_other_bodies(open_server, kind):
    """A page on another site can POST text/plain or a form without asking first (a 'simple request', even in
    no-cors mode): a body that is not application/json is refused with 415 and nothing is done."""
    before = titles(open_server)
    headers = {"content-type": kind} if kind else {}
    for method, path, body in [("POST", "/api/conversations", b'{"title": "csrf"}'),
                               ("POST", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": "a"}]}'),
                               ("POST", "/v1/completions", b'{"prompt": "a", "max_tokens": 1}')]:
        r = httpx.request(method, open_server + path, content=body, headers=headers)
        assert is_openai_error(r, 415)["code"] == "unsupported_media_type", (kind, path)
    assert titles(open_server) == before, "no conversation was created"
    r = httpx.post(open_server + "/api/conversations", content=b'{"title": "ok"}',
                   headers={"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 201, "JSON with a charset is JSON"


def test_state_changes_from_another_origin_are_refused(open_server):
    mine = open_server  # the web app's own origin: http://127.0.0.1:PORT
    cid = httpx.post(open_server + "/api/conversations", json={"title": "kept"}, headers={"origin": mine}).json()["id"]
    before = titles(open_server)
    for origin in (EVIL, "null", "http://127.0.0.1:1", mine.replace("http:", "https:") + "0"):
        for method, path, body in [("POST", "/api/conversations", {"title": "csrf"}),
                                   ("PUT", f"/api/conversations/{cid}", {"title": "csrf", "messages": []}),
                                   ("DELETE", f"/api/conversations/{cid}", None),
                                   ("POST", "/v1/chat/completions", {"messages": user("a"), "max_tokens": 1})]:
            r = httpx.request(method, open_server + path, json=body, headers={"origin": origin})
            assert is_openai_error(r, 403)["code"] == "origin_not_allowed", (origin, method, path)
    assert titles(open_server) == before, "nothing changed"
    assert httpx.get(open_server + "/api/conversations", headers={"origin": EVIL}).status_code == 200, \
        "reads are left to the browser's same-origin policy (no CORS header: the page cannot read them)"
    r = httpx.post(open_server + "/api/conversations", json={"title": "from class"}, headers={"origin": CLASS})
    assert r.status_code == 201 and r.headers["access-control-allow-origin"] == CLASS, "--cors-origin may"
    assert httpx.delete(open_server + f"/api/conversations/{cid}", headers={"origin": mine}).status_code == 200


def test_requests_for_another_host_name_are_refused(open_server):
    """DNS rebinding: a page at http://evil.example:PORT whose name now points at 127.0.0.1 sends
    'Host: evil.example:PORT'; the server answers only names it serves."""
    port = open_server.rsplit(":", 1)[1]
    for host in (f"evil.example:{port}", "evil.example", f"stories.example.evil.example:{port}",
                 "proxy.example:9001", "proxy.example"):
        r = httpx.get(open_server + "/api/conversations", headers={"host": host})
        assert is_openai_error(r, 421)["code"] == "invalid_host", host
        r = httpx.post(open_server + "/api/conversations", json={"title": "rebound"}, headers={"host": host})
        assert r.status_code == 421, host
    assert "rebound" not in titles(open_server)
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}", "localhost", f"[::1]:{port}",
                 f"192.168.1.20:{port}", f"stories.example:{port}", "stories.example", "proxy.example:9000"):
        r = httpx.get(open_server + "/api/conversations", headers={"host": host})
        assert r.status_code == 200, f"{host}: {r.status_code}"
    r = httpx.post(open_server + "/api/conversations", json={"title": "same"},
                   headers={"host": "stories.example", "origin": "https://stories.example"})
    assert r.status_code == 201, "the page served as https://stories.example (behind a proxy) is this server's"


def test_the_openai_client_and_the_web_apps_requests_pass(open_server):
    """What the official client and the web app (same origin, JSON, its Host) send is answered."""
    r = client(open_server).completions.create(model="storyteller", prompt="Once", max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length")
    same = {"origin": open_server, "content-type": "application/json"}
    r = httpx.post(open_server + "/v1/chat/completions", headers=same, json={"messages": user("a"), "max_tokens": 1})
    assert r.status_code == 200, r.text
    r = httpx.post(open_server + "/api/conversations", headers={"origin": open_server})  # no body: the route says
    assert r.status_code != 415


def test_serve_takes_the_host_and_allowed_hosts(tiny, tmp_path, monkeypatch):  # noqa: F811
    """`llm101n serve --host NAME --allowed-host NAME2`: both names are answered, others are not."""
    import uvicorn

    import storylib.sft

    served = {}
    monkeypatch.setattr(storylib.sft, "load_chat_model", lambda: tiny)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    args = p.parse_args(["--db", str(tmp_path / "c.sqlite3"), "--host", "storybox.lan", "--allowed-host",
                         "stories.example"])
    assert S.serve(**vars(args)) == 0 and served["host"] == "storybox.lan"
    with live(served["app"]) as url:
        for host, status in [("storybox.lan:8080", 200), ("stories.example", 200), ("evil.example", 421)]:
            assert httpx.get(url + "/v1/models", headers={"host": host}).status_code == status, host
    with pytest.raises(SystemExit):
        p.parse_args(["--allowed-host", "stories.example:http"])


# ----------------------------------------------------------------------------- users (--users FILE)

KEYS = {"alice": "alice-key-0001", "bob": "bob-key-00002", "teacher": "teacher-key-03"}


def users_file(folder) -> Path:
    path = folder / "users.json"
    path.write_text(json.dumps({name: {"key": key, "admin": name == "teacher"} for name, key in KEYS.items()}))
    return path


def as_user(name: str) -> dict:
    return {"authorization": f"Bearer {KEYS[name]}"}


@pytest.fixture(scope="module")
def class_server(tiny, tmp_path_factory):  # noqa: F811
    model, tok = tiny
    folder = tmp_path_factory.mktemp("class")
    app = S.create_app(model, tok, db_path=folder / "c.sqlite3", users=Users.load(users_file(folder)))
    with live(app) as url:
        yield url


def test_a_users_file_keeps_its_keys_hashed(tmp_path, capsys):
    path = users_file(tmp_path)
    users = Users.load(path)
    text = path.read_text()
    assert not any(key in text for key in KEYS.values()), "the keys in plain text are gone from the file"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "hashed 3 key(s)" in capsys.readouterr().err
    assert users.check(KEYS["alice"].encode()) == User("alice", admin=False)
    assert users.check(KEYS["teacher"].encode()) == User("teacher", admin=True)
    assert users.check(b"alice-key-0002") is None and users.check(b"") is None
    again = Users.load(path)  # the hashed file reads back as the same users, and is left as it is
    assert again.check(KEYS["bob"].encode()) == User("bob") and path.read_text() == text
    assert again.describe() == [{"name": "alice", "admin": False}, {"name": "bob", "admin": False},
                                {"name": "teacher", "admin": True}]


@pytest.mark.parametrize("content,says", [("[]", "JSON object"), ("{}", "JSON object"), ("{nope", "cannot read"),
                                          ('{"a": {"key": "short"}}', "shorter than 8"),
                                          ('{"a": {"key": 12345678}}', '"key"'),
                                          ('{"a": {"key": "12345678", "admin": "yes"}}', '"admin"'),
                                          ('{"a": {"key": "12345678"}, "b": {"key": "12345678"}}', "same key"),
                                          ('{"a": {"key": "scrypt$x"}}', "not scrypt"),
                                          ('{"a": {"key": "scrypt$1024$8$1$00$00"}, '
                                           '"b": {"key": "scrypt$3$8$1$00$00"}}', "not scrypt")])
def test_a_bad_users_file_is_refused_and_left_as_it_is(tmp_path, content, says):
    path = tmp_path / "users.json"
    path.write_text(content)
    with pytest.raises(UsersError, match=says):
        Users.load(path)
    assert path.read_text() == content


def test_each_user_sees_only_their_own_conversations(class_server):
    url = class_server
    mine = httpx.post(url + "/api/conversations", json={"title": "Alice's dragon"}, headers=as_user("alice")).json()
    cid = mine["id"]
    put = httpx.put(url + f"/api/conversations/{cid}", headers=as_user("alice"), json={
        "title": "Alice's dragon", "messages": [*user("a dragon"), {"role": "assistant", "content": "Once."}]})
    assert put.status_code == 200
    httpx.post(url + "/api/conversations", json={"title": "Bob's frog"}, headers=as_user("bob")).raise_for_status()
    assert titles_of(url, "alice") == ["Alice's dragon"] and titles_of(url, "bob") == ["Bob's frog"]
    assert titles_of(url, "teacher") == [], "an admin lists users, not their conversations"
    for method, path, body in [("GET", f"/api/conversations/{cid}", None),
                               ("PUT", f"/api/conversations/{cid}", {"title": "mine now", "messages": []}),
                               ("DELETE", f"/api/conversations/{cid}", None),
                               ("PUT", f"/api/conversations/{cid}/messages/1/rating", {"rating": 1}),
                               ("GET", f"/api/conversations/{cid}/messages/1/illustration", None),
                               ("POST", f"/api/conversations/{cid}/messages/1/illustration", {"steps": 1})]:
        for who in ("bob", "teacher"):
            r = httpx.request(method, url + path, json=body, headers=as_user(who))
            err = is_openai_error(r, 404)
            assert err["code"] == "not_found" and err["message"] == f"no conversation {cid!r}", \
                f"{who}: {method} {path}: as if there were no such conversation"
    got = httpx.get(url + f"/api/conversations/{cid}", headers=as_user("alice")).json()
    assert got["title"] == "Alice's dragon" and len(got["messages"]) == 2, "untouched by the others"
    rated = httpx.put(url + f"/api/conversations/{cid}/messages/1/rating", json={"rating": 1}, headers=as_user("alice"))
    assert rated.status_code == 200
    prefs = {who: httpx.get(url + "/api/preferences?ratings=true", headers=as_user(who)).text
             for who in ("alice", "bob", "teacher")}
    assert "Once." in prefs["alice"] and prefs["bob"] == "", "a user exports their own ratings"
    assert "Once." in prefs["teacher"], "the admin exports the class's"


def titles_of(url: str, who: str) -> list[str]:
    r = httpx.get(url + "/api/conversations", headers=as_user(who))
    assert r.status_code == 200, r.text
    return [c["title"] for c in r.json()["data"]]


def test_users_need_their_key_and_admins_list_users(class_server):
    url = class_server
    for headers in ({}, {"authorization": "Bearer wrong-key-123"}, {"authorization": "Bearer"}):
        assert is_openai_error(httpx.get(url + "/api/conversations", headers=headers), 401)["code"] == \
            "invalid_api_key"
    assert httpx.get(url + "/").status_code == 200 and httpx.get(url + "/health").status_code == 200, "public"
    r = httpx.get(url + "/api/users", headers=as_user("teacher"))
    assert r.status_code == 200 and r.json()["data"] == [{"name": "alice", "admin": False},
                                                         {"name": "bob", "admin": False},
                                                         {"name": "teacher", "admin": True}]
    assert "key" not in r.text and "scrypt" not in r.text
    assert is_openai_error(httpx.get(url + "/api/users", headers=as_user("alice")), 403)["code"] == \
        "permission_denied"
    r = client(url, KEYS["bob"]).chat.completions.create(model="storyteller", messages=user("hi"), max_tokens=2)
    assert r.choices[0].finish_reason in ("stop", "length"), "the official client with a user's key"


def test_conversations_made_before_users_belong_to_the_default_user(tiny, tmp_path):  # noqa: F811
    """A database from before owners (no owner column) opens with its conversations kept; they are the default
    user's: a server without --users lists them, a user of --users does not see them."""
    db = tmp_path / "c.sqlite3"
    store = ConversationStore(db)
    cid = store.create("Old story")["id"]
    store.put(cid, "Old story", user("a cat"))
    store.db.execute("DROP INDEX conversations_by_owner")
    store.db.execute("ALTER TABLE conversations DROP COLUMN owner")  # as every database was before
    store.close()
    with sqlite3.connect(db) as con:
        assert "owner" not in [r[1] for r in con.execute("PRAGMA table_info(conversations)")]
    store = ConversationStore(db)
    assert store.owner(cid) == DEFAULT_USER and store.get(cid)["messages"] == user("a cat")
    store.close()
    model, tok = tiny
    with live(S.create_app(model, tok, db_path=db)) as url:
        assert titles(url) == ["Old story"]
        assert httpx.get(url + "/api/users").json()["data"] == [{"name": DEFAULT_USER, "admin": True}]
    with live(S.create_app(model, tok, db_path=db, users=Users.load(users_file(tmp_path)))) as url:
        assert titles_of(url, "alice") == []
        assert httpx.get(url + f"/api/conversations/{cid}", headers=as_user("alice")).status_code == 404


def test_serve_takes_a_users_file(tiny, tmp_path, monkeypatch, capsys):  # noqa: F811
    import uvicorn

    import storylib.sft

    served = {}
    monkeypatch.setattr(storylib.sft, "load_chat_model", lambda: tiny)
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app))
    p = argparse.ArgumentParser()
    S.add_arguments(p)
    args = vars(p.parse_args(["--db", str(tmp_path / "c.sqlite3"), "--users", str(users_file(tmp_path))]))
    assert S.serve(**{**args, "api_key": None}) == 0 and "3 users" in capsys.readouterr().out
    with live(served["app"]) as url:
        assert httpx.get(url + "/api/conversations", headers=as_user("bob")).status_code == 200
        assert httpx.get(url + "/api/conversations").status_code == 401
    assert S.serve(**{**args, "api_key": "s3cret"}) == 2 and "--api-key" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("[]")
    assert S.serve(**{**args, "api_key": None, "users_file": str(tmp_path / "bad.json")}) == 2
    assert "bad.json" in capsys.readouterr().err
