"""storylib.fastbpe: the same merges as the reference RegexTokenizer, a tiktoken export that encodes the same,
and the committed storyteller tokenizer.

Oracles: `storylib.tokenizer.RegexTokenizer.train` (the slow reference) and `.encode` / `.decode`. Data is
made here: synthetic stories, random "words" from several scripts with Zipf-like counts (many ties), and
`HARD_STRINGS`. Nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
import regex

from storylib import fastbpe
from storylib.data import HARD_STRINGS, synthetic_stories, write_fixture
from storylib.fastbpe import check_rank_consistency, chunk_counts, to_tiktoken, train_bpe
from storylib.tokenizer import (
    GPT2_SPLIT_PATTERN,
    GPT4_SPLIT_PATTERN,
    STORY_SPECIALS,
    RegexTokenizer,
    storyteller_tokenizer,
)

ALPHABETS = ("abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ", "абвгдежзиклмнопрст", "αβγδεζηθικλμ",
             "가나다라마바사아자차카타파하한글", "0123456789", "éèêëàâäöüßçñ", "🐶🌟🎈🌈🍪😊")
SEPARATORS = (" ", " ", " ", "\n", "  ", "\r\n", "\t", ", ", "'s ", "... ", "'LL ", "   \n\n")
EXTRA_HARD = ("<|user|>hi<|end|><|assistant|>Once upon a time<|end|>", "\r\n\r\n  \n\t\t x  ", " " * 50 + "a",
              "1234567" * 5, "x" * 300, "<|endoftext|><|endoftext|>", "<|endoftext", "Zoë's 🐶 ate 12 🍪🍪🍪!")


def random_words(n: int, seed: int) -> list[str]:
    """n made-up words from mixed scripts, the i-th repeated about 300 / (i + 1) times: many equal counts."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        letters = rng.choice(ALPHABETS)
        word = "".join(rng.choice(letters) for _ in range(rng.randint(1, 7)))
        out.append((word + rng.choice(SEPARATORS)) * max(1, 300 // (i + 1)))
    return out


STORIES = synthetic_stories(12_000, seed=4, unicode=True)  # about 2.4 MB
DOCS = [s + "\n" for s in STORIES] + random_words(600, seed=5) + list(HARD_STRINGS)
TEXT = "".join(DOCS)


def reference(text: str, vocab_size: int, pattern: str = GPT4_SPLIT_PATTERN) -> RegexTokenizer:
    tok = RegexTokenizer(pattern)
    tok.train(text, vocab_size)
    return tok


def assert_same_merges(ours: RegexTokenizer, ref: RegexTokenizer) -> None:
    got, want = list(ours.merges.items()), list(ref.merges.items())
    first = next((i for i, (g, w) in enumerate(zip(got, want, strict=False)) if g != w), None)
    assert first is None, f"merge {first} differs: train_bpe learned {got[first]}, the reference {want[first]}"
    assert len(got) == len(want), f"train_bpe learned {len(got)} merges, the reference {len(want)}"


# ----------------------------------------------------------------------------- (a) the same merges


@pytest.mark.parametrize("pattern, vocab_size", [(GPT4_SPLIT_PATTERN, 1499), (GPT2_SPLIT_PATTERN, 777)],
                         ids=["gpt4-1499", "gpt2-777"])
def test_same_merges_as_the_reference(pattern: str, vocab_size: int):
    ref = reference(TEXT, vocab_size, pattern)
    assert len(ref.merges) > 500, "the test data should allow hundreds of merges"
    assert_same_merges(train_bpe(TEXT, vocab_size, pattern, progress=False), ref)


def test_stops_early_like_the_reference_when_no_pair_is_left():
    text = "".join(HARD_STRINGS)
    ref = reference(text, 5000)
    assert len(ref.merges) < 5000 - 256, "the hard strings alone should run out of pairs"
    assert_same_merges(train_bpe(text, 5000, progress=False), ref)


@pytest.mark.parametrize("text", ["", "a", "🐶", "  "])
def test_tiny_inputs(text: str):
    for vocab_size in (256, 257, 300):
        assert_same_merges(train_bpe(text, vocab_size, progress=False), reference(text, vocab_size))
    with pytest.raises(ValueError):
        train_bpe(text, 255, progress=False)


def test_documents_are_split_one_by_one():
    # "ab" + "cd" joined is one chunk "abcd"; as two documents the pair (b, c) never occurs
    tok = train_bpe(["ab", "cd"] * 3, 300, progress=False)
    assert (ord("b"), ord("c")) not in tok.merges, "a chunk should never span two documents"
    # the reference on exactly the documents' chunks
    ref = RegexTokenizer(GPT2_SPLIT_PATTERN)
    ref.split = lambda _text: [c for d in DOCS for c in regex.findall(GPT2_SPLIT_PATTERN, d)]
    ref.train("", 555)
    assert_same_merges(train_bpe(DOCS, 555, GPT2_SPLIT_PATTERN, progress=False), ref)


def test_story_documents_train_like_their_concatenation():
    # each story + "\n" (how the storyteller's tokenizer is trained): the joins are chunk boundaries
    docs = [s + "\n" for s in STORIES[:3000]]
    per_doc = Counter(c for d in docs for c in regex.findall(GPT4_SPLIT_PATTERN, d))
    assert per_doc == Counter(regex.findall(GPT4_SPLIT_PATTERN, "".join(docs))), "joins should be chunk boundaries"
    assert_same_merges(train_bpe(docs, 600, progress=False), reference("".join(docs), 600))


def test_worker_processes_count_the_same(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(fastbpe, "BATCH_CHARS", 20_000)  # many small batches, so the pool is used
    docs = DOCS[:2000] + DOCS[-700:]
    serial = chunk_counts(docs, workers=1, progress=False)
    assert chunk_counts(docs, workers=2, progress=False) == serial, "2 processes should count as 1 does"
    assert chunk_counts(iter(docs), workers=2, progress=False) == serial, "a generator of documents should work"


def test_special_tokens_are_added_after_training():
    tok = train_bpe(STORIES[:200], 4096, special_tokens=STORY_SPECIALS, progress=False)
    assert tok.special_tokens == STORY_SPECIALS
    assert all(idx < 4096 for idx in tok.merges.values())
    with pytest.raises(ValueError):
        train_bpe(STORIES[:200], 300, special_tokens={"<|x|>": 299}, progress=False)  # id taken by a merge


# ----------------------------------------------------------------------------- (b) the tiktoken export

CATALOGUE = list(HARD_STRINGS) + list(EXTRA_HARD) + synthetic_stories(300, seed=9, unicode=True)


@pytest.mark.parametrize("pattern", [GPT4_SPLIT_PATTERN, GPT2_SPLIT_PATTERN], ids=["gpt4", "gpt2"])
def test_tiktoken_encodes_like_storylib(pattern: str):
    tok = train_bpe(DOCS, 1201, pattern, progress=False)
    n = 256 + len(tok.merges)
    tok.register_special_tokens({"<|endoftext|>": n, "<|user|>": n + 1, "<|end|>": n + 2, "<|assistant|>": n + 3})
    enc = to_tiktoken(tok)
    assert enc.n_vocab == tok.n_vocab, f"tiktoken has {enc.n_vocab} tokens, storylib {tok.n_vocab}"
    for text in CATALOGUE:
        ids = tok.encode_ordinary(text)
        assert enc.encode_ordinary(text) == ids, f"encode_ordinary differs on {text!r}"
        assert enc.encode(text, allowed_special="all") == tok.encode(text, "all"), f"encode differs on {text!r}"
        assert enc.decode(ids) == text == tok.decode(ids), f"decoding should give back {text!r}"
    assert enc.encode_ordinary(TEXT[-50_000:]) == tok.encode_ordinary(TEXT[-50_000:])


def made_up(merges: list[tuple[int, int]]) -> RegexTokenizer:
    return RegexTokenizer(GPT4_SPLIT_PATTERN, {p: 256 + i for i, p in enumerate(merges)})


def test_rank_consistency_catches_tokenizers_tiktoken_would_encode_differently():
    a, b, c = ord("a"), ord("b"), ord("c")
    # "abc" from (a, "bc"), but by ranks "ab" (256) merges before "bc" (257): tiktoken can't rebuild it
    odd = made_up([(a, b), (b, c), (a, 257)])
    with pytest.raises(ValueError, match="tiktoken"):
        check_rank_consistency(odd)
    enc = to_tiktoken(odd, check=False)
    assert enc.encode_ordinary("abc") != odd.encode_ordinary("abc"), "this is the disagreement the check prevents"
    with pytest.raises(ValueError, match="both"):  # "abc" twice: (ab, c) and (a, bc)
        check_rank_consistency(made_up([(a, b), (256, c), (b, c), (a, 258)]))
    check_rank_consistency(train_bpe(DOCS, 900, progress=False))  # trained by BPE: always consistent


# ----------------------------------------------------------------------------- (c) the committed storyteller tokenizer


def test_committed_storyteller_tokenizer():
    tok = storyteller_tokenizer()
    assert tok.n_vocab == 4104, f"the storyteller has 4096 BPE tokens + 8 specials = 4104, got {tok.n_vocab}"
    assert len(tok.merges) == 3840 and tok.pattern == GPT4_SPLIT_PATTERN
    assert tok.special_tokens == STORY_SPECIALS
    enc = to_tiktoken(tok)
    for text in CATALOGUE[:60]:
        ids = tok.encode(text, "all")
        assert tok.decode(ids) == text, f"storyteller should round-trip {text!r}"
        assert enc.encode(text, allowed_special="all") == ids, f"tiktoken export differs on {text!r}"
    assert tok.encode("<|endoftext|>", "all") == [4096]
    assert len(tok.encode_ordinary("Once upon a time, there was a little girl.")) <= 12, "it should compress stories"


def test_command_line_trains_on_load_stories(tmp_path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("STORYLIB_DATA", str(write_fixture(tmp_path / "data", n_train=300, n_valid=40, seed=3,
                                                         unicode=True)))
    out = tmp_path / "tok.json"
    assert fastbpe.main(["train", "--vocab-size", "500", "--out", str(out), "--quiet"]) == 0
    saved = RegexTokenizer.load(out)
    from storylib.data import load_stories

    text = "".join(s + "\n" for s in load_stories("train"))
    assert_same_merges(saved, reference(text, 500))
    assert saved.special_tokens == STORY_SPECIALS
