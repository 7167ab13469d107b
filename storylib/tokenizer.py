"""Chapter 6 — tokenization: byte-level BPE from scratch, in the spirit of Karpathy's minbpe.

A tokenizer turns text into a list of integers and back. Ours start from the 256 UTF-8 byte values and
learn merges with byte-pair encoding (BPE, Sennrich et al. 2016; GPT-2, Radford et al. 2019):

    utf8_encode            one code point to its UTF-8 bytes, by hand           (exercise ch06.utf8)
    get_stats, merge       the two primitives of BPE                            (exercises ch06.stats, ch06.merge)
    BasicTokenizer         train / encode / decode on raw bytes                 (exercises ch06.train, ch06.encode,
                                                                                  ch06.decode)
    RegexTokenizer         split with GPT-2's or GPT-4's pattern first, so no merge crosses a word
                           boundary; train on unique chunks with their counts   (exercise ch06.regex_train)
                           special tokens such as <|endoftext|>                 (exercise ch06.special)
    eot_id                 the id of <|endoftext|> (EOT_TOKEN) in ours or in a tiktoken.Encoding
    GPT4Tokenizer          tiktoken's cl100k_base rebuilt from its ranks        (exercise ch06.recover_merges)
    save / load            a small JSON file (safe to load: no pickle)
    storyteller_tokenizer  the course's 4096-token tokenizer trained on TinyStories, with the chat specials

Merge order is deterministic everywhere in the course: the most frequent pair wins, and a tie goes to the
smaller pair of ids (tuples compare element by element). `storylib.fastbpe` trains the same merges fast.
"""

from __future__ import annotations

import json
import os
import tempfile
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import pairwise
from pathlib import Path

import regex as re

from storylib.data import EOT_TOKEN  # the raw files end each story with it; the tokenizers make it one special

# ----------------------------------------------------------------------------- split patterns

# GPT-2 (openai/gpt-2 encoder.py): contractions, letters, numbers, other symbols, whitespace.
GPT2_SPLIT_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# GPT-4 (tiktoken cl100k_base): case-insensitive contractions, numbers in groups of at most 3 digits, ...
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)

# The storyteller's special tokens, after its 4096 BPE tokens. Which chapter needs which:
STORY_SPECIALS = {
    EOT_TOKEN: 4096,  # ch11: stands before every story (document separator / BOS)
    "<|system|>": 4097,  # ch14: chat turns — <|user|> text <|end|> <|assistant|> story <|end|>
    "<|user|>": 4098,
    "<|assistant|>": 4099,
    "<|end|>": 4100,  # ch14: ends a turn; ch12/16 stop generating on it
    "<|pad|>": 4101,  # ch12/14: fills batches of unequal length (never attended, never a target)
    "<|image|>": 4102,  # ch17: where an image's codes go in a multimodal sequence
    "<|reserved|>": 4103,  # unused, so the embedding table has room for one more without retraining
}


def eot_id(tokenizer) -> int:
    """The id of `<|endoftext|>` in a storylib tokenizer (`.special_tokens`) or a tiktoken.Encoding.

    Raises ValueError, naming the specials it has, if the tokenizer has no `<|endoftext|>`.
    """
    specials = getattr(tokenizer, "special_tokens", None)
    if specials is None:  # tiktoken keeps them private; its public special_tokens_set has no ids
        specials = tokenizer._special_tokens
    if EOT_TOKEN not in specials:
        raise ValueError(f"the tokenizer has no {EOT_TOKEN} special token (specials: {sorted(specials)})")
    return specials[EOT_TOKEN]


# ----------------------------------------------------------------------------- bytes


