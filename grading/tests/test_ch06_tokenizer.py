"""Chapter 6 — tokenization: UTF-8 by hand, BPE's primitives, training, encoding, special tokens, GPT-4.

Oracles: Python's own str.encode for UTF-8; a slow BPE written here on tuples of bytes objects (no ids,
no shared code with storylib); str.replace for merging; tiktoken's cl100k_base for GPT-4 (offline from
the course's TIKTOKEN_CACHE_DIR, filled at set-up).
"""

from __future__ import annotations

import random
from collections import Counter
from itertools import pairwise

import pytest
import regex

from storylib.data import HARD_STRINGS, synthetic_stories
from storylib.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    BasicTokenizer,
    GPT4Tokenizer,
    RegexTokenizer,
    Tokenizer,
    get_stats,
    merge,
    recover_merges,
    utf8_encode,
)

STORIES = synthetic_stories(60, seed=6, unicode=True)
TEXT = "\n".join(STORIES) + "\n" + "\n".join(HARD_STRINGS)


# ----------------------------------------------------------------------------- a slow, independent BPE oracle


def oracle_train(chunks: Counter, n_merges: int) -> list[tuple[bytes, bytes]]:
    """BPE on chunks held as tuples of bytes objects. Tie rule: most frequent, then the smaller pair of *ids*."""
    ids: dict[bytes, int] = {bytes([i]): i for i in range(256)}
    words = {tuple(bytes([b]) for b in c.encode("utf-8")): n for c, n in chunks.items()}
    merges: list[tuple[bytes, bytes]] = []
    for _ in range(n_merges):
        pairs: Counter = Counter()
        for w, n in words.items():
            for a, b in pairwise(w):
                pairs[(a, b)] += n
        if not pairs:
            break
        a, b = min(pairs, key=lambda p: (-pairs[p], ids[p[0]], ids[p[1]]))
        ids[a + b] = 256 + len(merges)
        merges.append((a, b))
        new = {}
        for w, n in words.items():
            out, i = [], 0
            while i < len(w):
                if i + 1 < len(w) and w[i] == a and w[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            new[tuple(out)] = new.get(tuple(out), 0) + n
        words = new
    return merges


def as_bytes_merges(tok: Tokenizer) -> list[tuple[bytes, bytes]]:
    """A trained tokenizer's merges as pairs of byte strings, in the order of their new ids."""
    vocab = {i: bytes([i]) for i in range(256)}
    out = []
    for (a, b), idx in sorted(tok.merges.items(), key=lambda kv: kv[1]):
        vocab[idx] = vocab[a] + vocab[b]
        out.append((vocab[a], vocab[b]))
    return out


def oracle_encode(text: str, merges: list[tuple[bytes, bytes]]) -> list[bytes]:
    """Apply merges in training order over the whole byte string (equivalent to lowest-rank-first BPE)."""
    parts = [bytes([b]) for b in text.encode("utf-8")]
    for a, b in merges:
        out, i = [], 0
        while i < len(parts):
            if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
                out.append(a + b)
                i += 2
            else:
                out.append(parts[i])
                i += 1
        parts = out
    return parts


def tokenizer_from(merges_bytes: list[tuple[bytes, bytes]], pattern: str = "") -> Tokenizer:
    """A tokenizer with the given merges, built without any exercise code."""
    ids = {bytes([i]): i for i in range(256)}
    merges = {}
    for a, b in merges_bytes:
        merges[(ids[a], ids[b])] = ids[a + b] = 256 + len(merges)
    return RegexTokenizer(pattern, merges) if pattern else BasicTokenizer("", merges)


# ----------------------------------------------------------------------------- 6.1 UTF-8


@pytest.mark.exercise("ch06.utf8")
def test_utf8_boundaries_and_random_code_points():
    rng = random.Random(61)
    edges = [0, 0x41, 0x7F, 0x80, 0xE9, 0x7FF, 0x800, 0x20AC, 0xD7FF, 0xE000, 0xFFFD, 0xFFFF, 0x10000, 0x1F600,
             0x10FFFF]
    # non-uniform: most draws in the ranges stories use, some anywhere
    sample = [rng.choice([rng.randrange(0x80), rng.randrange(0x80, 0x800), rng.randrange(0xE000, 0x10000),
                          rng.randrange(0x10000, 0x110000)]) for _ in range(400)]
    for cp in edges + sample:
        got = utf8_encode(cp)
        want = chr(cp).encode("utf-8")
        assert isinstance(got, bytes), f"utf8_encode should return bytes, got {type(got).__name__}"
        assert got == want, f"U+{cp:04X}: expected {want.hex(' ')}, got {got.hex(' ')}"


@pytest.mark.exercise("ch06.utf8")
def test_utf8_of_a_whole_text_matches_str_encode():
    text = "".join(HARD_STRINGS[5:9])
    got = b"".join(utf8_encode(ord(c)) for c in text)
    assert got == text.encode("utf-8"), "encoding every code point of a text and joining must equal text.encode()"


# ----------------------------------------------------------------------------- 6.2 the primitives


@pytest.mark.exercise("ch06.stats")
def test_get_stats_counts_consecutive_pairs():
    rng = random.Random(62)
    for n in (0, 1, 2, 7, 101):
        ids = [rng.choice([1, 1, 1, 2, 3, 300, 301]) for _ in range(n)]
        want = Counter(pairwise(ids))
        got = get_stats(ids)
        assert dict(got) == dict(want), f"pair counts of {ids[:12]}...: expected {dict(want)}, got {dict(got)}"


@pytest.mark.exercise("ch06.stats")
def test_get_stats_accumulates_with_weights():
    a, b = [5, 6, 5, 6, 7], [6, 7, 6]
    counts = get_stats(a, weight=3)
    out = get_stats(b, counts, weight=2)
    assert out is counts, "with `counts` given, get_stats must add into that dict and return it"
    want = Counter({k: 3 * v for k, v in Counter(pairwise(a)).items()})
    want.update({k: 2 * v for k, v in Counter(pairwise(b)).items()})
    assert dict(out) == dict(want), f"expected {dict(want)}, got {dict(out)}"


@pytest.mark.exercise("ch06.merge")
def test_merge_equals_str_replace():
    rng = random.Random(63)
    for n in (0, 1, 2, 3, 9, 57):
        ids = [rng.choice([4, 4, 4, 7, 9]) for _ in range(n)]
        for pair in ((4, 4), (4, 7), (9, 4)):
            # oracle: ids as characters; str.replace is left to right, without overlap
            want = [ord(c) for c in "".join(map(chr, ids)).replace(chr(pair[0]) + chr(pair[1]), chr(500))]
            got = merge(ids, pair, 500)
            assert got == want, f"merge({ids}, {pair}, 500): expected {want}, got {got}"


@pytest.mark.exercise("ch06.merge")
def test_merge_overlapping_runs():
    assert merge([5, 5, 5], (5, 5), 6) == [6, 5], "[5, 5, 5] with (5, 5) -> 6 should give [6, 5] (no overlap)"
    assert merge([5, 5, 5, 5], (5, 5), 6) == [6, 6]
    assert merge([1, 2], (2, 1), 9) == [1, 2], "a pair that does not occur changes nothing"


# ----------------------------------------------------------------------------- 6.3 BasicTokenizer


@pytest.mark.exercise("ch06.train")
def test_train_wikipedia_example():
    # https://en.wikipedia.org/wiki/Byte_pair_encoding: aaabdaaabac -> ZabdZabac -> ZYdZYac -> XdXac
    tok = BasicTokenizer()
    tok.train("aaabdaaabac", 256 + 3)
    want = {(97, 97): 256, (97, 98): 257, (256, 257): 258}
    assert tok.merges == want, (
        f"expected merges {want} (aa, then ab: the tie goes to the smaller pair), got {tok.merges}"
    )
    assert tok.vocab[258] == b"aaab"


@pytest.mark.exercise("ch06.train")
def test_train_matches_oracle_bpe():
    text = " ".join(STORIES[:25])
    tok = BasicTokenizer()
    tok.train(text, 256 + 37)
    want = oracle_train(Counter([text]), 37)
    got = as_bytes_merges(tok)
    assert len(got) == len(want), f"expected {len(want)} merges, got {len(got)}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, f"merge {i}: expected {w}, got {g}"


@pytest.mark.exercise("ch06.train")
def test_train_stops_when_no_pair_is_left():
    tok = BasicTokenizer()
    tok.train("abcd", 300)
    assert len(tok.merges) == 3, f"'abcd' has 3 merges to learn before one token remains, got {len(tok.merges)}"


@pytest.mark.exercise("ch06.encode")
def test_encode_applies_merges_in_training_order():
    merges = oracle_train(Counter([" ".join(STORIES[:30])]), 45)
    tok = tokenizer_from(merges)
    for text in [*STORIES[30:40], *HARD_STRINGS]:
        ids = tok.encode(text)
        got = [tok.vocab[i] for i in ids]
        want = oracle_encode(text, merges)
        assert got == want, f"encode({text[:40]!r}): expected tokens {want[:10]}..., got {got[:10]}..."


@pytest.mark.exercise("ch06.encode")
def test_encode_prefers_the_earlier_merge():
    # "bc" learned before "ab": "abc" must become a, bc — not ab, c
    tok = tokenizer_from([(b"b", b"c"), (b"a", b"b")])
    assert [tok.vocab[i] for i in tok.encode("abc")] == [b"a", b"bc"]
    assert [tok.vocab[i] for i in tok.encode("abx")] == [b"ab", b"x"]


@pytest.mark.exercise("ch06.decode")
def test_decode_joins_bytes_and_replaces_broken_utf8():
    tok = tokenizer_from(oracle_train(Counter(["🐶🐶 é é é ok"]), 6))
    for text in HARD_STRINGS:
        ids = list(text.encode("utf-8"))
        assert tok.decode(ids) == text, f"decode of the raw bytes of {text!r} should give it back"
    snowman = "☃".encode()  # three bytes; the first two alone are broken UTF-8
    assert tok.decode(list(snowman[:2]) + [ord("x")]) == "\ufffdx", "broken UTF-8 should decode as '�'"
    merged = [i for i, b in tok.vocab.items() if len(b) > 1]
    assert tok.decode(merged) == b"".join(tok.vocab[i] for i in merged).decode("utf-8", errors="replace")


@pytest.mark.exercise("ch06.decode")
def test_decode_rejects_unknown_ids():
    tok = tokenizer_from([(b"a", b"b")])
    with pytest.raises(ValueError):
        tok.decode([97, 5000])
    assert tok.decode([256, 99]) == "abc"


# ----------------------------------------------------------------------------- 6.4 RegexTokenizer


@pytest.mark.exercise("ch06.regex_train")
@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN], ids=["gpt4", "gpt2"])
def test_regex_train_matches_oracle_on_chunks(pattern):
    text = TEXT
    tok = RegexTokenizer(pattern)
    tok.train(text, 256 + 61)
    want = oracle_train(Counter(regex.findall(pattern, text)), 61)
    got = as_bytes_merges(tok)
    first = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), min(len(got), len(want)))
    assert got == want, f"merges differ at merge {first}: expected {want[first:first + 2]}, got {got[first:first + 2]}"


