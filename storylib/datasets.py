"""Chapter 11 — datasets: from a pile of stories to batches a trainer can eat, and the instruction data for later.

    encode_stories      stories -> one uint16 stream [EOT, story 1, EOT, story 2, ..., EOT]   (exercise ch11.encode)
    write_shard(s), read_shard, load_tokens
                        the stream on disk: a 32-byte header + raw uint16, read back memory-mapped
    WindowSampler       random (x, y) windows; every token once an epoch; resumable            (exercise ch11.windows)
    pack_documents      whole stories packed into rows, with segment ids for a loss mask and
                        an attention reset; PackedSampler serves the rows                      (exercise ch11.pack)
    split_of            train/valid by a salted hash of the normalised text: no leakage        (exercise ch11.split)
    dedup_exact, minhash, near_duplicate_pairs, dedup
                        exact duplicates, then near duplicates with MinHash + LSH              (exercises ch11.dedup,
                                                                                                ch11.minhash)
    quality_problems    simple quality rules: length, non-ASCII, repeated lines, unfinished    (exercise ch11.filter)
    story_features      dialogue / happy ending / main character, by simple rules              (exercise ch11.features)
    make_instruction    one synthetic (instruction, response) pair from a story                (exercise ch11.instruct)
    build_instructions  the instruction dataset, reproducible from (stories, seed)
    to_chat             an instruction example as a conversation, for the chat template: that is
                        `storylib.chat_template`, with the chapter's last exercise (ch11.chat_template)

Shard format (little-endian, version 1):

    bytes 0..3    magic b"L101"
    bytes 4..7    uint32 version (1)
    bytes 8..15   uint64 n_tokens
    bytes 16..23  dtype name, ASCII, NUL-padded (b"uint16")
    bytes 24..31  reserved (zeros)
    bytes 32..    n_tokens little-endian uint16 token ids

uint16 holds ids 0..65535: the storyteller's 4104 ids fit with room to spare, and a token costs 2 bytes
instead of 8 for int64. A file is written to `<name>.tmp` and renamed, so a reader never sees half a shard.

The instruction dataset (`python -m storylib.datasets instruct --out data/instruct.jsonl`) is one JSON
object a line: {"instruction", "response", "features": {"name", "kind", "dialogue", "happy_ending", "words"}};
the response is the story itself, and the rules that make the rest are in `story_features` and
`make_instruction`. The same stories and seed always give the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import struct
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storylib.fastbpe import ordinary_encoder
from storylib.tokenizer import eot_id

SHARD_MAGIC = b"L101"
SHARD_VERSION = 1
HEADER_BYTES = 32
_HEADER = struct.Struct("<4sIQ8s8x")  # magic, version, n_tokens, dtype name, 8 reserved bytes
assert _HEADER.size == HEADER_BYTES
_DTYPES = {b"uint16": np.dtype("<u2")}


# ----------------------------------------------------------------------------- encoding stories


def encode_stories(stories: Sequence[str], tokenizer, progress: bool = False) -> np.ndarray:
    """All stories as one uint16 stream: [EOT, story 1, EOT, story 2, ..., story n, EOT].  (exercise ch11.encode)

    EOT is `eot_id(tokenizer)`; each story is encoded with encode_ordinary (text that
    looks like a special token is just text). The layout is `storylib.gpt2.story_stream`'s: every story is
    preceded by an EOT, so the model always sees "a new story starts here", and one EOT ends the stream.
    n stories give n + 1 EOTs; zero stories give [EOT]. Raises ValueError if an id would not fit uint16
    (a vocabulary of more than 65536 ids).
    """
    eot = eot_id(tokenizer)
    if max(tokenizer.n_vocab, eot + 1) > 2**16:
        raise ValueError(f"vocabulary of {tokenizer.n_vocab} ids does not fit uint16 (at most 65536)")
    encode_batch = ordinary_encoder(tokenizer)
    batches = range(0, len(stories), 1024)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encoding", unit_scale=1024, unit="story")
    ### BEGIN SOLUTION ch11.encode (§11.1, 2 pts): EOT + ids for each story, one EOT at the end, np.uint16
    pieces = []
    for start in batches:
        for ids in encode_batch(list(stories[start:start + 1024])):
            pieces.append(np.array([eot, *ids], dtype=np.uint16))
    pieces.append(np.array([eot], dtype=np.uint16))
    return np.concatenate(pieces)
    ### END SOLUTION


# ----------------------------------------------------------------------------- shards on disk


def write_shard(tokens: np.ndarray, path: str | os.PathLike) -> Path:
    """Write `tokens` (1-D, ids 0..65535) as a shard: the 32-byte header, then little-endian uint16.

    Atomic: written to `<path>.tmp`, flushed, then renamed over `path`. Raises ValueError for ids that do
    not fit uint16. Returns the path.
    """
    arr = np.asarray(tokens)
    if arr.ndim != 1:
        raise ValueError(f"tokens must be 1-D, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= 2**16):
        raise ValueError(f"token ids must be in 0..65535 to fit uint16, got {arr.min()}..{arr.max()}")
    arr = arr.astype("<u2", copy=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(_HEADER.pack(SHARD_MAGIC, SHARD_VERSION, arr.size, b"uint16"))
        f.write(arr.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_shard(path: str | os.PathLike) -> np.ndarray:
    """The tokens of a shard as a read-only np.memmap of uint16 (nothing is read until you index it).

    Raises ValueError, naming the file, for a wrong magic, an unknown version or dtype, or a file whose size
    is not header + 2 * n_tokens (truncated or with trailing bytes).
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(HEADER_BYTES)
    if len(head) < HEADER_BYTES:
        raise ValueError(f"{path}: {size} bytes is too short for a shard header ({HEADER_BYTES} bytes)")
    magic, version, n, dtype_name = _HEADER.unpack(head)
    if magic != SHARD_MAGIC:
        raise ValueError(f"{path}: not a token shard (magic {magic!r}, expected {SHARD_MAGIC!r})")
    if version != SHARD_VERSION:
        raise ValueError(f"{path}: shard version {version}, this code reads version {SHARD_VERSION}")
    dtype = _DTYPES.get(dtype_name.rstrip(b"\0"))
    if dtype is None:
        raise ValueError(f"{path}: unknown token dtype {dtype_name!r}")
    expected = HEADER_BYTES + n * dtype.itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise ValueError(f"{path}: {what}: header says {n:,} tokens ({expected:,} bytes), file has {size:,} bytes")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=HEADER_BYTES, shape=(n,))


