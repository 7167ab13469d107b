"""Chapter 4 — attention: every position looks back at the positions before it.

A bigram model sees one previous character; an MLP sees a fixed window of them. Attention lets each
position take a *weighted average* of everything before it, with weights the model computes from the
characters themselves. Read this file from top to bottom; it follows the chapter:

    softmax                        stable softmax, any float dtype, all -inf rows -> 0   (exercise ch04.softmax)
    causal_mask                    True where query i may look at key j, i.e. j <= i     (exercise ch04.causal_mask)
    scaled_dot_product_attention   softmax(q kᵀ / sqrt(D)) v, with masks                 (exercise ch04.attention)
    split_heads / merge_heads      (B, T, C) <-> (B, H, T, C/H), view + transpose   (ch04.split_heads, ch04.merge_heads)
    MultiHeadAttention             one qkv projection, H heads, one output projection    (exercise ch04.multihead)
    sinusoidal_positions           the fixed position code of Vaswani et al. (2017)      (exercise ch04.sinusoidal)
    TinyAttentionLM                a 2-layer character model built from the pieces above (given)
    stream / get_batch / train_lm  the data and the training loop for it                 (given)
    bits_per_byte                  the course's yardstick for it: bits per UTF-8 byte    (given)

Shapes are written B (batch), H (heads), T (time: positions in the sequence), C (channels, the model
width d_model) and D (the width of one head, C / H). Tq and Tk are the numbers of queries and keys.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from storylib.bigram import BOUNDARY, Vocab

# ----------------------------------------------------------------------------- softmax


def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """softmax(x)_j = exp(x_j) / sum_k exp(x_k) along `dim`, computed without overflow.  (exercise ch04.softmax)

    x: a float tensor of any shape (float16, bfloat16, float32 or float64) whose entries are finite or -inf
    (-inf means "weight exactly 0": that is how attention masks positions out).
    Returns a tensor of the same shape and the same dtype as x; along `dim` it is >= 0 and sums to 1.

    - Subtract the maximum along `dim` before exp: softmax(x) = softmax(x - m) for any constant m, and
      with m = max every exponent is <= 0, so exp never overflows (exp(89) is already inf in float32).
    - float16 / bfloat16 inputs are computed in float32 and cast back at the end.
    - A row whose entries are *all* -inf (every key masked) has no distribution to give: return zeros for
      it, not NaN. (Its max is -inf and -inf - (-inf) is NaN, so that row needs care.)
    """
    ### BEGIN SOLUTION ch04.softmax (§4.1, 2 pts): shift invariance tames exp; a row of -inf needs a decision
    work = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    m = work.amax(dim=dim, keepdim=True).detach()  # a constant shift: it changes no gradient
    m = torch.where(torch.isneginf(m), torch.zeros_like(m), m)  # all -inf row: shift by 0, not by -inf
    e = torch.exp(work - m)  # every exponent <= 0, so 0 <= e <= 1
    total = e.sum(dim=dim, keepdim=True)
    out = e / torch.where(total == 0, torch.ones_like(total), total)  # all -inf row: 0 / 1 = 0
    ### END SOLUTION
    return out.to(x.dtype)


# ----------------------------------------------------------------------------- attention


def causal_mask(T: int, device: torch.device | str | None = None) -> torch.Tensor:
    """The causal mask of a sequence of length T.  (exercise ch04.causal_mask)

    Returns a bool tensor of shape (T, T) with mask[i, j] = True when query i may look at key j, that is
    when j <= i (the past and the present), and False for every j > i (the future). Put it on `device`.
    """
    ### BEGIN SOLUTION ch04.causal_mask (§4.2, 1 pt): a query may read itself and the past, never the future
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool, device=device))
    ### END SOLUTION
    return mask


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None = None,
    causal: bool = False,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention: every query takes a weighted average of the values.  (exercise ch04.attention)

        weights = softmax(q kᵀ * scale)  over the keys,   out = weights v,   scale = 1 / sqrt(D) by default.

    q: (..., Tq, D) queries, k: (..., Tk, D) keys, v: (..., Tk, Dv) values, usually (B, H, T, D); the
    leading dimensions broadcast. All three share one float dtype.
    mask: optional bool tensor broadcastable to (..., Tq, Tk); mask[..., i, j] = True means query i may
    look at key j, False means weight 0 (the convention of a bool attn_mask in
    torch.nn.functional.scaled_dot_product_attention).
    causal: also forbid every key j > i (use causal_mask); it needs Tq == Tk.

    Returns (out, weights): out (..., Tq, Dv) and weights (..., Tq, Tk), each row of weights a probability
    distribution over the keys — or all zeros for a query whose keys are all masked (then its out row is 0).
    """
    if causal and q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal attention needs as many queries as keys, got Tq={q.shape[-2]}, Tk={k.shape[-2]}")
    ### BEGIN SOLUTION ch04.attention (§4.3, 3 pts): score every key, hide the forbidden ones, average the values
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    scores = (q @ k.transpose(-2, -1)) * scale  # (..., Tq, Tk): how well query i matches key j
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    if causal:
        scores = scores.masked_fill(~causal_mask(q.shape[-2], device=q.device), float("-inf"))
    weights = softmax(scores, dim=-1)  # each row sums to 1 over the keys it may see
    out = weights @ v  # (..., Tq, Dv): the weighted average of the values
    ### END SOLUTION
    return out, weights