@pytest.mark.exercise("ch06.regex_train")
def test_regex_merges_never_cross_chunks():
    tok = RegexTokenizer(GPT4_SPLIT_PATTERN)
    tok.train(" the cat the cat the cat", 256 + 20)
    assert len(tok.merges) > 0, "training should learn some merges"
    for b in tok.vocab.values():
        assert regex.fullmatch(GPT4_SPLIT_PATTERN, b.decode("utf-8", errors="ignore")) or b.decode(
            "utf-8", errors="ignore"
        ) == "", f"token {b!r} spans more than one chunk"
    assert b" cat" in tok.vocab.values() and b" the cat" not in tok.vocab.values()


# ----------------------------------------------------------------------------- 6.5 special tokens


def special_tok() -> RegexTokenizer:
    tok = tokenizer_from(oracle_train(Counter(regex.findall(GPT4_SPLIT_PATTERN, TEXT)), 40), GPT4_SPLIT_PATTERN)
    tok.register_special_tokens({"<|endoftext|>": 1000, "<|user|>": 1001, "<|end|>": 1002})
    return tok


@pytest.mark.exercise("ch06.special")
def test_special_tokens_become_single_ids():
    tok = special_tok()
    text = "<|user|>Tell me a story<|end|>Once upon a time<|endoftext|><|endoftext|>Zoë"
    pieces = ["<|user|>", "Tell me a story", "<|end|>", "Once upon a time", "<|endoftext|>", "<|endoftext|>", "Zoë"]
    want = []
    for p in pieces:
        want += [tok.special_tokens[p]] if p in tok.special_tokens else tok.encode_ordinary(p)
    assert tok.encode(text, allowed_special="all") == want
    assert tok.encode(text, allowed_special={"<|endoftext|>", "<|user|>", "<|end|>"}) == want
    assert tok.decode(want) == text