def write_shards(stories: Sequence[str], tokenizer, out_dir: str | os.PathLike, prefix: str = "train",
                 shard_tokens: int = 50_000_000, progress: bool = False) -> list[Path]:
    """Encode `stories` and write them as `<out_dir>/<prefix>_000.bin`, `_001.bin`, ...; returns the paths.

    Shards are cut only between stories, just before an EOT, once a shard holds at least `shard_tokens`
    tokens; so every shard starts with EOT and no story is split. The last shard also holds the final EOT:
    the shards concatenated are exactly `encode_stories(stories, tokenizer)`.
    """
    if shard_tokens < 1:
        raise ValueError(f"shard_tokens must be >= 1, got {shard_tokens}")
    out_dir, eot = Path(out_dir), eot_id(tokenizer)
    paths: list[Path] = []
    buf: list[np.ndarray] = []
    held = 0
    step = 4096
    starts = range(0, len(stories), step)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=f"shards {prefix}", unit_scale=step, unit="story")
    for start in starts:
        # encode_stories of a slice ends with its own EOT: drop it, the next story's EOT (or the final one) follows
        part = encode_stories(stories[start:start + step], tokenizer)[:-1]
        eots = np.flatnonzero(part == eot)
        # split this part at story starts so a shard can be closed at any story boundary
        bounds = [*eots.tolist(), part.size]
        for a, b in zip(bounds, bounds[1:], strict=False):
            if held >= shard_tokens:
                paths.append(write_shard(np.concatenate(buf), out_dir / f"{prefix}_{len(paths):03d}.bin"))
                buf, held = [], 0
            buf.append(part[a:b])
            held += b - a
    buf.append(np.array([eot], dtype=np.uint16))
    paths.append(write_shard(np.concatenate(buf), out_dir / f"{prefix}_{len(paths):03d}.bin"))
    return paths


def load_tokens(paths: Sequence[str | os.PathLike]) -> np.ndarray:
    """The tokens of shards, in order: the memmap itself for one shard, else one array in memory."""
    if not paths:
        raise ValueError("no shards given")
    arrays = [read_shard(p) for p in paths]
    return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)


# ----------------------------------------------------------------------------- random windows


