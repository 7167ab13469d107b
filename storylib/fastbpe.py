"""Fast BPE training with exactly the reference's merges, and export to tiktoken for fast encoding.

`storylib.tokenizer.RegexTokenizer.train` recounts every pair of every distinct chunk for each merge.
`train_bpe` learns the same merges, in the same order, with the standard tricks:

    1. pre-tokenise: split each document with the regex and count the distinct chunks (Counter),
       over several processes when there is enough text;
    2. count the pairs of the distinct chunks once, weighted by how often each chunk occurs, and keep
       an index pair -> chunks that contain it;
    3. take the best pair from a heap keyed (-count, pair): the course's tie rule (`best_pair`) for free.
       Entries go stale when counts drop; a popped entry whose count is out of date is pushed back with
       the current count ("lazy deletion");
    4. merge the pair only in the chunks the index names, and update the counts of the pairs around it.

`to_tiktoken` turns a trained tokenizer into a `tiktoken.Encoding` (ranks are our ids) that encodes
identically and much faster; `ordinary_encoder` and `encode_ordinary` encode through that copy, made once per
tokenizer (`tiktoken_copy`), and are what the later chapters encode text with.

Command line, to train the storyteller's tokenizer (TOKENIZER.md next to it):

    python -m storylib.fastbpe train --vocab-size 4096 --out models/storyteller/tokenizer.json

Nothing here calls the chapter's exercise functions, so it works in a learner's workspace too.
"""

from __future__ import annotations

import argparse
import functools
import heapq
import multiprocessing
import os
import sys
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import chain, islice, pairwise
from pathlib import Path
from typing import TYPE_CHECKING

import regex

from storylib.tokenizer import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN, STORY_SPECIALS, RegexTokenizer

if TYPE_CHECKING:
    import tiktoken

__all__ = [
    "chunk_counts", "default_workers", "learn_merges", "train_bpe", "check_rank_consistency", "to_tiktoken",
    "tiktoken_copy", "ordinary_encoder", "encode_ordinary", "storyteller_documents", "main",
]

Pair = tuple[int, int]
BATCH_CHARS = 1 << 20  # documents are sent to the worker processes in batches of about this many characters


# ----------------------------------------------------------------------------- 1. pre-tokenisation


@functools.lru_cache(maxsize=8)
def _compiled(pattern: str) -> regex.Pattern:
    return regex.compile(pattern)


def _count_batch(job: tuple[str, list[str]]) -> tuple[int, Counter[str]]:
    """(characters read, chunk counts) of one batch of documents. Runs in a worker process."""
    pattern, docs = job
    findall = _compiled(pattern).findall
    counts: Counter[str] = Counter()
    for doc in docs:
        counts.update(findall(doc))
    return sum(map(len, docs)), counts


def _batches(texts: Iterable[str], batch_chars: int) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for doc in texts:
        batch.append(doc)
        size += len(doc)
        if size >= batch_chars:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def chunk_counts(texts: str | Iterable[str], pattern: str = GPT4_SPLIT_PATTERN, workers: int | None = None,
                 progress: bool = True) -> Counter[str]:
    """How often each regex chunk occurs: the sum over documents of Counter(regex.findall(pattern, doc)).

    A str is one document. Each document is split on its own, so no chunk spans two documents. With more
    than one batch of text (about 1 M characters) and workers > 1 (default: the usable cores), batches of
    documents are split in a pool of processes; the counts do not depend on how the work is shared out.
    """
    from tqdm.auto import tqdm

    docs: Iterable[str] = [texts] if isinstance(texts, str) else texts
    total = sum(map(len, docs)) if isinstance(docs, Sequence) else None
    workers = default_workers() if workers is None else workers
    batches = _batches(docs, BATCH_CHARS)
    head = list(islice(batches, 2))  # look ahead: a single batch is not worth starting a pool
    jobs = ((pattern, batch) for batch in chain(head, batches))
    counts: Counter[str] = Counter()
    with tqdm(total=total, unit="char", unit_scale=True, desc="pre-tokenise", disable=not progress) as bar:
        if workers <= 1 or len(head) < 2:
            for n, c in map(_count_batch, jobs):
                counts.update(c)
                bar.update(n)
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for n, c in pool.imap_unordered(_count_batch, jobs):
                    counts.update(c)
                    bar.update(n)
    return counts


