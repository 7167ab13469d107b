"""Lab 2 — reductions: block sum in shared memory, warp shuffles, prefix sum (book §8.7).

A map has no communication between threads; a reduction is all communication. Inside a block, threads
talk through shared memory (on-chip, ~100x lower latency than device memory) and meet at
`cuda.syncthreads()`. Inside a warp (32 threads that execute together) they can read each other's
registers directly with shuffles (`cuda.shfl_xor_sync`), no shared memory and no barrier needed.
Performance contract: read each input element once; the only other traffic is one number per block.

    python -m cuda_labs.lab02_reduce   # benchmark on a GPU
"""

from __future__ import annotations

import numpy as np
from numba import float32

from cuda_labs._compat import WARP, cuda

FULL_MASK = 0xFFFFFFFF  # every lane of the warp takes part in the shuffle
THREADS = 256


# ----------------------------------------------------------------------------- references


def sum_reference(x: np.ndarray) -> float:
    return float(np.sum(x, dtype=np.float64))


def prefix_sum_reference(x: np.ndarray) -> np.ndarray:
    return np.cumsum(x.astype(np.float64))


# ----------------------------------------------------------------------------- v1: a tree in shared memory


@cuda.jit
def block_sum_shared_kernel(x, partial):
    """partial[b] = sum of the elements that block b's threads visit (grid-stride).  (exercise lab02.shared_sum)

    Launched with a power-of-two number of threads and blockDim.x * 4 bytes of dynamic shared memory.
    Each thread first adds up x[i], x[i + stride], ... (stride = all threads of the grid) into
    shared[t]; then the block halves the active threads each round, shared[t] += shared[t + half],
    with a barrier between rounds, until shared[0] holds the block's sum.
    """
    shared = cuda.shared.array(0, dtype=float32)  # dynamic: one slot per thread
    t = cuda.threadIdx.x
    ### BEGIN SOLUTION lab02.shared_sum (§8.7, 2 pts): partial sums, then the tree in shared memory; mind the barriers
    acc = float32(0.0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += x[i]
    shared[t] = acc
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            shared[t] += shared[t + half]
        cuda.syncthreads()  # every thread reaches it: it is outside the if
        half //= 2
    if t == 0:
        partial[cuda.blockIdx.x] = shared[0]
    ### END SOLUTION


def sum_shared(x, blocks: int = 64, threads: int = THREADS, partial=None, total=None):
    """Sum of a float32 device array: one launch makes `blocks` partial sums, a second adds them up.
    `partial` (blocks floats) and `total` (1 float) may be given to skip the allocations."""
    partial = cuda.device_array(blocks, dtype=np.float32) if partial is None else partial
    total = cuda.device_array(1, dtype=np.float32) if total is None else total
    block_sum_shared_kernel[blocks, threads, 0, 4 * threads](x, partial)
    block_sum_shared_kernel[1, threads, 0, 4 * threads](partial, total)
    return total


# ----------------------------------------------------------------------------- v2: warp shuffles


@cuda.jit(device=True)
def warp_sum(v):
    """The sum of `v` over the 32 lanes of this warp, returned to every lane.  (exercise lab02.warp_sum)

    Butterfly: for offset = 16, 8, 4, 2, 1 add the value of lane (lane XOR offset), read with
    cuda.shfl_xor_sync(FULL_MASK, v, offset). After five rounds every lane holds the total.
    """
    ### BEGIN SOLUTION lab02.warp_sum (§8.7, 2 pts): the butterfly: lanes trade registers, no shared memory
    offset = WARP // 2
    while offset > 0:
        v += cuda.shfl_xor_sync(FULL_MASK, v, offset)
        offset //= 2
    return v
    ### END SOLUTION


@cuda.jit(device=True)
def warp_max(v):
    """The maximum of `v` over the warp, returned to every lane (warp_sum with max for +)."""
    offset = WARP // 2
    while offset > 0:
        v = max(v, cuda.shfl_xor_sync(FULL_MASK, v, offset))
        offset //= 2
    return v


@cuda.jit(device=True)
def block_sum(v, scratch):
    """The sum of `v` over the whole block, returned to every thread. `scratch`: a shared array of 32 floats.

    Each warp sums with shuffles, lane 0 of warp w posts it in scratch[w], and warp-sum the posted values.
    blockDim.x must be a multiple of 32 and every thread of the block must call it.
    """
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    v = warp_sum(v)
    if lane == 0:
        scratch[warp] = v
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP else float32(0.0)
    v = warp_sum(v)
    cuda.syncthreads()  # scratch may be reused right after
    return v


@cuda.jit(device=True)
def block_max(v, scratch):
    """The maximum of `v` over the whole block (block_sum with max); same rules as block_sum."""
    lane, warp = cuda.threadIdx.x % WARP, cuda.threadIdx.x // WARP
    v = warp_max(v)
    if lane == 0:
        scratch[warp] = v
    cuda.syncthreads()
    v = scratch[lane] if lane < cuda.blockDim.x // WARP else float32(-np.inf)
    v = warp_max(v)
    cuda.syncthreads()
    return v


@cuda.jit
def block_sum_shuffle_kernel(x, partial):
    """Like block_sum_shared_kernel, with the in-block tree done by shuffles (block_sum)."""
    scratch = cuda.shared.array(WARP, dtype=float32)
    acc = float32(0.0)
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        acc += x[i]
    acc = block_sum(acc, scratch)
    if cuda.threadIdx.x == 0:
        partial[cuda.blockIdx.x] = acc


def sum_shuffle(x, blocks: int = 64, threads: int = THREADS, partial=None, total=None):
    partial = cuda.device_array(blocks, dtype=np.float32) if partial is None else partial
    total = cuda.device_array(1, dtype=np.float32) if total is None else total
    block_sum_shuffle_kernel[blocks, threads](x, partial)
    block_sum_shuffle_kernel[1, threads](partial, total)
    return total


# ----------------------------------------------------------------------------- prefix sum (scan)


@cuda.jit
def block_scan_kernel(x, out, block_totals):
    """Inclusive scan of each block's chunk of blockDim.x elements.  (exercise lab02.scan)

    out[b*B + t] = x[b*B] + ... + x[b*B + t] for B = blockDim.x (elements past len(x) count as 0 and are not
    written); block_totals[b] = the sum of block b's chunk. Hillis-Steele: log2(B) rounds; in the round of
    `offset`, element t adds the element `offset` to its left. Use the 2·B floats of dynamic shared memory
    as two buffers (read one, write the other, swap) so no thread reads a value being overwritten.
    """
    buf = cuda.shared.array(0, dtype=float32)  # 2 * blockDim.x floats
    t, B = cuda.threadIdx.x, cuda.blockDim.x
    i = cuda.blockIdx.x * B + t
    ### BEGIN SOLUTION lab02.scan (§8.7, 3 pts): Hillis-Steele with two buffers; a barrier each round
    buf[t] = x[i] if i < x.shape[0] else float32(0.0)
    cuda.syncthreads()
    src, dst = 0, B
    offset = 1
    while offset < B:
        v = buf[src + t]
        if t >= offset:
            v += buf[src + t - offset]
        buf[dst + t] = v
        cuda.syncthreads()
        src, dst = dst, src
        offset *= 2
    if i < x.shape[0]:
        out[i] = buf[src + t]
    if t == B - 1:
        block_totals[cuda.blockIdx.x] = buf[src + t]
    ### END SOLUTION


@cuda.jit
def add_offsets_kernel(out, scanned_totals):
    """out[i] += (sum of all earlier blocks) = scanned_totals[block - 1]."""
    b = cuda.blockIdx.x
    i = cuda.grid(1)
    if b > 0 and i < out.shape[0]:
        out[i] += scanned_totals[b - 1]


def prefix_sum(x, out, threads: int = THREADS) -> None:
    """Inclusive scan of a float32 device array of any length: scan blocks, scan the block totals
    (recursively), add each block's offset."""
    n = x.shape[0]
    blocks = (n + threads - 1) // threads
    totals = cuda.device_array(blocks, dtype=np.float32)
    block_scan_kernel[blocks, threads, 0, 2 * 4 * threads](x, out, totals)
    if blocks > 1:
        scanned = cuda.device_array(blocks, dtype=np.float32)
        prefix_sum(totals, scanned, threads)
        add_offsets_kernel[blocks, threads](out, scanned)


# ----------------------------------------------------------------------------- benchmark (real GPU)


def bench(n: int = 1 << 26) -> dict:
    import torch

    from cuda_labs._timing import gbps, time_queued_ms

    x = torch.randn(n, device="cuda")
    dx = cuda.as_cuda_array(x, sync=False)
    dout = cuda.device_array(n, dtype=np.float32)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    nb = 4 * n
    out = {"n": n, "torch_sum_GBps": gbps(nb, time_queued_ms(lambda: x.sum()))}
    partial, total = cuda.device_array(4 * sms, dtype=np.float32), cuda.device_array(1, dtype=np.float32)
    out["shared_sum_GBps"] = gbps(nb, time_queued_ms(lambda: sum_shared(dx, 4 * sms, THREADS, partial, total)))
    out["shuffle_sum_GBps"] = gbps(nb, time_queued_ms(lambda: sum_shuffle(dx, 4 * sms, THREADS, partial, total)))
    out["shuffle_sum_rel_err"] = abs(float(total.copy_to_host()[0]) - float(x.double().sum())) / float(x.abs().sum())
    out["torch_cumsum_GBps"] = gbps(2 * nb, time_queued_ms(lambda: torch.cumsum(x, 0)))
    out["scan_GBps"] = gbps(2 * nb, time_queued_ms(lambda: prefix_sum(dx, dout, threads=1024)))
    return out


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>18}: {v:,.1f}")