class WindowSampler:
    """Batches of random windows (x, y) of `block_size` tokens from one stream; y is x shifted by one.

    An epoch-wise permutation, not independent draws: epoch e picks a phase p in [0, T) and cuts the
    stream into the non-overlapping windows that start at p, p + T, p + 2T, ... (each T + 1 tokens long,
    so its targets are T new tokens), then serves them in the order of a random permutation. So every
    token is a target about once per epoch, even on tiny data, and the window boundaries move from epoch
    to epoch. The phase and permutation come from `np.random.default_rng([seed, epoch])`, so the k-th
    window served is a pure function of (seed, k): a sampler restored from `state_dict()` continues
    exactly where the saved one stopped, even with a different batch size.
    """

    def __init__(self, tokens: np.ndarray, block_size: int, batch_size: int, seed: int = 0) -> None:
        if block_size < 1 or batch_size < 1:
            raise ValueError(f"block_size and batch_size must be >= 1, got {block_size}, {batch_size}")
        if len(tokens) < block_size + 1:
            raise ValueError(f"{len(tokens)} tokens is too few for one window of block_size + 1 = {block_size + 1}")
        self.tokens = tokens
        self.block_size = block_size
        self.batch_size = batch_size
        self.seed = seed
        self.step = 0  # batches served
        self.consumed = 0  # windows served; the next window is number `consumed`
        self.windows_per_epoch = (len(tokens) - 1) // block_size
        self._epoch_cache: tuple[int, int, np.ndarray] | None = None

    def epoch_plan(self, epoch: int) -> tuple[int, np.ndarray]:
        """(phase, order) of an epoch: windows start at phase + block_size * order[i], i = 0, 1, ..."""
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            slack = (len(self.tokens) - 1) - self.windows_per_epoch * self.block_size  # in [0, block_size)
            phase = int(rng.integers(0, slack + 1))
            self._epoch_cache = (epoch, phase, rng.permutation(self.windows_per_epoch))
        return self._epoch_cache[1], self._epoch_cache[2]

    def window_starts(self, first: int, count: int) -> np.ndarray:
        """The start offsets (int64) of windows number first, first + 1, ..., first + count - 1."""
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, pos = divmod(first + i, self.windows_per_epoch)
            phase, order = self.epoch_plan(epoch)
            out[i] = phase + self.block_size * order[pos]
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next (x, y): int64 tensors of shape (batch_size, block_size) with y[b, t] = x[b, t + 1]'s token,
        i.e. x = tokens[s : s + T] and y = tokens[s + 1 : s + T + 1] for each window start s.  (exercise ch11.windows)
        """
        starts = self.window_starts(self.consumed, self.batch_size)
        T = self.block_size
        ### BEGIN SOLUTION ch11.windows (§11.2, 2 pts): gather tokens[s : s+T+1] per start, split into x, y
        rows = np.asarray(self.tokens[starts[:, None] + np.arange(T + 1)], dtype=np.int64)
        x = torch.from_numpy(rows[:, :-1].copy())
        y = torch.from_numpy(rows[:, 1:].copy())
        ### END SOLUTION
        self.consumed += self.batch_size
        self.step += 1
        return x, y

    def state_dict(self) -> dict:
        """Everything needed to continue (JSON-serialisable): seed, step, windows consumed, and checks."""
        return {"kind": "WindowSampler", "seed": int(self.seed), "step": int(self.step),
                "consumed": int(self.consumed), "block_size": int(self.block_size),
                "n_tokens": int(len(self.tokens))}

    def load_state_dict(self, state: dict) -> None:
        """Continue from `state`. Raises ValueError if it was saved for another block_size or stream length."""
        for key, mine in (("block_size", self.block_size), ("n_tokens", len(self.tokens))):
            if key in state and int(state[key]) != mine:
                raise ValueError(f"sampler state was saved with {key}={state[key]}, this sampler has {mine}")
        self.seed = int(state["seed"])
        self.step = int(state["step"])
        self.consumed = int(state.get("consumed", self.step * self.batch_size))
        self._epoch_cache = None


# ----------------------------------------------------------------------------- packing whole documents


@dataclass
class PackedRows:
    """Documents packed into rows of block_size + 1 tokens (see `pack_documents`).

    tokens:   (R, T + 1) int64, the pad id where a row is not full
    segments: (R, T + 1) int64, the index of the document each token comes from, -1 for padding
    """

    tokens: np.ndarray
    segments: np.ndarray

    @property
    def x(self) -> np.ndarray:
        """(R, T) inputs."""
        return self.tokens[:, :-1]

    @property
    def y(self) -> np.ndarray:
        """(R, T) targets: the next token."""
        return self.tokens[:, 1:]

    @property
    def loss_mask(self) -> np.ndarray:
        """(R, T) bool: predict y[t] only if x[t] and y[t] come from the same document (never across a seam)."""
        a, b = self.segments[:, :-1], self.segments[:, 1:]
        return (a == b) & (a >= 0)

    @property
    def position_ids(self) -> np.ndarray:
        """(R, T) the position of each input inside its own piece of document (restarts at 0 at each seam)."""
        seg = self.segments[:, :-1]
        out = np.zeros(seg.shape, dtype=np.int64)
        for t in range(1, seg.shape[1]):
            out[:, t] = np.where(seg[:, t] == seg[:, t - 1], out[:, t - 1] + 1, 0)
        return out

    def attention_mask(self) -> np.ndarray:
        """(R, T, T) bool, True where input t may attend to input s: s <= t and both from the same document.

        Padding positions attend to themselves only (so no row of the softmax is empty).
        """
        seg = self.segments[:, :-1]
        T = seg.shape[1]
        causal = np.tril(np.ones((T, T), dtype=bool))
        same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] >= 0)
        return (causal & same) | np.eye(T, dtype=bool)

    @property
    def efficiency(self) -> float:
        """The fraction of the row positions that hold real tokens (1 - padding)."""
        return float((self.segments >= 0).mean()) if self.segments.size else 0.0


def pack_documents(docs: Sequence[Sequence[int]], block_size: int, eot: int, pad: int) -> PackedRows:
    """Pack whole documents into rows of block_size + 1 tokens, greedily and in order.  (exercise ch11.pack)

    Each document d (a list of ids, no EOT) becomes the unit [eot, *d, eot]: the first EOT is the BOS the
    model conditions on, the last is the "story ends here" it must learn to predict. Units go into the current
    row, in order, while they fit ("next fit"); when the next one does not fit, the row is filled up with `pad`
    (segment -1) and a new row starts. A unit longer than block_size + 1 is cut into pieces that overlap by
    one token, unit[0 : T+1], unit[T : 2T+1], unit[2T : 3T+1], ... (no piece of length 1), so every pair
    (token, next token) of the document is in exactly one piece; each piece is placed like a unit.
    Every position of a unit or piece gets the document's index (0, 1, ...) as its segment.
    Returns PackedRows (no rows at all for no documents).
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    width = block_size + 1
    rows: list[list[int]] = []
    segs: list[list[int]] = []
    ### BEGIN SOLUTION ch11.pack (§11.3, 3 pts): [eot, *doc, eot] in pieces; next fit; pad the end of a row
    row: list[int] = []
    seg: list[int] = []

    def flush() -> None:
        nonlocal row, seg
        rows.append(row + [pad] * (width - len(row)))
        segs.append(seg + [-1] * (width - len(seg)))
        row, seg = [], []

    for d, doc in enumerate(docs):
        unit = [eot, *doc, eot]
        for start in range(0, len(unit) - 1, block_size):
            piece = unit[start:start + width]
            if len(row) + len(piece) > width:
                flush()
            row += piece
            seg += [d] * len(piece)
    if row:
        flush()
    ### END SOLUTION
    tokens = np.array(rows, dtype=np.int64).reshape(-1, width)
    segments = np.array(segs, dtype=np.int64).reshape(-1, width)
    return PackedRows(tokens, segments)


