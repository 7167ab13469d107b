"""Chapter 13 — quantization: the storyteller in 8 and 4 bits, written to be read from top to bottom.

Chapter 12 measured decoding as memory-bound: every new token reads every weight once, so fewer bytes per weight
is more tokens per second on a machine that waits for memory, and a smaller file. A quantized tensor is small
integers q and a few floating-point scales s, with x ≈ s · q.

    quantize_absmax     symmetric: s = max|x| / qmax, q = round(x / s)       (exercise ch13.absmax)
    quantize_zeropoint  asymmetric: [min, max] onto 0..2^bits-1, a zero point (exercise ch13.zeropoint)
    quantize_groupwise  one scale per group of `group_size` inputs of a row   (exercise ch13.groupwise)
    int8_matmul         int8 x int8 products summed in int32, the scales applied afterwards
                                                                              (exercise ch13.int8_matmul)
    pack_int4, unpack_int4   two 4-bit values per byte                  (exercises ch13.pack_int4, ch13.unpack_int4)
    QuantLinear         a linear layer holding integers and scales, dequantized on the fly (exercise ch13.qlinear);
                        with act_bits, the activations are quantized too, per token and group, as they arrive
                        (dynamic quantization, as llama2.c's runq.c does)
    gptq_block, gptq    GPTQ (Frantar et al., 2022): quantize the columns one at a time and push each column's
                        error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
                        inputs                                                (exercise ch13.gptq_block)
    QuantKVCache        Chapter 12's cache with int8 keys and values, one scale per (head, token)
    quantize_model      the storyteller in one scheme: fp16, int8, int8-g64-dyn, int4-g32, int4-gptq
    model_bytes         the size of the serialized quantized model: packed integers + scales + the rest in fp16

Conventions: a weight is (out_features, in_features) as in nn.Linear; groups run along in_features (the inputs
a dot product sums over), so one output's dot product is a sum of group dot products, each with its own scale.
Symmetric b-bit integers use -qmax..qmax with qmax = 2^(b-1) - 1 (int8: -127..127, int4: -7..7).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from storylib.gpt2 import GPT
from storylib.kvcache import KVCache, forward_cached

SCHEMES = ("fp32", "fp16", "int8", "int8-g64-dyn", "int4-g32", "int4-gptq")

# ----------------------------------------------------------------------------- absmax and zero-point


def qmax_of(bits: int) -> int:
    """The largest symmetric integer of `bits` bits: 127 for 8, 7 for 4."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    return 2 ** (bits - 1) - 1