def utf8_encode(cp: int) -> bytes:
    """The UTF-8 bytes of one Unicode code point, by the rules of RFC 3629.  (exercise ch06.utf8)

        U+0000..U+007F     0xxxxxxx                              1 byte  (ASCII is itself)
        U+0080..U+07FF     110xxxxx 10xxxxxx                     2 bytes
        U+0800..U+FFFF     1110xxxx 10xxxxxx 10xxxxxx            3 bytes
        U+10000..U+10FFFF  11110xxx 10xxxxxx 10xxxxxx 10xxxxxx   4 bytes

    The x's are the code point's bits, most significant first. Raises ValueError for cp outside
    0..0x10FFFF and for surrogates U+D800..U+DFFF (they are not characters). Do not call str.encode.
    """
    if not 0 <= cp <= 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        raise ValueError(f"not a Unicode scalar value: {cp:#x}")
    ### BEGIN SOLUTION ch06.utf8 (§6.1, 2 pts): pick the length from the ranges, then lead byte + 10xxxxxx continuations
    if cp < 0x80:
        return bytes([cp])
    if cp < 0x800:
        return bytes([0xC0 | cp >> 6, 0x80 | cp & 0x3F])
    if cp < 0x10000:
        return bytes([0xE0 | cp >> 12, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    return bytes([0xF0 | cp >> 18, 0x80 | cp >> 12 & 0x3F, 0x80 | cp >> 6 & 0x3F, 0x80 | cp & 0x3F])
    ### END SOLUTION


# ----------------------------------------------------------------------------- the two primitives of BPE


def get_stats(ids: Sequence[int], counts: dict | None = None, weight: int = 1) -> dict[tuple[int, int], int]:
    """Count consecutive pairs.  (exercise ch06.stats)

    get_stats([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}. With `counts`, add into it (and return
    it); with `weight`, each pair counts `weight` times — a chunk that occurs 7 times in the text counts 7.
    """
    counts = {} if counts is None else counts
    ### BEGIN SOLUTION ch06.stats (§6.2, 1 pt): for each consecutive pair (itertools.pairwise), add `weight`
    for pair in pairwise(ids):
        counts[pair] = counts.get(pair, 0) + weight
    ### END SOLUTION
    return counts


def merge(ids: Sequence[int], pair: tuple[int, int], idx: int) -> list[int]:
    """Replace every occurrence of `pair`, left to right and without overlap, by the new token `idx`.  (ch06.merge)

    merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4];  merge([5, 5, 5], (5, 5), 6) == [6, 5].
    """
    ### BEGIN SOLUTION ch06.merge (§6.2, 2 pts): walk with an index; at a match emit idx and skip 2, else copy 1
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    ### END SOLUTION
    return out


def best_pair(stats: dict[tuple[int, int], int]) -> tuple[int, int]:
    """The pair to merge next: the most frequent; a tie goes to the smaller pair (the course-wide rule)."""
    return min(stats, key=lambda p: (-stats[p], p))


def render_token(t: bytes) -> str:
    """A token's bytes as readable text: broken UTF-8 as '�', control characters escaped (\\u000a)."""
    s = t.decode("utf-8", errors="replace")
    return "".join(f"\\u{ord(c):04x}" if unicodedata.category(c)[0] == "C" else c for c in s)


# ----------------------------------------------------------------------------- the tokenizers


class Tokenizer:
    """What every tokenizer here has: merges (pair -> new id, in training order), specials, and the vocab."""

    def __init__(self, pattern: str = "", merges: dict[tuple[int, int], int] | None = None,
                 special_tokens: dict[str, int] | None = None) -> None:
        self.pattern = pattern
        self.merges: dict[tuple[int, int], int] = dict(merges or {})
        self.special_tokens: dict[str, int] = dict(special_tokens or {})
        self.vocab = self._build_vocab()

    def _build_vocab(self) -> dict[int, bytes]:
        vocab = {i: bytes([i]) for i in range(256)}
        for (a, b), idx in self.merges.items():  # insertion order = training order: parts come first
            vocab[idx] = vocab[a] + vocab[b]
        for s, idx in self.special_tokens.items():
            vocab[idx] = s.encode("utf-8")
        return vocab

    @property
    def n_vocab(self) -> int:
        """One more than the largest id: the size an embedding table needs."""
        return max(self.vocab) + 1

    def register_special_tokens(self, special_tokens: dict[str, int]) -> None:
        taken = set(range(256)) | set(self.merges.values())
        for s, idx in special_tokens.items():
            if idx in taken:
                raise ValueError(f"special token {s!r} wants id {idx}, which a byte or a merge already uses")
        self.special_tokens.update(special_tokens)
        self.vocab = self._build_vocab()

    @property
    def inverse_special_tokens(self) -> dict[int, str]:
        return {v: k for k, v in self.special_tokens.items()}

    # ---- BPE on one list of byte ids (BasicTokenizer uses it on the whole text, RegexTokenizer per chunk)
    def _encode_bytes(self, data: bytes) -> list[int]:
        """Apply the learned merges to some bytes: always the earliest-learned merge that applies first."""
        ids = list(data)
        ### BEGIN SOLUTION ch06.encode (§6.3, 3 pts): while ≥ 2 ids: the pair with the lowest merge id; none → stop
        while len(ids) >= 2:
            stats = get_stats(ids)
            pair = min(stats, key=lambda p: self.merges.get(p, float("inf")))
            if pair not in self.merges:
                break  # nothing left to merge
            ids = merge(ids, pair, self.merges[pair])
        ### END SOLUTION
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text from ids: concatenate each token's bytes, then decode UTF-8 with '�' for broken sequences.

        Raises ValueError for an id the tokenizer does not know.
        """
        ### BEGIN SOLUTION ch06.decode (§6.3, 1 pt): b"".join(vocab[i]), errors="replace"; unknown id -> ValueError
        try:
            data = b"".join(self.vocab[i] for i in ids)
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]}") from None
        return data.decode("utf-8", errors="replace")
        ### END SOLUTION

    # ---- save / load: a JSON file with the pattern, the specials and the merges in order
    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        doc = {
            "format": "llm101n-bpe/1",
            "type": type(self).__name__,
            "pattern": self.pattern,
            "special_tokens": self.special_tokens,
            "merges": [[a, b] for (a, b) in self.merges],  # merge i makes token 256 + i
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=0)
        os.chmod(f.name, 0o644)  # NamedTemporaryFile makes it owner-only; a tokenizer is for everyone to read
        os.replace(f.name, path)  # atomic: a crash never leaves half a file
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        """Read a file written by `save`; a broken or foreign file gives a ValueError that says what is wrong."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a tokenizer file ({e})") from None
        if not isinstance(doc, dict) or doc.get("format") != "llm101n-bpe/1":
            raise ValueError(f"{path}: not an llm101n-bpe/1 tokenizer file")
        merges_list, specials = doc.get("merges"), doc.get("special_tokens", {})
        if not isinstance(merges_list, list) or not isinstance(specials, dict):
            raise ValueError(f"{path}: 'merges' must be a list and 'special_tokens' an object")
        merges: dict[tuple[int, int], int] = {}
        for i, m in enumerate(merges_list):
            idx = 256 + i
            ok = isinstance(m, list) and len(m) == 2 and all(type(x) is int and 0 <= x < idx for x in m)
            if not ok:
                raise ValueError(f"{path}: merge {i} is {m!r}; expected [a, b] with ids below {idx}")
            merges[(m[0], m[1])] = idx
        if len(merges) != len(merges_list):
            raise ValueError(f"{path}: a pair is merged twice")
        for s, idx in specials.items():
            if type(idx) is not int or idx < 256 + len(merges):
                raise ValueError(f"{path}: special token {s!r} has id {idx!r}, which collides with bytes or merges")
        kind = {c.__name__: c for c in (BasicTokenizer, RegexTokenizer, GPT4Tokenizer)}.get(doc.get("type"), cls)
        tok = kind.__new__(kind)
        Tokenizer.__init__(tok, doc.get("pattern", ""), merges, specials)
        return tok


class BasicTokenizer(Tokenizer):
    """Byte-level BPE over the whole text: no splitting, no special tokens."""

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        """Learn vocab_size - 256 merges on `text`; afterwards self.merges and self.vocab hold them.  (ch06.train)

        Each step merges the most frequent pair (ties: the smaller pair, see `best_pair`) into the next id
        256, 257, ...; stop early when no pair is left.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
        ids = list(text.encode("utf-8"))
        merges: dict[tuple[int, int], int] = {}
        ### BEGIN SOLUTION ch06.train (§6.3, 3 pts): for each new id: stats, best_pair, merge, record it in merges
        for idx in range(256, vocab_size):
            stats = get_stats(ids)
            if not stats:
                break
            pair = best_pair(stats)
            ids = merge(ids, pair, idx)
            merges[pair] = idx
            if verbose:
                print(f"merge {idx - 255}: {pair} -> {idx} ({stats[pair]} times)")
        ### END SOLUTION
        self.merges = merges
        self.vocab = self._build_vocab()

    def encode(self, text: str) -> list[int]:
        return self._encode_bytes(text.encode("utf-8"))


class RegexTokenizer(Tokenizer):
    """GPT-2/GPT-4 style: split the text into chunks with a regex, run BPE inside each chunk only."""

    def __init__(self, pattern: str | None = None, merges: dict[tuple[int, int], int] | None = None,
                 special_tokens: dict[str, int] | None = None) -> None:
        super().__init__(GPT4_SPLIT_PATTERN if pattern is None else pattern, merges, special_tokens)

    def split(self, text: str) -> list[str]:
        return re.findall(self.pattern, text)

    def train(self, text: str, vocab_size: int, verbose: bool = False) -> None:
        """Like BasicTokenizer.train, but pairs are counted inside chunks only.  (exercise ch06.regex_train)

        Identical chunks are merged in the same way, so count each unique chunk once with its number of
        occurrences as the weight (Counter(self.split(text))). Merging order and tie rule as BasicTokenizer.
        """
        if vocab_size < 256:
            raise ValueError(f"vocab_size must be at least 256 (the bytes), got {vocab_size}")
        chunk_counts = Counter(self.split(text))
        merges: dict[tuple[int, int], int] = {}
        ### BEGIN SOLUTION ch06.regex_train (§6.4, 3 pts): ids per unique chunk; stats weighted by count; merge in all
        chunks = [list(c.encode("utf-8")) for c in chunk_counts]
        weights = list(chunk_counts.values())
        for idx in range(256, vocab_size):
            stats: dict[tuple[int, int], int] = {}
            for ids, w in zip(chunks, weights, strict=True):
                get_stats(ids, stats, w)
            if not stats:
                break
            pair = best_pair(stats)
            chunks = [merge(ids, pair, idx) for ids in chunks]
            merges[pair] = idx
            if verbose:
                print(f"merge {idx - 255}: {pair} -> {idx} ({stats[pair]} times)")
        ### END SOLUTION
        self.merges = merges
        self.vocab = self._build_vocab()

    def encode_ordinary(self, text: str) -> list[int]:
        """Encode, treating special-token text as ordinary text."""
        out: list[int] = []
        for chunk in self.split(text):
            out += self._encode_bytes(chunk.encode("utf-8"))
        return out

    def encode(self, text: str, allowed_special: str | set[str] = "none_raise") -> list[int]:
        """Encode, with special tokens handled as tiktoken does.  (exercise ch06.special)

        allowed_special: "all" (every registered special is one token), "none" (treat them as ordinary text),
        "none_raise" (like "none" but raise ValueError if any special appears in the text: the safe default
        for text from users) or a set of the specials to allow. Allowed specials become their own ids; the
        text between them is encoded with encode_ordinary.
        """
        if allowed_special == "all":
            allowed = dict(self.special_tokens)
        elif allowed_special in ("none", "none_raise"):
            allowed = {}
            if allowed_special == "none_raise":
                found = [s for s in self.special_tokens if s in text]
                if found:
                    raise ValueError(f"text contains special token(s) {found}; pass allowed_special to encode them")
        elif isinstance(allowed_special, set):
            unknown = allowed_special - self.special_tokens.keys()
            if unknown:
                raise ValueError(f"unknown special token(s): {sorted(unknown)}")
            allowed = {s: self.special_tokens[s] for s in allowed_special}
        else:
            raise ValueError(f"allowed_special must be 'all', 'none', 'none_raise' or a set, got {allowed_special!r}")
        ### BEGIN SOLUTION ch06.special (§6.5, 2 pts): re.split on "(" + "|".join(re.escape(s) ...) + ")", then encode
        if not allowed:
            return self.encode_ordinary(text)
        # longest first, so that one special that is a prefix of another never wins by accident
        special_pattern = "(" + "|".join(re.escape(s) for s in sorted(allowed, key=len, reverse=True)) + ")"
        out: list[int] = []
        for part in re.split(special_pattern, text):
            if part in allowed:
                out.append(allowed[part])
            elif part:
                out += self.encode_ordinary(part)
        return out
        ### END SOLUTION


# ----------------------------------------------------------------------------- GPT-4's tokenizer, rebuilt


def bpe_split(mergeable_ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """Run tiktoken's own BPE on `token` using only ranks below max_rank: the two parts it was made from."""
    parts = [bytes([b]) for b in token]
    while True:
        best = None
        for i, pair in enumerate(pairwise(parts)):
            rank = mergeable_ranks.get(pair[0] + pair[1])
            if rank is not None and rank < max_rank and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None:
            break
        i = best[0]
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2:]
    return parts