class PackedSampler:
    """Batches of packed rows: each epoch is a permutation of the rows from `default_rng([seed, epoch])`.

    next_batch() -> (x, y, segments): int64 tensors (B, T); y is -100 where the loss mask is 0, so
    `F.cross_entropy(logits.view(-1, V), y.view(-1))` skips those targets by its default ignore_index;
    segments (the inputs' document ids, -1 for padding) make the attention mask if the model takes one.
    state_dict / load_state_dict work as in WindowSampler.
    """

    def __init__(self, packed: PackedRows, batch_size: int, seed: int = 0) -> None:
        if len(packed.tokens) == 0:
            raise ValueError("no rows to sample from")
        self.packed, self.batch_size, self.seed = packed, batch_size, seed
        self.step = self.consumed = 0
        self._y = np.where(packed.loss_mask, packed.y, -100)

    def _rows(self, first: int, count: int) -> np.ndarray:
        n = len(self.packed.tokens)
        out = np.empty(count, dtype=np.int64)
        for i in range(count):
            epoch, pos = divmod(first + i, n)
            out[i] = np.random.default_rng([self.seed, epoch]).permutation(n)[pos]
        return out

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows = self._rows(self.consumed, self.batch_size)
        self.consumed += self.batch_size
        self.step += 1
        return (torch.from_numpy(self.packed.x[rows].copy()), torch.from_numpy(self._y[rows].copy()),
                torch.from_numpy(self.packed.segments[rows, :-1].copy()))

    def state_dict(self) -> dict:
        return {"kind": "PackedSampler", "seed": int(self.seed), "step": int(self.step),
                "consumed": int(self.consumed), "n_rows": int(len(self.packed.tokens))}

    def load_state_dict(self, state: dict) -> None:
        if "n_rows" in state and int(state["n_rows"]) != len(self.packed.tokens):
            raise ValueError(f"sampler state was saved for {state['n_rows']} rows, this one has "
                             f"{len(self.packed.tokens)}")
        self.seed, self.step = int(state["seed"]), int(state["step"])
        self.consumed = int(state.get("consumed", self.step * self.batch_size))


# ----------------------------------------------------------------------------- train / valid without leakage

_TYPOGRAPHY = str.maketrans({"‘": "'", "’": "'", "“": '"', "”": '"', "«": '"', "»": '"', "–": "-", "—": "-",
                             "…": "..."})


def normalize_text(text: str) -> str:
    """The form in which two stories count as "the same": NFKC, typographic quotes and dashes made ASCII,
    case-folded, every run of whitespace one space, stripped."""
    text = unicodedata.normalize("NFKC", text).translate(_TYPOGRAPHY).casefold()
    return " ".join(text.split())