def quantize_absmax(x: torch.Tensor, bits: int = 8, dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric (absmax) quantization.  (exercise ch13.absmax)

    dim=None: one scale for the whole tensor (a 0-d tensor). dim=d: one scale per slice along d, i.e. the max is
    taken over dimension d and kept (keepdim), so the scale broadcasts against x (per-channel: dim=1 of a weight).
    scale = max|x| / qmax, where a slice that is all zeros gets scale 1 (any scale represents zeros exactly);
    q = round(x / scale) clamped to -qmax..qmax, as int8. scale has x's dtype. Then x ≈ scale · q, with
    |x - scale · q| <= scale / 2.
    """
    qmax = qmax_of(bits)
    ### BEGIN SOLUTION ch13.absmax (§13.2, 2 pts): the largest |x| maps to qmax; divide, round, clamp, int8
    amax = x.abs().amax() if dim is None else x.abs().amax(dim=dim, keepdim=True)
    scale = torch.where(amax > 0, amax, torch.ones_like(amax)) / qmax
    q = torch.round(x / scale).clamp(-qmax, qmax).to(torch.int8)
    ### END SOLUTION
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor | None = None) -> torch.Tensor:
    """scale · (q - zero) in scale's dtype (zero: the zero point of quantize_zeropoint, or None for absmax)."""
    q = q.to(scale.dtype)
    return scale * (q if zero is None else q - zero.to(scale.dtype))


def quantize_zeropoint(x: torch.Tensor, bits: int = 8,
                       dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric (zero-point) quantization onto the unsigned integers 0..2^bits - 1.  (exercise ch13.zeropoint)

    The range [lo, hi] with lo = min(min x, 0) and hi = max(max x, 0) (it always holds 0, so 0 is exact) is cut
    into 2^bits - 1 steps: scale = (hi - lo) / (2^bits - 1) (1 where hi == lo); the zero point is the integer that
    stands for 0.0, zero = round(-lo / scale); q = clamp(round(x / scale) + zero, 0, 2^bits - 1) as uint8.
    dim as in quantize_absmax (min and max over d, kept). Returns (q, scale, zero), zero an int32 tensor shaped as
    scale; dequantize(q, scale, zero) ≈ x within scale / 2.
    """
    qmax = 2**bits - 1
    if not 2 <= bits <= 8:
        raise ValueError(f"bits must be in 2..8, got {bits}")
    ### BEGIN SOLUTION ch13.zeropoint (§13.2, 2 pts): the range holds 0; 2^bits - 1 steps; which integer is 0.0?
    if dim is None:
        lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
    else:
        lo, hi = x.amin(dim=dim, keepdim=True).clamp(max=0), x.amax(dim=dim, keepdim=True).clamp(min=0)
    span = hi - lo
    scale = torch.where(span > 0, span, torch.ones_like(span)) / qmax
    zero = torch.round(-lo / scale)
    q = (torch.round(x / scale) + zero).clamp(0, qmax).to(torch.uint8)
    ### END SOLUTION
    return q, scale, zero.to(torch.int32)


# ----------------------------------------------------------------------------- groups


def quantize_groupwise(w: torch.Tensor, bits: int, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric quantization of a 2-D w (rows, cols) with one scale per group of group_size consecutive columns
    of a row.  (exercise ch13.groupwise)

    Row r's group g is w[r, g·group_size : (g+1)·group_size]; when cols is not a multiple of group_size the last
    group is shorter. Each group is quantized as quantize_absmax does a slice. Returns (q int8 (rows, cols),
    scale (rows, n_groups)) with n_groups = ceil(cols / group_size). group_size = cols is per-channel (one scale
    per row).
    """
    rows, cols = w.shape
    ### BEGIN SOLUTION ch13.groupwise (§13.3, 2 pts): pad to whole groups, view (rows, groups, size), absmax each
    n_groups = -(-cols // group_size)
    padded = F.pad(w, (0, n_groups * group_size - cols))  # zeros never raise a group's max|w|
    q, scale = quantize_absmax(padded.view(rows, n_groups, group_size), bits, dim=2)
    q, scale = q.view(rows, -1)[:, :cols], scale.view(rows, n_groups)
    ### END SOLUTION
    return q, scale


def dequantize_groupwise(q: torch.Tensor, scale: torch.Tensor, group_size: int) -> torch.Tensor:
    """w ≈ scale of each column's group times q: (rows, cols) in scale's dtype."""
    cols = q.shape[1]
    return scale.repeat_interleave(group_size, dim=1)[:, :cols] * q.to(scale.dtype)


# ----------------------------------------------------------------------------- integer arithmetic


def int8_matmul(xq: torch.Tensor, x_scale: torch.Tensor, wq: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """x @ w.T from int8 parts: (N, M).  (exercise ch13.int8_matmul)

    xq (N, K) int8 with x_scale (N, 1) (one scale per row: per token); wq (M, K) int8 with w_scale (M, 1) (per
    output channel). Multiply and sum the integers exactly, in int32 (a product of two int8 fits in 15 bits, and
    K of them in 32 bits up to K = 2^17), and only then apply the two scales: out[n, m] = x_scale[n] · w_scale[m]
    · Σ_k xq[n, k] · wq[m, k]. The result has x_scale's dtype.
    """
    ### BEGIN SOLUTION ch13.int8_matmul (§13.4, 2 pts): sum integer products in int32, then scale
    acc = xq.to(torch.int32) @ wq.to(torch.int32).T  # (N, M), exact
    out = acc.to(x_scale.dtype) * x_scale * w_scale.to(x_scale.dtype).T
    ### END SOLUTION
    return out


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two signed 4-bit integers per byte.  (exercise ch13.pack_int4)

    q: int8 (..., n) with values in -8..7. Byte j of a row holds q[2j] in its low 4 bits and q[2j+1] in its high
    4 bits, each as its 4-bit two's complement (-1 -> 0b1111); an odd n is padded with one 0. Returns uint8
    (..., ceil(n / 2)).
    """
    ### BEGIN SOLUTION ch13.pack_int4 (§13.5, 1 pt): low 4 bits of each value; even index low, odd high
    n = q.shape[-1]
    q = F.pad(q.to(torch.int16), (0, n % 2))  # pad with one zero when n is odd
    nib = q & 0xF  # two's complement in 4 bits
    packed = nib[..., 0::2] | (nib[..., 1::2] << 4)
    ### END SOLUTION
    return packed.to(torch.uint8)


def unpack_int4(packed: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of pack_int4: uint8 (..., ceil(n / 2)) -> int8 (..., n) in -8..7.  (exercise ch13.unpack_int4)"""
    ### BEGIN SOLUTION ch13.unpack_int4 (§13.5, 1 pt): low and high nibbles, interleaved; 8..15 stand for -8..-1
    p = packed.to(torch.int16)
    nib = torch.stack([p & 0xF, p >> 4], dim=-1).flatten(-2)[..., :n]
    q = torch.where(nib >= 8, nib - 16, nib)
    ### END SOLUTION
    return q.to(torch.int8)


# ----------------------------------------------------------------------------- a quantized linear layer


class QuantLinear(nn.Module):
    """nn.Linear with its weight as b-bit integers (int4: packed two a byte) and one fp16 scale per group of
    group_size inputs of an output row (group_size = in_features: per channel); the bias in fp16.

    act_bits=None: weight-only quantization, the weight is dequantized on the fly and the input stays float.
    act_bits=8: the input is quantized too, as it arrives (dynamic), per token and group of the same group_size,
    before the product (llama2.c's runq.c). Numerically that is Σ_g s_x s_w Σ_k q_x q_w: the integer sums of
    int8_matmul with a scale per group, equal to a float product of the dequantized input and weight, which is how
    it is computed here.
    """

    def __init__(self, q: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, bits: int, group_size: int,
                 act_bits: int | None = None):
        super().__init__()
        self.out_features, self.in_features = q.shape
        self.bits, self.group_size, self.act_bits = bits, group_size, act_bits
        self.register_buffer("qweight", pack_int4(q) if bits == 4 else q.to(torch.int8))
        self.register_buffer("scale", scale.to(torch.float16))
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.float16))

    @classmethod
    def from_linear(cls, linear: nn.Linear, bits: int, group_size: int | None = None,
                    act_bits: int | None = None) -> QuantLinear:
        """Round-to-nearest: each group of the weight quantized on its own (group_size None: per channel)."""
        w = linear.weight.detach().float()
        gs = group_size or w.shape[1]
        q, scale = quantize_groupwise(w, bits, gs)
        return cls(q, scale, linear.bias, bits, gs, act_bits)

    def int_weight(self) -> torch.Tensor:
        """The weight's integers, int8 (out_features, in_features)."""
        return unpack_int4(self.qweight, self.in_features) if self.bits == 4 else self.qweight

    def weight_dequantized(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_groupwise(self.int_weight(), self.scale.to(dtype), self.group_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in_features) float -> (..., out_features), in x's dtype.  (exercise ch13.qlinear)

        Weight-only: the integers of the weight (int_weight: unpacked when int4) times the scale of their group
        (self.scale, fp16, one per group of self.group_size inputs of a row), in x's dtype; then x @ wᵀ + bias.
        """
        if self.act_bits is not None:  # dynamic activation quantization: x's groups quantized as they arrive
            shape = x.shape
            x2 = x.reshape(-1, shape[-1])
            xq, xs = quantize_groupwise(x2, self.act_bits, self.group_size)
            x = dequantize_groupwise(xq, xs, self.group_size).view(shape)
        ### BEGIN SOLUTION ch13.qlinear (§13.5, 2 pts): integers × their group's scale, then a linear
        w = dequantize_groupwise(self.int_weight(), self.scale.to(x.dtype), self.group_size)
        y = F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))
        ### END SOLUTION
        return y


class QuantEmbedding(QuantLinear):
    """An embedding table stored like a QuantLinear weight (one row per token or position): looked up after
    dequantizing. The storyteller's token table is tied to lm_head: both modules share one set of buffers."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight_dequantized())


# ----------------------------------------------------------------------------- GPTQ


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 XᵀX / n of a layer's inputs x (n, K), in float64: the curvature of the layer's output error
    ||x wᵀ - x ŵᵀ||² in the direction of one row of the weight (the same for every row)."""
    x = x.reshape(-1, x.shape[-1]).double()
    return 2 * x.T @ x / x.shape[0]


def gptq_block(w1: torch.Tensor, u1: torch.Tensor, bits: int,
               group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ on one block of columns.  (exercise ch13.gptq_block)

    w1 (M, b): the block's columns of the weight, already corrected for the columns quantized before the block.
    u1 (b, b): the block's part of U, the upper Cholesky factor of the inverse Hessian (H⁻¹ = UᵀU).
    Work on a copy of w1, column i = 0, 1, ..., b-1 in turn:
      - where a group starts (i a multiple of group_size), its scale per row: absmax of the current (already
        corrected) columns i .. i+group_size-1 of the copy, over qmax, as in quantize_absmax;
      - quantize column i with its group's scale (round, clamp to -qmax..qmax) and dequantize it: q_i;
      - its error, err_i = (w_i - q_i) / u1[i, i], goes onto the columns not yet quantized:
        w_j -= err_i · u1[i, j] for every j > i.
    Returns (Q1 (M, b): the dequantized columns, E1 (M, b): the errors err_i, scales (M, ceil(b / group_size))).
    gptq() then moves the block's errors onto the columns after the block at once: W[:, after] -= E1 @ U[block, after].
    """
    qmax = qmax_of(bits)
    w1 = w1.clone()
    M, b = w1.shape
    q1, e1 = torch.zeros_like(w1), torch.zeros_like(w1)
    scales = []
    ### BEGIN SOLUTION ch13.gptq_block (§13.6, 3 pts): per column: scale, quantize, (w - q) / U[i,i] along row i of U
    for i in range(b):
        if i % group_size == 0:
            amax = w1[:, i : i + group_size].abs().amax(dim=1)
            scale = torch.where(amax > 0, amax, torch.ones_like(amax)) / qmax
            scales.append(scale)
        w = w1[:, i]
        q = torch.round(w / scale).clamp(-qmax, qmax) * scale
        err = (w - q) / u1[i, i]
        w1[:, i + 1 :] -= err[:, None] * u1[i, i + 1 :][None, :]
        q1[:, i], e1[:, i] = q, err
    ### END SOLUTION
    return q1, e1, torch.stack(scales, dim=1)


def gptq(w: torch.Tensor, h: torch.Tensor, bits: int, group_size: int, block_size: int = 128,
         damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GPTQ of a weight w (M, K) for inputs with Hessian h (K, K), columns in order (no reordering), in float64.

    Inputs that never fire (h[k, k] == 0) get their column zeroed; damp · mean(diag h) is added to the diagonal;
    U = the upper Cholesky factor of h⁻¹. Blocks of block_size columns (a multiple of group_size, so no group
    straddles two blocks) go through gptq_block, and each block's errors are pushed onto the later columns at once
    (the "lazy batch" update). Returns (q int8 (M, K), scale (M, n_groups) float64, dequantized (M, K) in w's dtype).
    """
    M, K = w.shape
    W, H = w.detach().double().clone(), h.double().clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H += damp * torch.diag(H).mean() * torch.eye(K, dtype=H.dtype)
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(H))
    U = torch.linalg.cholesky(hinv, upper=True)
    block = max(1, block_size // group_size) * group_size
    Q = torch.zeros_like(W)
    scales = []
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        q1, e1, s1 = gptq_block(W[:, i1:i2], U[i1:i2, i1:i2], bits, group_size)
        Q[:, i1:i2] = q1
        scales.append(s1)
        W[:, i2:] -= e1 @ U[i1:i2, i2:]
    scale = torch.cat(scales, dim=1)
    q = torch.round(Q / scale.repeat_interleave(group_size, dim=1)[:, :K]).to(torch.int8)
    return q, scale, Q.to(w.dtype)


# ----------------------------------------------------------------------------- a quantized KV cache


class QuantKVCache(KVCache):
    """Chapter 12's cache with keys and values stored as int8, one fp16 absmax scale per (layer, row, head, slot):
    each new token's key (and value) vector of a head is quantized when it is written, and the filled prefix is
    dequantized when attention reads it. 1 byte + 2/head_dim bytes a number instead of 4."""

    def __init__(self, n_layer: int, batch_size: int, n_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        shape = (n_layer, batch_size, n_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float16, device=device)
        self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float16, device=device)
        self.lengths = torch.zeros(batch_size, dtype=torch.int64, device=device)
        self.dtype = dtype

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.k, self.v, self.k_scale, self.v_scale))

    def rows(self, n: int) -> QuantKVCache:
        view = super().rows(n)
        view.k_scale, view.v_scale = self.k_scale[:, :n], self.v_scale[:, :n]
        return view

    def select(self, index: torch.Tensor) -> QuantKVCache:
        out = super().select(index)
        out.k_scale, out.v_scale = self.k_scale[:, index], self.v_scale[:, index]
        return out

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, _, T, _ = k.shape
        if int(self.lengths.max()) + T > self.max_len:
            raise ValueError(f"the cache holds {self.max_len} tokens a row; {int(self.lengths.max())} + {T} do not fit")
        slots = self.lengths[:, None] + torch.arange(T, device=k.device)
        rows = torch.arange(B, device=k.device)[:, None]
        for store, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = quantize_absmax(x, 8, dim=-1)  # one scale per (row, head, token)
            store[layer][rows, :, slots] = q.transpose(1, 2)
            scales[layer][rows, :, slots] = s.transpose(1, 2).to(torch.float16)
        n = int(self.lengths.max()) + T
        return (dequantize(self.k[layer, :, :, :n], self.k_scale[layer, :, :, :n].to(self.dtype)),
                dequantize(self.v[layer, :, :, :n], self.v_scale[layer, :, :, :n].to(self.dtype)))


def kv_cache_bytes(model: GPT, n_tokens: int, quantized: bool) -> int:
    """Bytes of the KV cache of one sequence of n_tokens: fp32 (Chapter 12's), or int8 with fp16 scales."""
    c = model.config
    cls = QuantKVCache if quantized else KVCache
    cache = cls(c.n_layer, 1, c.n_head, n_tokens, c.n_embd // c.n_head)
    extra = [cache.k_scale, cache.v_scale] if quantized else []
    return sum(t.numel() * t.element_size() for t in (cache.k, cache.v, *extra))


class CachedScorer(nn.Module):
    """The model read through forward_cached with a fresh cache of `cache_cls` for every batch (one prefill):
    a module with the model's config that storylib.gpt2.bits_per_byte can score, so the bits per byte include
    what the cache's storage does to the keys and values."""

    def __init__(self, model: GPT, cache_cls: type[KVCache] = QuantKVCache):
        super().__init__()
        self.model, self.config, self.cache_cls = model, model.config, cache_cls

    def forward(self, idx: torch.Tensor, targets=None):
        cache = self.cache_cls.for_model(self.model, idx.shape[0], idx.shape[1])
        return forward_cached(self.model, idx, cache), None


@torch.no_grad()
def greedy_tokens(model: GPT, prompt_ids: Sequence[int], n: int, cache_cls: type[KVCache] = KVCache) -> list[int]:
    """n greedy tokens after prompt_ids with a cache of `cache_cls` (prefill once, then one token a step);
    len(prompt_ids) + n must fit the context window."""
    if len(prompt_ids) + n > model.config.block_size:
        raise ValueError(f"{len(prompt_ids)} + {n} tokens do not fit block_size {model.config.block_size}")
    cache = cache_cls.for_model(model, 1, len(prompt_ids) + n)
    logits = forward_cached(model, torch.tensor([list(prompt_ids)]), cache)[:, -1]
    out = []
    for step in range(n):
        out.append(int(logits.argmax(-1)))
        if step < n - 1:
            logits = forward_cached(model, torch.tensor([[out[-1]]]), cache)[:, -1]
    return out


# ----------------------------------------------------------------------------- the storyteller, quantized

LINEARS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@torch.no_grad()
def calibration_hessians(model: GPT, windows: Sequence[Sequence[int]]) -> dict[str, torch.Tensor]:
    """The Hessian (hessian()) of the inputs of every block linear and of lm_head, over the token windows
    (run through the float model once; hooks record each layer's inputs)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    named = {f"transformer.h.{i}.{n}": blk.get_submodule(n) for i, blk in enumerate(model.transformer.h)
             for n in LINEARS}
    named["lm_head"] = model.lm_head
    for name, mod in named.items():
        def hook(_m, args, _out, name=name):
            x = args[0].reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums.get(name, 0) + 2 * x.T @ x
            counts[name] = counts.get(name, 0) + x.shape[0]
        hooks.append(mod.register_forward_hook(hook))
    try:
        model.eval()
        for ids in windows:
            model(torch.tensor([list(ids)]))
    finally:
        for h in hooks:
            h.remove()
    return {k: sums[k] / counts[k] for k in sums}


def quantize_model(model: GPT, scheme: str, hessians: dict[str, torch.Tensor] | None = None,
                   group_size: int | None = None) -> GPT:
    """A copy of the storyteller in `scheme` (the model itself is not changed):

        fp32            a copy
        fp16            every weight rounded to fp16 (and used in fp32)
        int8            int8, one scale per output channel (per row of every matrix)
        int8-g64-dyn    int8 weights in groups of 64, and the activations quantized per token and group as they
                        arrive (QuantLinear act_bits=8)
        int4-g32        int4 in groups of 32, round to nearest (RTN)
        int4-gptq       int4 in groups of 32, the block linears and lm_head by GPTQ with `hessians`
                        (calibration_hessians); the position table by RTN

    Every matrix (block linears, the tied token table / lm_head, the position table) is quantized; LayerNorms and
    biases stay fp16. group_size: another group size for a grouped scheme (storylib/export_c.py's --group).
    """
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; one of {SCHEMES}")
    m = copy.deepcopy(model).float().eval()
    if scheme == "fp32":
        return m
    if scheme == "fp16":
        with torch.no_grad():
            for p in m.parameters():
                p.copy_(p.half().float())
        return m
    bits = 8 if scheme.startswith("int8") else 4
    gs = {"int8": None, "int8-g64-dyn": 64, "int4-g32": 32, "int4-gptq": 32}[scheme]
    gs = group_size if group_size is not None and gs is not None else gs
    act = 8 if scheme == "int8-g64-dyn" else None
    if scheme == "int4-gptq" and hessians is None:
        raise ValueError("int4-gptq needs the calibration hessians (calibration_hessians)")

    def make(name: str, lin: nn.Linear, cls=QuantLinear) -> QuantLinear:
        if scheme == "int4-gptq" and name in hessians:
            q, scale, _ = gptq(lin.weight.detach().float(), hessians[name], bits, gs)
            return cls(q, scale, lin.bias, bits, gs, act)
        ql = QuantLinear.from_linear(lin, bits, gs, act)
        return ql if cls is QuantLinear else cls(ql.int_weight(), ql.scale, ql.bias, bits, ql.group_size)

    for i, blk in enumerate(m.transformer.h):
        for n in LINEARS:
            parent, child = n.split(".")
            setattr(blk.get_submodule(parent), child, make(f"transformer.h.{i}.{n}", blk.get_submodule(n)))
    head = make("lm_head", m.lm_head)
    m.lm_head = head
    wte = QuantEmbedding(head.int_weight(), head.scale, None, bits, head.group_size)
    wte.qweight, wte.scale = head.qweight, head.scale  # tied: one stored copy
    m.transformer.wte = wte
    wpe = m.transformer.wpe
    q, scale = quantize_groupwise(wpe.weight.detach().float(), bits, gs or wpe.weight.shape[1])
    m.transformer.wpe = QuantEmbedding(q, scale, None, bits, gs or wpe.weight.shape[1])
    with torch.no_grad():
        for p in m.parameters():  # what is left (LayerNorms, biases of the float model) is stored in fp16
            p.copy_(p.half().float())
    return m


def serialized_tensors(model: nn.Module, scheme: str) -> dict[str, torch.Tensor]:
    """The tensors a file of the model in `scheme` holds, each once (tied tensors once), as stored: fp32 for
    fp32; fp16 floats otherwise; packed int4 / int8 integers and fp16 scales for the quantized matrices."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in model.state_dict(keep_vars=True).items():  # persistent tensors only (not the causal masks)
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        if t.is_floating_point():
            t = t.detach().float() if scheme == "fp32" else t.detach().half()
        out[name] = t.detach().contiguous()
    return out


def model_bytes(model: nn.Module, scheme: str) -> int:
    """Bytes of the serialized tensors (the numbers themselves; a file adds a small header)."""
    return sum(t.numel() * t.element_size() for t in serialized_tensors(model, scheme).values())


def weight_error(w: torch.Tensor, bits: int, group_size: int) -> float:
    """RMS of w - dequantize(quantize(w)) with groups of group_size (RTN), relative to the RMS of w."""
    q, s = quantize_groupwise(w.float(), bits, group_size)
    err = w.float() - dequantize_groupwise(q, s, group_size)
    return math.sqrt(float(err.pow(2).mean()) / float(w.float().pow(2).mean()))