# ----------------------------------------------------------------------------- many heads


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, C) -> (B, H, T, D) with H = n_head and D = C / H.  (exercise ch04.split_heads)

    Head h gets channels h*D ... (h+1)*D - 1 of every position: out[b, h, t, :] = x[b, t, h*D:(h+1)*D].
    Do it with a view (no copy: split the last dimension C into (H, D)), then a transpose that brings the
    head dimension in front of time, so each head is a separate (T, D) matrix for attention.
    x must be contiguous (the output of a Linear is). Raises ValueError if C is not a multiple of n_head.
    """
    B, T, C = x.shape
    if C % n_head != 0:
        raise ValueError(f"the width C={C} must be a multiple of the number of heads {n_head}")
    ### BEGIN SOLUTION ch04.split_heads (§4.4, 2 pts): a view that moves no data, then bring heads before time
    heads = x.view(B, T, n_head, C // n_head).transpose(1, 2)
    ### END SOLUTION
    return heads


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H*D), the inverse of split_heads.  (exercise ch04.merge_heads)

    out[b, t, h*D:(h+1)*D] = x[b, h, t, :]: the H head outputs of each position, side by side.
    Transpose time back in front of the heads; the result is no longer laid out contiguously in memory,
    so .view cannot merge (H, D) until you make it .contiguous() (or use .reshape, which copies when needed).
    """
    B, H, T, D = x.shape
    ### BEGIN SOLUTION ch04.merge_heads (§4.4, 1 pt): undo split_heads; mind the memory layout
    merged = x.transpose(1, 2).contiguous().view(B, T, H * D)
    ### END SOLUTION
    return merged


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention: H heads of width D = C / H, side by side.

    One Linear makes the queries, keys and values of all heads at once: qkv(x) is (B, T, 3C), its three
    C-wide slices are q, k and v (in that order, the layout of nn.MultiheadAttention's in_proj_weight).
    Each head attends on its own D channels; the heads' outputs are merged and mixed by the Linear proj.
    """

    def __init__(self, d_model: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        if d_model % n_head != 0:
            raise ValueError(f"d_model={d_model} must be a multiple of n_head={n_head}")
        self.d_model, self.n_head = d_model, n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.proj = nn.Linear(d_model, d_model, bias=bias)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = True,
        mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Self-attention of x on itself.  (exercise ch04.multihead)

        x: (B, T, C). causal and mask are passed on to scaled_dot_product_attention (mask broadcastable
        to (B, H, T, T), True = may look). Returns y of shape (B, T, C), or (y, weights) with the attention
        weights of every head, (B, H, T, T), when need_weights is True.

        Steps: q, k, v = the three C-wide slices of self.qkv(x); split_heads each; attend;
        merge_heads; self.proj.
        """
        B, T, C = x.shape
        ### BEGIN SOLUTION ch04.multihead (§4.4, 3 pts): the pieces you wrote above, in the order of the docstring
        q, k, v = self.qkv(x).split(C, dim=-1)
        q, k, v = (split_heads(t, self.n_head) for t in (q, k, v))  # each (B, H, T, D)
        y, weights = scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)  # (B, H, T, D)
        y = self.proj(merge_heads(y))  # (B, T, C)
        ### END SOLUTION
        return (y, weights) if need_weights else y


# ----------------------------------------------------------------------------- positions


def sinusoidal_positions(T: int, d: int, base: float = 10000.0) -> torch.Tensor:
    """The sinusoidal position code of "Attention Is All You Need".  (exercise ch04.sinusoidal)

    Returns a float32 tensor PE of shape (T, d): row t encodes position t with d/2 sine-cosine pairs of
    geometrically spaced frequencies, for i = 0, 1, ..., d/2 - 1:

        PE[t, 2i]     = sin(t / base^(2i / d))
        PE[t, 2i + 1] = cos(t / base^(2i / d))

    Compute the angles in float64 (t / base^(2i/d) is large for big t) and return float32.
    Raises ValueError if d is odd.
    """
    if d % 2 != 0:
        raise ValueError(f"d must be even (sine-cosine pairs), got {d}")
    ### BEGIN SOLUTION ch04.sinusoidal (§4.5, 2 pts): one angle per (position, channel pair), in float64
    t = torch.arange(T, dtype=torch.float64)[:, None]  # (T, 1)
    inv_freq = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,): 1, ..., ~1/base
    angle = t * inv_freq  # (T, d/2)
    pe = torch.empty(T, d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angle)
    pe[:, 1::2] = torch.cos(angle)
    ### END SOLUTION
    return pe.float()


# ----------------------------------------------------------------------------- a tiny language model


@dataclass
class TinyConfig:
    vocab_size: int
    block_size: int = 128  # the longest context, in characters
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 64
    positions: str = "learned"  # "learned" (an nn.Embedding), "sinusoidal" (fixed) or "none"