def split_of(text: str, val_fraction: float = 0.05, salt: str = "llm101n") -> str:
    """'valid' or 'train' for one story, decided by its text alone.  (exercise ch11.split)

    h = the first 8 bytes of blake2b((salt + "\\x00" + normalize_text(text)).encode("utf-8"), digest_size=8),
    read as a big-endian unsigned integer; the story is 'valid' if h / 2**64 < val_fraction, else 'train'.
    Copies that differ only in case, quotes or spacing always land in the same split, whatever else is in the
    dataset and in whatever order; a different salt gives an independent split.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    ### BEGIN SOLUTION ch11.split (§11.4, 2 pts): 8-byte blake2b, big-endian int / 2**64
    data = (salt + "\x00" + normalize_text(text)).encode("utf-8")
    h = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")
    return "valid" if h / 2**64 < val_fraction else "train"
    ### END SOLUTION


def train_val_split(stories: Iterable[str], val_fraction: float = 0.05,
                    salt: str = "llm101n") -> tuple[list[str], list[str]]:
    """(train, valid) by `split_of`, each in the input order."""
    train: list[str] = []
    valid: list[str] = []
    for s in stories:
        (valid if split_of(s, val_fraction, salt) == "valid" else train).append(s)
    return train, valid


# ----------------------------------------------------------------------------- deduplication


def dedup_exact(stories: Sequence[str]) -> list[int]:
    """The indices of the stories to keep: the first of each group equal under `normalize_text`, in order.
    (exercise ch11.dedup)"""
    ### BEGIN SOLUTION ch11.dedup (§11.5, 1 pt): a set of normalised texts seen so far
    seen: set[str] = set()
    keep = []
    for i, s in enumerate(stories):
        key = normalize_text(s)
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep
    ### END SOLUTION


MERSENNE31 = (1 << 31) - 1  # the prime of the MinHash hash functions


def shingles(text: str, n: int = 3) -> set[str]:
    """The set of word n-grams ("shingles") of the normalised text, each joined by single spaces.
    A text of fewer than n words has its whole text as its only shingle (none if it is empty)."""
    words = normalize_text(text).split()
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    """|a ∩ b| / |a ∪ b| (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def shingle_hashes(sh: Iterable[str]) -> np.ndarray:
    """Each shingle as a 32-bit integer (blake2b, digest_size=4, big-endian), as uint64, sorted."""
    xs = [int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=4).digest(), "big") for s in sh]
    return np.array(sorted(xs), dtype=np.uint64)


def minhash_params(num_perm: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), uint64 arrays of num_perm: hash function k is h_k(x) = (a_k x + b_k) mod p, p = 2^31 - 1,
    with a_k in [1, p) and b_k in [0, p), drawn from default_rng(seed). For x < 2^32, a_k x + b_k < 2^63:
    no overflow in 64 bits. (The product must wrap around p many times for h_k to shuffle the x's: with a
    prime near 2^61 and a_k < 2^31 it would barely wrap, the order of the x's would survive, and the
    estimates of the Jaccard similarity would be off.)"""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, MERSENNE31, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, MERSENNE31, size=num_perm, dtype=np.uint64)
    return a, b


def minhash(sh: Iterable[str], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """The MinHash signature of a set of shingles: uint64 (num_perm,).  (exercise ch11.minhash)

    With x the `shingle_hashes` and (a, b) = `minhash_params(num_perm, seed)`, entry k is
    min over x of (a_k * x + b_k) mod (2^31 - 1). For an empty set every entry is 2^31 - 1 (larger than any
    real value). Two sets agree in entry k with probability (about) their Jaccard similarity, so the fraction
    of equal entries of two signatures estimates it.
    """
    x = shingle_hashes(sh)
    a, b = minhash_params(num_perm, seed)
    ### BEGIN SOLUTION ch11.minhash (§11.5, 2 pts): broadcast (a x + b) % p, min over x
    if x.size == 0:
        return np.full(num_perm, MERSENNE31, dtype=np.uint64)
    return ((a[:, None] * x[None, :] + b[:, None]) % np.uint64(MERSENNE31)).min(axis=1)
    ### END SOLUTION


def near_duplicate_pairs(stories: Sequence[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16,
                         n: int = 3, seed: int = 0) -> list[tuple[int, int, float]]:
    """Pairs (i, j, J) with i < j whose shingle sets have Jaccard J >= threshold, found with MinHash + LSH.

    Locality-sensitive hashing: cut each signature into `bands` bands of num_perm // bands rows; two stories
    whose signatures agree on all rows of at least one band become a candidate pair, and a candidate is kept
    only if its exact Jaccard reaches the threshold. With r rows a band, a pair of similarity s is a candidate
    with probability 1 - (1 - s^r)^bands: an S-curve, near 1 above (1/bands)^(1/r), near 0 well below it.
    So a pair can be missed (rarely, near the threshold), but a reported pair is always truly similar.
    """
    if num_perm % bands:
        raise ValueError(f"num_perm ({num_perm}) must be a multiple of bands ({bands})")
    rows = num_perm // bands
    sets = [shingles(s, n) for s in stories]
    sigs = np.stack([minhash(s, num_perm, seed) for s in sets]) if sets else np.zeros((0, num_perm), np.uint64)
    candidates: set[tuple[int, int]] = set()
    for band in range(bands):
        buckets: dict[bytes, list[int]] = {}
        for i, sig in enumerate(sigs):
            buckets.setdefault(sig[band * rows:(band + 1) * rows].tobytes(), []).append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    candidates.add((members[x], members[y]))
    out = []
    for i, j in sorted(candidates):
        if (sim := jaccard(sets[i], sets[j])) >= threshold:
            out.append((i, j, sim))
    return out


def dedup(stories: Sequence[str], threshold: float = 0.7, num_perm: int = 64, bands: int = 16,
          seed: int = 0) -> list[int]:
    """Indices to keep after exact dedup and then near dedup: a story goes if it is a near duplicate
    (`near_duplicate_pairs`) of an earlier story that is kept."""
    keep = dedup_exact(stories)
    kept = [stories[i] for i in keep]
    dropped: set[int] = set()
    for i, j, _ in near_duplicate_pairs(kept, threshold, num_perm, bands, seed=seed):  # sorted by i, then j
        if i not in dropped:
            dropped.add(j)
    return [keep[k] for k in range(len(keep)) if k not in dropped]


# ----------------------------------------------------------------------------- quality filters


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of `quality_problems` (the defaults reject about 1% of TinyStories)."""

    min_words: int = 10
    max_words: int = 1000
    max_non_ascii: float = 0.05  # fraction of characters, not counting typographic quotes and dashes
    max_repeated_lines: float = 0.3  # fraction of the non-empty lines that repeat an earlier line


