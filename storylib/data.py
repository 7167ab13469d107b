"""TinyStories: find it on disk, download it for real, or make synthetic stories for tests.

TinyStories (Eldan & Li 2023, arXiv:2305.07759) is a dataset of short, simple English stories,
licensed CDLA-Sharing-1.0. The text format is the same everywhere in this module: UTF-8, each story
followed by a line that holds exactly `<|endoftext|>`, paragraphs inside a story separated by "\\n".

Three ways to get stories:

- `load_stories(split)` reads a local copy. Where from: see `data_dir()`. It understands the course's
  offline subset (`train-000.txt.xz`, `valid.txt.xz`) and the official files (`TinyStories-train.txt`,
  `TinyStories-valid.txt`, plain text). Parsed stories are cached per process.
- `download_tinystories()` fetches the official files from Hugging Face: streamed, resumable,
  size- and sha256-checked, and moved into place only once verified (`llm101n data download`).
- `synthetic_stories(n, seed)` makes story-like text from a tiny grammar, deterministic and offline.
  Tests and CI use it so that they never need the real data (`write_fixture` puts it on disk).

Command line: `llm101n data download [--full] [--v2] [--dest DIR]`, `llm101n data info`.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.client
import itertools
import lzma
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = [
    "EOT_TOKEN", "HF_URL", "FILES", "RemoteFile", "DownloadError", "ChecksumError",
    "data_dir", "cache_dir", "course_file", "load_stories", "split_stories", "split_files",
    "download_tinystories", "synthetic_stories", "HARD_STRINGS", "write_fixture", "main",
]

EOT_TOKEN = "<|endoftext|>"  # the line that ends every story (the tokenizers' special of the same name)
REPO = Path(__file__).resolve().parent.parent  # the folder that holds storylib/ (repo or learner workspace)
SHARED = Path("shared") / "data" / "tinystories"  # the course's offline subset, in a folder above the repo

# Files that hold each split, best first. The official names come first: a folder someone downloaded
# the full data into should not be read as the small subset. Train may be sharded (train-000, -001, ...).
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("TinyStories-train.txt", "train-[0-9][0-9][0-9].txt.xz", "TinyStoriesV2-GPT4-train.txt"),
    "valid": ("TinyStories-valid.txt", "valid.txt.xz", "TinyStoriesV2-GPT4-valid.txt"),
}
ALIASES = {"val": "valid", "validation": "valid", "test": "valid"}


# -----------------------------------------------------------------------------
# where the data lives


def cache_dir() -> Path:
    """The per-user download folder: $XDG_CACHE_HOME (default ~/.cache) / llm101n/tinystories."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "llm101n" / "tinystories"


def _has_data(d: Path) -> bool:
    return d.is_dir() and any(any(d.glob(p)) for pats in SPLITS.values() for p in pats)


def _shared_candidates() -> list[Path]:
    """`<dir>/shared/data/tinystories` for the repo, the working directory, and every folder above them.

    A learner workspace lives at <repo>/workspace, so `../shared` of the workspace is not enough.
    """
    out: list[Path] = []
    for start in (REPO, Path.cwd().resolve()):
        for d in (start, *start.parents):
            if (cand := d / SHARED) not in out:
                out.append(cand)
    return out


def course_file(relpath: str | os.PathLike) -> Path:
    """A file the course ships (a trained tokenizer or model), found from the reference repo or a workspace.

    storylib/ sits in the repo or in a learner workspace (<repo>/workspace), so look in the folder that holds
    storylib/ and in every folder above it. Raises FileNotFoundError saying where it looked.
    """
    tried = [d / relpath for d in (REPO, *REPO.parents)]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"{relpath} not found; looked in {tried[0]} and the folders above it")


def data_dir() -> Path:
    """The folder `load_stories()` reads from, the first of:

    1. $STORYLIB_DATA, if set (returned even when it does not exist: the user said so);
    2. the course's offline subset, `shared/data/tinystories` next to the repo, the working
       directory or any folder above them, if it holds data;
    3. the user cache, `cache_dir()`, where `llm101n data download` puts the official files.
    """
    if os.environ.get("STORYLIB_DATA"):
        return Path(os.environ["STORYLIB_DATA"]).expanduser()
    for cand in _shared_candidates():
        if _has_data(cand):
            return cand
    return cache_dir()


