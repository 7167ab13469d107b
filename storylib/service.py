"""Chapter 16's server around the lesson: conversations in SQLite, metrics, the API key, and ways to start a server.

storylib/serve.py is the chapter (the engine and the OpenAI routes); this module is what a real service also
needs and the book only describes:

    ConversationStore   the web app's conversations in one SQLite file, with the pictures of their stories (Chapter
                        17) and the thumbs up / down on their replies (Chapter 15's preferences): every change one
                        transaction; a corrupt file is refused (StoreError), never replaced; a file of an older
                        schema is migrated in place. Bad input: Refused (a ValueError); an unknown id: NotFound (a
                        KeyError). The chat widget keeps its ratings in a store of its own (default_feedback_path)
    Metrics             counters for /metrics, in Prometheus' text format
    Users               `llm101n serve --users FILE`: users and their API keys (kept hashed, scrypt); each owns
                        their conversations
    Guard               ASGI middleware: the API key on every path but PUBLIC_PATHS; Host, Origin and JSON checks
                        (DNS rebinding, CSRF); security headers (CSP, nosniff, no framing); the response counters
    serve_in_thread     an app on a free port in a background thread (tests, notebooks)
    start_server_subprocess   `python -m storylib.serve` in a child process (bench/serve_load.py)
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------- conversations in SQLite


class StoreError(Exception):
    """The conversation database cannot be used (corrupt, not SQLite, or a newer schema); the file is left as is."""


class NotFound(KeyError):
    """No conversation with this id. Its own class, so the app answers 404 for this and not for any KeyError."""


class Refused(ValueError):
    """A title or messages the store will not keep (the app answers 400; any other ValueError stays a 500)."""


class Conflict(Exception):
    """A write that names a version of the conversation older than the stored one (another tab or client wrote
    meanwhile): nothing was written. `version` is the stored one (the app answers 409 with it as the ETag)."""

    def __init__(self, message: str, version: int):
        super().__init__(message)
        self.version = version


DEFAULT_USER = "default"  # who owns the conversations of a server without --users (and those made before it)
SCHEMA_VERSION = 3  # 1: conversations and messages; 2: + images (Chapter 17's pictures); 3: + replies (ratings)
SQLITE_MAGIC = b"SQLite format 3\x00"
ROLES = ("system", "user", "assistant")


def default_db_path() -> Path:
    """~/.local/share/llm101n/conversations.sqlite3 (or under $XDG_DATA_HOME)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "llm101n" / "conversations.sqlite3"


def default_feedback_path() -> Path:
    """Where the chat widget (StoryChat) keeps the conversations you rated: $LLM101N_FEEDBACK_DB, else
    widget-feedback.sqlite3 beside the server's database (default_db_path's folder)."""
    return Path(os.environ.get("LLM101N_FEEDBACK_DB") or default_db_path().with_name("widget-feedback.sqlite3"))


RATINGS = (-1, 0, 1)  # 👎, none (cleared), 👍


def prefix_keys(messages: Sequence[dict]) -> list[str]:
    """keys[i]: the sha256 (hex) of messages[:i], for i in 0..len(messages): the replies to one request (the same
    messages before them) share a key, in any conversation. Incremental: linear in the conversation's length."""
    h, keys = hashlib.sha256(), []
    for m in messages:
        keys.append(h.hexdigest())
        h.update(json.dumps([m["role"], m["content"]], ensure_ascii=False).encode() + b"\n")
    return [*keys, h.hexdigest()]