QUALITY_RULES = ("too_short", "too_long", "non_ascii", "repeated_lines", "unfinished")


def quality_problems(story: str, config: FilterConfig = FilterConfig()) -> list[str]:
    """The rules `story` breaks, in the order of QUALITY_RULES (an empty list: keep it).  (exercise ch11.filter)

    words = story.split()
      "too_short"       len(words) < config.min_words
      "too_long"        len(words) > config.max_words
      "non_ascii"       more than config.max_non_ascii of the characters are not ASCII, after the typographic
                        quotes, dashes and ellipsis ‘ ’ “ ” « » – — … are made ASCII (str.translate(_TYPOGRAPHY));
                        an empty story has fraction 0
      "repeated_lines"  of the non-empty lines (stripped), more than config.max_repeated_lines are equal to an
                        earlier one (so "a\\nb\\na\\na" has 2 repeats of 4 lines, 0.5)
      "unfinished"      the last non-whitespace character is a letter or a digit (str.isalnum): a story cut off
                        mid-sentence. A story that is empty or all whitespace is not "unfinished".
    """
    ### BEGIN SOLUTION ch11.filter (§11.6, 2 pts): measure each rule, append its name if broken
    problems = []
    n_words = len(story.split())
    if n_words < config.min_words:
        problems.append("too_short")
    if n_words > config.max_words:
        problems.append("too_long")
    plain = story.translate(_TYPOGRAPHY)
    if plain and sum(not c.isascii() for c in plain) / len(plain) > config.max_non_ascii:
        problems.append("non_ascii")
    lines = [ln.strip() for ln in story.splitlines() if ln.strip()]
    if lines and (len(lines) - len(set(lines))) / len(lines) > config.max_repeated_lines:
        problems.append("repeated_lines")
    stripped = story.rstrip()
    if stripped and stripped[-1].isalnum():
        problems.append("unfinished")
    return problems
    ### END SOLUTION


def filter_stories(stories: Iterable[str], config: FilterConfig = FilterConfig()) -> tuple[list[str], Counter]:
    """(the stories that break no rule, a Counter of how many stories broke each rule)."""
    kept, reasons = [], Counter()
    for s in stories:
        if problems := quality_problems(s, config):
            reasons.update(problems)
        else:
            kept.append(s)
    return kept, reasons


# ----------------------------------------------------------------------------- synthetic instructions

STOPWORDS = frozenset("""
a about above after again against all also am an and any are as at away back be because been before being
below between both but by came can could day did do does doing done down during each even ever every few for
from get got had has have having he her here hers herself him himself his how i if in into is it its itself
just know let like little made make many me more most much must my myself never new no nor not now of off
on once one only or other our ours out over own put said same saw say says see she should so some soon still
such than that the their theirs them then there these they thing things this those through time to too
took under until up upon us very want wanted was way we went were what when where which while who why will
with would yes yet you your yours named called asked replied told oh wow okay ok hello hi please out
thank thanks help stop bye goodbye ah ouch hooray boom look come
""".split())

HAPPY_WORDS = frozenset("""
happy happily glad joy joyful smile smiled smiles smiling laugh laughed laughing love loved fun best friends
friend together proud excited hug hugged thank thanked thanks safe great wonderful
""".split())

SAD_WORDS = frozenset("""
sad sadly cry cried crying tears scared lonely alone upset angry hurt lost gone never broke broken died
sorry afraid
""".split())

# what a main character can be, when a story says "a little girl" rather than a name
CHARACTER_KINDS = frozenset("""
girl boy man woman lady baby mom dad mommy daddy grandma grandpa king queen prince princess dog cat puppy
kitten bunny rabbit bird bear duck fox mouse frog fish lion tiger monkey elephant owl cow pig horse sheep
dragon robot car truck train bee butterfly squirrel turtle tree boat crab whale octopus shark penguin
giraffe zebra deer wolf goat chicken hen snake spider ant bug doll toy ball balloon kid
""".split())

_WORD_RE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)*")
_SENTENCE_RE = re.compile(r"[^.!?]*[.!?]+[\"'”’)]*|[^.!?]+$")
_DIALOGUE_RE = re.compile(r"[\"“][^\"“”]*[^\"“”\s][^\"“”]*[\"”]")
_NAMED_RE = re.compile(r"\b(?:named|called)\s+([^\W\d_][\w'’-]*)")
# an article, and (lookahead, so nothing is consumed) the up to three words right after it
_KIND_RE = re.compile(r"\b(?:a|an|the)\s+(?=([^\W\d_]+)(?:\s+([^\W\d_]+))?(?:\s+([^\W\d_]+))?)",
                      re.IGNORECASE)


