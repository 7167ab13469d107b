"""Chapter 5 — GPT-2, written to be read from top to bottom.

The same architecture as OpenAI's GPT-2 (and Karpathy's nanoGPT), small enough to train on a laptop CPU.
Parameter names follow Hugging Face's `GPT2LMHeadModel`, so its state dict loads here and back.

    bytes             the tokens of this chapter: the 256 UTF-8 byte values, plus <|endoftext|> = EOT_ID = 256
    GPTConfig         the hyperparameters
    layer_norm_*      LayerNorm by hand, forward and backward          (exercises ch05.layernorm, _backward)
    CausalSelfAttention  c_attn cut into heads, attention, heads glued back (exercise ch05.attention)
    MLP, Block        the feed-forward net; a pre-norm residual block  (exercises ch05.mlp, ch05.block)
    GPT               embeddings, blocks, tied head, GPT-2 init        (exercise ch05.init)
    GPT.hidden        final hidden states; forward = lm_head + loss    (exercise ch05.forward)
    GPT.generate      sampling with temperature and top-k              (exercise ch05.generate)
    from_hf_state_dict / to_hf_state_dict, bits_per_byte
    GPTConfig.fused   PyTorch's own LayerNorm and attention kernels instead of ours: the trainer's speed path
                      (its other speed paths, FP8 matmuls and the fused loss, are in storylib.precision)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

# ----------------------------------------------------------------------------- bytes as tokens

EOT_ID = 256  # the id of <|endoftext|> in this byte vocabulary: stands before every story (and ends the last one)


def encode(text: str) -> list[int]:
    """The UTF-8 bytes of `text`, as ints in 0..255: 'é' is two tokens, 195 and 169."""
    return list(text.encode("utf-8"))


def decode(ids: Iterable[int]) -> str:
    """Text from token ids; <|endoftext|> is dropped, a broken UTF-8 sequence becomes '�'."""
    return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")


def story_stream(stories: Sequence[str]) -> torch.Tensor:
    """All stories as one int64 tensor of ids: EOT_ID, story 1, EOT_ID, story 2, ..., EOT_ID."""
    out = [EOT_ID]
    for s in stories:
        out += encode(s) + [EOT_ID]
    return torch.tensor(out, dtype=torch.int64)


@dataclass
class GPTConfig:
    block_size: int = 128  # the longest context the model reads (GPT-2: 1024)
    vocab_size: int = 257  # 256 bytes + <|endoftext|> (GPT-2's BPE: 50257)
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True  # biases in Linear layers and LayerNorms, as in GPT-2
    # The trainer's speed path: PyTorch's own F.layer_norm and F.scaled_dot_product_attention (flash attention
    # on a GPU) instead of the hand-written LayerNorm and attention below. Same math, same parameters.
    fused: bool = False
    # Causal (True): position t attends only to positions <= t, as a language model must. False: every position
    # attends to every other (an encoder; Chapter 17's diffusion transformer, whose image patches see each other
    # and every word of the caption). A config saved before this field existed loads as causal.
    causal: bool = True


# ----------------------------------------------------------------------------- LayerNorm, by hand


def layer_norm_forward(x, weight, bias, eps: float = 1e-5):
    """LayerNorm over the last dimension.  (exercise ch05.layernorm)

    x: (..., C); weight: (C,); bias: (C,) or None. With mean and (biased) variance over the last dim,
        rstd = 1 / sqrt(var + eps),   xhat = (x - mean) * rstd,   y = xhat * weight + bias.
    Returns (y, xhat, rstd): y and xhat shaped like x, rstd shaped (..., 1) — backward reuses them.
    """
    ### BEGIN SOLUTION ch05.layernorm (§5.2, 2 pts): each token's vector alone: centre, rescale, weight, bias
    mean = x.mean(dim=-1, keepdim=True)
    xc = x - mean
    var = (xc * xc).mean(dim=-1, keepdim=True)  # biased: divide by C, not C - 1
    rstd = torch.rsqrt(var + eps)
    xhat = xc * rstd
    y = xhat * weight if bias is None else xhat * weight + bias
    ### END SOLUTION
    return y, xhat, rstd


def layer_norm_backward(dy, xhat, rstd, weight):
    """The gradients of LayerNorm, given dL/dy.  (exercise ch05.layernorm_backward)

    dy, xhat: (..., C); rstd: (..., 1); weight: (C,). Returns (dx, dweight, dbias) where
        dbias = dy summed over every dim but the last,  dweight = (dy * xhat) summed likewise,
        and, with g = dy * weight and means over the last dim,
        dx = rstd * (g - mean(g) - xhat * mean(g * xhat)).
    """
    ### BEGIN SOLUTION ch05.layernorm_backward (§5.2, 3 pts): the gradient loses its mean and its part along xhat
    C = dy.shape[-1]
    dbias = dy.reshape(-1, C).sum(dim=0)  # every row (token) adds its dy
    dweight = (dy * xhat).reshape(-1, C).sum(dim=0)
    g = dy * weight
    dx = rstd * (g - g.mean(dim=-1, keepdim=True) - xhat * (g * xhat).mean(dim=-1, keepdim=True))
    ### END SOLUTION
    return dx, dweight, dbias


class LayerNormFunction(torch.autograd.Function):
    """Tells autograd to use our hand-written backward instead of differentiating the forward."""

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, xhat, rstd = layer_norm_forward(x, weight, bias, eps)
        ctx.save_for_backward(xhat, rstd, weight)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        xhat, rstd, weight = ctx.saved_tensors
        dx, dweight, dbias = layer_norm_backward(dy, xhat, rstd, weight)
        return dx, dweight, dbias if ctx.has_bias else None, None


class LayerNorm(nn.Module):
    def __init__(self, n_embd: int, bias: bool = True, eps: float = 1e-5, fused: bool = False):
        super().__init__()
        self.eps, self.fused = eps, fused
        self.weight = nn.Parameter(torch.ones(n_embd))
        self.bias = nn.Parameter(torch.zeros(n_embd)) if bias else None

    def forward(self, x):
        if self.fused:  # PyTorch's kernel: the same function, faster (and torch.compile fuses it)
            return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)
        return LayerNormFunction.apply(x, self.weight, self.bias, self.eps)


# ----------------------------------------------------------------------------- the transformer block


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0, "n_embd must be a multiple of n_head"
        self.n_head, self.n_embd, self.fused = config.n_head, config.n_embd, config.fused
        self.causal = config.causal
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v side by side
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        mask = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("mask", mask, persistent=False)  # mask[t, s]: may position t look at s?

    def forward(self, x):
        """Multi-head causal self-attention.  (exercise ch05.attention)

        x: (B, T, C). One matmul, c_attn(x) of shape (B, T, 3C), makes the queries, keys and values of every
        head at once: q, k and v side by side (in that order), and inside each, head h owns the hs = C // n_head
        channels h·hs .. (h+1)·hs - 1. Cut it into q, k and v, each laid out (B, n_head, T, hs) so that the
        heads are one more batch dimension for self.attend; attend; then put the heads' outputs back side by
        side as y, (B, T, C), head h again in channels h·hs .. (h+1)·hs - 1. The last line mixes them with c_proj.
        """
        if self.fused:  # the trainer's speed path (GPTConfig.fused), as nanoGPT's `if self.flash:`
            return self._forward_fused(x)
        B, T, C = x.shape
        ### BEGIN SOLUTION ch05.attention (§5.3, 3 pts): c_attn's wide output -> heads -> attend -> side by side
        hs = C // self.n_head
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        y = self.attend(q, k, v)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # heads side by side again
        ### END SOLUTION
        return self.resid_dropout(self.c_proj(y))

    def attend(self, q, k, v):
        """Chapter 4's causal attention, every head at once: q, k, v (B, nh, T, hs) -> (B, nh, T, hs).

        With config.causal = False no mask: every position attends to every position.
        """
        T = q.shape[-2]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, nh, T, T): how much t attends to s
        if self.causal:
            att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        return att @ v

    def _forward_fused(self, x):
        """The same attention with PyTorch's fused kernel (flash attention on a GPU): for training, not learning."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        p = self.attn_dropout.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=self.causal)
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        """c_proj(gelu(c_fc(x))), with GPT-2's tanh GELU; the last line applies dropout.  (exercise ch05.mlp)

        gelu(u) = 0.5 · u · (1 + tanh(sqrt(2/π) · (u + 0.044715 · u³))) = F.gelu(u, approximate="tanh").
        """
        ### BEGIN SOLUTION ch05.mlp (§5.4, 1 pt): each position on its own: widen, GPT-2's GELU, narrow
        x = self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))
        ### END SOLUTION
        return self.dropout(x)