def _split_name(split: str) -> str:
    split = ALIASES.get(split, split)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use 'train' or 'valid'")
    return split


def split_files(split: str = "train", root: Path | str | None = None) -> list[Path]:
    """The file(s) that hold `split` under `root` (default `data_dir()`), or [] if there are none."""
    split, root = _split_name(split), Path(root) if root is not None else data_dir()
    for pattern in SPLITS[split]:
        if files := sorted(root.glob(pattern)):
            return files
    return []


def _missing_data_message(split: str, root: Path, explicit: bool) -> str:
    wanted = ", ".join(p.replace("[0-9][0-9][0-9]", "NNN") for p in SPLITS[split])
    why = "does not exist" if not root.is_dir() else f"has no {split} split ({wanted})"
    lines = [f"TinyStories not found: {root} {why}."]
    if not explicit and not os.environ.get("STORYLIB_DATA"):
        lines.append("Looked for $STORYLIB_DATA (not set), shared/data/tinystories next to the course repo, "
                     f"and the download cache {cache_dir()}.")
    full = " --full" if split == "train" else ""
    size = "1.9 GB of train + 19 MB of validation" if full else "the 19 MB validation split"
    lines += [
        f"To download it ({size}), run:",
        f"    llm101n data download{full}",
        "or point STORYLIB_DATA at a folder that holds the files.",
        "(Tests never need it: storylib.data.synthetic_stories(n) makes stories offline.)",
    ]
    return "\n".join(lines)


# -----------------------------------------------------------------------------
# reading stories


def split_stories(text: str) -> list[str]:
    """Split text on `<|endoftext|>` into stories, each stripped of surrounding whitespace; drop empties."""
    return [s.strip() for s in text.split(EOT_TOKEN) if s.strip()]


def _iter_stories(lines: Iterable[str]) -> Iterator[str]:
    """The same as `split_stories`, but streamed line by line, so a prefix of a 2 GB file is cheap."""
    buf: list[str] = []
    for line in lines:
        *ends, rest = line.split(EOT_TOKEN)
        for piece in ends:  # every `<|endoftext|>` in the line closes the story so far
            if story := ("".join(buf) + piece).strip():
                yield story
            buf = []
        buf.append(rest)
    if story := "".join(buf).strip():
        yield story


def _open_text(path: Path) -> IO[str]:
    # errors="replace": one stray byte in a 2 GB download should not stop a book chapter
    if path.suffix == ".xz":
        return lzma.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


@functools.lru_cache(maxsize=16)
def _parse(path: str, mtime_ns: int, size: int, limit: int | None) -> tuple[str, ...]:
    # keyed on mtime and size too, so a file that changes on disk is read again
    with _open_text(Path(path)) as f:
        stories = _iter_stories(f)
        return tuple(itertools.islice(stories, limit))


def load_stories(split: str = "train", limit: int | None = None, root: Path | str | None = None) -> list[str]:
    """The stories of `split` ('train' or 'valid'), in file order; the first `limit` of them if given.

    Reads from `root`, default `data_dir()`. Raises FileNotFoundError, with the command that
    downloads the data, when there is nothing to read. Results are cached per process (the list
    you get is a fresh copy, yours to shuffle).
    """
    split = _split_name(split)
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0 or None, got {limit}")
    base = Path(root) if root is not None else data_dir()
    files = split_files(split, base)
    if not files:
        raise FileNotFoundError(_missing_data_message(split, base, explicit=root is not None))
    out: list[str] = []
    for path in files:
        st = path.stat()
        rest = None if limit is None else limit - len(out)
        out += _parse(str(path.resolve()), st.st_mtime_ns, st.st_size, rest)
        if limit is not None and len(out) >= limit:
            break
    return out


# -----------------------------------------------------------------------------
# downloading the official files


HF_URL = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/"


@dataclass(frozen=True)
class RemoteFile:
    """A file to download: its name under the base URL, and its size and sha256 where known.

    sha256=None means "trust on first use": the size is still checked when known, and the sha256 of
    the first complete download is recorded in `<name>.sha256` next to it. Later downloads of the same
    file must match that record. This only protects against a file changing, not a bad first copy.
    """

    name: str
    size: int | None = None
    sha256: str | None = None


