"""Lab 6 — fused attention forward, flash-style (book §8.11).

Causal attention for BH = batch·heads independent heads: O = softmax(Q Kᵀ · scale + mask) V, Q, K, V, O of
shape (BH, T, D).

naive (three kernels): S = Q Kᵀ·scale written to memory (BH·T·T floats), softmax of each row of S in place
(lab03's online kernel), O = S V. S is T/D times bigger than Q, K, V together: at T = 1024, D = 64 the
naive version moves ~16× more bytes than its inputs and output.

flash (one kernel): a block takes BR query rows of one head; K and V stream through shared memory in tiles
of BC keys; each thread keeps its query row q, its output row o and the online-softmax state (m, l) in
registers (lab03's running max and sum, here with o rescaled alongside l). S and P never touch memory.
Contract: read Q, K, V once per query tile, write O once. (Dao et al., FlashAttention, 2022.)

    python -m cuda_labs.lab06_attention   # benchmark on a GPU at T = 1024, D = 64
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import float32

from cuda_labs._compat import cuda
from cuda_labs.lab03_softmax import NEG_INF, softmax_online


def attention_reference(Q: np.ndarray, K: np.ndarray, V: np.ndarray) -> np.ndarray:
    """float64 causal attention, (BH, T, D) -> (BH, T, D)."""
    Q, K, V = (a.astype(np.float64) for a in (Q, K, V))
    T, D = Q.shape[1], Q.shape[2]
    S = Q @ K.transpose(0, 2, 1) / math.sqrt(D)
    S = np.where(np.tril(np.ones((T, T), dtype=bool)), S, -np.inf)
    P = np.exp(S - S.max(-1, keepdims=True))
    return (P / P.sum(-1, keepdims=True)) @ V


# ----------------------------------------------------------------------------- naive: three kernels


@cuda.jit
def scores_kernel(Q, K, S, scale):
    """S[h, i, j] = scale · Q[h, i]·K[h, j] for j <= i, -inf above the diagonal.  (exercise lab06.scores)

    Grid: (j over x, i over y, head h = blockIdx.z). Guard i, j < T.
    """
    ### BEGIN SOLUTION lab06.scores (§8.11, 1 pt): one thread per score, neighbours along the keys; the causal mask
    j, i = cuda.grid(2)
    h = cuda.blockIdx.z
    T = Q.shape[1]
    if i < T and j < T:
        if j > i:
            S[h, i, j] = NEG_INF
        else:
            acc = float32(0.0)
            for c in range(Q.shape[2]):
                acc += Q[h, i, c] * K[h, j, c]
            S[h, i, j] = acc * scale
    ### END SOLUTION


@cuda.jit
def pv_kernel(P, V, O):
    """O[h, i, c] = sum_j P[h, i, j]·V[h, j, c]; grid (c over x, i over y, h = blockIdx.z)."""
    c, i = cuda.grid(2)
    h = cuda.blockIdx.z
    if i < O.shape[1] and c < O.shape[2]:
        acc = float32(0.0)
        for j in range(i + 1):  # P is zero above the diagonal
            acc += P[h, i, j] * V[h, j, c]
        O[h, i, c] = acc


def attention_naive(Q, K, V, O, S, softmax_threads: int = 128) -> None:
    """Three launches; S is a (BH, T, T) float32 scratch buffer."""
    BH, T, D = Q.shape
    scores_kernel[((T + 31) // 32, (T + 7) // 8, BH), (32, 8)](Q, K, S, np.float32(1.0 / math.sqrt(D)))
    S2 = S.reshape(BH * T, T)
    softmax_online(S2, S2, threads=softmax_threads)
    pv_kernel[((D + 31) // 32, (T + 7) // 8, BH), (32, 8)](S, V, O)


# ----------------------------------------------------------------------------- flash: one fused kernel


@cache
def flash_kernel(D: int, BR: int, BC: int):
    """The fused kernel for head size D, BR query rows (= threads) per block and BC keys per tile."""

    @cuda.jit
    def attention_flash_kernel(Q, K, V, O, scale):
        """Causal attention for query rows i = blockIdx.x·BR + t of head h = blockIdx.y.  (exercise lab06.flash)

        Thread t keeps q = Q[h, i]·scale, o[D] = 0, m = -inf, l = 0. For each key tile k0 = 0, BC, ... up to
        the block's last query row: the block copies K[h, k0:k0+BC] and V[h, k0:k0+BC] into Ks, Vs (0 past T),
        barrier; then for each key j = k0 + jj <= i (and < T): s = q·Ks[jj]; if s > m, rescale o and l by
        exp(m - s) and set m = s; p = exp(s - m); l += p; o += p·Vs[jj]; barrier before the next tile.
        Finally O[h, i] = o / l (guard i < T).
        """
        Ks = cuda.shared.array((BC, D), dtype=float32)
        Vs = cuda.shared.array((BC, D), dtype=float32)
        q = cuda.local.array(D, dtype=float32)
        o = cuda.local.array(D, dtype=float32)
        t, h = cuda.threadIdx.x, cuda.blockIdx.y
        T = Q.shape[1]
        i = cuda.blockIdx.x * BR + t
        last = min(T, (cuda.blockIdx.x + 1) * BR)  # keys past the block's last query row are all masked
        ### BEGIN SOLUTION lab06.flash (§8.11, 4 pts): lab 3's running max and sum, one key tile at a time
        for c in range(D):
            q[c] = Q[h, i, c] * scale if i < T else float32(0.0)
            o[c] = float32(0.0)
        m, l = NEG_INF, float32(0.0)
        for k0 in range(0, last, BC):
            for e in range(t, BC * D, BR):
                r, c = e // D, e % D
                inside = k0 + r < T
                Ks[r, c] = K[h, k0 + r, c] if inside else float32(0.0)
                Vs[r, c] = V[h, k0 + r, c] if inside else float32(0.0)
            cuda.syncthreads()
            for jj in range(min(BC, i + 1 - k0, T - k0)):  # causal: keys k0 + jj <= i
                s = float32(0.0)
                for c in range(D):
                    s += q[c] * Ks[jj, c]
                if s > m:  # a new running max: rescale what we have (rare after the first keys)
                    correction = math.exp(m - s)
                    l *= correction
                    for c in range(D):
                        o[c] *= correction
                    m = s
                p = math.exp(s - m)
                l += p
                for c in range(D):
                    o[c] += p * Vs[jj, c]
            cuda.syncthreads()
        if i < T:
            inv_l = float32(1.0) / l
            for c in range(D):
                O[h, i, c] = o[c] * inv_l
        ### END SOLUTION

    return attention_flash_kernel


def attention_flash(Q, K, V, O, BR: int = 64, BC: int = 64) -> None:
    BH, T, D = Q.shape
    flash_kernel(D, BR, BC)[((T + BR - 1) // BR, BH), BR](Q, K, V, O, np.float32(1.0 / math.sqrt(D)))


# ----------------------------------------------------------------------------- benchmark (real GPU)


def bench(bh: int = 96, T: int = 1024, D: int = 64) -> dict:
    """Milliseconds of naive and flash at BH = 96 (batch 8 × 12 heads), T = 1024, D = 64, with torch's SDPA."""
    import torch
    import torch.nn.functional as F

    from cuda_labs._timing import time_ms

    Q, K, V = (torch.randn(bh, T, D, device="cuda") for _ in range(3))
    O, S = torch.empty_like(Q), torch.empty(bh, T, T, device="cuda")
    dQ, dK, dV, dO, dS = (cuda.as_cuda_array(t, sync=False) for t in (Q, K, V, O, S))
    res = {"bh": bh, "T": T, "D": D}
    res["torch_sdpa_ms"] = time_ms(lambda: F.scaled_dot_product_attention(Q, K, V, is_causal=True))
    ref = F.scaled_dot_product_attention(Q.double(), K.double(), V.double(), is_causal=True)
    res["naive_ms"] = time_ms(lambda: attention_naive(dQ, dK, dV, dO, dS), warmup=1, reps=5)
    res["naive_max_abs_err"] = float((O.double() - ref).abs().max())
    for br, bc in ((64, 64), (128, 32), (64, 32), (128, 64)):
        O.fill_(float("nan"))
        res[f"flash_{br}x{bc}_ms"] = time_ms(lambda b=br, c=bc: attention_flash(dQ, dK, dV, dO, b, c))
        res[f"flash_{br}x{bc}_max_abs_err"] = float((O.double() - ref).abs().max())
    best = min(v for k, v in res.items() if k.startswith("flash_") and k.endswith("_ms"))
    res["flash_ms"] = best
    res["flash_speedup_vs_naive"] = res["naive_ms"] / best
    return res


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>28}: {v}")
