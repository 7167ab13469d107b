"""storylib.data: local loading, the missing-data message, synthetic stories, and the downloader.

The downloader is tested against a small HTTP server on 127.0.0.1 that serves a fixture file and
understands Range requests; nothing here touches the network or ../shared.
"""

from __future__ import annotations

import hashlib
import lzma
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # storylib is imported from the repo folder, not installed (see pyproject.toml)

from storylib import data  # noqa: E402
from storylib.data import EOT_TOKEN, ChecksumError, DownloadError, RemoteFile  # noqa: E402

# -----------------------------------------------------------------------------
# local data


@pytest.fixture
def fixture_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = data.write_fixture(tmp_path / "tinystories", n_train=60, n_valid=15, seed=7)
    monkeypatch.setenv("STORYLIB_DATA", str(d))
    return d


def test_write_fixture_matches_the_shared_layout(fixture_dir: Path):
    assert sorted(p.name for p in fixture_dir.iterdir()) == ["train-000.txt.xz", "valid.txt.xz"]
    text = lzma.open(fixture_dir / "valid.txt.xz", "rt", encoding="utf-8").read()
    assert text.endswith(f"\n{EOT_TOKEN}\n"), "each story, the last included, should be followed by an EOT line"
    assert text.count(f"\n{EOT_TOKEN}\n") == 15


def test_load_stories_reads_the_fixture_via_storylib_data(fixture_dir: Path):
    assert data.data_dir() == fixture_dir
    stories = data.synthetic_stories(75, seed=7)
    assert data.load_stories("train") == stories[:60]
    assert data.load_stories("valid") == stories[60:]
    assert data.load_stories("val") == stories[60:], "'val' should be an alias of 'valid'"
    assert data.load_stories("train", limit=5) == stories[:5]
    assert data.load_stories("train", limit=0) == []
    assert data.load_stories("train", limit=10_000) == stories[:60]


def test_load_stories_roundtrips_unicode(tmp_path: Path):
    d = data.write_fixture(tmp_path, n_train=40, n_valid=1, seed=3, unicode=True)
    assert data.load_stories("train", root=d) == data.synthetic_stories(41, seed=3, unicode=True)[:40]


def test_load_stories_reads_official_plain_text_files(tmp_path: Path):
    # official layout: plain text, story then an EOT line; a blank line or two must not matter
    stories = data.synthetic_stories(8, seed=11)
    (tmp_path / "TinyStories-valid.txt").write_text(
        "".join(f"{s}\n{EOT_TOKEN}\n\n" for s in stories[:-1]) + stories[-1] + "\n", encoding="utf-8")
    assert data.load_stories("valid", root=tmp_path) == stories
    assert data.split_files("valid", tmp_path) == [tmp_path / "TinyStories-valid.txt"]


def test_official_file_wins_over_subset_in_the_same_folder(tmp_path: Path):
    data.write_fixture(tmp_path, n_train=5, n_valid=5, seed=0)
    official = data.synthetic_stories(3, seed=99)
    text = "".join(f"{s}\n{EOT_TOKEN}\n" for s in official)
    (tmp_path / "TinyStories-train.txt").write_text(text, encoding="utf-8")
    assert data.load_stories("train", root=tmp_path) == official


def test_train_shards_are_read_in_order(tmp_path: Path):
    stories = data.synthetic_stories(9, seed=5)
    for i, part in enumerate((stories[:4], stories[4:])):
        with lzma.open(tmp_path / f"train-{i:03d}.txt.xz", "wt", encoding="utf-8") as f:
            f.write("".join(f"{s}\n{EOT_TOKEN}\n" for s in part))
    assert data.load_stories("train", root=tmp_path) == stories
    assert data.load_stories("train", root=tmp_path, limit=6) == stories[:6]