def sentences(text: str) -> list[str]:
    """The sentences of a text: runs ending in . ! or ? (with any closing quotes), stripped, non-empty."""
    return [s.strip() for s in _SENTENCE_RE.findall(text) if s.strip()]


def story_features(story: str) -> dict:
    """Features of a story found by simple, documented rules.  (exercise ch11.features)

    Returns {"name": str | None, "kind": str | None, "dialogue": bool, "happy_ending": bool}:

      name          the first capitalised word right after "named" or "called" (the matches of _NAMED_RE, in
                    order: "called to" is skipped); else the first capitalised word that occurs at least twice
                    in the story and whose lower case is not in STOPWORDS (words as found by _WORD_RE, in
                    order); else None
      kind          in the first two `sentences` joined by a space, for each article a/an/the in order
                    (_KIND_RE: its groups are the up to three words after it), the first of those words whose
                    lower case is in CHARACTER_KINDS, lower-cased ("a little girl named" -> "girl"); else None
      dialogue      True if _DIALOGUE_RE finds a quotation: an opening " or “, then a closing " or ”, with
                    something other than whitespace between them
      happy_ending  the lower-cased _WORD_RE words of the last two `sentences` include a HAPPY_WORDS word and
                    no SAD_WORDS word
    """
    ### BEGIN SOLUTION ch11.features (§11.7, 2 pts): the four rules of the docstring, one by one
    name = next((m.group(1) for m in _NAMED_RE.finditer(story) if m.group(1)[0].isupper()), None)
    if name is None:
        words = _WORD_RE.findall(story)
        counts = Counter(words)
        for w in words:
            if w[0].isupper() and w.lower() not in STOPWORDS and counts[w] >= 2:
                name = w
                break
    sents = sentences(story)
    kind = None
    for m in _KIND_RE.finditer(" ".join(sents[:2])):
        kind = next((w.lower() for w in m.groups() if w and w.lower() in CHARACTER_KINDS), None)
        if kind:
            break
    ending = {w.lower() for w in _WORD_RE.findall(" ".join(sents[-2:]))}
    return {
        "name": name,
        "kind": kind,
        "dialogue": _DIALOGUE_RE.search(story) is not None,
        "happy_ending": bool(ending & HAPPY_WORDS) and not ending & SAD_WORDS,
    }
    ### END SOLUTION


def content_words(story: str, exclude: Iterable[str] = ()) -> list[str]:
    """The story's distinct content words, sorted: lower-cased _WORD_RE words of 3+ letters, no apostrophe,
    not in STOPWORDS and not in `exclude` (lower-cased)."""
    skip = {w.lower() for w in exclude} | STOPWORDS
    words = {w.lower() for w in _WORD_RE.findall(story)}
    return sorted(w for w in words if len(w) >= 3 and w.isalpha() and w not in skip)


def character_phrase(features: dict) -> str | None:
    """How an instruction names the main character: "a girl named Lily", "Lily", "a dog", or None."""
    name, kind = features.get("name"), features.get("kind")
    if name and kind:
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} named {name}"
    if name:
        return name
    if kind:
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind}"
    return None