def recover_merges(mergeable_ranks: dict[bytes, int]) -> dict[tuple[int, int], int]:
    """tiktoken stores only token bytes -> rank. Recover BPE merges: (rank of part 1, rank of part 2) -> rank.

    For every multi-byte token, split it with `bpe_split` (BPE limited to ranks below its own rank): that
    leaves exactly two parts, the pair it was merged from.  (exercise ch06.recover_merges)
    """
    merges: dict[tuple[int, int], int] = {}
    ### BEGIN SOLUTION ch06.recover_merges (§6.6, 2 pts): each multi-byte token: bpe_split below its rank → 2 parts
    for token, rank in mergeable_ranks.items():
        if len(token) == 1:
            continue  # the 256 single bytes are not merges
        pair = bpe_split(mergeable_ranks, token, max_rank=rank)
        assert len(pair) == 2, f"token {token!r} did not split into two parts"
        merges[(mergeable_ranks[pair[0]], mergeable_ranks[pair[1]])] = rank
    ### END SOLUTION
    return merges


class GPT4Tokenizer(RegexTokenizer):
    """tiktoken's cl100k_base with our RegexTokenizer's machinery (encodes identically).

    Two quirks of cl100k: its single bytes do not have ranks 0..255 (the "byte shuffle"), so our byte ids are
    permuted before BPE and back after; and its merges live in `mergeable_ranks`, recovered above.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int] | None = None, special_tokens: dict[str, int] | None = None):
        if mergeable_ranks is None:
            import tiktoken

            enc = tiktoken.get_encoding("cl100k_base")
            mergeable_ranks, special_tokens = enc._mergeable_ranks, enc._special_tokens
        self.byte_shuffle = {i: mergeable_ranks[bytes([i])] for i in range(256)}
        merges = dict(sorted(recover_merges(mergeable_ranks).items(), key=lambda kv: kv[1]))
        super().__init__(GPT4_SPLIT_PATTERN, merges, special_tokens)

    def _build_vocab(self) -> dict[int, bytes]:
        vocab = {self.byte_shuffle[i]: bytes([i]) for i in range(256)}  # byte i has id byte_shuffle[i]
        for (a, b), idx in self.merges.items():
            vocab[idx] = vocab[a] + vocab[b]
        for s, idx in self.special_tokens.items():
            vocab[idx] = s.encode("utf-8")
        return vocab

    def _encode_bytes(self, data: bytes) -> list[int]:
        return super()._encode_bytes(bytes(self.byte_shuffle[b] for b in data))

    def save(self, path: str | os.PathLike) -> Path:
        raise NotImplementedError("GPT4Tokenizer is rebuilt from tiktoken's ranks; there is nothing to save")


# ----------------------------------------------------------------------------- the storyteller's tokenizer


def storyteller_tokenizer() -> RegexTokenizer:
    """The course's tokenizer: GPT-4's split pattern, 3840 merges learned on TinyStories, STORY_SPECIALS."""
    from storylib.data import course_file

    return RegexTokenizer.load(course_file("models/storyteller/tokenizer.json"))
