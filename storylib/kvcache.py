"""Chapter 12 — fast inference: a KV cache, sampling, streaming and batches, written to be read from top to bottom.

Chapter 5's `GPT.generate` runs the whole context through the model again for every new token, although the
keys and values of the earlier tokens never change. Here they are kept (the KV cache, as in nanoGPT's and
gpt-fast's decoders), so a new token costs one token's worth of work. Storylib's `GPT` is not modified: the
cached forward walks the model's own modules (its embeddings, LayerNorms, attention projections, MLPs, head).

    KVCache             keys and values of every layer, allocated once, with per-sequence lengths
                        KVCache.update: write a chunk, return the filled prefix       (exercise ch12.cache_update)
                        KVCache.rows: its first n rows as a cache of their own, sharing k and v (Chapter 16)
    attention_cached    new queries against the cache: all of it, the chunk causally  (exercise ch12.attention_cached)
    forward_cached      prefill (many tokens) and decode (one token) with the model's own modules
                                                                                      (exercise ch12.forward_cached)
    process_logits, sample   repetition penalty, temperature, top-k, top-p, a seeded draw  (exercise ch12.sample)
    generate_tokens     the decode loop: token ids, one at a time (a Python generator)
    utf8_complete, stop_scan, StreamDecoder
                        token ids -> text pieces: never half a character, never a stop string
                                                                            (exercises ch12.stream, ch12.stop)
    generate_stream     prompt ids -> a generator of text pieces; stops at <|end|>, <|endoftext|> or a stop sequence
    generate_batch      many prompts at once, right-padded, each row with its own length  (exercise ch12.batch)
    decode_speed        tokens per second with and without the cache

The context window. The storyteller has learned position embeddings for positions 0..block_size-1 only, and a
cached key has its position baked in (the position embedding was added before c_attn), so cached keys cannot
slide to new positions. Chapter 5's `generate` crops the context to the last block_size tokens at every step,
which re-positions every token, every step: with a cache that would mean recomputing everything each step. So
when the cache is full, `generate_tokens` starts it again from the last block_size // 2 tokens (one prefill)
and goes on decoding. Up to block_size tokens (prompt + output) the cached and uncached paths agree token for
token; beyond it they read slightly different contexts (cached: between block_size / 2 and block_size tokens;
uncached: always block_size), a deliberate trade of exactness for speed.

Batches are right-padded: row b's prompt sits at slots 0..len_b-1 and its new tokens follow at len_b, len_b+1,
... so a token's slot is its position, as in the unbatched case. The cache's `lengths` say how many slots of
each row are real; attention never looks past a query's own slot, so pads (and any stale slot) are never read.

    python -m storylib.kvcache golden      the reference story of grading/tests/golden/ch12_once_upon_a_time.txt
    python -m storylib.kvcache speed       tokens/s of the shipped storyteller with and without the cache
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F

from storylib.gpt2 import GPT
from storylib.tokenizer import EOT_TOKEN, eot_id

END_TOKENS = ("<|end|>", EOT_TOKEN)  # generate_stream stops at these when the tokenizer has them

# ----------------------------------------------------------------------------- the cache


class KVCache:
    """The keys and values of every layer for the tokens seen so far, in two tensors allocated once.

    k, v: (n_layer, B, n_head, max_len, head_dim). lengths: (B,) int64, how many slots of each row hold real
    tokens; row b's token at position p has its key and value in slot p. Nothing is ever reallocated: a new
    token is written into the next free slot.
    """

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int64, device=device)

    @classmethod
    def for_model(cls, model: GPT, batch_size: int, max_len: int) -> KVCache:
        """A cache that fits `model` (its layers, heads, width, dtype and device) for max_len tokens a row."""
        c = model.config
        if not 1 <= max_len <= c.block_size:
            raise ValueError(f"max_len must be in 1..block_size ({c.block_size}), got {max_len}")
        p = next(model.parameters())
        return cls(c.n_layer, batch_size, c.n_head, max_len, c.n_embd // c.n_head, p.dtype, p.device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        """Forget every token (the slots are simply overwritten later)."""
        self.lengths = torch.zeros_like(self.lengths)

    def rows(self, n: int) -> KVCache:
        """The first n rows as a cache of their own (Chapter 16's batch engine decodes only its active rows).

        k and v are views: what is written through the new cache lands in this one. lengths starts as a view
        too, but forward_cached gives the new cache a new lengths tensor: copy it back into self.lengths[:n].
        """
        view = copy.copy(self)
        view.k, view.v, view.lengths = self.k[:, :n], self.v[:, :n], self.lengths[:n]
        return view

    def select(self, index: torch.Tensor) -> KVCache:
        """A new cache holding only the rows `index` (B',) of this one, in that order (copies, not views):
        generate_batch keeps decoding only the rows that have not stopped."""
        out = copy.copy(self)
        out.k, out.v, out.lengths = self.k[:, index], self.v[:, index], self.lengths[index]
        return out

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write new keys and values into one layer; return its filled prefix.  (exercise ch12.cache_update)

        k, v: (B, n_head, T, head_dim), the chunk's keys and values: row b's go to slots lengths[b] ..
        lengths[b] + T - 1 of `layer` (lengths itself is not changed here: forward_cached advances it once every
        layer has its chunk). Returns (keys, values), each (B, n_head, n, head_dim) with n = max(lengths) + T:
        views of the cache (no copy). In a row with lengths[b] + T < n the slots beyond are stale: attention
        masks them.
        """
        B, _, T, _ = k.shape
        if int(self.lengths.max()) + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens a row; {int(self.lengths.max())} + {T} do not fit")
        ### BEGIN SOLUTION ch12.cache_update (§12.2, 2 pts): slots lengths[b] + t of each row; write k, v; return :n
        slots = self.lengths[:, None] + torch.arange(T, device=k.device)  # (B, T): where each new token goes
        rows = torch.arange(B, device=k.device)[:, None]  # (B, 1)
        # indexing (rows, :, slots) picks, for each (b, t), the (n_head, head_dim) at row b, slot slots[b, t]
        self.k[layer][rows, :, slots] = k.transpose(1, 2)  # (B, T, n_head, head_dim)
        self.v[layer][rows, :, slots] = v.transpose(1, 2)
        n = int(self.lengths.max()) + T
        return self.k[layer, :, :, :n], self.v[layer, :, :, :n]
        ### END SOLUTION


# ----------------------------------------------------------------------------- the cached forward pass


def attention_cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Attention of T new queries over the cache.  (exercise ch12.attention_cached)

    q: (B, nh, T, hs), the queries of the new tokens: row b's token t sits at slot lengths[b] + t.
    k, v: (B, nh, L, hs), the cache's keys and values with the chunk already written, L >= max(lengths) + T.
    lengths: (B,) int64, how many tokens each row had in the cache before this chunk.
    Query t of row b may look at slot s exactly when s <= lengths[b] + t: all of the row's cache, the new chunk
    causally, and never a slot past its own (unused, stale, or a pad). Scores q·kᵀ/√hs, -inf where not allowed,
    softmax over s, weighted sum of v. Returns (B, nh, T, hs). Write the math out (no scaled_dot_product_attention).
    """
    ### BEGIN SOLUTION ch12.attention_cached (§12.3, 3 pts): q·kᵀ/√hs; -inf unless s <= lengths[b] + t; softmax; @ v
    T, L, hs = q.shape[2], k.shape[2], q.shape[3]
    t = torch.arange(T, device=q.device)
    s = torch.arange(L, device=q.device)
    allowed = s[None, None, :] <= (lengths[:, None, None] + t[None, :, None])  # (B, T, L)
    att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, nh, T, L)
    att = att.masked_fill(~allowed[:, None], float("-inf"))
    y = F.softmax(att, dim=-1) @ v  # (B, nh, T, hs)
    ### END SOLUTION
    return y


@torch.no_grad()
def forward_cached(model: GPT, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Logits for T new tokens a row, reading the cache and extending it.  (exercise ch12.forward_cached)

    idx: (B, T) int64, the new tokens; row b's token t is at position lengths[b] + t (lengths = cache.lengths
    before the call). Prefill is T = the prompt's length on an empty cache, decoding is T = 1. Use the model's
    own modules (model.transformer.wte, wpe, h[i].ln_1, .attn.c_attn, .attn.c_proj, .ln_2, .mlp, ln_f,
    model.lm_head; eval mode, so no dropout): embed token + position; in each block split c_attn(ln_1(x)) into
    q, k, v heads (B, nh, T, hs) as in Chapter 5, write k, v with cache.update(i, k, v), attend with
    attention_cached(q, keys, values, cache.lengths), merge the heads, c_proj, add; then x + mlp(ln_2(x)).
    Returns logits (B, T, vocab_size); afterwards cache.lengths has grown by T (done below the exercise).
    """
    B, T = idx.shape
    if int(cache.lengths.max()) + T > model.config.block_size:
        raise ValueError(f"positions up to {int(cache.lengths.max()) + T - 1} do not fit block_size "
                         f"{model.config.block_size}")
    tr = model.transformer
    ### BEGIN SOLUTION ch12.forward_cached (§12.4, 2 pts): pos = lengths + t; ln_1, c_attn, heads, update, attend; mlp
    pos = cache.lengths[:, None] + torch.arange(T, device=idx.device)  # (B, T)
    x = tr.wte(idx) + tr.wpe(pos)
    for i, block in enumerate(tr.h):
        attn = block.attn
        q, k, v = attn.c_attn(block.ln_1(x)).split(attn.n_embd, dim=2)
        q, k, v = (z.view(B, T, attn.n_head, -1).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        keys, values = cache.update(i, k, v)
        y = attention_cached(q, keys, values, cache.lengths)
        x = x + attn.c_proj(y.transpose(1, 2).reshape(B, T, -1))
        x = x + block.mlp(block.ln_2(x))
    logits = model.lm_head(tr.ln_f(x))
    ### END SOLUTION
    cache.lengths = cache.lengths + T  # a new tensor: whoever holds the old one keeps its values
    return logits


# ----------------------------------------------------------------------------- sampling


def _check_sampling(temperature: float, top_k: int | None, top_p: float | None, repetition_penalty: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 (or None), got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1] (or None), got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


def process_logits(logits: torch.Tensor, seen: torch.Tensor | None = None, *, temperature: float = 1.0,
                   top_k: int | None = None, top_p: float | None = None,
                   repetition_penalty: float = 1.0) -> torch.Tensor:
    """The next token's logits, reshaped for sampling.  (exercise ch12.sample)

    logits: (B, V) float; seen: (B, V) bool or None, True where the token already occurs in row b (prompt or
    output). In this order:
      1. repetition penalty (CTRL, Keskar et al. 2019), where seen: a logit x > 0 becomes x / penalty, any other
         x becomes x * penalty (penalty 1: nothing changes);
      2. temperature 0 means greedy: return here (the argmax is all that matters). Else divide by temperature;
      3. top_k (None: off): keep the k largest logits of each row (ties with the k-th stay), the rest -> -inf;
      4. top_p (None or 1: off), nucleus sampling: with p = softmax of what is left, keep the smallest set of the
         most probable tokens whose probabilities add up to >= top_p, the rest -> -inf. The top token always stays.
    Returns a new (B, V) tensor of the same dtype; `logits` is not modified.
    """
    _check_sampling(temperature, top_k, top_p, repetition_penalty)
    ### BEGIN SOLUTION ch12.sample (§12.5, 3 pts): penalty where seen; T = 0: return; / T; top-k; top-p by sorted cumsum
    if seen is not None and repetition_penalty != 1.0:
        penalized = torch.where(logits > 0, logits / repetition_penalty, logits * repetition_penalty)
        logits = torch.where(seen, penalized, logits)
    if temperature == 0:
        return logits.clone()
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, [-1]]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_p, order = F.softmax(logits, dim=-1).sort(dim=-1, descending=True)
        before = sorted_p.cumsum(dim=-1) - sorted_p  # the mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # enough mass already; the top token (before = 0) always stays
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    ### END SOLUTION
    return logits


def sample(logits: torch.Tensor, seen: torch.Tensor | None = None, *, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One token id per row, (B,) int64: the argmax if temperature == 0, else a draw from softmax(process_logits).

    The draw uses `generator` (torch.multinomial): the same seed gives the same tokens.
    """
    if temperature == 0 and (seen is None or repetition_penalty == 1.0):
        _check_sampling(temperature, top_k, top_p, repetition_penalty)
        return logits.argmax(dim=-1)  # plain greedy: there is nothing to reshape
    z = process_logits(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                       repetition_penalty=repetition_penalty)
    if temperature == 0:
        return z.argmax(dim=-1)
    return torch.multinomial(F.softmax(z, dim=-1), 1, generator=generator).squeeze(-1)


# ----------------------------------------------------------------------------- the decode loop


def _device(model: GPT) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def generate_tokens(model: GPT, prompt_ids: Sequence[int], max_new_tokens: int, *, temperature: float = 0.0,
                    top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                    stop_ids: Iterable[int] = (), generator: torch.Generator | None = None) -> Iterator[int]:
    """New token ids after prompt_ids, one at a time, with the KV cache: prefill the prompt once, then one token
    a step. Stops after max_new_tokens or at a token in stop_ids (not yielded). Lazy: nothing is computed until
    the next id is asked for, so a consumer that stops asking (or calls .close()) stops the work.

    Past the context window the cache restarts from the last block_size // 2 tokens (see the module's notes).
    """
    _check_sampling(temperature, top_k, top_p, repetition_penalty)
    ids = [int(i) for i in prompt_ids]
    if not ids:
        raise ValueError("the prompt needs at least one token (the storyteller's stories start with <|endoftext|>)")
    stop_ids = {int(i) for i in stop_ids}
    block, device = model.config.block_size, _device(model)
    cache = KVCache.for_model(model, 1, min(block, len(ids) + max_new_tokens))
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(1, model.config.vocab_size, dtype=torch.bool, device=device)
        seen[0, ids] = True

    def prefill(context: list[int]) -> torch.Tensor:
        cache.reset()
        return forward_cached(model, torch.tensor([context], device=device), cache)[:, -1]

    logits = prefill(ids[-cache.max_len :])
    for step in range(max_new_tokens):
        if step:
            if int(cache.lengths[0]) == cache.max_len:  # full: start again from the recent half of the window
                logits = prefill(ids[-max(1, block // 2) :])
            else:
                logits = forward_cached(model, torch.tensor([[ids[-1]]], device=device), cache)[:, -1]
        nxt = int(sample(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                         repetition_penalty=repetition_penalty, generator=generator)[0])
        if nxt in stop_ids:
            return
        ids.append(nxt)
        if seen is not None:
            seen[0, nxt] = True
        yield nxt


# ----------------------------------------------------------------------------- streaming text


def utf8_complete(data: bytes) -> int:
    """How many leading bytes of `data` can be decoded now.  (exercise ch12.stream)

    All of them, except a multi-byte UTF-8 character that has started at the end of data but is not finished:
    its lead byte (110xxxxx: 2 bytes, 1110xxxx: 3, 11110xxx: 4) and the continuation bytes (10xxxxxx) after it
    are held back. Look at most 3 bytes back from the end. Anything else (ASCII, a finished character, bytes that
    can never become valid) is ready: decoding turns the invalid ones into '�'. Returns an int in 0..len(data).
    """
    ### BEGIN SOLUTION ch12.stream (§12.6, 2 pts): skip ≤ 3 continuation bytes back; unfinished lead byte: cut there
    for back in range(1, min(3, len(data)) + 1):
        b = data[-back]
        if b & 0b1100_0000 == 0b1000_0000:  # a continuation byte: the character started further back
            continue
        need = 2 if b & 0b1110_0000 == 0b1100_0000 else 3 if b & 0b1111_0000 == 0b1110_0000 else \
            4 if b & 0b1111_1000 == 0b1111_0000 else 1
        return len(data) - back if need > back else len(data)
    return len(data)
    ### END SOLUTION


def stop_scan(text: str, stops: Sequence[str]) -> tuple[str, str, bool]:
    """Split text that is about to be shown into (ready, held, stopped).  (exercise ch12.stop)

    If a stop string occurs in text: ready = the text before the earliest occurrence, held = "", stopped = True.
    Otherwise stopped = False and held = the longest end of text that is the beginning of some stop string
    (it might become one with the next token), ready = the rest: text == ready + held.
    """
    ### BEGIN SOLUTION ch12.stop (§12.6, 2 pts): cut at the earliest stop; else hold the longest suffix that starts one
    hits = [i for s in stops if (i := text.find(s)) >= 0]
    if hits:
        return text[: min(hits)], "", True
    keep = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(text)), keep, -1):
            if text.endswith(s[:n]):
                keep = n
                break
    return text[: len(text) - keep], text[len(text) - keep :], False
    ### END SOLUTION


class StreamDecoder:
    """Token ids in, text pieces out, as soon as they are certain: never half a character, never part of a stop.

    tokenizer: anything with a `vocab` dict id -> bytes (storylib's tokenizers). push(id) returns the text that
    is ready (maybe ""); flush() returns what is left at the end. Once a stop string shows, `stopped` is True
    and nothing more comes out.
    """

    def __init__(self, tokenizer, stop_strings: Sequence[str] = ()):
        self.vocab = tokenizer.vocab
        self.stops = [s for s in stop_strings if s]
        self.pending = b""  # the bytes of an unfinished character
        self.held = ""  # text that may be the start of a stop string
        self.stopped = False

    def _release(self, text: str) -> str:
        if not self.stops:
            return text
        ready, self.held, self.stopped = stop_scan(self.held + text, self.stops)
        return ready

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.pending += self.vocab[token_id]
        n = utf8_complete(self.pending)
        text, self.pending = self.pending[:n].decode("utf-8", errors="replace"), self.pending[n:]
        return self._release(text)

    def flush(self) -> str:
        """The end: an unfinished character becomes '�', a partial stop string is plain text after all."""
        if self.stopped:
            return ""
        ready = self._release(self.pending.decode("utf-8", errors="replace"))
        self.pending = b""
        if not self.stopped:
            ready, self.held = ready + self.held, ""
        return ready


def generate_stream(model: GPT, tokenizer, prompt_ids: Sequence[int], max_new_tokens: int = 200, *,
                    temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                    repetition_penalty: float = 1.0, stop: Iterable[str | int] = (),
                    seed: int | None = None, on_token: Callable[[int], None] | None = None) -> Iterator[str]:
    """The model's continuation of prompt_ids as a generator of text pieces, yielded as they become certain.

    Generation stops at <|end|> or <|endoftext|> (when the tokenizer has them), at a token id in `stop`, or when
    the text reaches a string in `stop`; none of these is yielded. seed makes sampling reproducible (None: a
    fresh random seed). on_token, if given, is called with each new token id (e.g. to count them). Breaking out
    of the loop, or .close(), stops the work. A chat reply:
        ids, _ = storylib.chat_template.render_chat(messages, tok, add_generation_prompt=True)
        for piece in generate_stream(model, tok, ids, temperature=0.8, top_p=0.9): print(piece, end="")
    """
    stop = list(stop)
    stop_ids = {tokenizer.special_tokens[s] for s in END_TOKENS if s in getattr(tokenizer, "special_tokens", {})}
    stop_ids |= {int(s) for s in stop if not isinstance(s, str)}
    decoder = StreamDecoder(tokenizer, [s for s in stop if isinstance(s, str)])
    generator = torch.Generator(device=_device(model))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    tokens = generate_tokens(model, prompt_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                             repetition_penalty=repetition_penalty, stop_ids=stop_ids, generator=generator)
    try:
        for t in tokens:
            if on_token is not None:
                on_token(t)
            piece = decoder.push(t)
            if piece:
                yield piece
            if decoder.stopped:
                return
        piece = decoder.flush()
        if piece:
            yield piece
    finally:
        tokens.close()


# ----------------------------------------------------------------------------- batches


@torch.no_grad()
def generate_batch(model: GPT, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, temperature: float = 0.0,
                   top_k: int | None = None, top_p: float | None = None, repetition_penalty: float = 1.0,
                   stop_ids: Iterable[int] = (), pad_id: int = 0, seed: int | None = None) -> list[list[int]]:
    """New token ids for several prompts at once: a list per prompt, cut before its first stop id.

    The prompts are right-padded with pad_id (the storyteller's <|pad|>; any id works, pads are never attended)
    into one (B, max_len) batch and prefilled together; each row then decodes from its own length. Greedy
    (temperature 0), every row gets the tokens it would get alone. Once half the rows have stopped, the cache
    keeps only the others (KVCache.select): a stopped row would cost as much work as a live one. Needs
    max(len) + max_new_tokens <= block_size.
    """
    _check_sampling(temperature, top_k, top_p, repetition_penalty)
    B, lens = len(prompts), [len(p) for p in prompts]
    if B == 0 or min(lens) < 1:
        raise ValueError("need at least one prompt, each with at least one token")
    if max(lens) + max_new_tokens > model.config.block_size:
        raise ValueError(f"the longest prompt ({max(lens)}) + max_new_tokens ({max_new_tokens}) must fit "
                         f"block_size ({model.config.block_size})")
    stop_ids, device = {int(i) for i in stop_ids}, _device(model)
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    seen = None
    if repetition_penalty != 1.0:
        seen = torch.zeros(B, model.config.vocab_size, dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, list(p)] = True
    cache = KVCache.for_model(model, B, max(lens) + max_new_tokens)
    ### BEGIN SOLUTION ch12.batch (§12.7, 2 pts): right-pad; prefill; logits at len - 1; cache.lengths = lens
    idx = torch.full((B, max(lens)), pad_id, dtype=torch.int64, device=device)
    for i, p in enumerate(prompts):
        idx[i, : len(p)] = torch.tensor(list(p), device=device)
    lengths = torch.tensor(lens, device=device)
    logits = forward_cached(model, idx, cache)[torch.arange(B, device=device), lengths - 1]  # (B, V)
    cache.lengths = lengths  # the pads' slots are overwritten by the new tokens, never read before
    ### END SOLUTION
    out: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    live = list(range(B))  # the prompt each row of the batch (and of the cache) belongs to
    for step in range(max_new_tokens):
        nxt = sample(logits, seen, temperature=temperature, top_k=top_k, top_p=top_p,
                     repetition_penalty=repetition_penalty, generator=generator)
        for i, t in zip(live, nxt.tolist(), strict=True):
            if not done[i]:
                done[i] = t in stop_ids
                if not done[i]:
                    out[i].append(t)
        if all(done) or step == max_new_tokens - 1:
            break
        if seen is not None:
            seen[torch.arange(len(live), device=device), nxt] = True
        going = [j for j, i in enumerate(live) if not done[i]]
        if len(going) <= len(live) // 2:  # a stopped row costs as much as a live one: drop them, halving the work
            keep = torch.tensor(going, device=device)
            cache, nxt, live = cache.select(keep), nxt[keep], [live[j] for j in going]
            seen = seen[keep] if seen is not None else None
        logits = forward_cached(model, nxt[:, None], cache)[:, -1]  # every row decodes from its own length
    return out


# ----------------------------------------------------------------------------- speed


@torch.no_grad()
def decode_speed(model: GPT, n_tokens: int, use_cache: bool = True, prompt_ids: Sequence[int] = (0,)) -> dict:
    """Greedy decoding speed: n_tokens new tokens after prompt_ids, timed on the wall clock.

    use_cache=False is Chapter 5's `GPT.generate`: each step runs the whole context (cropped to block_size) again.
    use_cache=True is `generate_tokens` (no stop tokens). Returns {"n_tokens", "seconds", "tokens_per_s",
    "use_cache"}.
    """
    model.eval()
    start = time.perf_counter()
    if use_cache:
        n = sum(1 for _ in generate_tokens(model, prompt_ids, n_tokens, temperature=0.0))
    else:
        model.generate(torch.tensor([list(prompt_ids)], device=_device(model)), n_tokens, temperature=0.0)
        n = n_tokens
    seconds = time.perf_counter() - start
    return {"n_tokens": n, "seconds": seconds, "tokens_per_s": n / seconds, "use_cache": use_cache}


# ----------------------------------------------------------------------------- command line

GOLDEN_PROMPT = "Once upon a time"
GOLDEN_TOKENS = 60


def golden_story() -> str:
    """The shipped storyteller's greedy continuation of <|endoftext|> + GOLDEN_PROMPT (GOLDEN_TOKENS new tokens)."""
    from storylib.checkpoint import default_storyteller
    from storylib.fastbpe import encode_ordinary

    model, tok = default_storyteller()
    ids = [eot_id(tok), *encode_ordinary(tok, GOLDEN_PROMPT)]
    return "".join(generate_stream(model, tok, ids, GOLDEN_TOKENS, temperature=0.0))


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m storylib.kvcache", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("golden", help="print grading/tests/golden/ch12_once_upon_a_time.txt (header and story)")
    sp = sub.add_parser("speed", help="tokens/s of the shipped storyteller, with and without the KV cache")
    sp.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 1024])
    args = p.parse_args(argv)
    if args.cmd == "golden":
        sys.stdout.write(
            "# Golden output of Chapter 12 (grading/tests/test_ch12_kvcache.py::test_golden_story): the shipped\n"
            f"# storyteller (models/storyteller), greedy, {GOLDEN_TOKENS} new tokens after <|endoftext|> + "
            f"{GOLDEN_PROMPT!r},\n"
            "# generated by the reference storylib. Regenerate it only when models/storyteller changes:\n"
            "#   PYTHONPATH=$PWD OMP_NUM_THREADS=1 python -m storylib.kvcache golden > "
            "grading/tests/golden/ch12_once_upon_a_time.txt\n"
            "# The story is everything after the line '---' below, less the one newline that ends this file.\n"
            f"---\n{golden_story()}\n"
        )
        return 0
    from storylib.checkpoint import default_storyteller

    model, tok = default_storyteller()
    eot = eot_id(tok)
    print(f"threads: {torch.get_num_threads()}; block_size {model.config.block_size}")
    for n in args.tokens:
        r = {c: decode_speed(model, n, use_cache=c, prompt_ids=[eot]) for c in (False, True)}
        slow, fast = r[False]["tokens_per_s"], r[True]["tokens_per_s"]
        print(f"{n:5d} new tokens: no cache {slow:7.1f} tok/s, cache {fast:7.1f} tok/s, speed-up {fast / slow:5.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