# ----------------------------------------------------------------------------- 2-4. the merges


def _merge_pair(ids: list[int], a: int, b: int, idx: int) -> list[int]:
    """Replace each (a, b) by idx, left to right without overlap (the same rule as tokenizer.merge)."""
    out: list[int] = []
    i, n = 0, len(ids)
    while i < n:
        if ids[i] == a and i + 1 < n and ids[i + 1] == b:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def _pop_best(heap: list[tuple[int, Pair]], stats: dict[Pair, int]) -> Pair | None:
    """Pop the pair with the smallest (-count, pair), i.e. best_pair(stats); None when no pair is left.

    An entry's count can only have fallen since it was pushed (a pair that gains is pushed anew), so a stale
    entry sorts too early: push it back with its current count (or drop it at 0) and look again.
    """
    while heap:
        neg, pair = heapq.heappop(heap)
        count = stats.get(pair, 0)
        if count == -neg:
            return pair
        if count:
            heapq.heappush(heap, (-count, pair))
    return None


def learn_merges(counts: Mapping[str, int], n_merges: int, progress: bool = True) -> dict[Pair, int]:
    """Up to `n_merges` BPE merges of the weighted chunks `counts`, as RegexTokenizer.train learns them.

    Returns {pair: new id} in training order (ids 256, 257, ...); fewer when no pair is left to merge.
    """
    from tqdm.auto import tqdm

    chunks = [list(c.encode("utf-8")) for c in counts]  # the distinct chunks, as lists of token ids
    weights = list(counts.values())
    stats: dict[Pair, int] = {}  # pair -> weighted count over all chunks
    where: dict[Pair, set[int]] = {}  # pair -> chunks that contain (or once contained) it
    for i, (ids, w) in enumerate(zip(chunks, weights, strict=True)):
        for p in pairwise(ids):
            stats[p] = stats.get(p, 0) + w
            where.setdefault(p, set()).add(i)
    heap = [(-c, p) for p, c in stats.items()]
    heapq.heapify(heap)  # the smallest (-count, pair) is best_pair(stats)

    merges: dict[Pair, int] = {}
    with tqdm(total=n_merges, desc="merges", unit="merge", disable=not progress) as bar:
        for idx in range(256, 256 + n_merges):
            pair = _pop_best(heap, stats)
            if pair is None:
                break  # no pair left anywhere: stop early, as the reference does
            merges[pair] = idx
            a, b = pair
            born: set[Pair] = set()  # pairs that contain the new token idx
            for i in where.pop(pair):
                ids = chunks[i]
                new = _merge_pair(ids, a, b, idx)
                if len(new) == len(ids):
                    continue  # a stale index entry: an earlier merge already took the pair apart
                w = weights[i]
                for p in pairwise(ids):
                    stats[p] -= w
                for p in pairwise(new):
                    stats[p] = stats.get(p, 0) + w
                    if idx in p:  # pairs without idx were already adjacent, so already indexed
                        where.setdefault(p, set()).add(i)
                        born.add(p)
                chunks[i] = new
            del stats[pair]  # now 0 (pairs that drop to 0 elsewhere stay in stats with count 0: harmless)
            for p in born:  # a pair with idx in it only gained counts in this step: push its final count
                heapq.heappush(heap, (-stats[p], p))
            bar.update()
    return merges


def train_bpe(texts: str | Iterable[str], vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN,
              special_tokens: dict[str, int] | None = None, progress: bool = True,
              workers: int | None = None) -> RegexTokenizer:
    """Train a RegexTokenizer with vocab_size - 256 merges: the reference's merges, much faster.

    texts: one str, or an iterable of documents, each split with `pattern` on its own (chunks never cross
    a document boundary). The merges are exactly those of the reference trained on the same chunks:
      - for a str `text`:      RegexTokenizer(pattern).train(text, vocab_size);
      - for documents `docs`:  the reference whose split returns the chunks of every document, and so
        RegexTokenizer(pattern).train("".join(docs), vocab_size) whenever the joins fall on chunk
        boundaries: true for the storyteller's documents (each story + "\\n", GPT-4 pattern).
    Special tokens (text -> id, after the merges) are added at the end; they are not part of training.
    workers: processes for pre-tokenisation (default: the usable cores; 1 = no pool).
    """
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
    counts = chunk_counts(texts, pattern, workers, progress)
    tok = RegexTokenizer(pattern, learn_merges(counts, vocab_size - 256, progress))
    if special_tokens:
        tok.register_special_tokens(special_tokens)
    return tok