class Block(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = LayerNorm(config.n_embd, bias=config.bias, fused=config.fused)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = LayerNorm(config.n_embd, bias=config.bias, fused=config.fused)
        self.mlp = MLP(config)

    def forward(self, x):
        """A pre-norm residual block.  (exercise ch05.block)

        x: (B, T, C), the residual stream. Attention, then the MLP, each reads a LayerNorm-ed copy of
        the stream and *adds* its output back to it: x + attn(ln_1(x)), then the same with ln_2 and mlp.
        """
        ### BEGIN SOLUTION ch05.block (§5.4, 2 pts): pre-norm: read a normalised copy, add to the stream
        x = x + self.attn(self.ln_1(x))
        x = x + self.mlp(self.ln_2(x))
        ### END SOLUTION
        return x


# ----------------------------------------------------------------------------- the model


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),  # token embeddings
                wpe=nn.Embedding(config.block_size, config.n_embd),  # position embeddings
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=LayerNorm(config.n_embd, bias=config.bias, fused=config.fused),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # weight tying: one matrix reads and writes tokens
        self.init_weights()

    def init_weights(self):
        """GPT-2's initialisation.  (exercise ch05.init)

        Every nn.Linear weight and both embeddings ~ N(0, 0.02²), every Linear bias = 0, except the two
        projections that write into the residual stream (names ending in "c_proj.weight"), which get
        std 0.02 / sqrt(2 · n_layer): the stream receives 2 · n_layer such additions. LayerNorms keep 1, 0.
        """
        ### BEGIN SOLUTION ch05.init (§5.5, 2 pts): keep the residual stream's scale independent of depth
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * self.config.n_layer))
        ### END SOLUTION
        assert self.lm_head.weight is self.transformer.wte.weight, "init must initialise wte in place, not untie it"

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # the tied matrix is counted once

    def hidden(self, idx):
        """The final hidden states, one vector per position: what lm_head reads.  (exercise ch05.forward)

        idx: (B, T) int64 ids, T <= block_size. Sum token and position embeddings (positions 0..T-1), drop,
        run every block, then ln_f -> x (B, T, n_embd). Raises ValueError when T > block_size.
        """
        T = idx.shape[1]
        if T > self.config.block_size:
            raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
        ### BEGIN SOLUTION ch05.forward (§5.6, 3 pts): a token enters the stream as what it is plus where it is
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.drop(self.transformer.wte(idx) + self.transformer.wpe(pos))
        for block in self.transformer.h:
            x = block(x)
        x = self.transformer.ln_f(x)
        ### END SOLUTION
        return x

    def forward(self, idx, targets=None):
        """Logits (B, T, vocab_size) for every position, and the loss if targets (B, T) are given.

        logits = lm_head(hidden(idx)); loss = mean cross-entropy of targets over all B·T positions (a scalar),
        or None without targets.
        """
        logits = self.lm_head(self.hidden(idx))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 generator: torch.Generator | None = None):
        """Append max_new_tokens sampled ids to idx (B, T); returns (B, T + max_new_tokens).  (exercise ch05.generate)

        Each step: feed the last block_size ids, take the logits of the last position, divide them by the
        temperature, keep only the top_k largest (the rest -> -inf) if top_k is set, softmax, draw one id per
        row with torch.multinomial(..., generator=generator), append. temperature = 0 means greedy (argmax).
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        ### BEGIN SOLUTION ch05.generate (§5.9, 3 pts): one token at a time, from the last position's distribution
        for _ in range(max_new_tokens):
            logits, _ = self(idx[:, -self.config.block_size :])
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                nxt = torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        ### END SOLUTION
        return idx

    # ------------------------------------------------------------------------- Hugging Face GPT-2 weights

    # HF's GPT-2 uses Conv1D layers: a Linear whose weight is stored transposed, (in, out).
    _CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

    @classmethod
    def from_hf_state_dict(cls, sd: dict[str, torch.Tensor], config: GPTConfig) -> GPT:
        """A GPT holding the weights of a Hugging Face GPT2LMHeadModel state dict (same config)."""
        model = cls(config)
        sd = {k: v for k, v in sd.items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}  # old buffers
        sd.setdefault("lm_head.weight", sd["transformer.wte.weight"])  # tied: some exports omit it
        ours = model.state_dict()
        if set(sd) != set(ours):
            missing, extra = sorted(set(ours) - set(sd)), sorted(set(sd) - set(ours))
            raise KeyError(f"state dict keys differ: missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for k, v in sd.items():
                v = v.t() if k.endswith(cls._CONV1D) else v
                if v.shape != ours[k].shape:
                    raise ValueError(f"{k}: shape {tuple(v.shape)} does not fit {tuple(ours[k].shape)}")
                ours[k].copy_(v)
        return model

    def to_hf_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as a Hugging Face GPT2LMHeadModel state dict (Conv1D weights transposed back)."""
        return {k: (v.t() if k.endswith(self._CONV1D) else v).detach().clone() for k, v in self.state_dict().items()}