# Sizes and sha256 are the Git LFS pointers of roneneldan/TinyStories on the Hub. V1 (both numbers,
# from the pointer diff of commit 5485261 "Fix encoding problem", the files' last change; main is f54c09f):
# as published. V2 (added in b7f09a3): the Hub's file pages show the valid sha256; the valid size and the
# train size and sha256 are what several independent projects pinned after downloading them.
# A mismatch raises ChecksumError; an entry with sha256=None falls back to trust on first use.
FILES: dict[str, RemoteFile] = {
    "valid": RemoteFile("TinyStories-valid.txt", 19_447_282,
                        "94e431816c4cce81ff71e4408ff8d3bda9a42e8d2663986697c3954288cb38b4"),
    "train": RemoteFile("TinyStories-train.txt", 1_924_281_556,
                        "c5cf5e22ff13614e830afbe61a99fbcbe8bcb7dd72252b989fa1117a368d401f"),
    "v2-valid": RemoteFile("TinyStoriesV2-GPT4-valid.txt", 22_502_601,
                           "6874bae9a4c1a4e7edcf0e53b86c17817e9cf881fc75ff2368da457b80c0585d"),
    "v2-train": RemoteFile("TinyStoriesV2-GPT4-train.txt", 2_227_753_162,
                           "6418d412de72888f52b5142c761ac21a582f7d1166f0bfbdb5f03ccfdec90443"),
}


class DownloadError(RuntimeError):
    """A download that did not complete. The message says what to do next."""


class ChecksumError(DownloadError):
    """A complete download whose sha256 (or size) is not the expected one."""


class _Interrupted(DownloadError):
    """The connection ended early; the .part file holds what arrived and the next try resumes."""


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_sidecar(path: Path) -> str | None:
    try:
        return path.read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _fetch(url: str, part: Path, rf: RemoteFile, progress: bool, timeout: float) -> None:
    """Append the missing bytes of `url` to `part` (one HTTP request). Raises _Interrupted if cut short."""
    from tqdm.auto import tqdm

    have = part.stat().st_size if part.exists() else 0
    if rf.size is not None and have == rf.size:
        return  # already complete, just not verified yet
    headers = {"User-Agent": "llm101n (urllib)"}
    if have:
        headers["Range"] = f"bytes={have}-"
    try:
        resp = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # "range not satisfiable": we already have every byte
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored Range and sends the whole file: start over
            have = 0
        length = resp.headers.get("Content-Length")
        total = have + int(length) if length is not None else rf.size
        with open(part, "ab" if have else "wb") as f, tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=rf.name, disable=not progress, leave=True,
        ) as bar:
            while block := resp.read(1 << 20):
                f.write(block)
                bar.update(len(block))
    got = part.stat().st_size
    if total is not None and got < total:  # http.client does not always raise when a body is cut short
        raise _Interrupted(f"{rf.name}: connection closed after {got:,} of {total:,} bytes")


def _download_one(rf: RemoteFile, dest: Path, base_url: str, progress: bool, retries: int,
                  timeout: float) -> Path:
    final, part, sidecar = dest / rf.name, dest / (rf.name + ".part"), dest / (rf.name + ".sha256")
    if final.exists():  # only ever created by the rename below, after verification
        if rf.size is not None and final.stat().st_size != rf.size:
            raise DownloadError(f"{final} exists but has {final.stat().st_size:,} bytes, expected "
                                f"{rf.size:,}. Delete it and run the download again.")
        return final
    if part.exists() and rf.size is not None and part.stat().st_size > rf.size:
        part.unlink()  # longer than the real file: cannot be a prefix of it

    url = base_url.rstrip("/") + "/" + rf.name
    for attempt in range(retries + 1):
        try:
            _fetch(url, part, rf, progress, timeout)
            break
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 or attempt == retries:
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
        except (_Interrupted, OSError, http.client.HTTPException) as e:
            if attempt == retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(
                    f"downloading {rf.name} failed ({e}). The {have:,} bytes received so far are kept in "
                    f"{part}; run the same command again to resume from there.") from e
        time.sleep(2**attempt - 1)  # 0 s, 1 s, 3 s, ... then resume with a Range request

    # verify: size, then sha256 against the table, else against the first download's record
    size = part.stat().st_size
    want = rf.sha256 or _read_sidecar(sidecar)
    got = _sha256(part) if rf.size is None or size == rf.size else None
    if got is None or (want is not None and got != want):
        part.unlink()  # bad bytes: keeping them would only make the next resume bad too
        what = (f"size {size:,} bytes, expected {rf.size:,}" if got is None
                else f"sha256 mismatch\n  expected {want}\n  got      {got}")
        raise ChecksumError(
            f"{rf.name}: {what}.\nThe download was deleted; run the command again to fetch it from scratch. "
            "If it fails again, the file on the server has changed: please tell the course maintainers.")
    _write_atomic(sidecar, f"{got}  {rf.name}\n")
    os.replace(part, final)  # atomic: the final name appears only with verified content
    return final


