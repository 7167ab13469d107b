"""Chapter 11 — datasets: the token stream, windows, packing, a leak-free split, dedup, filters, synthetic
instructions and the chat template.

Oracles are written out here from the contracts in `storylib/datasets.py`: Python's hashlib, plain loops over
Python ints, and a slow pure-Python BPE encoder (`Oracle` below; the package may encode through tiktoken).
Data is made here: synthetic stories, random token streams, a small tokenizer trained in the test with its
special tokens at unusual ids. The tokenizer is trained by `storylib.fastbpe` and the oracle never calls the
tokenizer's own encode/decode, so no Chapter 6 exercise is needed: this chapter is graded on its own.
Nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import hashlib
import json
import random
import re

import numpy as np
import pytest
import regex
import torch

from storylib import chat_template as C
from storylib import datasets as D
from storylib.data import HARD_STRINGS, synthetic_stories
from storylib.fastbpe import train_bpe
from storylib.tokenizer import EOT_TOKEN, STORY_SPECIALS, RegexTokenizer

# ----------------------------------------------------------------------------- shared fixtures


@pytest.fixture(scope="module")
def tok() -> RegexTokenizer:
    """A 277-merge tokenizer with the storyteller's specials at shuffled ids 533..540 (nothing hard-coded).

    Trained by storylib.fastbpe (given code, the same merges as RegexTokenizer.train), not by the learner's
    ch06.regex_train: a Chapter 11 grade must not depend on Chapter 6's exercises.
    """
    t = train_bpe("\n".join(synthetic_stories(50, seed=21, unicode=True)), vocab_size=533, progress=False, workers=1)
    ids = list(range(533, 533 + len(STORY_SPECIALS)))
    random.Random(4).shuffle(ids)
    t.register_special_tokens(dict(zip(STORY_SPECIALS, ids, strict=True)))
    return t


class Oracle:
    """`tok`'s encode_ordinary, encode(allowed_special="all") and decode, written out slowly in plain Python from
    its pattern, merges, vocab and specials (Chapter 6's contracts): never the tokenizer's own methods."""

    def __init__(self, tok: RegexTokenizer) -> None:
        self.pattern, self.merges, self.vocab = tok.pattern, dict(tok.merges), dict(tok.vocab)
        self.specials = dict(tok.special_tokens)

    def encode_ordinary(self, text: str) -> list[int]:
        out: list[int] = []
        for chunk in regex.findall(self.pattern, text):
            ids = list(chunk.encode("utf-8"))
            while len(ids) >= 2:  # merge the pair learned first, everywhere, until no learned pair is left
                pair = min(zip(ids, ids[1:], strict=False), key=lambda p: self.merges.get(p, float("inf")))
                if pair not in self.merges:
                    break
                merged, i = [], 0
                while i < len(ids):
                    if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
                        merged.append(self.merges[pair])
                        i += 2
                    else:
                        merged.append(ids[i])
                        i += 1
                ids = merged
            out += ids
        return out

    def encode_all(self, text: str) -> list[int]:
        out: list[int] = []
        alternatives = "|".join(regex.escape(s) for s in sorted(self.specials, key=len, reverse=True))
        for part in regex.split(f"({alternatives})", text):
            out += [self.specials[part]] if part in self.specials else self.encode_ordinary(part)
        return out

    def decode(self, ids: list[int]) -> str:
        return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")


@pytest.fixture(scope="module")
def oracle(tok) -> Oracle:
    return Oracle(tok)


def variants(story: str, rng: random.Random) -> str:
    """The same story as `normalize_text` sees it: other case, other spacing, curly or straight quotes."""
    out = story.upper() if rng.random() < 0.3 else story
    out = out.replace("'", "’") if rng.random() < 0.5 else out.replace("’", "'")
    out = out.replace('"', "“", 1) if rng.random() < 0.5 else out
    out = re.sub(" ", lambda m: rng.choice([" ", "  ", "\t", " \n"]), out)
    return ("  " if rng.random() < 0.5 else "") + out + ("\n" if rng.random() < 0.5 else "")


# ----------------------------------------------------------------------------- ch11.encode


@pytest.mark.exercise("ch11.encode")
def test_encode_stories_is_eot_story_eot_story_eot(tok, oracle):
    rng = random.Random(0)
    stories = synthetic_stories(37, seed=2, unicode=True)
    stories += ["", "<|endoftext|> looks special but is text", *rng.sample(HARD_STRINGS, 5)]
    rng.shuffle(stories)
    eot = tok.special_tokens[EOT_TOKEN]
    want = []
    for s in stories:
        want += [eot, *oracle.encode_ordinary(s)]
    want.append(eot)
    got = D.encode_stories(stories, tok)
    assert isinstance(got, np.ndarray) and got.ndim == 1, "encode_stories should return a 1-D numpy array"
    assert got.dtype == np.uint16, f"the stream should be uint16 (2 bytes a token), got {got.dtype}"
    assert len(got) == len(want), f"expected {len(want)} tokens (EOT before each story, one at the end), got {len(got)}"
    assert got.tolist() == want, "the stream should be EOT, story 1's ids, EOT, story 2's ids, ..., EOT"


@pytest.mark.exercise("ch11.encode")
def test_encode_stories_eot_count_and_round_trip(tok, oracle):
    eot = tok.special_tokens[EOT_TOKEN]
    assert D.encode_stories([], tok).tolist() == [eot], "no stories: the stream is just [EOT]"
    for n in (1, 2, 1031 // 97):
        stories = synthetic_stories(n, seed=n, unicode=True)
        arr = D.encode_stories(stories, tok)
        where = np.flatnonzero(arr == eot)
        assert len(where) == n + 1, f"{n} stories should give {n + 1} EOTs, got {len(where)}"
        assert where[0] == 0 and where[-1] == len(arr) - 1, "the stream should start and end with EOT"
        back = [oracle.decode(arr[a + 1:b].tolist()) for a, b in zip(where, where[1:], strict=False)]
        assert back == stories, "decoding between consecutive EOTs should give the stories back, in order"


# ----------------------------------------------------------------------------- ch11.windows


def _stream(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60_000, size=n, dtype=np.uint16)


@pytest.mark.exercise("ch11.windows")
def test_next_batch_gives_shifted_windows_of_the_stream():
    toks = _stream(1013, 1)
    for T, B, seed in ((17, 5, 3), (1, 3, 0), (40, 7, 9)):
        s = D.WindowSampler(toks, block_size=T, batch_size=B, seed=seed)
        for _ in range(4):
            starts = s.window_starts(s.consumed, B)
            x, y = s.next_batch()
            assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "x and y should be torch tensors"
            assert x.dtype == torch.int64 and y.dtype == torch.int64, f"x, y should be int64, got {x.dtype}, {y.dtype}"
            assert tuple(x.shape) == (B, T) and tuple(y.shape) == (B, T), f"x, y should have shape {(B, T)}"
            for b, st in enumerate(starts.tolist()):
                assert x[b].tolist() == toks[st:st + T].tolist(), f"x[{b}] should be tokens[{st}:{st + T}]"
                assert y[b].tolist() == toks[st + 1:st + T + 1].tolist(), f"y[{b}] should be x[{b}] shifted by one"


@pytest.mark.exercise("ch11.windows")
def test_one_epoch_of_batches_targets_every_token_at_most_once():
    n, T = 1001, 13
    s = D.WindowSampler(np.arange(n, dtype=np.uint16), block_size=T, batch_size=1, seed=5)
    w = (n - 1) // T
    for epoch in range(2):
        ys = np.concatenate([s.next_batch()[1].numpy().ravel() for _ in range(w)])
        assert len(np.unique(ys)) == len(ys) == w * T, f"epoch {epoch}: a target came twice within one epoch"
        assert len(ys) > n - 1 - T, f"epoch {epoch}: too many tokens were never a target"


@pytest.mark.exercise("ch11.windows")
def test_sampler_resumes_from_its_state_exactly():
    toks = _stream(777, 2)
    a = D.WindowSampler(toks, 11, 6, seed=42)
    ref = [a.next_batch() for _ in range(25)]
    b = D.WindowSampler(toks, 11, 6, seed=42)
    for _ in range(9):
        b.next_batch()
    c = D.WindowSampler(toks, 11, 6, seed=1)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    for k in range(9, 25):
        x, y = c.next_batch()
        assert torch.equal(x, ref[k][0]) and torch.equal(y, ref[k][1]), f"batch {k} differs after resuming"


# ----------------------------------------------------------------------------- ch11.pack


def oracle_pack(docs, T, eot, pad):
    """Next fit, written as: make every piece first, then place the pieces."""
    pieces = []
    for d, doc in enumerate(docs):
        unit = [eot, *doc, eot]
        start = 0
        while True:
            pieces.append((d, unit[start:start + T + 1]))
            if start + T + 1 >= len(unit):
                break
            start += T
    rows, segs, cur, cseg = [], [], [], []
    for d, p in pieces:
        if len(cur) + len(p) > T + 1:
            rows.append(cur + [pad] * (T + 1 - len(cur)))
            segs.append(cseg + [-1] * (T + 1 - len(cseg)))
            cur, cseg = [], []
        cur, cseg = cur + p, cseg + [d] * len(p)
    if cur:
        rows.append(cur + [pad] * (T + 1 - len(cur)))
        segs.append(cseg + [-1] * (T + 1 - len(cseg)))
    return rows, segs


def random_docs(n: int, seed: int, max_len: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lens = np.minimum(rng.geometric(1 / (max_len / 3), size=n), max_len)
    lens[rng.random(n) < 0.1] = 0
    return [rng.integers(0, 500, size=k).tolist() for k in lens]


@pytest.mark.exercise("ch11.pack")
def test_pack_documents_next_fit_with_overlapping_pieces():
    for seed, T, n in ((0, 13, 41), (1, 7, 23), (2, 31, 60), (3, 1, 9)):
        docs = random_docs(n, seed, max_len=3 * T)
        eot, pad = 501 + seed, 777
        packed = D.pack_documents(docs, T, eot, pad)
        rows, segs = oracle_pack(docs, T, eot, pad)
        assert packed.tokens.shape == (len(rows), T + 1), (
            f"T={T}: expected {len(rows)} rows of {T + 1} tokens, got shape {packed.tokens.shape}")
        assert packed.tokens.tolist() == rows, f"T={T}: the packed tokens differ from greedy next fit"
        assert packed.segments.tolist() == segs, f"T={T}: segments should be each token's document index, -1 for pad"


@pytest.mark.exercise("ch11.pack")
def test_packed_loss_mask_covers_every_pair_of_every_document_once():
    T = 19
    docs = random_docs(50, 7, max_len=70)
    eot = 600
    packed = D.pack_documents(docs, T, eot, pad=601)
    mask = packed.loss_mask
    pairs = sorted(zip(packed.x[mask].tolist(), packed.y[mask].tolist(), strict=True))
    want = []
    for doc in docs:
        unit = [eot, *doc, eot]
        want += list(zip(unit[:-1], unit[1:], strict=False))
    assert len(pairs) == len(want), f"the loss mask should select {len(want)} (token, next) pairs, got {len(pairs)}"
    assert pairs == sorted(want), "the masked (x, y) pairs should be exactly the pairs inside each [EOT, doc, EOT]"
    assert not (packed.tokens[packed.segments < 0] != 601).any(), "padding positions should hold the pad id"


@pytest.mark.exercise("ch11.pack")
def test_attention_reset_makes_packed_rows_equal_separate_documents():
    T, C = 23, 8
    docs = random_docs(12, 11, max_len=12)
    packed = D.pack_documents(docs, T, eot=500, pad=0)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(502, C, dtype=torch.float64, generator=g)
    q, k = torch.randn(C, C, dtype=torch.float64, generator=g), torch.randn(C, C, dtype=torch.float64, generator=g)

    def attend(ids, allowed):
        h = emb[ids]
        scores = (h @ q) @ (h @ k).T
        return torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ h

    allowed = torch.from_numpy(packed.attention_mask())
    for r in range(len(packed.tokens)):
        ids = torch.from_numpy(packed.x[r])
        out = attend(ids, allowed[r])
        seg = packed.segments[r, :-1]
        for d in set(seg.tolist()) - {-1}:
            idx = np.flatnonzero(seg == d)
            alone = attend(ids[idx], torch.ones(len(idx), len(idx), dtype=torch.bool).tril())
            assert torch.allclose(out[idx], alone), f"row {r}: document {d} should not see its neighbours"


# ----------------------------------------------------------------------------- ch11.split


def oracle_split(text: str, frac: float, salt: str) -> str:
    digest = hashlib.blake2b((salt + "\x00" + D.normalize_text(text)).encode("utf-8"), digest_size=8).digest()
    return "valid" if int.from_bytes(digest, "big") < frac * 2**64 else "train"


@pytest.mark.exercise("ch11.split")
def test_split_of_is_the_salted_hash_rule():
    stories = synthetic_stories(301, seed=8, unicode=True) + list(HARD_STRINGS)
    for frac, salt in ((0.05, "llm101n"), (0.37, "other"), (0.5, ""), (0.0, "x"), (1.0, "x")):
        got = [D.split_of(s, frac, salt) for s in stories]
        want = [oracle_split(s, frac, salt) for s in stories]
        bad = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
        assert not bad, f"val_fraction={frac}, salt={salt!r}: {len(bad)} stories in the wrong split, e.g. #{bad[0]}"


@pytest.mark.exercise("ch11.split")
def test_copies_never_straddle_train_and_valid():
    rng = random.Random(3)
    stories = synthetic_stories(2000, seed=13)
    frac = 0.2
    n_valid = sum(D.split_of(s, frac) == "valid" for s in stories)
    sd = (2000 * frac * (1 - frac)) ** 0.5
    assert abs(n_valid - 400) < 5 * sd, f"about 20% of the stories should be in valid, got {n_valid} of 2000"
    pool = stories[:300] + [variants(s, rng) for s in stories[:300]]
    rng.shuffle(pool)
    train, valid = D.train_val_split(pool, frac)
    assert len(train) + len(valid) == len(pool)
    leaked = {D.normalize_text(s) for s in train} & {D.normalize_text(s) for s in valid}
    assert not leaked, f"{len(leaked)} stories have a copy in train and another in valid"
    other = [D.split_of(s, frac, salt="another salt") for s in stories[:400]]
    assert other != [D.split_of(s, frac) for s in stories[:400]], "a different salt should give a different split"


# ----------------------------------------------------------------------------- ch11.dedup


@pytest.mark.exercise("ch11.dedup")
def test_dedup_exact_keeps_the_first_of_each_normalised_group():
    rng = random.Random(5)
    base = synthetic_stories(97, seed=4, unicode=True)
    stories = list(base)
    for _ in range(60):
        stories.insert(rng.randrange(len(stories) + 1), variants(rng.choice(base), rng))
    first: dict[str, int] = {}
    for i, s in enumerate(stories):
        first.setdefault(D.normalize_text(s), i)
    want = sorted(first.values())
    got = D.dedup_exact(stories)
    assert list(got) == want, f"expected to keep {len(want)} stories (first of each group, in order), got {len(got)}"
    copies = [variants(base[0], rng) for _ in range(7)]
    assert list(D.dedup_exact(copies)) == [0], "seven copies of one story should keep only the first"


# ----------------------------------------------------------------------------- ch11.minhash


def random_words(n: int, rng: random.Random) -> list[str]:
    return ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(n)]


@pytest.mark.exercise("ch11.minhash")
def test_minhash_is_the_min_of_each_hash_function():
    rng = random.Random(6)
    p = (1 << 31) - 1
    for num_perm, seed, size in ((7, 0, 1), (33, 1, 17), (64, 2, 120)):
        sh = set(random_words(size, rng))
        a, b = D.minhash_params(num_perm, seed)
        xs = [int.from_bytes(hashlib.blake2b(s.encode(), digest_size=4).digest(), "big") for s in sh]
        want = [min((int(ak) * x + int(bk)) % p for x in xs) for ak, bk in zip(a, b, strict=True)]
        got = D.minhash(sh, num_perm, seed)
        assert isinstance(got, np.ndarray) and got.shape == (num_perm,), f"signature should have shape ({num_perm},)"
        assert [int(v) for v in got] == want, f"num_perm={num_perm}: entries should be min_x (a x + b) mod p"
    empty = D.minhash(set(), 9)
    assert [int(v) for v in empty] == [p] * 9, "the signature of an empty set is 2^31 - 1 everywhere"


@pytest.mark.exercise("ch11.minhash")
def test_signature_agreement_estimates_jaccard_and_finds_edited_copies():
    rng = random.Random(7)
    for j in (0.2, 0.5, 0.8):
        common = random_words(400, rng)
        extra = int(400 * (1 - j) / (2 * j))  # |A ∩ B| = 400, |A ∪ B| = 400 + 2 extra
        a = set(common) | {w + "_a" for w in random_words(extra, rng)}
        b = set(common) | {w + "_b" for w in random_words(extra, rng)}
        true_j = D.jaccard(a, b)
        est = float((D.minhash(a, 512, 3) == D.minhash(b, 512, 3)).mean())
        assert abs(est - true_j) < 0.08, f"agreement {est:.3f} should estimate Jaccard {true_j:.3f}"
    stories = synthetic_stories(40, seed=9)
    long = [s for s in stories if len(s.split()) > 40][:6]
    edited = [s.replace(" the ", " a ", 1) for s in long]
    pairs = D.near_duplicate_pairs(long + edited + stories[:10], threshold=0.7, num_perm=128, bands=32)
    found = {(i, j) for i, j, _ in pairs}
    for k in range(len(long)):
        assert (k, len(long) + k) in found, f"story {k} and its one-word edit should be a near-duplicate pair"


# ----------------------------------------------------------------------------- ch11.filter


def oracle_problems(s: str, cfg) -> list[str]:
    out = []
    n = len(s.split())
    if n < cfg.min_words:
        out.append("too_short")
    if n > cfg.max_words:
        out.append("too_long")
    t = s
    for fancy, plain in zip("‘’“”«»–—", "''\"\"\"\"--", strict=True):
        t = t.replace(fancy, plain)
    t = t.replace("…", "...")
    if t and sum(ord(c) > 127 for c in t) > cfg.max_non_ascii * len(t):
        out.append("non_ascii")
    lines = [x.strip() for x in s.splitlines() if x.strip()]
    seen, rep = set(), 0
    for x in lines:
        rep += x in seen
        seen.add(x)
    if lines and rep > cfg.max_repeated_lines * len(lines):
        out.append("repeated_lines")
    if s.strip() and s.strip()[-1].isalnum():
        out.append("unfinished")
    return out


def mutate(s: str, rng: random.Random) -> str:
    k = rng.randrange(6)
    if k == 0:
        return " ".join(s.split()[: rng.randint(0, 12)])
    if k == 1:
        return (s + "\n") * rng.randint(2, 5)
    if k == 2:
        return s + " " + "".join(rng.choice("éüñ世界😊…“”") for _ in range(rng.randint(1, 40)))
    if k == 3:
        return s.rstrip(".!?”\" ") + rng.choice(["", " and", " 42", "..."])
    if k == 4:
        return "\n".join(rng.choice(s.split(". ")) for _ in range(rng.randint(1, 6)))
    return s


@pytest.mark.exercise("ch11.filter")
def test_quality_problems_follow_the_rules():
    rng = random.Random(8)
    stories = [mutate(s, rng) for s in synthetic_stories(400, seed=10, unicode=True)]
    stories += ["", "   \n ", "a\nb\na\na", "The End", "word " * 1001 + "end."]
    for cfg in (D.FilterConfig(), D.FilterConfig(min_words=25, max_words=60, max_non_ascii=0.01,
                                                 max_repeated_lines=0.0)):
        for s in stories:
            want = oracle_problems(s, cfg)
            got = D.quality_problems(s, cfg)
            assert list(got) == want, f"{s[:60]!r}: expected problems {want}, got {got}"
    kinds = {p for s in stories for p in oracle_problems(s, D.FilterConfig())}
    assert kinds == set(D.QUALITY_RULES), f"the test data should break every rule, broke {kinds}"


# ----------------------------------------------------------------------------- ch11.features


NAMES = ("Zorbin", "Quilla", "Maple", "Ozzie", "Brindle", "Tuvo")
KINDS = ("girl", "boy", "dog", "fox", "turtle", "dragon")


def graded_story(rng: random.Random) -> tuple[str, dict]:
    """A story from the test's own grammar, and the features it was built with."""
    name, kind = rng.choice(NAMES), rng.choice(KINDS)
    adjs = " ".join(rng.sample(["shy", "tall", "quick", "green"], rng.randint(0, 2)))
    how = rng.randrange(3)
    if how == 0:
        opening = f"Once there was a {adjs} {kind} named {name}.".replace("  ", " ")
    elif how == 1:
        opening = f"In a town lived the {adjs} {kind}. Everyone called {name} to the shore.".replace("  ", " ")
    else:
        opening = f"{name} liked the rain. {name} jumped in puddles. Then the {kind} laughed."
    middle = rng.choice(["The sky was grey.", "The wind blew hard over the water."])
    dialogue = rng.random() < 0.5
    if dialogue:
        middle += rng.choice([' "Come here!" shouted a voice.', " “Look at that,” whispered a crow."])
    happy = rng.random() < 0.5
    if happy:
        ending = rng.choice(["At last everyone smiled.", "They hugged and laughed together."])
    else:
        ending = rng.choice(["The boat was gone.", "Everything was quiet, and the crow cried."])
    story = f"{opening} {middle}\nSome time passed. {ending}"
    kind_found = None if how == 2 else kind
    return story, {"name": name, "kind": kind_found, "dialogue": dialogue, "happy_ending": happy}


@pytest.mark.exercise("ch11.features")
def test_story_features_on_stories_with_known_answers():
    rng = random.Random(12)
    for _ in range(150):
        story, want = graded_story(rng)
        got = D.story_features(story)
        for key in ("name", "kind", "dialogue", "happy_ending"):
            assert got[key] == want[key], f"{key} of {story!r} should be {want[key]!r}, got {got[key]!r}"


@pytest.mark.exercise("ch11.features")
def test_story_features_edge_cases():
    f = D.story_features
    assert f('He said "" and left. They smiled.')["dialogue"] is False, "empty quotes are not dialogue"
    assert f("“Hi!” It was fun. Everyone was happy.")["dialogue"] is True, "curly quotes are dialogue"
    assert f("It rained. We were happy but sad.")["happy_ending"] is False, "a sad word in the ending wins"
    assert f("We were happy. Then a long day. Then the night came.")["happy_ending"] is False, (
        "only the last two sentences count")
    assert f("No one. Nothing.")["name"] is None and f("No one. Nothing.")["kind"] is None
    assert f("The dog ran. Pip barked. Pip slept.")["name"] == "Pip", "a capitalised word seen twice is a name"
    assert f("The dog ran. Then Pip barked.")["name"] is None, "a capitalised word seen once is not a name"
    assert f("She called to Mom. A boy named Rex came. Rex ran.")["name"] == "Rex", (
        "the name is the first *capitalised* word after named/called")


# ----------------------------------------------------------------------------- ch11.instruct


def oracle_instruction(story: str, rng: random.Random) -> dict:
    feats = D.story_features(story)
    pool = D.content_words(story, [feats["name"]] if feats["name"] else [])
    words = rng.sample(pool, 3) if len(pool) >= 3 else []
    c = D.character_phrase(feats)
    use_words = rng.random() < 0.7
    use_words = use_words and bool(words)
    if c is not None and use_words:
        use_char = rng.random() < 0.5
    else:
        use_char = c is not None
    w = f"{words[0]}, {words[1]} and {words[2]}" if words else ""
    table = {(True, True): D.TEMPLATES_BOTH, (True, False): D.TEMPLATES_WORDS, (False, True): D.TEMPLATES_CHARACTER}
    text = rng.choice(table[use_words, use_char]).format(c=c, w=w) if (use_words or use_char) else D.TEMPLATE_PLAIN
    if feats["happy_ending"] and rng.random() < 0.5:
        text += D.HAPPY_CLAUSE
    if feats["dialogue"] and rng.random() < 0.5:
        text += D.DIALOGUE_CLAUSE
    return {"instruction": text, "response": story, "features": {**feats, "words": words}}


@pytest.mark.exercise("ch11.instruct")
def test_make_instruction_follows_the_recipe():
    stories = synthetic_stories(120, seed=14, unicode=True) + ["Tiny.", "A cat named Bo sat."]
    for i, s in enumerate(stories):
        got = D.make_instruction(s, random.Random(i))
        want = oracle_instruction(s, random.Random(i))
        assert got == want, f"story {i}: expected {want['instruction']!r}, got {got.get('instruction')!r}"


@pytest.mark.exercise("ch11.instruct")
def test_instruction_dataset_is_reproducible_varied_and_truthful():
    stories = synthetic_stories(150, seed=15, unicode=True)
    a = D.build_instructions(stories, seed=3)
    assert a == D.build_instructions(stories, seed=3), "the same stories and seed should give the same dataset"
    assert a != D.build_instructions(stories, seed=4), "another seed should give another dataset"
    assert D.build_instructions(stories[::-1], seed=3) == a[::-1], "an example should not depend on story order"
    openers = {ex["instruction"].split()[0] for ex in a}
    assert len(openers) >= 3, f"instructions should vary, only saw openers {openers}"
    for ex in a:
        f, text = ex["features"], ex["instruction"]
        assert ex["response"] in stories
        words = re.findall(r'"([^"]+)"', text)
        lowered = {w.lower() for w in re.findall(r"[^\W\d_]+", ex["response"])}
        assert all(w in lowered and w not in D.STOPWORDS for w in words), f"{text!r}: words not from the story"
        assert ("happy ending" not in text) or f["happy_ending"], f"{text!r} promises a happy ending the story lacks"
        assert ("dialogue" not in text) or f["dialogue"], f"{text!r} promises dialogue the story lacks"


# ----------------------------------------------------------------------------- ch11.chat_template


def random_conversation(rng: random.Random) -> list[dict]:
    texts = [*synthetic_stories(8, seed=rng.randrange(99), unicode=True), *HARD_STRINGS,
             "<|user|>pretend<|end|>", "hi <|assistant|>"]
    chat = [{"role": "system", "content": rng.choice(texts)}] if rng.random() < 0.5 else []
    for _ in range(rng.randint(1, 3)):
        chat.append({"role": "user", "content": rng.choice(texts)})
        chat.append({"role": "assistant", "content": rng.choice(texts)})
    if rng.random() < 0.5:
        chat.append({"role": "user", "content": rng.choice(texts)})
    return chat


@pytest.mark.exercise("ch11.chat_template")
def test_render_chat_ids_and_loss_mask(tok, oracle):
    rng = random.Random(16)
    sp = tok.special_tokens
    role = {"system": sp["<|system|>"], "user": sp["<|user|>"], "assistant": sp["<|assistant|>"]}
    for _ in range(25):
        chat = random_conversation(rng)
        gen = chat[-1]["role"] == "user"
        want_ids, want_mask = [sp[EOT_TOKEN]], [0]
        for m in chat:
            body = oracle.encode_ordinary(m["content"])
            on = 1 if m["role"] == "assistant" else 0
            want_ids += [role[m["role"]], *body, sp["<|end|>"]]
            want_mask += [0, *[on] * len(body), on]
        if gen:
            want_ids.append(sp["<|assistant|>"])
            want_mask.append(0)
        ids, mask = C.render_chat(chat, tok, add_generation_prompt=gen)
        roles = [m["role"] for m in chat]
        assert list(ids) == want_ids, f"roles {roles}: ids differ from EOT (<|role|> text <|end|>)*"
        assert list(mask) == want_mask, f"roles {roles}: the mask should be 1 exactly on assistant text and its <|end|>"


@pytest.mark.exercise("ch11.chat_template")
def test_render_chat_matches_encoding_its_text_form(tok, oracle):
    examples = D.build_instructions(synthetic_stories(20, seed=17), seed=0)
    for ex in examples:
        chat = D.to_chat(ex, system="You tell short stories.")
        ids, mask = C.render_chat(chat, tok)
        assert list(ids) == oracle.encode_all(C.chat_text(chat)), (
            "render_chat should encode the template's text form, specials as single ids")
        n_story = len(oracle.encode_ordinary(ex["response"]))
        assert sum(mask) == n_story + 1, f"mask should cover the story's {n_story} ids and one <|end|>"
        ids_gen, mask_gen = C.render_chat(chat[:2], tok, add_generation_prompt=True)
        assert ids_gen[-1] == tok.special_tokens["<|assistant|>"] and sum(mask_gen) == 0, (
            "a generation prompt ends with <|assistant|> and has nothing to learn")