def test_streamed_parse_agrees_with_split_stories():
    text = f"  a\nb {EOT_TOKEN}\n{EOT_TOKEN}{EOT_TOKEN}c{EOT_TOKEN} d\n\ne\n{EOT_TOKEN}\n f "
    assert data.split_stories(text) == ["a\nb", "c", "d\n\ne", "f"]
    assert list(data._iter_stories(text.splitlines(keepends=True))) == data.split_stories(text)


def test_parsed_stories_are_cached_and_copies_are_returned(fixture_dir: Path):
    first = data.load_stories("valid")
    hits = data._parse.cache_info().hits
    first.clear()  # the caller owns its list
    assert data.load_stories("valid") == data.synthetic_stories(75, seed=7)[60:]
    assert data._parse.cache_info().hits == hits + 1, "the second call should come from the cache"


def test_cache_notices_a_changed_file(tmp_path: Path):
    data.write_fixture(tmp_path, n_train=3, n_valid=3, seed=1)
    before = data.load_stories("valid", root=tmp_path)
    data.write_fixture(tmp_path, n_train=3, n_valid=4, seed=2)
    after = data.load_stories("valid", root=tmp_path)
    assert after == data.synthetic_stories(7, seed=2)[3:] and after != before


def test_data_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("STORYLIB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    repo = tmp_path / "course" / "main" / "workspace"  # a learner workspace inside a checkout
    repo.mkdir(parents=True)
    monkeypatch.setattr(data, "REPO", repo)
    monkeypatch.chdir(repo)
    cache = tmp_path / "cache" / "llm101n" / "tinystories"
    assert data.data_dir() == cache, "nothing found: the user cache"

    (tmp_path / "course" / "shared" / "data" / "tinystories").mkdir(parents=True)
    assert data.data_dir() == cache, "an empty shared folder is skipped"

    shared = data.write_fixture(tmp_path / "course" / "shared" / "data" / "tinystories", 2, 2)
    assert data.data_dir() == shared, "shared/data/tinystories two levels above a workspace should be found"

    monkeypatch.setenv("STORYLIB_DATA", str(tmp_path / "mine"))
    assert data.data_dir() == tmp_path / "mine", "$STORYLIB_DATA comes first"


@pytest.mark.parametrize("split, command", [("valid", "llm101n data download\n"), ("train", "--full")])
def test_missing_data_says_how_to_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, split, command):
    monkeypatch.setenv("STORYLIB_DATA", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError) as err:
        data.load_stories(split)
    msg = str(err.value)
    assert "llm101n data download" in msg and command in msg, f"the error should give the command:\n{msg}"
    assert str(tmp_path / "nowhere") in msg, "the error should say where it looked"


def test_unknown_split_is_a_clear_error(fixture_dir: Path):
    with pytest.raises(ValueError, match="'train' or 'valid'"):
        data.load_stories("dev")


# -----------------------------------------------------------------------------
# synthetic stories


def test_synthetic_stories_are_deterministic_and_seeded():
    a = data.synthetic_stories(50, seed=123)
    assert a == data.synthetic_stories(50, seed=123), "same (n, seed) must give the same stories"
    assert a[:20] == data.synthetic_stories(20, seed=123), "a shorter run should be a prefix of a longer one"
    assert a != data.synthetic_stories(50, seed=124), "another seed should give other stories"


def test_synthetic_stories_are_stable_across_processes():
    # a fresh interpreter has another hash seed: set/dict order must not leak into the output
    code = "from storylib.data import synthetic_stories as s; print(ascii(s(30, seed=5, unicode=True)))"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": str(h), "PYTHONPATH": str(ROOT)}).stdout.strip()
            for h in (1, 2)}
    assert outs == {ascii(data.synthetic_stories(30, seed=5, unicode=True))}