class ConversationStore:
    """The web app's conversations: one SQLite file, every change one transaction (all of it or nothing).

    An existing file is checked before anything is written to it: not SQLite, failing PRAGMA quick_check, or
    another schema -> StoreError naming the file; it is never overwritten or "repaired". A file of the previous
    schema (version 1, before pictures) is migrated in one transaction: the images table is added, every
    conversation and message kept. The methods raise KeyError for a conversation that does not exist and
    ValueError for a title or messages they refuse. A new file is created readable by its owner only (0600).
    Every conversation has an owner (a user's name, DEFAULT_USER without --users): conversations() and
    rated_replies() take one to filter by, create() one to give, owner() tells. Every conversation has a version
    (1 when created, +1 at every write: put, rate, set_illustration): put(expected=N) writes only if it is still
    N (else Conflict, nothing written), so two tabs appending to one conversation cannot undo each other.

    A storyteller message may have one picture (images: the sentence drawn, its caption, the PNG). A picture
    belongs to the message at its position: it is kept while put() leaves that message as it was and dropped
    when the message changes or goes (an edit, a regenerated reply), and deleted with its conversation.

    Ratings (replies; Chapter 15): a storyteller reply is rated 👍 (+1), 👎 (-1) or cleared (0), with the time
    (rate()). A rating belongs to the reply and the messages before it (its request, prefix_keys), not to a
    position: it comes back on that message as long as both are unchanged. A regenerated reply is not lost: when
    put() replaces the last reply of a request by another one, the old one is kept as an alternative of the new
    one (get() lists them; rate() rates them too), so two replies to one request, one liked and one not, make a
    preference pair (storylib.prefs). Deleting a conversation deletes its ratings. `source` ("web", "widget")
    is written with every reply kept, for the export.
    """

    def __init__(self, path: str | os.PathLike, max_messages: int = 500, max_content_chars: int = 20_000,
                 max_title_chars: int = 200, source: str = "web"):
        self.path, self.source = Path(path), source
        self.max_messages, self.max_content_chars = max_messages, max_content_chars
        self.max_title_chars = max_title_chars
        self.lock = threading.Lock()
        fresh = not self.path.exists() or self.path.stat().st_size == 0
        if fresh:  # only its owner may read it (SQLite gives its -wal, -shm and -journal files the same mode)
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            with suppress(OSError):  # an empty file that was there already (not ours: left as it is)
                os.chmod(self.path, 0o600)
        else:
            with open(self.path, "rb") as f:
                if f.read(16) != SQLITE_MAGIC:
                    raise StoreError(f"{self.path} is not an SQLite database; it was left untouched "
                                     "(move it away or pass another --db)")
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            if fresh:
                self._create_schema()
            else:
                self._check_existing()
            self._add_owners()
            self._add_versions()
            self.db.execute("PRAGMA foreign_keys = ON")
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path} cannot be read as the conversation database ({e}); "
                             "it was left untouched") from None

    def _add_owners(self) -> None:
        """Give conversations an owner (--users) if the file has none yet: the conversations already there belong
        to DEFAULT_USER, the one user of a server without --users. A column, not a schema version: a server
        that knows no owners still reads the file (and sees every conversation)."""
        if "owner" in [r[1] for r in self.db.execute("PRAGMA table_info(conversations)")]:
            return
        with self._transaction() as db:
            db.execute(f"ALTER TABLE conversations ADD COLUMN owner TEXT NOT NULL DEFAULT '{DEFAULT_USER}'")
            db.execute("CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations (owner, updated)")

    def _add_versions(self) -> None:
        """Give conversations a version if the file has none yet (every conversation there starts at 1): a
        counter bumped by every write to the conversation, so that a write made from an older copy is refused
        (put(expected=...)); and `interrupted`, the position of a reply whose stream did not end (NULL: none).
        Columns, as the owner: a server that knows neither still reads the file."""
        columns = [r[1] for r in self.db.execute("PRAGMA table_info(conversations)")]
        if "version" in columns and "interrupted" in columns:
            return
        with self._transaction() as db:
            if "version" not in columns:
                db.execute("ALTER TABLE conversations ADD COLUMN version INTEGER NOT NULL DEFAULT 1")
            if "interrupted" not in columns:  # the position of a reply whose stream was cut (put(interrupted=))
                db.execute("ALTER TABLE conversations ADD COLUMN interrupted INTEGER")

    def _bump(self, db: sqlite3.Connection, cid: str, expected: int | None = None) -> int:
        """The conversation changes: its version goes up by one (in the caller's transaction; returns the new one).
        NotFound for an unknown id; Conflict when `expected` is given and is not the stored version."""
        row = db.execute("SELECT version FROM conversations WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise NotFound(f"no conversation {cid!r}")
        if expected is not None and expected != row[0]:
            raise Conflict(f"conversation {cid!r} was changed elsewhere (it is at version {row[0]}, this write was "
                           f"made from version {expected}); nothing was written: load it again and redo the change",
                           row[0])
        db.execute("UPDATE conversations SET version = version + 1 WHERE id = ?", (cid,))
        return row[0] + 1

    def _check_existing(self) -> None:
        problems = [r[0] for r in self.db.execute("PRAGMA quick_check").fetchall()]
        if problems != ["ok"]:
            raise StoreError(f"{self.path} is corrupt ({'; '.join(problems[:3])}); it was left untouched")
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version in (1, 2):
            self._migrate(version)
        elif version != SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}, this server knows {SCHEMA_VERSION}; "
                             "it was left untouched")

    def _create_schema(self) -> None:
        with self._transaction() as db:
            db.execute("CREATE TABLE conversations (id TEXT PRIMARY KEY, title TEXT NOT NULL, "
                       "created REAL NOT NULL, updated REAL NOT NULL)")
            db.execute("CREATE TABLE messages (conversation TEXT NOT NULL REFERENCES conversations(id) "
                       "ON DELETE CASCADE, position INTEGER NOT NULL, role TEXT NOT NULL, "
                       "content TEXT NOT NULL, PRIMARY KEY (conversation, position))")
            self._create_images(db)
            self._create_replies(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @staticmethod
    def _create_images(db: sqlite3.Connection) -> None:
        # Not a foreign key to messages: put() rewrites a conversation's messages, and a picture outlives that
        # when its message is unchanged (put() drops the others itself).
        db.execute("CREATE TABLE images (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
                   "position INTEGER NOT NULL, sentence TEXT NOT NULL, caption TEXT NOT NULL, png BLOB NOT NULL, "
                   "created REAL NOT NULL, PRIMARY KEY (conversation, position))")

    @staticmethod
    def _create_replies(db: sqlite3.Connection) -> None:
        # Keyed by the reply and its request (prefix_keys), not by position: ratings and the alternatives of a
        # regenerated reply outlive put(), which rewrites the messages.
        db.execute("CREATE TABLE replies (conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE, "
                   "prefix_key TEXT NOT NULL, prefix TEXT NOT NULL, content TEXT NOT NULL, "
                   "rating INTEGER NOT NULL DEFAULT 0 CHECK (rating IN (-1, 0, 1)), rated REAL, "
                   "created REAL NOT NULL, source TEXT NOT NULL, PRIMARY KEY (conversation, prefix_key, content))")

    def _migrate(self, version: int) -> None:
        """Version 1 or 2 -> 3 in one transaction: add what is missing (1 -> 2: images; 2 -> 3: replies);
        conversations, messages and pictures stay as they are."""
        with self._transaction() as db:
            if version < 2:
                self._create_images(db)
            self._create_replies(db)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises (autocommit mode: isolation_level=None)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _check_title(self, title: str) -> None:
        if not isinstance(title, str) or len(title) > self.max_title_chars:
            raise Refused(f"'title' must be a string of at most {self.max_title_chars} characters")

    def _check_messages(self, messages: list[dict]) -> None:
        if not isinstance(messages, list):
            raise Refused("'messages' must be a list")
        if len(messages) > self.max_messages:
            raise Refused(f"a conversation holds at most {self.max_messages} messages")
        for i, m in enumerate(messages):
            if (not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str)
                    or len(m["content"]) > self.max_content_chars):
                raise Refused(f"messages[{i}] must be {{'role': 'system'|'user'|'assistant', 'content': "
                                 f"string of at most {self.max_content_chars} characters}}")

    def close(self) -> None:
        self.db.close()

    def conversations(self, owner: str | None = None) -> list[dict]:
        """Every conversation of `owner` (None: of everyone), without its messages, the latest changed first."""
        with self.lock:
            rows = self.db.execute("SELECT id, title, created, updated, version FROM conversations WHERE ? IS NULL "
                                   "OR owner = ? ORDER BY updated DESC", (owner, owner))
            return [dict(zip(("id", "title", "created", "updated", "version"), r, strict=True)) for r in rows]

    def get(self, cid: str) -> dict:
        """One conversation with its messages; KeyError if there is none with this id."""
        with self.lock:
            row = self.db.execute("SELECT id, title, created, updated, version, interrupted FROM conversations "
                                  "WHERE id = ?", (cid,)).fetchone()
            if row is None:
                raise NotFound(f"no conversation {cid!r}")
            msgs = self.db.execute("SELECT role, content FROM messages WHERE conversation = ? ORDER BY position",
                                   (cid,)).fetchall()
            pictures = {r[0]: r[1:] for r in self.db.execute(
                "SELECT position, sentence, caption, created FROM images WHERE conversation = ?", (cid,))}
            replies: dict[str, list[tuple]] = {}
            for key, content, rating, rated in self.db.execute(
                    "SELECT prefix_key, content, rating, rated FROM replies WHERE conversation = ? ORDER BY created",
                    (cid,)):
                replies.setdefault(key, []).append((content, rating, rated))
            out = dict(zip(("id", "title", "created", "updated", "version"), row[:5], strict=True))
            out["messages"] = [{"role": a, "content": b} for a, b in msgs]
            if row[5] is not None and row[5] < len(msgs) and msgs[row[5]][0] == "assistant":
                out["messages"][row[5]]["interrupted"] = True  # its stream was cut: the words that came
            for i, (sentence, caption, created) in pictures.items():
                if i < len(out["messages"]):
                    out["messages"][i]["illustration"] = {"sentence": sentence, "caption": caption,
                                                          "created": created, "url": illustration_path(cid, i)}
            keys = prefix_keys(out["messages"]) if replies else []
            for i, m in enumerate(out["messages"] if replies else []):
                if m["role"] == "assistant" and keys[i] in replies:
                    _add_ratings(m, replies[keys[i]])
            return out

    def create(self, title: str, owner: str = DEFAULT_USER) -> dict:
        """A new, empty conversation of `owner` (ValueError for a bad title)."""
        self._check_title(title)
        cid, now = uuid.uuid4().hex, time.time()
        with self.lock, self._transaction() as db:
            db.execute("INSERT INTO conversations (id, title, created, updated, owner) VALUES (?, ?, ?, ?, ?)",
                       (cid, title, now, now, owner))
        return self.get(cid)

    def owner(self, cid: str) -> str:
        """Whose conversation this is; NotFound for an unknown id."""
        with self.lock:
            row = self.db.execute("SELECT owner FROM conversations WHERE id = ?", (cid,)).fetchone()
        if row is None:
            raise NotFound(f"no conversation {cid!r}")
        return row[0]

    def put(self, cid: str, title: str, messages: list[dict], expected: int | None = None,
            interrupted: bool | None = None) -> dict:
        """Replace a conversation's title and messages, in one transaction, and bump its version. ValueError for
        a bad title or message (nothing is written), KeyError for an unknown id. `expected`: the version the
        change was made from (If-Match); another stored version -> Conflict, nothing written. None: no check.
        `interrupted`: True marks the last message (a storyteller's reply) as cut before its end (get() says
        "interrupted": true on it), False clears the mark, None keeps it while that message is unchanged."""
        self._check_title(title)
        self._check_messages(messages)
        with self.lock, self._transaction() as db:
            self._bump(db, cid, expected)
            was = db.execute("SELECT interrupted FROM conversations WHERE id = ?", (cid,)).fetchone()[0]
            before = db.execute("SELECT position, role, content FROM messages WHERE conversation = ? "
                                "ORDER BY position", (cid,)).fetchall()
            kept = [i for i, role, content in before
                    if i < len(messages) and (messages[i]["role"], messages[i]["content"]) == (role, content)]
            cut = (len(messages) - 1 if interrupted and messages and messages[-1]["role"] == "assistant" else
                   was if interrupted is None and was in kept else None)
            db.execute("UPDATE conversations SET title = ?, updated = ?, interrupted = ? WHERE id = ?",
                       (title, time.time(), cut, cid))
            self._keep_replaced_reply(db, cid, [{"role": r, "content": c} for _, r, c in before], messages, was)
            db.execute(f"DELETE FROM images WHERE conversation = ? AND position NOT IN ({','.join('?' * len(kept))})",
                       (cid, *kept))
            db.execute("DELETE FROM messages WHERE conversation = ?", (cid,))
            db.executemany("INSERT INTO messages VALUES (?, ?, ?, ?)",
                           [(cid, i, m["role"], m["content"]) for i, m in enumerate(messages)])
        return self.get(cid)

    def _keep_replaced_reply(self, db: sqlite3.Connection, cid: str, before: list[dict],
                             after: list[dict], cut: int | None = None) -> None:
        """The reply that `after` replaces or drops while keeping every message before it (a regenerated reply)
        stays in replies, unrated unless it was rated. Only the first difference can be such a reply: an edit
        further up changes the request of every reply after it. Not the reply at `cut` (interrupted: words of
        a reply still coming, or cut off, not a reply of its own), nor one that the new reply goes on from (a reply
        continued)."""
        d = next((i for i, (a, b) in enumerate(zip(before, after, strict=False))
                  if (a["role"], a["content"]) != (b["role"], b["content"])), min(len(before), len(after)))
        if d < len(before) and before[d]["role"] == "assistant" and d != cut:
            grown = d < len(after) and after[d]["role"] == "assistant" and after[d]["content"].startswith(
                before[d]["content"])
            if not grown:
                self._insert_reply(db, cid, before[:d], before[d]["content"])

    def _insert_reply(self, db: sqlite3.Connection, cid: str, prefix: list[dict], content: str) -> None:
        prefix = [{"role": m["role"], "content": m["content"]} for m in prefix]
        db.execute("INSERT OR IGNORE INTO replies (conversation, prefix_key, prefix, content, created, source) "
                   "VALUES (?, ?, ?, ?, ?, ?)",
                   (cid, prefix_keys(prefix)[-1], json.dumps(prefix, ensure_ascii=False), content, time.time(),
                    self.source))

    def rate(self, cid: str, position: int, rating: int, content: str | None = None) -> dict:
        """Rate the storyteller's reply at `position`: 1 (👍), -1 (👎) or 0 (cleared), now. `content`: the reply
        rated, when it is one of the message's alternatives (get() lists them); None or the message's own text:
        the message itself. Refused for a rating not in RATINGS or a message that is not the storyteller's;
        NotFound for an unknown conversation, position or alternative. Returns {"position", "content", "rating",
        "rated", "version"} (the conversation's new version)."""
        if not isinstance(rating, int) or isinstance(rating, bool) or rating not in RATINGS:
            raise Refused(f"'rating' must be 1 (thumbs up), -1 (thumbs down) or 0 (cleared), got {rating!r}")
        if content is not None and not isinstance(content, str):
            raise Refused(f"'content' must be the text of the reply rated, got {type(content).__name__}")
        now = time.time()
        with self.lock, self._transaction() as db:
            msgs = [{"role": r, "content": c} for r, c in db.execute(
                "SELECT role, content FROM messages WHERE conversation = ? AND position <= ? ORDER BY position",
                (cid, position))]
            if len(msgs) <= position:
                self._must_exist(cid)
                raise NotFound(f"conversation {cid!r} has no message {position}")
            if msgs[position]["role"] != "assistant":
                raise Refused(f"message {position} is the {msgs[position]['role']}'s: only the storyteller's replies "
                              "are rated")
            prefix, own = msgs[:position], msgs[position]["content"]
            if content is None or content == own:
                content = own
                self._insert_reply(db, cid, prefix, own)
            n = db.execute("UPDATE replies SET rating = ?, rated = ? WHERE conversation = ? AND prefix_key = ? "
                           "AND content = ?", (rating, now, cid, prefix_keys(prefix)[-1], content)).rowcount
            if n == 0:
                raise NotFound(f"message {position} of conversation {cid!r} has no alternative reading "
                               f"{content[:60]!r} (it may not be saved yet)")
            version = self._bump(db, cid)
        return {"position": position, "content": content, "rating": rating, "rated": now, "version": version}

    def rated_replies(self, owner: str | None = None) -> list[dict]:
        """Every rated reply (rating 1 or -1) of every conversation (of `owner`'s only, unless None), oldest
        rating first: {"conversation", "prefix_key", "messages" (the messages before it), "content", "rating",
        "rated", "source"}."""
        with self.lock:
            rows = self.db.execute("SELECT conversation, prefix_key, prefix, content, rating, rated, source "
                                   "FROM replies WHERE rating != 0 AND (? IS NULL OR conversation IN "
                                   "(SELECT id FROM conversations WHERE owner = ?)) ORDER BY rated",
                                   (owner, owner)).fetchall()
        return [{"conversation": c, "prefix_key": k, "messages": json.loads(p), "content": t, "rating": r,
                 "rated": when, "source": s} for c, k, p, t, r, when, s in rows]

    def message(self, cid: str, position: int) -> dict:
        """One message {"role", "content"}; NotFound for an unknown conversation or position."""
        with self.lock:
            row = self.db.execute("SELECT role, content FROM messages WHERE conversation = ? AND position = ?",
                                  (cid, position)).fetchone()
            if row is None:
                self._must_exist(cid)
                raise NotFound(f"conversation {cid!r} has no message {position}")
            return {"role": row[0], "content": row[1]}

    def set_illustration(self, cid: str, position: int, content: str, sentence: str, caption: str,
                         png: bytes) -> dict:
        """Keep the picture of the storyteller's message at `position` (replacing one it had), if that message
        still reads `content` (what was drawn from): Refused otherwise (it changed meanwhile; nothing is written),
        NotFound if it is gone. Returns the picture's description, as get() gives it, and the conversation's new
        "version"."""
        now = time.time()
        with self.lock, self._transaction() as db:
            row = db.execute("SELECT role, content FROM messages WHERE conversation = ? AND position = ?",
                             (cid, position)).fetchone()
            if row is None:
                self._must_exist(cid)
                raise NotFound(f"conversation {cid!r} has no message {position}")
            if row != ("assistant", content):
                raise Refused(f"message {position} changed while it was being illustrated; try again")
            db.execute("INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?)",
                       (cid, position, sentence, caption, png, now))
            version = self._bump(db, cid)
        return {"sentence": sentence, "caption": caption, "created": now, "url": illustration_path(cid, position),
                "version": version}

    def illustration_png(self, cid: str, position: int) -> bytes:
        """The PNG of a message's picture; NotFound if it has none."""
        with self.lock:
            row = self.db.execute("SELECT png FROM images WHERE conversation = ? AND position = ?",
                                  (cid, position)).fetchone()
        if row is None:
            raise NotFound(f"message {position} of conversation {cid!r} has no picture")
        return row[0]

    def _must_exist(self, cid: str) -> None:
        if self.db.execute("SELECT 1 FROM conversations WHERE id = ?", (cid,)).fetchone() is None:
            raise NotFound(f"no conversation {cid!r}")

    def delete(self, cid: str) -> None:
        """Delete a conversation, its messages and pictures (ON DELETE CASCADE); KeyError for an unknown id."""
        with self.lock, self._transaction() as db:
            if db.execute("DELETE FROM conversations WHERE id = ?", (cid,)).rowcount == 0:
                raise NotFound(f"no conversation {cid!r}")