def download_tinystories(
    dest: Path | str | None = None,
    files: Sequence[str | RemoteFile] = ("valid",),
    base_url: str = HF_URL,
    progress: bool = True,
    retries: int = 3,
    timeout: float = 60.0,
) -> list[Path]:
    """Download official TinyStories files into `dest`; return their paths.

    dest: default $STORYLIB_DATA if set, else `cache_dir()` (~/.cache/llm101n/tinystories).
    files: keys of `FILES` ('valid' 19 MB, 'train' 1.9 GB, 'v2-valid', 'v2-train' 2.2 GB) or RemoteFiles.

    How a file arrives: bytes stream into `<name>.part` (tqdm progress bar). If the connection drops,
    up to `retries` more requests resume it with `Range: bytes=N-`; when those run out, a DownloadError
    says so and the .part stays, so the next call resumes from there. A complete .part is checked
    against the size and sha256 in `FILES`; only then is it renamed (atomically) to `<name>`, with its
    sha256 written to `<name>.sha256`. On a mismatch the .part is deleted and ChecksumError says what
    was expected and what arrived: no file is ever left under the final name unless it was verified.
    A file already present under its final name is not fetched again (no network at all).
    """
    dest = Path(dest) if dest is not None else Path(os.environ.get("STORYLIB_DATA") or cache_dir())
    dest.mkdir(parents=True, exist_ok=True)
    if unknown := [f for f in files if isinstance(f, str) and f not in FILES]:
        raise ValueError(f"unknown file(s) {unknown}: choose from {list(FILES)}")
    wanted = [FILES[f] if isinstance(f, str) else f for f in files]
    return [_download_one(rf, dest, base_url, progress, retries, timeout) for rf in wanted]


# -----------------------------------------------------------------------------
# synthetic stories: a tiny grammar, deterministic for a given (n, seed)

_KINDS = (("girl", "she"), ("boy", "he"), ("dog", None), ("cat", None), ("bunny", None), ("bird", None),
          ("bear", None), ("duck", None), ("fox", None))
_NAMES = {"she": ("Lily", "Mia", "Sue", "Anna", "Lucy", "Ella", "Daisy", "Rosie"),
          "he": ("Tom", "Ben", "Max", "Sam", "Tim", "Jack", "Leo", "Spot")}
_NAMES_UNICODE = {"she": ("Zoë", "Amélie", "Chloé", "Renée", "Inés", "Łucja"),
                  "he": ("José", "Søren", "Noël", "Björn")}
_ADJS = ("little", "small", "happy", "curious", "brave", "kind", "shy", "silly", "big", "tiny")
_THINGS = ("red ball", "shiny stone", "kite", "teddy bear", "blue hat", "toy boat", "big apple", "drum",
           "picture book", "yellow flower", "sock", "cookie")
_PLACES = ("park", "garden", "forest", "beach", "pond", "hill", "kitchen", "school", "farm", "river")
_TIMES = ("day", "morning", "sunny afternoon", "rainy evening", "cold night")
_GOOD = ("happy", "glad", "proud", "excited", "calm")
_BAD = ("sad", "scared", "lonely", "upset", "angry")
_EMOJI = ("🐶", "🌟", "🎈", "🌈", "🍪", "😊", "🐻")