def _and_list(words: Sequence[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


# {c}: the character phrase; {w}: the words joined: a, b and c. Not quoted: '"shiny"' is tokenized as '"', 'sh',
# 'iny', '"', nothing like the ' shiny' of a story, and a small model then cannot copy the word (Chapter 14).
TEMPLATES_CHARACTER = (
    "Write a story about {c}.",
    "Tell me a short story where the main character is {c}.",
    "Can you write a children's story about {c}?",
)
TEMPLATES_WORDS = (
    "Write a story that uses the words {w}.",
    "Can you write a story that uses the words {w}?",
    "Tell me a short story with the words {w} in it.",
)
TEMPLATES_BOTH = (
    "Write a story about {c} that uses the words {w}.",
    "Tell me a short story where the main character is {c}. Use the words {w}.",
    "Can you write a story about {c} with the words {w}?",
)
TEMPLATE_PLAIN = "Write a short story."
HAPPY_CLAUSE = " It should have a happy ending."
DIALOGUE_CLAUSE = " Include some dialogue."


def make_instruction(story: str, rng: random.Random, n_words: int = 3) -> dict:
    """One synthetic example {"instruction", "response", "features"} from a story.  (exercise ch11.instruct)

    features = story_features(story), plus "words": `n_words` words drawn with rng.sample from
    content_words(story, exclude=[features["name"]] if there is a name) — or [] if there are fewer than
    n_words. The character phrase c = character_phrase(features). Then, drawing from rng in this order:

      1. use_words = rng.random() < 0.7, but False if there are no words;
      2. if c is None or not use_words: use_character = c is not None; else use_character = rng.random() < 0.5
      3. the template: rng.choice of TEMPLATES_BOTH, TEMPLATES_WORDS or TEMPLATES_CHARACTER by what is used,
         else TEMPLATE_PLAIN (no draw), formatted with c and w = the words joined: a, b and c (no quotes)
      4. if features["happy_ending"] and rng.random() < 0.5: append HAPPY_CLAUSE
      5. if features["dialogue"] and rng.random() < 0.5: append DIALOGUE_CLAUSE

    The response is the story itself; "features" records the words even when the instruction does not use them.
    """
    features = story_features(story)
    ### BEGIN SOLUTION ch11.instruct (§11.7, 2 pts): words, then steps 1-5, rng in that order
    pool = content_words(story, exclude=[features["name"]] if features["name"] else [])
    words = rng.sample(pool, n_words) if len(pool) >= n_words else []
    c = character_phrase(features)
    use_words = rng.random() < 0.7 and bool(words)
    use_character = c is not None if (c is None or not use_words) else rng.random() < 0.5
    w = _and_list(words) if words else ""
    if use_words and use_character:
        instruction = rng.choice(TEMPLATES_BOTH).format(c=c, w=w)
    elif use_words:
        instruction = rng.choice(TEMPLATES_WORDS).format(w=w)
    elif use_character:
        instruction = rng.choice(TEMPLATES_CHARACTER).format(c=c)
    else:
        instruction = TEMPLATE_PLAIN
    if features["happy_ending"] and rng.random() < 0.5:
        instruction += HAPPY_CLAUSE
    if features["dialogue"] and rng.random() < 0.5:
        instruction += DIALOGUE_CLAUSE
    return {"instruction": instruction, "response": story, "features": {**features, "words": words}}
    ### END SOLUTION


def example_rng(story: str, seed: int) -> random.Random:
    """The random.Random of one story's example: seeded with f"{seed}:" + the story's blake2b hex digest, so an
    example depends only on (story, seed), not on the other stories or their order."""
    return random.Random(f"{seed}:{hashlib.blake2b(story.encode('utf-8'), digest_size=16).hexdigest()}")


def build_instructions(stories: Iterable[str], seed: int = 0, n_words: int = 3) -> list[dict]:
    """The synthetic instruction dataset: `make_instruction(story, example_rng(story, seed))` for each story,
    in order. Reproducible: the same stories and seed give the same list, on any machine."""
    return [make_instruction(s, example_rng(s, seed), n_words) for s in stories]


def to_chat(example: dict, system: str | None = None) -> list[dict]:
    """An instruction example as a conversation: [system?], user = instruction, assistant = response."""
    chat = [{"role": "system", "content": system}] if system is not None else []
    return chat + [{"role": "user", "content": example["instruction"]},
                   {"role": "assistant", "content": example["response"]}]


# ----------------------------------------------------------------------------- command line


def _instruct(args) -> int:
    from storylib.data import load_stories

    stories = load_stories(args.split, limit=args.limit)
    examples = build_instructions(stories, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for ex in examples:
            f.write(json.dumps(ex, ensure_ascii=False, sort_keys=True) + "\n")
    os.replace(tmp, out)
    feats = Counter(k for ex in examples for k in ("dialogue", "happy_ending") if ex["features"][k])
    print(f"wrote {len(examples):,} examples to {out} ({out.stat().st_size / 1e6:.2f} MB); "
          f"with dialogue {feats['dialogue']:,}, happy ending {feats['happy_ending']:,}")
    return 0


def _shards(args) -> int:
    from storylib.data import load_stories
    from storylib.tokenizer import RegexTokenizer, storyteller_tokenizer

    tok = RegexTokenizer.load(args.tokenizer) if args.tokenizer else storyteller_tokenizer()
    for split in ("train", "valid"):
        stories = load_stories(split, limit=args.limit)
        paths = write_shards(stories, tok, args.out, prefix=split, shard_tokens=args.shard_tokens, progress=True)
        n = sum(len(read_shard(p)) for p in paths)
        print(f"{split}: {len(stories):,} stories -> {n:,} tokens in {len(paths)} shard(s) under {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m storylib.datasets instruct --out data/instruct.jsonl [--seed 0] [--split train] [--limit N]`
    or `python -m storylib.datasets shards --out data/shards [--tokenizer PATH] [--shard-tokens N]`."""
    p = argparse.ArgumentParser(prog="python -m storylib.datasets", description="Chapter 11's datasets.")
    sub = p.add_subparsers(dest="cmd", required=True)
    i = sub.add_parser("instruct", help="the synthetic instruction dataset, as JSON lines")
    i.add_argument("--out", required=True)
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--split", default="train")
    i.add_argument("--limit", type=int, default=None)
    s = sub.add_parser("shards", help="tokenise train and valid into uint16 shards")
    s.add_argument("--out", required=True)
    s.add_argument("--tokenizer", default=None, help="a tokenizer JSON (default: the storyteller's)")
    s.add_argument("--shard-tokens", type=int, default=50_000_000)
    s.add_argument("--limit", type=int, default=None)
    args = p.parse_args(argv)
    return _instruct(args) if args.cmd == "instruct" else _shards(args)


if __name__ == "__main__":
    sys.exit(main())