def _add_ratings(message: dict, replies: list[tuple]) -> None:
    """get()'s view of a storyteller message that was ever rated or regenerated: "rating" (0: none or cleared) and
    "rated" (when, else None), and "alternatives" [{"content", "rating", "rated"}] (other replies kept for the same
    request, oldest first) if any; a message without either stays {"role", "content"}. `replies`: (content,
    rating, rated) of every reply kept for its request."""
    message["rating"], message["rated"] = 0, None
    alternatives = []
    for content, rating, rated in replies:
        if content == message["content"]:
            message["rating"], message["rated"] = rating, rated
        else:
            alternatives.append({"content": content, "rating": rating, "rated": rated})
    if alternatives:
        message["alternatives"] = alternatives


def illustration_path(cid: str, position: int) -> str:
    """Where the server gives a message's picture (image/png)."""
    return f"/api/conversations/{cid}/messages/{position}/illustration"


# ----------------------------------------------------------------------------- metrics


class Metrics:
    """Counters for /metrics, in Prometheus' text format."""

    def __init__(self):
        self.lock = threading.Lock()
        self.responses: dict[tuple[str, int], int] = {}

    def count(self, path: str, status: int) -> None:
        with self.lock:
            self.responses[(path, status)] = self.responses.get((path, status), 0) + 1

    def render(self, stats: dict, load: dict) -> str:
        """The page: responses by path and status, then the engine's counters (Engine.stats) and load
        (Engine.load())."""
        lines = ["# HELP llm101n_http_responses_total HTTP responses by path and status",
                 "# TYPE llm101n_http_responses_total counter"]
        with self.lock:
            for (path, status), n in sorted(self.responses.items()):
                lines.append(f'llm101n_http_responses_total{{path="{path}",status="{status}"}} {n}')
        for name, kind, value, what in [
            ("requests_total", "counter", stats["requests"], "generations admitted into the batch"),
            ("requests_rejected_total", "counter", stats["rejected"], "generations refused: queue full (429)"),
            ("requests_cancelled_total", "counter", stats["cancelled"], "generations stopped: the client left"),
            ("prompt_tokens_total", "counter", stats["prompt_tokens"], "prompt tokens prefilled"),
            ("generated_tokens_total", "counter", stats["tokens"], "tokens generated"),
            ("decode_steps_total", "counter", stats["steps"], "batched decode steps"),
            ("decode_rows_total", "counter", stats["rows_decoded"], "rows over all decode steps (/ steps = batch)"),
            ("time_to_first_token_seconds_sum", "counter", stats["ttft_sum"], "queue + prefill time, summed"),
            ("time_to_first_token_seconds_count", "counter", stats["ttft_count"], "requests with a first token"),
            ("active_rows", "gauge", load["active"], "requests in the batch now"),
            ("queue_length", "gauge", load["waiting"], "requests waiting for a row"),
            ("max_batch", "gauge", load["max_batch"], "rows of the batch cache"),
        ]:
            lines += [f"# HELP llm101n_{name} {what}", f"# TYPE llm101n_{name} {kind}", f"llm101n_{name} {value}"]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- users (--users FILE)