@pytest.mark.exercise("ch06.special")
def test_special_tokens_only_the_allowed_ones():
    tok = special_tok()
    text = "a<|end|>b<|user|>c"
    want = tok.encode_ordinary("a<|end|>b") + [1001] + tok.encode_ordinary("c")
    assert tok.encode(text, allowed_special={"<|user|>"}) == want, "only <|user|> is allowed; <|end|> is plain text"
    assert tok.encode(text, allowed_special="none") == tok.encode_ordinary(text)
    with pytest.raises(ValueError):
        tok.encode(text)  # default none_raise: user text with a special inside is an error
    assert tok.encode("plain story", allowed_special="all") == tok.encode_ordinary("plain story")


# ----------------------------------------------------------------------------- 6.6 GPT-4's tokenizer


@pytest.mark.exercise("ch06.recover_merges")
def test_recover_merges_inverts_our_own_training():
    merges = oracle_train(Counter(regex.findall(GPT4_SPLIT_PATTERN, TEXT)), 70)
    tok = tokenizer_from(merges, GPT4_SPLIT_PATTERN)
    ranks = {b: i for i, b in tok.vocab.items()}
    got = recover_merges(ranks)
    assert got == tok.merges, "recovering merges from token ranks should give back the merges they came from"


@pytest.fixture(scope="module")
def cl100k():
    import tiktoken

    try:
        return tiktoken.get_encoding("cl100k_base")
    except Exception as e:  # offline without the course's cache: say how to fix it, never skip
        pytest.fail(f"tiktoken's cl100k_base is not available ({e}); run `bash scripts/setup.sh` to fill the "
                    "offline cache, or check TIKTOKEN_CACHE_DIR")


@pytest.mark.exercise("ch06.recover_merges")
def test_gpt4_tokenizer_equals_tiktoken_cl100k(cl100k):
    tok = GPT4Tokenizer(cl100k._mergeable_ranks, cl100k._special_tokens)
    corpus = [*HARD_STRINGS[:13], *HARD_STRINGS[14:], *synthetic_stories(12, seed=66, unicode=True)]
    for text in corpus:
        assert tok.encode(text, "none") == cl100k.encode_ordinary(text), f"differs from cl100k on {text[:50]!r}"
        assert tok.decode(tok.encode(text, "none")) == text
    special = "<|endoftext|>hello world<|endoftext|>"
    assert tok.encode(special, allowed_special="all") == cl100k.encode(special, allowed_special="all")