# ----------------------------------------------------------------------------- measuring


@torch.no_grad()
def bits_per_byte(model: GPT, stories: Sequence[str], batch_size: int = 32,
                  encode_fn: Callable[[str], Sequence[int]] | None = None, eot: int = EOT_ID) -> float:
    """The cost of the stories in bits per UTF-8 byte, each story read on its own.

    A story is [eot, b1, ..., bn, eot]: the model predicts each byte and the final eot (n + 1 predictions,
    as in Chapter 1). A story longer than block_size is read in windows that overlap by half a block, and
    each prediction is scored once, with at least block_size / 2 bytes of context (except at the start).
    Total bits / total bytes of the stories.

    Another tokenizer (Chapter 6's BPE): pass its `encode_fn` (text -> ids, e.g. `tok.encode_ordinary`) and the
    id of its <|endoftext|> as `eot`; a story is then [eot, t1, ..., tm, eot]. The bits are still divided by the
    UTF-8 bytes of the stories, so models with different tokenizers are measured on the same scale.
    """
    model.eval()
    encode_fn = encode if encode_fn is None else encode_fn
    device = next(model.parameters()).device
    W, S = model.config.block_size, max(1, model.config.block_size // 2)
    windows: list[tuple[list[int], int]] = []  # (ids of the window, how many of its predictions to skip)
    for s in stories:
        ids = [eot, *encode_fn(s), eot]
        for start in range(0, max(1, len(ids) - W + S), S):
            chunk = ids[start : start + W + 1]
            windows.append((chunk, 0 if start == 0 else W - S))
            if start + W + 1 >= len(ids):
                break
    nats = 0.0
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        L = max(len(c) for c, _ in batch) - 1
        x = torch.full((len(batch), L), eot, dtype=torch.int64)
        y = torch.full((len(batch), L), -100, dtype=torch.int64)  # -100: not scored
        for j, (c, skip) in enumerate(batch):
            x[j, : len(c) - 1] = torch.tensor(c[:-1])
            y[j, skip : len(c) - 1] = torch.tensor(c[1 + skip :])
        logits, _ = model(x.to(device))
        nats += F.cross_entropy(logits.double().view(-1, logits.size(-1)), y.to(device).view(-1),
                                reduction="sum").item()
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    return nats / math.log(2) / n_bytes