@dataclass(frozen=True)
class User:
    """Who sends a request: a name (the owner of the conversations it makes) and whether it may list users."""

    name: str
    admin: bool = False


SINGLE_USER = User(DEFAULT_USER, admin=True)  # a server without --users: one user, everything is theirs
NOBODY = User("", admin=False)  # a public path (the web app's files, /health) on a server with --users


class UsersError(ValueError):
    """A users file that cannot be used (the message names the file and what is wrong)."""


SCRYPT = {"n": 2**14, "r": 8, "p": 1}  # ~50 ms and 16 MiB a hash: slow to guess a key from the file
SCRYPT_PREFIX = "scrypt$"


def hash_key(key: str, salt: bytes, n: int = SCRYPT["n"], r: int = SCRYPT["r"], p: int = SCRYPT["p"]) -> str:
    """'scrypt$n$r$p$salt$hash' (hex) of an API key, as a users file keeps it."""
    digest = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"{SCRYPT_PREFIX}{n}${r}${p}${salt.hex()}${digest.hex()}"


def _split_hash(stored: str) -> tuple[tuple[int, int, int, bytes], bytes]:
    """((n, r, p, salt), hash) of a hash_key string; ValueError if it is not one."""
    n, r, p, salt, digest = stored[len(SCRYPT_PREFIX):].split("$")
    params = (int(n), int(r), int(p), bytes.fromhex(salt))
    if not (2 <= params[0] <= 2**20 and params[0] & (params[0] - 1) == 0 and 1 <= params[1] <= 32
            and 1 <= params[2] <= 16 and params[3] and digest):
        raise ValueError(f"scrypt parameters out of range: {stored[:40]}")
    return params, bytes.fromhex(digest)