class Block(nn.Module):
    """x + attention(layernorm(x)), then x + mlp(layernorm(x)): the pre-norm residual block of GPT-2.

    The layer norms are torch's here; Chapter 5 writes them by hand. The MLP's GELU is the tanh
    approximation, so the book's widget can recompute it exactly in JavaScript.
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = MultiHeadAttention(cfg.d_model, cfg.n_head)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.d_model, 4 * cfg.d_model),
            nn.GELU(approximate="tanh"),
            nn.Linear(4 * cfg.d_model, cfg.d_model),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a, weights = self.attn(self.ln1(x), causal=True, need_weights=True)
        x = x + a
        x = x + self.mlp(self.ln2(x))
        return x, weights


class TinyAttentionLM(nn.Module):
    """A small character-level transformer: embeddings + positions, n_layer Blocks, a final norm, logits.

    forward(idx) takes (B, T) int64 ids with T <= block_size and returns (logits, loss, attention):
    logits (B, T, V) predict the character after each position, loss is the mean cross-entropy against
    `targets` (None without targets), attention is a list of n_layer tensors (B, H, T, T).
    """

    def __init__(self, cfg: TinyConfig) -> None:
        super().__init__()
        if cfg.positions not in ("learned", "sinusoidal", "none"):
            raise ValueError(f"positions must be 'learned', 'sinusoidal' or 'none', got {cfg.positions!r}")
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.block_size, cfg.d_model)
        # a buffer moves with .to(device) and is saved with the model, but it is not trained
        fixed = sinusoidal_positions(cfg.block_size, cfg.d_model) if cfg.positions == "sinusoidal" else None
        if fixed is None:
            fixed = torch.zeros(cfg.block_size, cfg.d_model)
        self.register_buffer("pe", fixed, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def positions(self, T: int) -> torch.Tensor:
        """The (T, C) position vectors added to the first T token embeddings."""
        return self.pos.weight[:T] if self.cfg.positions == "learned" else self.pe[:T]

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        B, T = idx.shape
        if T > self.cfg.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size={self.cfg.block_size}")
        x = self.tok(idx) + self.positions(T)  # (B, T, C)
        attention = []
        for block in self.blocks:
            x, weights = block(x)
            attention.append(weights)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss, attention


def stream(stories: Sequence[str], vocab: Vocab) -> torch.Tensor:
    """All stories as one int64 tensor of ids, each story followed by the boundary token: ◆ s1 ◆ s2 ◆ ..."""
    ids = [BOUNDARY]
    for s in stories:
        ids += [*vocab.encode(s), BOUNDARY]
    return torch.tensor(ids, dtype=torch.int64)


def get_batch(
    data: torch.Tensor, block_size: int, batch_size: int, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """batch_size random windows of the stream: x (B, T) and y = x shifted by one, the next characters."""
    start = torch.randint(0, len(data) - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([data[s : s + block_size] for s in start.tolist()])
    y = torch.stack([data[s + 1 : s + 1 + block_size] for s in start.tolist()])
    return x, y


def train_lm(
    model: TinyAttentionLM,
    data: torch.Tensor,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    generator: torch.Generator | None = None,
) -> list[float]:
    """AdamW at a constant learning rate on random windows of `data`; returns the loss of every step.

    The rate does not decay, so the first n steps of a long run are the same as a run of n steps: curves
    of runs of different lengths can be compared step for step. (Chapter 7 is about doing better.)
    """
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    losses = []
    for _ in range(steps):
        x, y = get_batch(data, model.cfg.block_size, batch_size, generator)
        _, loss, _ = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    return losses


@torch.no_grad()
def evaluate(
    model: TinyAttentionLM, data: torch.Tensor, batches: int = 20, batch_size: int = 32, seed: int = 0
) -> float:
    """Mean cross-entropy (nats per character) on `batches` random windows of `data`, always the same ones."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    total = 0.0
    for _ in range(batches):
        x, y = get_batch(data, model.cfg.block_size, batch_size, g)
        total += model(x, y)[1].item()
    return total / batches


class _LogitsOnly(nn.Module):
    """TinyAttentionLM seen as gpt2.bits_per_byte expects a model: `config.block_size`, (logits, loss) = model(idx)."""

    def __init__(self, model: TinyAttentionLM) -> None:
        super().__init__()
        self.model, self.config = model, model.cfg

    def forward(self, idx: torch.Tensor) -> tuple[torch.Tensor, None]:
        return self.model(idx)[0], None


def bits_per_byte(model: TinyAttentionLM, stories: Sequence[str], vocab: Vocab) -> float:
    """The cost of the stories under the model in bits per UTF-8 byte, Chapter 1's definition.

    Each story is read on its own as ◆ story ◆, every character and the closing ◆ predicted, in windows of
    block_size that overlap by half (storylib.gpt2.bits_per_byte does the reading); total bits / total bytes.
    """
    # imported here, not at the top: Chapter 4 must work while Chapter 5's file is still being written
    from storylib.gpt2 import bits_per_byte as gpt2_bits_per_byte

    return gpt2_bits_per_byte(_LogitsOnly(model), stories, encode_fn=vocab.encode, eot=BOUNDARY)