_OPENINGS = (
    "Once upon a time, there was a {adj} {kind} named {name}.",
    "One {time}, {name} went to the {place}.",
    "{name} was a {adj} {kind} who lived near the {place}.",
    "There once was a {adj} {kind}. {Pron} was called {name}.",
)
_MIDDLES = (  # in story order; a story uses a few of them, in this order
    "{Pron} found a {thing} near the {place}.",
    "{name} loved the {thing} very much.",
    "{name} wanted to show the {thing} to {friend}.",
    "{q}Can I play with your {thing}?{Q} asked {friend}.",
    "{q}Let{a}s go to the {place2}!{Q} said {name}.",
    "The sun was warm{dash}and the birds were singing.",
    "{friend} did not want to share, and {name} felt {bad}.",
    "Suddenly, the {thing} rolled into the {place2}.",
    "{name} looked everywhere{dash}under the bed, behind the tree, in the grass.",
    "{q}Don{a}t be {bad},{Q} said {friend}. {q}I will help you.{Q}",
)
_HAPPY = (
    "In the end, {name} and {friend} played together all day. They were very {good}.",
    "{name} learned that sharing makes everyone {good}.",
    "{q}Thank you!{Q} said {name} with a big smile.",
    "From that day on, {name} and {friend} were best friends.",
)
_SAD = (
    "But the {thing} was gone, and {name} was very {bad}.",
    "{name} went home alone and cried.",
    "{Pron} never saw the {thing} again.",
    "{friend} walked away, and {name} sat by the {place} feeling {bad}.",
)


def _story(rng: random.Random, unicode: bool) -> str:
    kind, pron = rng.choice(_KINDS)
    pron = pron or rng.choice(("he", "she"))
    names = {p: _NAMES[p] + (_NAMES_UNICODE[p] if unicode else ()) for p in _NAMES}
    name = rng.choice(names[pron])  # the hero's name fits the pronoun; the friend can be anyone
    friend = rng.choice([x for x in names["she"] + names["he"] if x != name])
    place, place2 = rng.sample(_PLACES, 2)
    words = dict(
        name=name, friend=friend, kind=kind, Pron=pron.capitalize(), adj=rng.choice(_ADJS),
        thing=rng.choice(_THINGS), place=place, place2=place2, time=rng.choice(_TIMES),
        good=rng.choice(_GOOD), bad=rng.choice(_BAD),
        q="“" if unicode else '"', Q="”" if unicode else '"', a="’" if unicode else "'",
        dash=" — " if unicode else ", ",
    )
    k = rng.randint(0, 4)  # opening + k middles + ending = 2..6 sentences
    middles = [_MIDDLES[i] for i in sorted(rng.sample(range(len(_MIDDLES)), k))]
    ending = rng.choice(_HAPPY if rng.random() < 0.6 else _SAD)
    if unicode and rng.random() < 0.3:
        ending += " " + rng.choice(_EMOJI)
    sentences = [t.format(**words) for t in (rng.choice(_OPENINGS), *middles, ending)]
    # paragraphs: cut the sentence list in up to 3 places, join paragraphs with "\n"
    cuts = sorted(rng.sample(range(1, len(sentences)), rng.randint(0, min(2, len(sentences) - 1))))
    bounds = [0, *cuts, len(sentences)]
    return "\n".join(" ".join(sentences[a:b]) for a, b in zip(bounds, bounds[1:], strict=False))


def synthetic_stories(n: int, seed: int = 0, unicode: bool = False) -> list[str]:
    """`n` short story-like texts from a small grammar, identical for the same (n, seed) everywhere.

    Each has 2 to 6 sentences (an opening, up to 4 middles, a happy or sad ending), 1 to 3 paragraphs
    separated by "\\n", sometimes dialogue in quotes; no leading/trailing whitespace, no `<|endoftext|>`.
    Plain ASCII by default; unicode=True adds curly quotes and apostrophes, accented names,
    em dashes and the odd emoji, for tokenizer and UTF-8 tests. The first k stories of n > k are the
    same as `synthetic_stories(k, seed)`.
    """
    rng = random.Random(seed)  # documented stable across platforms and Python versions for int seeds
    return [_story(rng, unicode) for _ in range(n)]


# Strings that break naive tokenizers: a catalogue for round-trip and equality tests (ch06 and later).
HARD_STRINGS: tuple[str, ...] = (
    "",
    "a",
    " ",
    "é",
    "🐶",
    "👩‍👩‍👧",  # one grapheme, five code points joined by zero-width joiners
    "안녕하세요, 세계! 토큰화는 재미있어요.",
    "Once upon a time, Zoë met 小明 and Amélie — они были друзьями 🌈.",
    "spaces:     five, and a tab\there",
    "lines\n\n\nthree newlines, then CRLF\r\nand   trailing   ",
    "numbers 1234567890 3.14159 1,000,000 2026-11-25",
    "I'LL can't WE'RE you've she'd it's O'Neil",
    "def f(x):\n    return x ** 2  # code, with indentation\n",
    "<|endoftext|>Once upon a time<|endoftext|>",
    "\u0000\u001b[31mcontrol\u007f characters\u200b",
    "a" * 96,
    "!!!???...,,,;;;'''\"\"\"",
)