class Users:
    """The users of `llm101n serve --users FILE`: a JSON object {name: {"key": KEY, "admin": false}}.

    Keys are kept hashed (hashlib.scrypt, hash_key): a key written in plain text is hashed when the file is
    loaded and the file rewritten (readable by its owner only), so the teacher writes the keys once, hands them
    out, and the file no longer shows them. One salt per file, so a key is checked with one scrypt whoever it
    belongs to; a key seen before is known from a cache (its SHA-256, in memory only). Two users with one key are
    refused. Users' names own their conversations (ConversationStore); admins may list the users."""

    def __init__(self, hashes: dict[str, str], admins: Sequence[str] = ()):
        self.hashes, self.admins = dict(hashes), set(admins)
        self.by_hash: dict[tuple, dict[bytes, str]] = {}  # (n, r, p, salt) -> {hash: name}
        for name, stored in self.hashes.items():
            params, digest = _split_hash(stored)
            self.by_hash.setdefault(params, {})[digest] = name
        self.seen: dict[bytes, User | None] = {}  # sha256(key) -> who (None: nobody), at most 4096
        self.hashing = threading.Lock()  # one scrypt at a time: wrong keys sent in a loop take one core, not all

    @classmethod
    def load(cls, path: str | os.PathLike) -> Users:
        """Read a users file, hashing (and rewriting) keys found in plain text. UsersError for what is wrong."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UsersError(f"{path}: cannot read the users file ({e})") from None
        if not isinstance(raw, dict) or not raw:
            raise UsersError(f'{path}: must be a JSON object {{"name": {{"key": "...", "admin": false}}, ...}}')
        hashes, admins, plain, salt = {}, [], 0, None
        for name, entry in raw.items():
            if not name or len(name) > 64 or not name.isprintable():
                raise UsersError(f"{path}: a user's name must be 1 to 64 printable characters, got {name!r}")
            if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or \
                    not isinstance(entry.get("admin", False), bool):
                raise UsersError(f'{path}: user {name!r} must be {{"key": "...", "admin": true|false}}')
            key = entry["key"]
            if key.startswith(SCRYPT_PREFIX):
                try:
                    salt = salt or _split_hash(key)[0][3]
                    _split_hash(key)
                except ValueError:
                    raise UsersError(f"{path}: user {name!r} has a key hash that is not scrypt$n$r$p$salt$hash") \
                        from None
            elif len(key) < 8:
                raise UsersError(f"{path}: user {name!r}'s key is shorter than 8 characters")
            hashes[name], plain = key, plain + (not key.startswith(SCRYPT_PREFIX))
            if entry.get("admin", False):
                admins.append(name)
        salt = salt or secrets.token_bytes(16)
        hashes = {n: k if k.startswith(SCRYPT_PREFIX) else hash_key(k, salt) for n, k in hashes.items()}
        if len(set(hashes.values())) < len(hashes):
            raise UsersError(f"{path}: two users have the same key")
        if plain:  # the keys in plain text go: the file keeps their hashes, readable by its owner only
            data = {n: {"key": hashes[n], "admin": n in admins} for n in hashes}
            tmp = path.with_name(path.name + ".tmp")
            with suppress(FileNotFoundError):
                tmp.unlink()  # made anew, so it has our mode
            with os.fdopen(os.open(tmp, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "w") as f:
                json.dump(data, f, indent=2)
            os.replace(tmp, path)
            print(f"llm101n serve: hashed {plain} key(s) in {path}", file=sys.stderr)
        return cls(hashes, admins)

    def describe(self) -> list[dict]:
        """[{"name", "admin"}] of every user, by name (never their keys)."""
        return [{"name": n, "admin": n in self.admins} for n in sorted(self.hashes)]

    def check(self, key: bytes) -> User | None:
        """The user whose key this is, or None: one scrypt per salt (a file has one), compared in constant time."""
        found = None
        for (n, r, p, salt), names in self.by_hash.items():
            with self.hashing:
                digest = hashlib.scrypt(key, salt=salt, n=n, r=r, p=p, dklen=32)
            for stored, name in names.items():
                if secrets.compare_digest(digest, stored):
                    found = User(name, admin=name in self.admins)
        return found

    async def who(self, key: bytes) -> User | None:
        """check(), remembered: the scrypt runs in a worker thread, and once per key."""
        import asyncio

        seen = hashlib.sha256(key).digest()
        if seen not in self.seen:
            if len(self.seen) >= 4096:
                self.seen.clear()
            self.seen[seen] = await asyncio.to_thread(self.check, key)
        return self.seen[seen]


# ----------------------------------------------------------------------------- the API key, Host, Origin, headers


PUBLIC_PATHS = {"/health", "/", "/index.html", "/app.js", "/style.css", "/favicon.svg"}  # no key needed
COUNTED_PATHS = {"/v1/chat/completions", "/v1/completions", "/v1/images/generations", "/v1/models", "/health",
                 "/metrics", "/api/conversations", "/api/preferences"}
STATE_CHANGING = {"POST", "PUT", "PATCH", "DELETE"}  # a page on another origin may not send these
WITH_BODY = {"POST", "PUT", "PATCH"}  # their body must be JSON (no form or text/plain "simple request")
LOOPBACK_NAMES = {"localhost"}
# The web app loads only its own files; pictures come as data: or blob: URLs. No page may frame it.
CONTENT_SECURITY_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
                           "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = [(b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
                    (b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


def split_host(netloc: str, default_port: int | None = None) -> tuple[str, int | None]:
    """'Example.org:8080' -> ('example.org', 8080); '[::1]:80' -> ('::1', 80); no port -> default_port.
    ValueError for a port that is not a number from 0 to 65535."""
    netloc = netloc.strip().lower()
    if netloc.startswith("["):  # an IPv6 literal
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.partition(":")
    if port and not (port.isdigit() and int(port) <= 65535):
        raise ValueError(f"{netloc!r}: the port must be a number from 0 to 65535")
    return host.rstrip("."), int(port) if port else default_port


def _is_ip(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


class Guard:
    """ASGI middleware, the outermost layer: what every request passes before the app, and the response counters
    of /metrics. In order, each refusal in OpenAI's error shape:

    - Host (DNS rebinding): a Host that is a name must be localhost, the --host served or one of `allowed_hosts`
      ("name" any port, "name:port" that port; "*": any); an IP address always passes (a page cannot rebind
      one). Else 421.
    - Origin (CSRF): POST, PUT, PATCH and DELETE sent with an Origin header must come from the served origin
      (the Origin's host:port is the Host) or one of `cors_origins` ("*": any). Else 403.
    - the API key, when set, or with `users` (--users) a user's key: `Authorization: Bearer KEY` (the scheme in
      any case) on every path but PUBLIC_PATHS. Else 401. scope["user"] (request.user) is who sent it: the user,
      or SINGLE_USER without `users`.
    - Content-Type: a POST, PUT or PATCH with a body (or a Content-Type) must send application/json, so a page on
      another origin cannot send one as a form or text/plain "simple request". Else 415.

    Preflight requests (OPTIONS) pass to CORS, Host aside. Every response, refusals included, gets
    SECURITY_HEADERS; refusals of a request from one of `cors_origins` carry Access-Control-Allow-Origin, so the
    page can read why."""

    def __init__(self, app, api_key: str | None, metrics: Metrics, *, allowed_hosts: Sequence[str] = (),
                 cors_origins: Sequence[str] = (), users: Users | None = None):
        self.app, self.metrics, self.api_key = app, metrics, api_key.encode() if api_key is not None else None
        self.users = users
        self.any_host = "*" in allowed_hosts
        self.hosts = [split_host(h) for h in allowed_hosts if h and h != "*" and not _is_ip(h)]  # IPs pass anyway
        self.cors_origins = {o.rstrip("/").lower() for o in cors_origins}

    @staticmethod
    def label(path: str) -> str:  # a bounded set of labels: ids are not labels
        if path.startswith("/api/conversations/"):
            return "/api/conversations/{id}"
        return path if path in COUNTED_PATHS or path in PUBLIC_PATHS else "other"

    def host_allowed(self, host_header: str | None) -> bool:
        """No Host (HTTP/1.0, not a browser), an IP address, localhost, or a name allowed (any port unless given)."""
        if host_header is None or self.any_host:
            return True
        try:
            host, port = split_host(host_header)
        except ValueError:
            return False
        if _is_ip(host) or host in LOOPBACK_NAMES:
            return True
        return any(host == h and (p is None or port == p) for h, p in self.hosts)

    def origin_allowed(self, origin: str, host_header: str | None) -> bool:
        """The served origin (the Origin's host and port are the Host's) or one of cors_origins."""
        origin = origin.strip().rstrip("/").lower()
        if origin in self.cors_origins or "*" in self.cors_origins:
            return True
        scheme, sep, netloc = origin.partition("://")
        if not sep or host_header is None or scheme not in ("http", "https"):
            return False  # "null" (a sandboxed frame, a file://), or no Host to compare with
        default = 443 if scheme == "https" else 80
        try:
            return split_host(netloc, default) == split_host(host_header, default)
        except ValueError:
            return False

    async def user(self, scope, headers: dict) -> User | None:
        """Who sends the request: with --users, the user whose key it bears; else DEFAULT_USER (with --api-key:
        if it bears the key). None: not allowed (401). PUBLIC_PATHS and preflights need no key (NOBODY)."""
        if scope["path"] in PUBLIC_PATHS or scope["method"] == "OPTIONS":
            return NOBODY if self.users is not None else SINGLE_USER
        scheme, _, given = headers.get(b"authorization", b"").strip().partition(b" ")
        given, bearer = given.strip(), scheme.lower() == b"bearer"
        if self.users is not None:
            who = await self.users.who(given) if bearer and given else None
            return who
        if self.api_key is None:
            return SINGLE_USER
        # constant time: no timing hints at the key (compare_digest runs even when the scheme is wrong)
        return SINGLE_USER if secrets.compare_digest(given, self.api_key) & bearer else None

    @staticmethod
    def json_body(scope, headers: dict) -> bool:
        """False for a POST, PUT or PATCH with a body or a Content-Type other than application/json."""
        if scope["method"] not in WITH_BODY:
            return True
        kind = headers.get(b"content-type")
        has_body = headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers
        if kind is None:
            return not has_body
        return kind.split(b";")[0].strip().lower() == b"application/json"

    async def refusal(self, scope, headers: dict) -> tuple[int, str, str, str, list] | None:
        """(status, message, type, code, extra headers) of the first check the request fails, or None; sets
        scope["user"] (request.user) to who sends it."""
        host = headers[b"host"].decode("latin-1") if b"host" in headers else None
        if not self.host_allowed(host):
            return (421, f"this server does not answer for the host {host!r}; if you reach it by this name, start "
                    "it with --allowed-host NAME", "invalid_request_error", "invalid_host", [])
        origin = headers[b"origin"].decode("latin-1") if b"origin" in headers else None
        if origin is not None and scope["method"] in STATE_CHANGING and not self.origin_allowed(origin, host):
            return (403, f"requests from the page at {origin!r} are not allowed: only this server's own page, or "
                    "an origin given with --cors-origin", "permission_error", "origin_not_allowed", [])
        scope["user"] = await self.user(scope, headers)
        if scope["user"] is None:
            return (401, "missing or wrong API key: send 'Authorization: Bearer <key>'", "authentication_error",
                    "invalid_api_key", [(b"www-authenticate", b"Bearer")])
        if not self.json_body(scope, headers):
            return (415, "the body must be JSON, sent with 'Content-Type: application/json'",
                    "invalid_request_error", "unsupported_media_type", [])
        return None

    def cors_headers(self, headers: dict) -> list:
        origin = headers.get(b"origin", b"").decode("latin-1").strip().rstrip("/").lower()
        if origin and (origin in self.cors_origins or "*" in self.cors_origins):
            return [(b"access-control-allow-origin", headers[b"origin"].strip()), (b"vary", b"Origin")]
        return []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, status = scope["path"], 500

        async def send_secured(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                names = {k.lower() for k, _ in message.get("headers", [])}
                message = {**message, "headers": [*message.get("headers", []),
                                                  *(h for h in SECURITY_HEADERS if h[0] not in names)]}
            await send(message)

        try:
            headers = dict(scope["headers"])
            refused = await self.refusal(scope, headers)
            if refused is not None:
                code, message, kind, error_code, extra = refused
                await _refuse(send_secured, code, message, kind, error_code, extra + self.cors_headers(headers))
                return
            await self.app(scope, receive, send_secured)
        finally:
            self.metrics.count(self.label(path), status)


async def _refuse(send, status: int, message: str, kind: str, code: str, headers: Sequence = ()) -> None:
    """A refusal with an OpenAI-style error body, as an ASGI response."""
    body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": code}}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------------- starting a server


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn on a free port in a background thread (for tests and notebooks); yields the base
    URL and stops the server (and with it the engine) on exit, gracefully, as SIGTERM stops `llm101n serve`: the
    engine drains first (Engine.drain: a reply in flight ends with what it has, a stream with its final chunk and
    [DONE]; a waiting request gets a 503), then uvicorn lets those last responses go out. RuntimeError if it does
    not start in 30 s."""
    import socket

    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the server did not start")
        time.sleep(0.05)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        engine = getattr(getattr(app, "state", None), "engine", None)  # storylib.serve's app: drain it first
        if engine is not None and hasattr(engine, "drain"):
            engine.drain()
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def start_server_subprocess(port: int = 8080, host: str = "127.0.0.1", *, root: str | os.PathLike | None = None,
                            args: Sequence[str] = (), env: dict | None = None,
                            wait_s: float = 60) -> tuple[subprocess.Popen, str]:
    """`python -m storylib.serve` in a child process with storylib from `root` (default: this repo); waits until
    /health answers. Returns (process, base URL); RuntimeError if the server exits or does not answer in wait_s.
    Used by bench/serve_load.py (one server process per batch size)."""
    import urllib.request

    root = Path(root) if root else Path(__file__).resolve().parent.parent
    env = dict(os.environ if env is None else env, PYTHONPATH=str(root))
    proc = subprocess.Popen([sys.executable, "-m", "storylib.serve", "--host", host, "--port", str(port), *args],
                            env=env, cwd=root)
    url = f"http://{host}:{port}"
    deadline = time.time() + wait_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            return proc, url
        except OSError:
            time.sleep(0.3)
    proc.terminate()
    raise RuntimeError(f"the server did not answer on {url}/health within {wait_s:.0f} s")
