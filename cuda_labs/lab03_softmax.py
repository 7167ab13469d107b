"""Lab 3 — softmax: naive three-pass -> fused online softmax (book §8.8).

softmax(x)_c = exp(x_c - m) / sum_c' exp(x_c' - m), with m = max_c x_c subtracted so exp never overflows.

v1 (naive): one thread per row, three passes over the row (max, sum, write). Few threads (one per row)
and each reads its row three times with a stride of one row between the threads of a warp: uncoalesced.
v2 (online): one block per row. Each thread keeps a running pair (m, d) — the max so far and the sum of
exp(x - m) so far — rescaling d when m grows (Milakov & Gimelshein, 2018), so max and sum come from ONE
pass; the block merges the pairs with shuffles; a second pass writes. Coalesced: the threads of a warp
read consecutive columns. Contract: read x twice (the second read mostly from cache), write once.
v3 (registers, reference only): the row is read ONCE into registers — thread t holds columns t + i·B,
i < V, V loads in flight before the first use — then max and sum are block reductions over registers and
the write comes from registers too. Contract: read x once, write once, nothing else.

    python -m cuda_labs.lab03_softmax   # benchmark on a GPU
"""

from __future__ import annotations

import math
from functools import cache

import numpy as np
from numba import float32, uint32

from cuda_labs._compat import WARP, cuda
from cuda_labs.lab02_reduce import FULL_MASK, block_max, block_sum

THREADS = 256
NEG_INF = float32(-np.inf)