def test_synthetic_stories_look_like_stories():
    stories = data.synthetic_stories(400, seed=0)
    assert len(set(stories)) > 390, "stories should vary"
    assert all(s == s.strip() and s and EOT_TOKEN not in s for s in stories)
    assert all(s.isascii() for s in stories), "unicode=False should give plain ASCII"
    assert all(1 <= s.count("\n") + 1 <= 3 for s in stories), "1 to 3 paragraphs"
    assert any("\n" in s for s in stories) and any("\n" not in s for s in stories)
    words = [len(s.split()) for s in stories]
    assert min(words) >= 8 and max(words) <= 120, (min(words), max(words))
    assert sum('"' in s for s in stories) > 40, "some stories should have dialogue"
    assert any("cried" in s or "gone" in s or "never saw" in s for s in stories), "some endings are sad"
    assert any("best friends" in s or "smile" in s for s in stories), "some endings are happy"
    assert len({s.split()[0] for s in stories}) >= 3, "openings should vary"


def test_synthetic_unicode_stories_have_non_ascii():
    stories = data.synthetic_stories(300, seed=1, unicode=True)
    text = "".join(stories)
    for ch, what in (("“", "curly quotes"), ("’", "curly apostrophes"), ("—", "em dashes")):
        assert ch in text, f"unicode=True should add {what}"
    assert re.search(r"[éëøöÉ]", text), "unicode=True should add accented names"
    assert any(ord(c) > 0xFFFF for c in text), "unicode=True should add the odd emoji (outside the BMP)"
    assert '"' not in text and "'" not in text, "unicode=True should use curly quotes only"
    assert text.encode("utf-8").decode("utf-8") == text


# -----------------------------------------------------------------------------
# downloader, against a local HTTP server