# ----------------------------------------------------------------------------- export to tiktoken


def _rank_bpe(ranks: Mapping[bytes, int], data: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's BPE on `data` with ranks below max_rank: merge the adjacent parts whose bytes rank lowest."""
    parts = [data[i:i + 1] for i in range(len(data))]
    while len(parts) > 1:
        best = min(range(len(parts) - 1), key=lambda i: ranks.get(parts[i] + parts[i + 1], max_rank))
        if ranks.get(parts[best] + parts[best + 1], max_rank) >= max_rank:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def check_rank_consistency(tok: RegexTokenizer) -> None:
    """Raise ValueError unless tiktoken, merging by the rank of the concatenated bytes, encodes as `tok` does.

    `tok.encode` applies merges by id; tiktoken merges whichever adjacent parts' bytes form the
    lowest-ranked token. They agree on every text if (1) no two tokens have the same bytes and (2) for each
    token, tiktoken's BPE on its bytes with only lower ranks ends in exactly the two parts it was merged from
    (by induction on the rank: then no merge ever creates a pair that ranks lower). A tokenizer trained by
    BPE always passes: each merged pair occurred in training, so its bytes split that way.
    """
    ranks: dict[bytes, int] = {}
    for i in range(256 + len(tok.merges)):
        if (b := tok.vocab[i]) in ranks:
            raise ValueError(f"tokens {ranks[b]} and {i} are both {b!r}: tiktoken needs one rank per byte string")
        ranks[b] = i
    for (a, b), idx in tok.merges.items():
        parts = _rank_bpe(ranks, tok.vocab[idx], idx)
        if parts != [tok.vocab[a], tok.vocab[b]]:
            raise ValueError(f"token {idx} {tok.vocab[idx]!r} was merged from ({a}, {b}) but tiktoken's BPE on "
                             f"its bytes gives {parts}: tiktoken would encode differently")


def to_tiktoken(tok: RegexTokenizer, name: str = "storyteller", check: bool = True) -> tiktoken.Encoding:
    """A tiktoken.Encoding that encodes and decodes exactly as `tok` (ranks = our ids, same pattern, specials).

    enc.encode_ordinary(t) == tok.encode_ordinary(t) and enc.encode(t, allowed_special="all") ==
    tok.encode(t, "all"), only much faster. check=True first proves that with `check_rank_consistency`
    (milliseconds for 4096 tokens). The split is done by tiktoken's Rust regex engine instead of the `regex`
    module: the same rules for the GPT-2 and GPT-4 patterns (tests/test_fastbpe.py checks hard strings), though
    two engines could still differ on characters newer than one of their Unicode tables.
    """
    import tiktoken

    if check:
        check_rank_consistency(tok)
    ranks = {tok.vocab[i]: i for i in range(256 + len(tok.merges))}
    return tiktoken.Encoding(name, pat_str=tok.pattern, mergeable_ranks=ranks,
                             special_tokens=dict(tok.special_tokens))


# ----------------------------------------------------------------------------- fast encoding


# tokenizer -> (its merges, specials and pattern when copied, its tiktoken copy or None); a weak key, so the
# copy goes away with the tokenizer, and the key is checked, so a tokenizer trained further is copied again
_COPIES: weakref.WeakKeyDictionary[RegexTokenizer, tuple[tuple, tiktoken.Encoding | None]] = (
    weakref.WeakKeyDictionary())


def tiktoken_copy(tok: RegexTokenizer) -> tiktoken.Encoding | None:
    """`to_tiktoken(tok)`, made once per tokenizer and kept; None where tiktoken is not installed or cannot
    encode as `tok` does (check_rank_consistency's ValueError): then the caller takes the slow, sure path."""
    key = (len(tok.merges), tuple(sorted(tok.special_tokens.items())), tok.pattern)
    cached = _COPIES.get(tok)
    if cached is None or cached[0] != key:
        try:
            enc = to_tiktoken(tok)
        except (ImportError, ValueError):  # no tiktoken here; or merges its rank order would undo, a pattern it rejects
            enc = None
        cached = _COPIES[tok] = (key, enc)
    return cached[1]


def ordinary_encoder(tokenizer: RegexTokenizer | tiktoken.Encoding) -> Callable[[Sequence[str]], list[list[int]]]:
    """A function texts -> lists of ids that encodes like `tokenizer.encode_ordinary`, as fast as we can.

    A tiktoken.Encoding is used as is; a storylib RegexTokenizer through its `tiktoken_copy` (same ids, 10-100x
    faster), or its own pure-Python encode_ordinary where there is none.
    """
    enc = tiktoken_copy(tokenizer) if isinstance(tokenizer, RegexTokenizer) else tokenizer
    if enc is None:
        return lambda texts: [tokenizer.encode_ordinary(t) for t in texts]
    return lambda texts: enc.encode_ordinary_batch(list(texts), num_threads=1)


def encode_ordinary(tokenizer: RegexTokenizer | tiktoken.Encoding, text: str) -> list[int]:
    """`tokenizer.encode_ordinary(text)` (specials are plain text), through the tiktoken copy when there is one."""
    enc = tiktoken_copy(tokenizer) if isinstance(tokenizer, RegexTokenizer) else tokenizer
    return list((enc or tokenizer).encode_ordinary(text))


# ----------------------------------------------------------------------------- the storyteller's tokenizer


def storyteller_documents(split: str = "train") -> list[str]:
    """The TinyStories documents the storyteller's tokenizer is trained on: each story followed by "\\n".

    This is how the chapters join stories into one text ("".join of these). `<|endoftext|>` is not part of
    the training text: it is a special token, added after training.
    """
    from storylib.data import load_stories

    return [s + "\n" for s in load_stories(split)]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m storylib.fastbpe train [--vocab-size 4096] [--out PATH] [--pattern gpt4|gpt2] [--no-specials]`."""
    p = argparse.ArgumentParser(prog="python -m storylib.fastbpe", description="Train the storyteller's tokenizer.")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train on load_stories('train') (each story + '\\n') and save as JSON")
    t.add_argument("--vocab-size", type=int, default=4096, help="256 bytes + merges (default 4096)")
    t.add_argument("--out", default="models/storyteller/tokenizer.json", help="where to save (atomically)")
    t.add_argument("--pattern", choices=("gpt4", "gpt2"), default="gpt4", help="split pattern (default gpt4)")
    t.add_argument("--no-specials", action="store_true", help="do not add STORY_SPECIALS (ids 4096..4103)")
    t.add_argument("--workers", type=int, default=None, help="pre-tokenisation processes (default: usable cores)")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args(argv)

    pattern = GPT4_SPLIT_PATTERN if args.pattern == "gpt4" else GPT2_SPLIT_PATTERN
    docs = storyteller_documents("train")
    n_bytes = sum(len(d.encode("utf-8")) for d in docs)
    print(f"training on {len(docs):,} stories, {n_bytes / 1e6:.2f} MB, vocab size {args.vocab_size}")
    t0 = time.perf_counter()
    try:
        tok = train_bpe(docs, args.vocab_size, pattern, None if args.no_specials else STORY_SPECIALS,
                        progress=not args.quiet, workers=args.workers)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - t0
    path = tok.save(Path(args.out))
    val = "".join(storyteller_documents("valid"))
    n_tokens = len(to_tiktoken(tok).encode_ordinary(val))
    print(f"{len(tok.merges)} merges in {seconds:.1f} s; n_vocab {tok.n_vocab}; saved {path}")
    print(f"validation: {len(val.encode('utf-8')) / n_tokens:.3f} bytes per token ({n_tokens:,} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