def softmax_reference(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# ----------------------------------------------------------------------------- v1: naive, three passes


@cuda.jit
def softmax_naive_kernel(x, out):
    """Row-wise softmax of an (R, C) float32 matrix, one thread per row, three passes.  (exercise lab03.naive)

    Thread r (guard r < R): pass 1 finds m = max of row r; pass 2 adds up exp(x - m); pass 3 writes
    out[r, c] = exp(x[r, c] - m) / sum.
    """
    ### BEGIN SOLUTION lab03.naive (§8.8, 2 pts): one thread, one row, three passes
    r = cuda.grid(1)
    if r < x.shape[0]:
        m = NEG_INF
        for c in range(x.shape[1]):
            m = max(m, x[r, c])
        s = float32(0.0)
        for c in range(x.shape[1]):
            s += math.exp(x[r, c] - m)
        for c in range(x.shape[1]):
            out[r, c] = math.exp(x[r, c] - m) / s
    ### END SOLUTION


# ----------------------------------------------------------------------------- v2: online, one block per row


@cuda.jit(device=True)
def online_merge(m_a, d_a, m_b, d_b):
    """Merge two softmax states (m, d): d = sum of exp(x - m) over the elements seen, m = their max.
    (exercise lab03.merge)

    Returns (m, d) of the union: m = max(m_a, m_b) and each d rescaled to the new max,
    d = d_a·exp(m_a - m) + d_b·exp(m_b - m). A state that has seen nothing is (-inf, 0): merging two of
    those must give (-inf, 0), not NaN (exp(-inf - -inf) is NaN).
    """
    ### BEGIN SOLUTION lab03.merge (§8.8, 2 pts): bring both sums to a common max; mind the empty state
    m = max(m_a, m_b)
    if m == NEG_INF:
        return m, float32(0.0)
    return m, d_a * math.exp(m_a - m) + d_b * math.exp(m_b - m)
    ### END SOLUTION


@cuda.jit(device=True)
def block_merge(m, d, scratch_m, scratch_d):
    """Merge the (m, d) states of every thread of the block; every thread gets the result.
    Like lab02.block_sum: shuffles inside each warp, one slot per warp in shared memory, once more."""
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    offset = WARP // 2
    while offset > 0:
        m, d = online_merge(m, d, cuda.shfl_xor_sync(FULL_MASK, m, offset), cuda.shfl_xor_sync(FULL_MASK, d, offset))
        offset //= 2
    if lane == 0:
        scratch_m[warp], scratch_d[warp] = m, d
    cuda.syncthreads()
    live = lane < cuda.blockDim.x // WARP
    m, d = (scratch_m[lane], scratch_d[lane]) if live else (NEG_INF, float32(0.0))
    offset = WARP // 2
    while offset > 0:
        m, d = online_merge(m, d, cuda.shfl_xor_sync(FULL_MASK, m, offset), cuda.shfl_xor_sync(FULL_MASK, d, offset))
        offset //= 2
    cuda.syncthreads()
    return m, d


@cuda.jit(fastmath=True)  # fast exp: the kernel is meant to be bound by memory
def softmax_online_kernel(x, out):
    """Row-wise softmax, block r does row r; blockDim.x a multiple of 32.  (exercise lab03.online)

    Pass 1: thread t visits columns t, t + B, ... (B = blockDim.x) four at a time — c, c + B, c + 2B, c + 3B,
    loaded before any is used, so four loads are in flight (-inf past the end of the row) — keeping its
    running state (m, d): m4 = the max of the four; if m4 > m rescale d by exp(m - m4) and set m = m4; add
    the four exp(v - m) (a -inf adds 0; skip the exp when m is still -inf). Then merge the states of the block
    with block_merge. Pass 2: write out[r, c] = exp(x[r, c] - m) / d for the same columns.
    """
    scratch_m = cuda.shared.array(WARP, dtype=float32)
    scratch_d = cuda.shared.array(WARP, dtype=float32)
    r, t, B, C = cuda.blockIdx.x, cuda.threadIdx.x, cuda.blockDim.x, x.shape[1]
    ### BEGIN SOLUTION lab03.online (§8.8, 3 pts): one pass with a running (max, sum), then merge across the block
    m, d = NEG_INF, float32(0.0)
    for c in range(t, C, 4 * B):
        v0 = x[r, c]
        v1 = x[r, c + B] if c + B < C else NEG_INF
        v2 = x[r, c + 2 * B] if c + 2 * B < C else NEG_INF
        v3 = x[r, c + 3 * B] if c + 3 * B < C else NEG_INF
        m4 = max(max(v0, v1), max(v2, v3))
        if m4 > m:  # a new max: rescale the sum so far (rare after the first few elements)
            d *= math.exp(m - m4)
            m = m4
        if m > NEG_INF:  # while m is -inf every v is -inf and adds 0 (and -inf - -inf would be NaN)
            d += math.exp(v0 - m) + math.exp(v1 - m) + math.exp(v2 - m) + math.exp(v3 - m)
    m, d = block_merge(m, d, scratch_m, scratch_d)
    inv_d = float32(1.0) / d
    for c in range(t, C, B):
        out[r, c] = math.exp(x[r, c] - m) * inv_d
    ### END SOLUTION


# ----------------------------------------------------------------------------- v3: the row in registers


@cache
def register_kernel(V: int):
    """Softmax for rows of at most V·blockDim.x columns; V (values per thread) is a compile-time constant."""

    @cuda.jit(fastmath=True)
    def softmax_register_kernel(x, out):
        """Block r does row r, thread t holds columns t + i·B (i < V) in registers.  (reference only)"""
        scratch = cuda.shared.array(WARP, dtype=float32)
        v = cuda.local.array(V, dtype=float32)  # registers: every index below is a constant
        r, t, B, C = uint32(cuda.blockIdx.x), uint32(cuda.threadIdx.x), uint32(cuda.blockDim.x), uint32(x.shape[1])
        for i in range(V):  # V independent loads, all in flight before the first use
            c = t + uint32(i) * B
            v[i] = x[r, c] if c < C else NEG_INF
        m = v[0]
        for i in range(1, V):
            m = max(m, v[i])
        m = block_max(m, scratch)
        d = float32(0.0)
        for i in range(V):
            v[i] = math.exp(v[i] - m)  # -inf (masked or past the end) -> 0
            d += v[i]
        inv_d = float32(1.0) / block_sum(d, scratch)
        for i in range(V):
            c = t + uint32(i) * B
            if c < C:
                out[r, c] = v[i] * inv_d

    return softmax_register_kernel


# ----------------------------------------------------------------------------- launchers and benchmark


def softmax_naive(x, out, threads: int = 128) -> None:
    softmax_naive_kernel[(x.shape[0] + threads - 1) // threads, threads](x, out)


def softmax_online(x, out, threads: int = THREADS) -> None:
    softmax_online_kernel[x.shape[0], threads](x, out)


def softmax_registers(x, out, threads: int = THREADS) -> None:
    register_kernel((x.shape[1] + threads - 1) // threads)[x.shape[0], threads](x, out)


def bench(rows: int = 8192, cols: int = 4096) -> dict:
    import torch

    from cuda_labs._timing import gbps, time_queued_ms

    x = torch.randn(rows, cols, device="cuda") * 3
    out = torch.empty_like(x)
    dx, dout = cuda.as_cuda_array(x, sync=False), cuda.as_cuda_array(out, sync=False)
    nb = 2 * 4 * rows * cols  # read once, write once: the least any softmax must move
    res = {"rows": rows, "cols": cols, "copy_GBps": gbps(nb, time_queued_ms(lambda: out.copy_(x)))}
    res["torch_GBps"] = gbps(nb, time_queued_ms(lambda: torch.softmax(x, -1)))
    res["naive_GBps"] = gbps(nb, time_queued_ms(lambda: softmax_naive(dx, dout), reps=3, rounds=3))
    res["online_GBps"] = gbps(nb, time_queued_ms(lambda: softmax_online(dx, dout)))
    for threads in (64, 128, 512):
        res[f"online_{threads}_GBps"] = gbps(nb, time_queued_ms(lambda t=threads: softmax_online(dx, dout, t)))
    ref = torch.softmax(x.double(), -1)
    for threads in (128, 256, 512, 1024):
        res[f"registers_{threads}_GBps"] = gbps(nb, time_queued_ms(lambda t=threads: softmax_registers(dx, dout, t)))
        res[f"registers_{threads}_max_abs_err"] = float((out.double() - ref).abs().max())
    res["registers_GBps"] = max(res[f"registers_{t}_GBps"] for t in (128, 256, 512, 1024))
    res["best_GBps"] = max(res["online_GBps"], res["registers_GBps"])  # the best rung
    softmax_online(dx, dout)
    res["online_max_abs_err"] = float((out.double() - ref).abs().max())
    return res


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>18}: {v}")
