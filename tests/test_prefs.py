"""👍 / 👎 on the storyteller's replies (issue #19, Chapter 15's product side): stored with the conversation in the
server's SQLite database (schema 3, migrated in place from 2 and from 1), over real HTTP on 127.0.0.1; kept over
a restart and a kill -9; a regenerated reply kept as an alternative; and exported as preference pairs
(storylib.prefs, `llm101n prefs export`, GET /api/preferences) in the format Chapter 15 trains on.

The server runs a tiny random GPT with the storyteller's tokenizer (no reply is generated here: conversations are
written through the API, as the web app saves them).
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch

from storylib import prefs as P
from storylib import serve as S
from storylib.checkpoint import default_storyteller
from storylib.gpt2 import GPT, GPTConfig
from storylib.service import SCHEMA_VERSION, ConversationStore, prefix_keys, serve_in_thread

ROOT = Path(__file__).resolve().parents[1]
ASK = {"role": "user", "content": "Write a story about a fox named Red who finds a bell. 🦊"}
FIRST = "Red found a bell under a tree. He rang it and the birds sang. The end."
SECOND = "Once upon a time, a fox named Red found a shiny bell.\nHe gave it to his mom. She was happy."


@pytest.fixture(scope="module")
def tiny():
    _, tok = default_storyteller()
    torch.manual_seed(0)
    return GPT(GPTConfig(block_size=64, vocab_size=4160, n_layer=1, n_head=2, n_embd=16)).eval(), tok


def new_conversation(url: str, messages: list[dict], title: str = "Red") -> str:
    cid = httpx.post(url + "/api/conversations", json={"title": title}).json()["id"]
    save(url, cid, messages)
    return cid


def save(url: str, cid: str, messages: list[dict]) -> dict:
    r = httpx.put(url + f"/api/conversations/{cid}", json={"title": "Red", "messages": messages})
    assert r.status_code == 200, r.text
    return r.json()


def rate(url: str, cid: str, position, body) -> httpx.Response:
    return httpx.put(url + f"/api/conversations/{cid}/messages/{position}/rating", json=body)


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


def test_ratings_round_trip_keep_regenerated_replies_and_survive_a_restart(tiny, tmp_path):
    model, tok = tiny
    db = tmp_path / "c.sqlite3"
    with serve_in_thread(S.create_app(model, tok, db_path=db)) as url:
        cid = new_conversation(url, [ASK, {"role": "assistant", "content": FIRST}])
        r = rate(url, cid, 1, {"rating": 1})
        assert r.status_code == 200, r.text
        assert r.json()["rating"] == 1 and r.json()["content"] == FIRST and r.json()["rated"] > 0
        got = httpx.get(url + f"/api/conversations/{cid}").json()["messages"]
        assert got[1]["rating"] == 1 and got[1]["rated"] == r.json()["rated"] and "alternatives" not in got[1]
        assert got[0] == ASK, "a user's message carries no rating"

        # Regenerate: the web app saves the new reply in place of the old one; the old one stays, as an alternative
        saved = save(url, cid, [ASK, {"role": "assistant", "content": SECOND}])
        assert saved["messages"][1]["alternatives"] == [{"content": FIRST, "rating": 1, "rated": r.json()["rated"]}]
        assert saved["messages"][1]["rating"] == 0, "the new reply is not rated yet"
        assert rate(url, cid, 1, {"rating": -1, "content": SECOND}).status_code == 200
        pairs = jsonl(httpx.get(url + "/api/preferences").text)
        assert pairs == [{"messages": [ASK], "chosen": FIRST, "rejected": SECOND, "source": "web"}]
        single = jsonl(httpx.get(url + "/api/preferences", params={"ratings": "true"}).text)
        assert sorted((x["reply"], x["rating"]) for x in single) == sorted([(FIRST, 1), (SECOND, -1)])

        # an alternative is rated through its message, naming it
        assert rate(url, cid, 1, {"rating": 0, "content": FIRST}).json()["rating"] == 0
        assert httpx.get(url + "/api/preferences").text == "", "a cleared rating makes no pair"
        assert rate(url, cid, 1, {"rating": 1, "content": FIRST}).status_code == 200

        # the conversation goes on: the rated reply keeps its rating; a later edit above it does not carry it
        longer = [ASK, {"role": "assistant", "content": SECOND}, {"role": "user", "content": "Make it longer."}]
        assert save(url, cid, longer)["messages"][1]["rating"] == -1

    with serve_in_thread(S.create_app(model, tok, db_path=db)) as url:  # a restart on the same file
        got = httpx.get(url + f"/api/conversations/{cid}").json()["messages"]
        assert got[1]["rating"] == -1 and got[1]["alternatives"][0]["rating"] == 1
        assert len(jsonl(httpx.get(url + "/api/preferences").text)) == 1
        edited = save(url, cid, [{"role": "user", "content": "A story about a cat."},
                                 {"role": "assistant", "content": SECOND}])
        assert "rating" not in edited["messages"][1], "another request: the rating was for the fox story"
        assert len(jsonl(httpx.get(url + "/api/preferences").text)) == 1, "ratings of the old request are kept"
        assert httpx.delete(url + f"/api/conversations/{cid}").status_code == 200
        assert httpx.get(url + "/api/preferences").text == "", "deleting a conversation deletes its ratings"


@pytest.mark.parametrize("position, body, status, param, says", [
    (1, {"rating": 2}, 400, "rating", "'rating' must be"),
    (1, {"rating": "1"}, 400, "rating", "'rating' must be"),
    (1, {"rating": True}, 400, "rating", "'rating' must be"),
    (1, {"rating": 1.0}, 400, "rating", "'rating' must be"),
    (1, {}, 400, "rating", "'rating' must be"),
    (1, {"rating": 1, "content": 5}, 400, "content", "'content'"),
    (0, {"rating": 1}, 400, None, "only the storyteller's"),
    (7, {"rating": 1}, 404, None, "no message 7"),
    ("x", {"rating": 1}, 404, None, "no message"),
    (1, {"rating": 1, "content": "A reply never given."}, 404, None, "no alternative"),
])
def test_bad_ratings_get_a_clear_error_and_change_nothing(tiny, tmp_path, position, body, status, param, says):
    model, tok = tiny
    with serve_in_thread(S.create_app(model, tok, db_path=tmp_path / "c.sqlite3")) as url:
        cid = new_conversation(url, [ASK, {"role": "assistant", "content": FIRST}])
        r = rate(url, cid, position, body)
        assert r.status_code == status, r.text
        error = r.json()["error"]  # OpenAI's error shape, as every other refusal of this server
        assert says in error["message"] and error["param"] == param
        assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
        assert rate(url, "nope", 1, {"rating": 1}).status_code == 404
        assert "rating" not in httpx.get(url + f"/api/conversations/{cid}").json()["messages"][1]


KILLED = """
import os, signal, sys
from storylib.service import ConversationStore
store = ConversationStore(sys.argv[1])
cid = store.create("t")["id"]
store.put(cid, "t", [{"role": "user", "content": "A story."}, {"role": "assistant", "content": "The end."}])
store.rate(cid, 1, -1)
print(cid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close(), no clean exit
"""


def test_a_rating_survives_kill_9(tmp_path):
    db = tmp_path / "c.sqlite3"
    r = subprocess.run([sys.executable, "-c", KILLED, str(db)], capture_output=True, text=True, timeout=60,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == -9, r.stderr
    store = ConversationStore(db)
    assert store.get(r.stdout.strip())["messages"][1]["rating"] == -1
    store.close()


V2_SCHEMA = [  # the conversation database with pictures, before ratings (SCHEMA_VERSION 2), as it was created
    "CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, created REAL NOT NULL, "
    "updated REAL NOT NULL)",
    "CREATE TABLE messages (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
    "position INTEGER NOT NULL, role TEXT NOT NULL, content TEXT NOT NULL, PRIMARY KEY (conversation, position))",
    "CREATE TABLE images (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
    "position INTEGER NOT NULL, sentence TEXT NOT NULL, caption TEXT NOT NULL, png BLOB NOT NULL, "
    "created REAL NOT NULL, PRIMARY KEY (conversation, position))",
    "PRAGMA user_version = 2",
]


def test_a_version_2_database_is_migrated_in_place(tmp_path):
    """A database from before ratings opens with every conversation, message and picture, gains the replies table
    (version 3) in one go, and then keeps ratings; opened again, it is not migrated twice."""
    db = tmp_path / "v2.sqlite3"
    con = sqlite3.connect(db)
    for statement in V2_SCHEMA:
        con.execute(statement)
    old = {f"c{i}": [("user", f"A story about {i + 2} owls."), ("assistant", f"{i + 2} owls sat on a branch.")]
           for i in range(3)}
    for i, (cid, msgs) in enumerate(old.items()):
        con.execute("INSERT INTO conversations VALUES (?, ?, ?, ?)", (cid, f"Owls {i}", i, 10 + i))
        con.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)", [(cid, j, *m) for j, m in enumerate(msgs)])
    png = bytes(range(256)) * 3
    con.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)", ("c1", 1, "3 owls sat.", "owls on a branch", png, 5.0))
    con.commit()
    con.close()

    store = ConversationStore(db)
    assert [c["id"] for c in store.conversations()] == ["c2", "c1", "c0"]
    for i, (cid, msgs) in enumerate(old.items()):
        got = store.get(cid)
        assert (got["title"], got["created"], got["updated"]) == (f"Owls {i}", i, 10 + i)
        assert [(m["role"], m["content"]) for m in got["messages"]] == msgs
    assert store.illustration_png("c1", 1) == png
    assert store.get("c1")["messages"][1]["illustration"]["caption"] == "owls on a branch"
    store.rate("c1", 1, 1)
    store.close()
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 3
    store = ConversationStore(db)  # opened again: no second migration, the rating and the picture still there
    assert store.get("c1")["messages"][1]["rating"] == 1 and store.illustration_png("c1", 1) == png
    store.close()


def pair_keys_and_types(pair: dict) -> None:
    """The pair format of Chapter 15 (common to its data and this export): messages up to the user's request,
    chosen, rejected, source."""
    assert set(pair) <= {"messages", "chosen", "rejected", "source", "scores", "spec"}
    assert {"messages", "chosen", "rejected", "source"} <= set(pair)
    assert isinstance(pair["chosen"], str) and isinstance(pair["rejected"], str) and pair["chosen"] != pair["rejected"]
    assert pair["source"] in ("web", "widget", "web+widget", "widget+web")
    assert pair["messages"] and pair["messages"][-1]["role"] == "user"
    assert all(set(m) == {"role", "content"} and m["role"] in ("system", "user", "assistant")
               and isinstance(m["content"], str) for m in pair["messages"])


def rated_store(path: Path, source: str, plan: list[tuple[list[dict], list[tuple[str, int]]]]) -> None:
    """A store whose conversations each ask `prefix` and get the replies in turn (each regenerating the one
    before), rated as planned (0: left unrated)."""
    store = ConversationStore(path, source=source)
    for prefix, replies in plan:
        cid = store.create("t")["id"]
        for content, rating in replies:
            store.put(cid, "t", [*prefix, {"role": "assistant", "content": content}])
            if rating:
                store.rate(cid, len(prefix), rating)
    store.close()


def test_export_pairs_liked_with_disliked_replies_to_the_same_request(tmp_path, capsys):
    story = [ASK, {"role": "assistant", "content": FIRST}, {"role": "user", "content": "Give it a sad ending."}]
    other = [{"role": "user", "content": "A story about a big, red ball."}]
    web, widget = tmp_path / "web.sqlite3", tmp_path / "widget.sqlite3"
    rated_store(web, "web", [
        ([ASK], [("A", 1), ("B", -1), ("C", 1), ("D", 0)]),   # 2 likes x 1 dislike; D never rated
        (story, [("E", -1), ("F", -1)]),                      # dislikes only: no pair
        (other, [("G", 1)]),                                  # a like alone: no pair
    ])
    rated_store(widget, "widget", [([ASK], [("H", -1)]), (other, [("I", -1), ("J", 0)])])

    pairs = P.preference_pairs(P.read_ratings([web]))
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("A", "B"), ("C", "B")]
    assert all(p["messages"] == [ASK] and p["source"] == "web" for p in pairs)

    out = tmp_path / "prefs.jsonl"
    assert P.main(["export", "--db", str(web), "--db", str(widget), "--out", str(out)]) == 0
    assert "5 pairs from 8 rated replies" in capsys.readouterr().out
    lines = jsonl(out.read_text(encoding="utf-8"))
    got = sorted((p["chosen"], p["rejected"], p["source"]) for p in lines)
    assert got == [("A", "B", "web"), ("A", "H", "web+widget"), ("C", "B", "web"), ("C", "H", "web+widget"),
                   ("G", "I", "web+widget")], "a request asked in both places pairs across them"
    for p in lines:
        pair_keys_and_types(p)
    try:  # Chapter 15's reader of the format, where it exists (storylib.preferences, written alongside)
        from storylib.preferences import load_pairs
    except ImportError:
        load_pairs = None
    if load_pairs is not None:
        assert len(load_pairs(out)) == len(lines)

    assert P.main(["export", "--db", str(web), "--ratings", "--out", str(out)]) == 0
    single = jsonl(out.read_text(encoding="utf-8"))
    assert sorted((x["reply"], x["rating"]) for x in single) == [("A", 1), ("B", -1), ("C", 1), ("E", -1),
                                                               ("F", -1), ("G", 1)]
    assert all(set(x) == {"messages", "reply", "rating", "source"} and x["messages"][-1]["role"] == "user"
               for x in single)
    assert [x["messages"] for x in single if x["reply"] == "E"] == [story]


def test_export_with_no_ratings_is_an_empty_file_not_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "nothing-here"))
    monkeypatch.delenv("LLM101N_FEEDBACK_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    assert P.main(["export"]) == 0
    assert "0 pairs" in capsys.readouterr().out
    assert (tmp_path / "preferences.jsonl").read_text() == ""
    assert not (tmp_path / "nothing-here").exists(), "the export creates no database"
    empty = tmp_path / "empty.sqlite3"
    ConversationStore(empty).close()
    assert P.main(["export", "--db", str(empty), "--out", str(tmp_path / "e.jsonl")]) == 0
    assert "0 pairs" in capsys.readouterr().out and (tmp_path / "e.jsonl").read_text() == ""
    # a database that is not there is an error (exit 2, one line), and nothing is created
    assert P.main(["export", "--db", str(tmp_path / "typo.sqlite3"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no database at" in capsys.readouterr().err
    assert not (tmp_path / "typo.sqlite3").exists() and not (tmp_path / "x.jsonl").exists()


def test_llm101n_prefs_export_on_the_command_line(tmp_path):
    db = tmp_path / "web.sqlite3"
    rated_store(db, "web", [([ASK], [(FIRST, -1), (SECOND, 1)])])
    out = tmp_path / "p.jsonl"
    r = subprocess.run([sys.executable, "-m", "llm101n.cli", "prefs", "export", "--db", str(db), "--out", str(out)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert r.returncode == 0 and "1 pair " in r.stdout, r.stdout + r.stderr
    assert jsonl(out.read_text(encoding="utf-8")) == [
        {"messages": [ASK], "chosen": SECOND, "rejected": FIRST, "source": "web"}]
    r = subprocess.run([sys.executable, "-m", "llm101n.cli", "prefs", "export", "--help"], capture_output=True,
                       text=True, timeout=60, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert "KTO" in r.stdout and "--ratings" in r.stdout


def test_prefix_keys_are_incremental_and_tell_requests_apart():
    msgs = [ASK, {"role": "assistant", "content": FIRST}, {"role": "user", "content": "Again."}]
    keys = prefix_keys(msgs)
    assert len(keys) == 4 and len(set(keys)) == 4
    assert all(prefix_keys(msgs[:i])[-1] == keys[i] for i in range(4))
    swapped = [{"role": "assistant", "content": ASK["content"]}, {"role": "user", "content": FIRST}]
    assert prefix_keys(swapped)[1] != keys[1] and prefix_keys(swapped)[2] != keys[2], "roles count, not just text"
    joined = [{"role": "user", "content": "a\n"}, {"role": "user", "content": "b"}]
    assert prefix_keys(joined)[-1] != prefix_keys([{"role": "user", "content": "a"}, {"role": "user",
                                                                                     "content": "\nb"}])[-1]