PAYLOAD = "".join(f"{s}\n{EOT_TOKEN}\n" for s in data.synthetic_stories(300, seed=42, unicode=True)).encode()
SHA = hashlib.sha256(PAYLOAD).hexdigest()
FIXTURE = RemoteFile("TinyStories-valid.txt", len(PAYLOAD), SHA)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        srv = self.server
        srv.seen.append((self.path, self.headers.get("Range")))
        if self.path != "/files/" + FIXTURE.name:
            self.send_error(404)
            return
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "") if srv.honor_range else None
        start = int(m.group(1)) if m else 0
        body = srv.payload[start:]
        self.send_response(206 if m else 200)
        if m:
            self.send_header("Content-Range", f"bytes {start}-{len(srv.payload) - 1}/{len(srv.payload)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.cut_after is not None:  # promise the whole body, send part of it, hang up
            body, srv.cut_after = body[: srv.cut_after], None
            self.close_connection = True
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.payload, self.honor_range = PAYLOAD, True
        self.cut_after: int | None = None  # cut the next response after this many bytes
        self.seen: list[tuple[str, str | None]] = []  # (path, Range header) of every request

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/files/"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[_Server]:
    for var in ("no_proxy", "NO_PROXY"):  # an http_proxy in the environment must not catch 127.0.0.1
        monkeypatch.setenv(var, "127.0.0.1")
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _get(dest: Path, server: _Server, rf: RemoteFile = FIXTURE, **kw) -> list[Path]:
    return data.download_tinystories(dest, [rf], base_url=server.url, progress=False, **kw)


def test_download_verifies_and_renames(tmp_path: Path, server: _Server):
    (path,) = _get(tmp_path, server)
    assert path == tmp_path / FIXTURE.name and path.read_bytes() == PAYLOAD
    assert (tmp_path / (FIXTURE.name + ".sha256")).read_text().split()[0] == SHA
    assert not (tmp_path / (FIXTURE.name + ".part")).exists()
    assert server.seen == [("/files/" + FIXTURE.name, None)]
    assert data.load_stories("valid", root=tmp_path) == data.synthetic_stories(300, seed=42, unicode=True)


def test_cached_file_is_not_downloaded_again(tmp_path: Path, server: _Server):
    _get(tmp_path, server)
    n = len(server.seen)
    assert _get(tmp_path, server) == [tmp_path / FIXTURE.name]
    assert len(server.seen) == n, "a file already in place should need no HTTP request"


def test_cut_connection_fails_and_the_next_call_resumes(tmp_path: Path, server: _Server):
    # Documented behaviour: with retries=0 the call fails with a DownloadError and keeps the .part;
    # the next call sends `Range: bytes=N-` and completes it.
    half = len(PAYLOAD) // 2
    server.cut_after = half
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        _get(tmp_path, server, retries=0)
    part = tmp_path / (FIXTURE.name + ".part")
    assert part.stat().st_size == half, "the bytes received should be kept in the .part file"
    assert not (tmp_path / FIXTURE.name).exists(), "no file under the final name until it is verified"

    (path,) = _get(tmp_path, server, retries=0)
    assert server.seen[-1] == ("/files/" + FIXTURE.name, f"bytes={half}-"), server.seen
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA
    assert not part.exists()


def test_cut_connection_is_resumed_within_one_call_when_retries_allow(tmp_path: Path, server: _Server):
    server.cut_after = 1000
    (path,) = _get(tmp_path, server, retries=1)
    assert [r for _, r in server.seen] == [None, "bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_server_that_ignores_range_restarts_cleanly(tmp_path: Path, server: _Server):
    server.honor_range = False
    (tmp_path / (FIXTURE.name + ".part")).write_bytes(b"stale bytes from some other attempt")
    (path,) = _get(tmp_path, server)
    assert server.seen[-1][1] is not None, "it should still have asked for a range"
    assert path.read_bytes() == PAYLOAD, "a 200 answer to a Range request should overwrite the .part"


def test_checksum_mismatch_is_a_clear_error_and_leaves_nothing(tmp_path: Path, server: _Server):
    wrong = RemoteFile(FIXTURE.name, FIXTURE.size, "0" * 64)
    with pytest.raises(ChecksumError) as err:
        _get(tmp_path, server, rf=wrong)
    msg = str(err.value)
    assert "0" * 64 in msg and SHA in msg, f"the error should show expected and actual sha256:\n{msg}"
    assert list(tmp_path.iterdir()) == [], "a bad download must leave no file behind, under any name"


def test_size_mismatch_is_a_checksum_error(tmp_path: Path, server: _Server):
    server.payload = PAYLOAD + b"extra"
    with pytest.raises(ChecksumError, match="size"):
        _get(tmp_path, server)
    assert list(tmp_path.iterdir()) == []


def test_missing_remote_file_is_a_download_error(tmp_path: Path, server: _Server):
    with pytest.raises(DownloadError, match="404"):
        _get(tmp_path, server, rf=RemoteFile("nope.txt"))
    assert len(server.seen) == 1, "a 404 should not be retried"


def test_unknown_hash_is_trusted_on_first_use_then_enforced(tmp_path: Path, server: _Server):
    tofu = RemoteFile(FIXTURE.name)  # no size, no sha256
    (path,) = _get(tmp_path, server, rf=tofu)
    assert (tmp_path / (FIXTURE.name + ".sha256")).read_text().split()[0] == SHA, "first download is recorded"
    path.unlink()
    server.payload = PAYLOAD.replace(b"Once", b"Twice", 1)  # the file changed upstream
    with pytest.raises(ChecksumError, match=SHA):
        _get(tmp_path, server, rf=tofu)
    assert not path.exists()


def test_main_download_and_info(tmp_path: Path, server: _Server, monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.setattr(data, "FILES", {"valid": FIXTURE})
    monkeypatch.setattr(data, "HF_URL", server.url)
    monkeypatch.setenv("STORYLIB_DATA", str(tmp_path))
    assert data.main(["download", "--quiet"]) == 0
    assert (tmp_path / FIXTURE.name).read_bytes() == PAYLOAD
    assert data.main(["info"]) == 1, "info should report the missing train split"
    out = capsys.readouterr().out
    assert "300 stories" in out and "llm101n data download --full" in out, out