def write_fixture(dir: Path | str, n_train: int = 200, n_valid: int = 50, seed: int = 0,
                  unicode: bool = False) -> Path:
    """Write synthetic stories in the offline subset's layout: `train-000.txt.xz` and `valid.txt.xz`.

    Train gets the first `n_train` stories of `synthetic_stories(n_train + n_valid, seed, unicode)`,
    valid the rest. Point STORYLIB_DATA (or `load_stories(root=...)`) at `dir` to read them back.
    """
    d = Path(dir)
    d.mkdir(parents=True, exist_ok=True)
    stories = synthetic_stories(n_train + n_valid, seed, unicode)
    for name, part in (("train-000.txt.xz", stories[:n_train]), ("valid.txt.xz", stories[n_train:])):
        with lzma.open(d / name, "wt", encoding="utf-8") as f:
            f.write("".join(f"{s}\n{EOT_TOKEN}\n" for s in part))
    return d


# -----------------------------------------------------------------------------
# command line: llm101n data download | info


def _scan(paths: list[Path]) -> tuple[int, int]:
    """(stories, text bytes) of data files, streamed: counts `<|endoftext|>` without parsing."""
    eot, stories, nbytes = EOT_TOKEN.encode(), 0, 0
    for path in paths:
        with lzma.open(path, "rb") if path.suffix == ".xz" else open(path, "rb") as f:
            tail = b""
            for line in f:
                stories += line.count(eot)
                nbytes += len(line)
                tail = line if line.strip() else tail
            if tail and not tail.rstrip().endswith(eot):  # a last story with no `<|endoftext|>` after it
                stories += 1
    return stories, nbytes


def _info() -> int:
    env = os.environ.get("STORYLIB_DATA")
    print(f"STORYLIB_DATA: {env or '(not set)'}")
    found = [c for c in _shared_candidates() if _has_data(c)]
    print(f"offline subset: {found[0] if found else '(none found)'}")
    print(f"download cache: {cache_dir()}{'' if _has_data(cache_dir()) else '  (empty)'}")
    root = data_dir()
    print(f"load_stories() reads: {root}")
    ok = True
    for split in SPLITS:
        if files := split_files(split, root):
            stories, nbytes = _scan(files)
            disk = sum(p.stat().st_size for p in files)
            names = ", ".join(p.name for p in files)
            print(f"  {split:5s} {stories:>10,} stories {nbytes / 1e6:>9.1f} MB text   "
                  f"({names}, {disk / 1e6:.1f} MB on disk)")
        else:
            ok = False
            print(f"  {split:5s} missing   (llm101n data download{' --full' if split == 'train' else ''})")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    """`llm101n data download [--full] [--v2] [--dest DIR] [--quiet]` or `llm101n data info`."""
    p = argparse.ArgumentParser(prog="llm101n data", description="TinyStories data: download or inspect.")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="download the official files from Hugging Face (resumable, checked)")
    d.add_argument("--full", action="store_true", help="also the 1.9 GB training split (default: valid only)")
    d.add_argument("--v2", action="store_true", help="the GPT-4-only V2 files instead of V1")
    d.add_argument("--dest", help="folder to download into (default: $STORYLIB_DATA, else the user cache)")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    sub.add_parser("info", help="where the data is found, and how many stories each split has")
    args = p.parse_args(argv)

    try:
        if args.cmd == "info":
            return _info()
        prefix = "v2-" if args.v2 else ""
        keys = [prefix + "valid"] + ([prefix + "train"] if args.full else [])
        paths = download_tinystories(args.dest, keys, base_url=HF_URL, progress=not args.quiet)
    except (DownloadError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"ok  {path}  ({path.stat().st_size:,} bytes, sha256 verified)")
    if (where := data_dir()).resolve() != paths[0].parent.resolve():
        print(f"note: load_stories() reads {where} first; to use these files instead, "
              f"set STORYLIB_DATA={paths[0].parent}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
