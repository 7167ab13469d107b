"""Lab 5 — the matmul ladder: naive -> coalesced -> shared tiles -> 2-D register blocking -> vectorised loads
(book §8.10).

C = A @ B for float32 A (M, K), B (K, N), row-major. 2·M·N·K flops on 4·(MK + KN + MN) bytes: at 4096² the
arithmetic intensity is ~680 flop/byte, far right of the roofline's ridge, so a good kernel is bound by
arithmetic, not memory. Each rung removes the bottleneck of the one before (Simon Boehm's "How to optimize
a CUDA matmul kernel for cuBLAS-like performance", 2022, walks the same ladder in CUDA C):

v1 naive       one thread per C[i, j]; consecutive threads walk down a column of C: A reads are strided
v2 coalesced   the same, with consecutive threads along a row of C: B and C accesses coalesce
v3 tiled       a block stages TILE×TILE tiles of A and B in shared memory: each global element is read by
               one thread and used TILE times from shared memory
v4 regblock    a block computes a BM×BN tile, each thread a TM×TN sub-tile held in registers: per k, a
               thread loads TM + TN numbers from shared memory and does TM·TN multiply-adds; at most 128
               registers a thread, so that two blocks share an SM and one hides the other's loads
v5 vectorised  v4 with A stored transposed in shared memory, each thread moving runs of 4 consecutive
               floats (a 16-byte vector) from global memory, and each thread's columns strided across the
               tile so that a warp's shared-memory reads hit 32 different banks
v6 expert     (reference only) v5 as the compiler wants it: uint32 indices (no negative-index code),
               runs of 4 rows/columns read as one 16-byte shared load, two k per loop turn, and the next
               tile's global loads in flight while the FMAs run: the hot loop is 85% FMAs (v5: 44%); two
               shared buffers (one barrier per k-tile), 8×4-thread warp tiles, blocks in groups of 8 rows

    python -m cuda_labs.lab05_matmul   # benchmark on a GPU against cuBLAS (torch.mm, TF32 off)
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

import numpy as np
from numba import float32, uint32

from cuda_labs._compat import SIMULATOR, cuda


def matmul_reference(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    return A.astype(np.float64) @ B.astype(np.float64)


# ----------------------------------------------------------------------------- v1, v2: one thread per output


@cuda.jit
def matmul_naive_kernel(A, B, C):
    """C[i, j] = sum_k A[i, k]·B[k, j], one thread per (i, j) with i = cuda.grid(2)[0].  (exercise lab05.naive)

    The x coordinate (consecutive threads of a warp) is the ROW i here: the warp's 32 threads read 32
    different rows of A (addresses K floats apart) — correct, and slow. Guard i < M and j < N.
    """
    ### BEGIN SOLUTION lab05.naive (§8.10, 1 pt): one thread, one output: a dot product
    i, j = cuda.grid(2)
    if i < C.shape[0] and j < C.shape[1]:
        acc = float32(0.0)
        for k in range(A.shape[1]):
            acc += A[i, k] * B[k, j]
        C[i, j] = acc
    ### END SOLUTION


@cuda.jit
def matmul_coalesced_kernel(A, B, C):
    """The naive kernel with the x coordinate on the COLUMN j.  (exercise lab05.coalesced)

    Now a warp reads one A[i, k] (a broadcast) and 32 consecutive B[k, j]s, and writes 32 consecutive C[i, j]s.
    """
    ### BEGIN SOLUTION lab05.coalesced (§8.10, 1 pt): which coordinate do the 32 threads of a warp differ in?
    j, i = cuda.grid(2)
    if i < C.shape[0] and j < C.shape[1]:
        acc = float32(0.0)
        for k in range(A.shape[1]):
            acc += A[i, k] * B[k, j]
        C[i, j] = acc
    ### END SOLUTION


# ----------------------------------------------------------------------------- v3: shared-memory tiles


@cache
def tiled_kernel(TILE: int):
    """The shared-memory kernel for TILE×TILE blocks (TILE is a compile-time constant of the kernel)."""

    @cuda.jit
    def matmul_tiled_kernel(A, B, C):
        """C tile of block (bx, by) = sum over k-tiles of As @ Bs, the tiles staged in shared memory.
        (exercise lab05.tiled)

        Thread (tx, ty) of a TILE×TILE block owns C[row, col] with row = by·TILE + ty, col = bx·TILE + tx.
        For each k-tile k0 = 0, TILE, 2·TILE, ...: thread (tx, ty) loads As[ty, tx] = A[row, k0 + tx] and
        Bs[ty, tx] = B[k0 + ty, col] (0 outside the matrices), barrier, add As[ty, :] · Bs[:, tx], barrier.
        """
        As = cuda.shared.array((TILE, TILE), dtype=float32)
        Bs = cuda.shared.array((TILE, TILE), dtype=float32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row, col = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx
        M, K, N = A.shape[0], A.shape[1], B.shape[1]
        ### BEGIN SOLUTION lab05.tiled (§8.10, 3 pts): stage, wait, use, wait: why two barriers?
        acc = float32(0.0)
        for k0 in range(0, K, TILE):
            As[ty, tx] = A[row, k0 + tx] if row < M and k0 + tx < K else float32(0.0)
            Bs[ty, tx] = B[k0 + ty, col] if k0 + ty < K and col < N else float32(0.0)
            cuda.syncthreads()
            for k in range(TILE):
                acc += As[ty, k] * Bs[k, tx]
            cuda.syncthreads()  # nobody overwrites the tiles while others still read them
        if row < M and col < N:
            C[row, col] = acc
        ### END SOLUTION

    return matmul_tiled_kernel


# ----------------------------------------------------------------------------- v4: 2-D register blocking

REGISTER_CAP = {} if SIMULATOR else {"max_registers": 128}  # two blocks of 256 threads an SM (the simulator has none)


@cache
def regblock_kernel(BM: int, BN: int, BK: int, TM: int, TN: int):
    """Block tile BM×BN, k-tile BK, thread tile TM×TN; (BM/TM)·(BN/TN) threads in a 1-D block.

    At most 128 registers a thread: an SM has 65,536, so two blocks of 256 threads fit and one block's
    compute hides the other's global loads and barriers. Without the cap the compiler took 196-198 (measured in
    bench/results/cuda_labs_h100.json): one block per SM, idle at every barrier, and slower than v3.
    """
    NT = (BM // TM) * (BN // TN)  # threads per block
    assert (BM * BK) % NT == 0 and (BK * BN) % NT == 0, "every thread loads the same number of elements"

    @cuda.jit(**REGISTER_CAP)
    def matmul_regblock_kernel(A, B, C):
        """Each thread computes a TM×TN sub-tile of the block's BM×BN tile of C.  (exercise lab05.regblock)

        Thread t owns rows ty·TM .. ty·TM+TM-1 and columns tx·TN .. tx·TN+TN-1 of the tile
        (tx = t % (BN/TN), ty = t // (BN/TN)). Per k-tile: the NT threads cooperatively copy the BM×BK tile
        of A into As[BM, BK] and the BK×BN tile of B into Bs[BK, BN] (thread t copies elements e = t + l·NT,
        l = 0, 1, ... — a constant number of them, row-major in the tile; 0 outside the matrices), barrier;
        then for each k < BK load a[TM] = As[.., k] and b[TN] = Bs[k, ..] into registers and do the TM·TN
        multiply-adds acc[i, j] += a[i]·b[j]; barrier. Write acc (guarded).
        """
        As = cuda.shared.array((BM, BK), dtype=float32)
        Bs = cuda.shared.array((BK, BN), dtype=float32)
        acc = cuda.local.array((TM, TN), dtype=float32)  # registers, as long as every index is a constant
        a = cuda.local.array(TM, dtype=float32)
        b = cuda.local.array(TN, dtype=float32)
        t = cuda.threadIdx.x
        tx, ty = t % (BN // TN), t // (BN // TN)
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        M, K, N = A.shape[0], A.shape[1], B.shape[1]
        ### BEGIN SOLUTION lab05.regblock (§8.10, 3 pts): an outer product per k, fed from registers
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = float32(0.0)
        for k0 in range(0, K, BK):
            for l in range(BM * BK // NT):  # a constant count: unrolled, no loop state held in registers
                r, k = (t + l * NT) // BK, (t + l * NT) % BK
                As[r, k] = A[row0 + r, k0 + k] if row0 + r < M and k0 + k < K else float32(0.0)
            for l in range(BK * BN // NT):
                k, c = (t + l * NT) // BN, (t + l * NT) % BN
                Bs[k, c] = B[k0 + k, col0 + c] if k0 + k < K and col0 + c < N else float32(0.0)
            cuda.syncthreads()
            for k in range(BK):
                for i in range(TM):
                    a[i] = As[ty * TM + i, k]
                for j in range(TN):
                    b[j] = Bs[k, tx * TN + j]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a[i] * b[j]
            cuda.syncthreads()
        for i in range(TM):
            for j in range(TN):
                r, c = row0 + ty * TM + i, col0 + tx * TN + j
                if r < M and c < N:
                    C[r, c] = acc[i, j]
        ### END SOLUTION

    matmul_regblock_kernel.threads = NT
    return matmul_regblock_kernel


# ----------------------------------------------------------------------------- v5: vectorised loads


VEC = 4  # floats per vector load: 16 bytes


@cache
def vectorized_kernel(BM: int, BN: int, BK: int, TM: int, TN: int):
    """v4 with 4-float runs: every thread loads BM·BK/NT/4 runs of A and BK·BN/NT/4 runs of B per k-tile."""
    NT = (BM // TM) * (BN // TN)
    assert BM * BK == NT * VEC and BK * BN == NT * VEC, "each thread loads exactly one run of A and one of B"

    @cuda.jit
    def matmul_vectorized_kernel(A, B, C):
        """v4 with vector-friendly loads and A transposed in shared memory.  (exercise lab05.vectorized)

        Per k-tile, thread t copies ONE run of 4 consecutive floats of A — row ra = t // (BK/4), columns
        ka .. ka+3 with ka = (t % (BK/4))·4 — into the TRANSPOSED tile At[ka + q, ra], and one run of B — row
        kb = t // (BN/4), columns cb .. cb+3 with cb = (t % (BN/4))·4 — into Bs[kb, cb + q] (0 outside the
        matrices). At[k, ...] makes a thread's TM values of A for one k contiguous. And the thread's TN
        columns are strided: tx, tx + BN/TN, tx + 2·BN/TN, ... so the lanes of a warp read consecutive
        words of Bs (v4's runs of TN collide in the same shared-memory banks) and write consecutive C[r, c].
        """
        At = cuda.shared.array((BK, BM), dtype=float32)  # A tile, transposed
        Bs = cuda.shared.array((BK, BN), dtype=float32)
        acc = cuda.local.array((TM, TN), dtype=float32)
        a = cuda.local.array(TM, dtype=float32)
        b = cuda.local.array(TN, dtype=float32)
        t = cuda.threadIdx.x
        tx, ty = t % (BN // TN), t // (BN // TN)
        row0, col0 = cuda.blockIdx.y * BM, cuda.blockIdx.x * BN
        M, K, N = A.shape[0], A.shape[1], B.shape[1]
        ra, ka = t // (BK // VEC), (t % (BK // VEC)) * VEC
        kb, cb = t // (BN // VEC), (t % (BN // VEC)) * VEC
        ### BEGIN SOLUTION lab05.vectorized (§8.10, 2 pts): v4 with the docstring's loads and reads; think of banks
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = float32(0.0)
        for k0 in range(0, K, BK):
            for q in range(VEC):
                At[ka + q, ra] = A[row0 + ra, k0 + ka + q] if row0 + ra < M and k0 + ka + q < K else float32(0.0)
                Bs[kb, cb + q] = B[k0 + kb, col0 + cb + q] if k0 + kb < K and col0 + cb + q < N else float32(0.0)
            cuda.syncthreads()
            for k in range(BK):
                for i in range(TM):
                    a[i] = At[k, ty * TM + i]
                for j in range(TN):
                    b[j] = Bs[k, tx + j * (BN // TN)]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a[i] * b[j]
            cuda.syncthreads()
        for i in range(TM):
            for j in range(TN):
                r, c = row0 + ty * TM + i, col0 + tx + j * (BN // TN)
                if r < M and c < N:
                    C[r, c] = acc[i, j]
        ### END SOLUTION

    matmul_vectorized_kernel.threads = NT
    return matmul_vectorized_kernel


# ----------------------------------------------------------------------------- v6: expert (reference only)


@cache
def expert_kernel(BM: int, BN: int, BK: int, TM: int, TN: int, WX: int = 8, GROUP: int = 8, UNROLL: int = 2,
                  EXACT: bool = False, AMAP: bool = False, BMAP: bool = True):
    """v5 made fast: uint32 indices, 16-byte shared loads, two shared buffers, 2-D warp tiles, grouped blocks.

    What the compiler does with v5 (read with inspect_sass): each numba index is a signed 64-bit number that
    may be negative (Python's a[-1]), so every access costs a sign test, a select and 64-bit arithmetic —
    about 40 integer instructions per k next to 64 FMAs. With uint32 indices that code disappears.
    A thread's TM rows are TM/4 runs of 4 consecutive rows (the runs BM/(TM/4) apart), likewise its
    columns, so a run is one 16-byte LDS.128 from an aligned shared array.
    Two shared buffers: the threads compute on one k-tile while they store the next (already loaded into
    registers) into the other, so one barrier per k-tile instead of two.
    A warp is WX threads along a row of the tile by 32/WX down (not 16 × 2): per k it reads 4·TM·32/WX values
    of A and 4·TN·WX of B from shared memory — with 8 × 4, 32 + 64 instead of 16 + 128 words.
    Blocks run in groups of GROUP block-rows (blockIdx remapped): the blocks resident at one time share rows
    of A and columns of B in L2. UNROLL k a loop turn. EXACT: M, N, K are multiples of BM, BN, BK, so no load
    or store needs a bounds test (the launcher picks it). (Reference only: no exercise.)
    BMAP: a thread's 4 values of a row of the B tile are BN/4 columns apart (not 4 consecutive ones), so one load
    instruction of a warp reads 32 consecutive floats (coalesced) and its scalar stores into shared memory hit 32
    different banks; with runs of 4, a warp's 32 threads store to 8 banks, a 4-way conflict on every store.
    AMAP would do the same for A (a warp's threads on 32 rows, so their stores into the transposed tile hit 32
    banks), but then each load instruction reads 4 bytes from 32 rows: bench/lab05_sweep.py measures it slower.
    """
    NT = (BM // TM) * (BN // TN)  # threads per block
    TX = BN // TN  # threads along a row of the tile
    WX = min(WX, TX)
    WY, WARPS_X = 32 // WX, TX // WX  # a warp's threads down the tile; warps along a row
    A_RUNS, B_RUNS = BM * BK // (NT * VEC), BK * BN // (NT * VEC)  # runs of 4 a thread loads per k-tile
    M_BAND, N_BAND = BM * VEC // TM, BN * VEC // TN  # distance between a thread's runs of rows (columns)
    A_SIZE, B_SIZE, ACC, A_REGS, B_REGS = BK * BM, BK * BN, TM * TN, A_RUNS * VEC, B_RUNS * VEC
    A_BUFS, B_BUFS = 2 * A_SIZE, 2 * B_SIZE  # shared array sizes must be constants of the kernel, not expressions
    assert A_RUNS >= 1 and B_RUNS >= 1 and A_RUNS * NT * VEC == BM * BK and B_RUNS * NT * VEC == BK * BN
    assert TM % VEC == 0 and TN % VEC == 0 and BK % VEC == 0 and BN % VEC == 0 and BK % UNROLL == 0
    assert NT % 32 == 0 and TX % WX == 0 and 32 % WX == 0, "whole warps, each WX × 32/WX threads"
    assert not AMAP or (BM % 32 == 0 and (NT * A_RUNS) % BM == 0)
    u = uint32  # every index below is an unsigned 32-bit number: no negative-index code

    @cuda.jit(device=True, inline=True)
    def a_run(e):
        """Run e of the A tile (0 <= e < BM·BK/4): (its row, its first k) in the tile."""
        if AMAP:
            return e % u(BM), (e // u(BM)) * u(VEC)
        return e // u(BK // VEC), (e % u(BK // VEC)) * u(VEC)

    @cuda.jit(device=True, inline=True)
    def b_run(e):
        """Run e of the B tile: (its k, its first column, the step between its 4 columns)."""
        if BMAP:
            return e // u(BN // VEC), e % u(BN // VEC), u(BN // VEC)
        return e // u(BN // VEC), (e % u(BN // VEC)) * u(VEC), u(1)

    @cuda.jit(device=True, inline=True)
    def load_tile(A, B, pa, pb, t, row0, col0, k0, M, K, N):
        """This thread's runs of the k-tile at k0 from global memory into registers (0 outside the matrices)."""
        for l in range(A_RUNS):
            r, k = a_run(t + u(l * NT))
            r, k = row0 + r, k0 + k
            for q in range(VEC):
                pa[l * VEC + q] = A[r, k + u(q)] if EXACT or (r < M and k + u(q) < K) else float32(0.0)
        for l in range(B_RUNS):
            k, c, step = b_run(t + u(l * NT))
            k, c = k0 + k, col0 + c
            for q in range(VEC):
                pb[l * VEC + q] = B[k, c + u(q) * step] if EXACT or (k < K and c + u(q) * step < N) else float32(0.0)

    @cuda.jit(device=True, inline=True)
    def store_tile(At, Bs, pa, pb, t, a0, b0):
        """The registers into shared buffer (a0, b0): A transposed, B as it is."""
        for l in range(A_RUNS):
            r, k = a_run(t + u(l * NT))
            for q in range(VEC):
                At[a0 + (k + u(q)) * u(BM) + r] = pa[l * VEC + q]
        for l in range(B_RUNS):
            k, c, step = b_run(t + u(l * NT))
            for q in range(VEC):
                Bs[b0 + k * u(BN) + c + u(q) * step] = pb[l * VEC + q]

    @cuda.jit(fastmath=True, **REGISTER_CAP)  # BK=16 uncapped takes 152 registers and one block an SM; capped, 127
    def matmul_expert_kernel(A, B, C):
        At = cuda.shared.array(A_BUFS, dtype=float32, alignment=16)  # At[s·A_SIZE + k·BM + r]: A, transposed
        Bs = cuda.shared.array(B_BUFS, dtype=float32, alignment=16)  # Bs[s·B_SIZE + k·BN + c]
        acc = cuda.local.array(ACC, dtype=float32)  # acc[i·TN + j]: registers (every index a constant)
        a = cuda.local.array(TM, dtype=float32)
        b = cuda.local.array(TN, dtype=float32)
        pa = cuda.local.array(A_REGS, dtype=float32)  # the next k-tile, loaded while this one is used
        pb = cuda.local.array(B_REGS, dtype=float32)
        t = u(cuda.threadIdx.x)
        w, lane = t // u(32), t % u(32)
        tx, ty = (w % u(WARPS_X)) * u(WX) + lane % u(WX), (w // u(WARPS_X)) * u(WY) + lane // u(WX)
        by, bx = u(cuda.blockIdx.y), u(cuda.blockIdx.x)
        if GROUP:  # walk the grid in groups of GROUP block-rows, column by column inside a group
            gx, gy = u(cuda.gridDim.x), u(cuda.gridDim.y)
            pid, per_group = by * gx + bx, u(GROUP) * gx
            first = (pid // per_group) * u(GROUP)
            rows = min(gy - first, u(GROUP))
            by, bx = first + (pid % per_group) % rows, (pid % per_group) // rows
        row0, col0 = by * u(BM), bx * u(BN)
        M, K, N = u(A.shape[0]), u(A.shape[1]), u(B.shape[1])
        for i in range(ACC):
            acc[i] = float32(0.0)
        load_tile(A, B, pa, pb, t, row0, col0, u(0), M, K, N)
        store_tile(At, Bs, pa, pb, t, u(0), u(0))
        cuda.syncthreads()
        for k0 in range(u(0), K, u(BK)):
            s = (k0 // u(BK)) % u(2)  # the buffer holding tile k0
            a0, b0 = s * u(A_SIZE), s * u(B_SIZE)
            if k0 + u(BK) < K:  # issue the next tile's global loads; they complete while the FMAs below run
                load_tile(A, B, pa, pb, t, row0, col0, k0 + u(BK), M, K, N)
            for k2 in range(BK // UNROLL):
                for k1 in range(UNROLL):  # UNROLL k a turn: the compiler unrolls this loop, dividing the loop's cost
                    k = u(UNROLL * k2 + k1)
                    for i in range(TM):  # runs of 4: each run one 16-byte shared load (LDS.128)
                        a[i] = At[a0 + k * u(BM) + u((i // VEC) * M_BAND + i % VEC) + ty * u(VEC)]
                    for j in range(TN):
                        b[j] = Bs[b0 + k * u(BN) + u((j // VEC) * N_BAND + j % VEC) + tx * u(VEC)]
                    for i in range(TM):
                        for j in range(TN):
                            acc[i * TN + j] += a[i] * b[j]
            if k0 + u(BK) < K:  # the other buffer: nobody reads it since the last barrier
                store_tile(At, Bs, pa, pb, t, (u(1) - s) * u(A_SIZE), (u(1) - s) * u(B_SIZE))
            cuda.syncthreads()
        for i in range(TM):
            r = row0 + ty * u(VEC) + u((i // VEC) * M_BAND + i % VEC)
            for j in range(TN):
                c = col0 + tx * u(VEC) + u((j // VEC) * N_BAND + j % VEC)
                if EXACT or (r < M and c < N):
                    C[r, c] = acc[i * TN + j]

    matmul_expert_kernel.threads = NT
    return matmul_expert_kernel


# ----------------------------------------------------------------------------- launchers

BIG = dict(BM=128, BN=128, BK=8, TM=8, TN=8)  # the GPU configuration: 256 threads, 64 outputs per thread


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def matmul_naive(A, B, C, block=(16, 16)) -> None:
    M, N = C.shape
    matmul_naive_kernel[(cdiv(M, block[0]), cdiv(N, block[1])), block](A, B, C)


def matmul_coalesced(A, B, C, block=(32, 8)) -> None:
    M, N = C.shape
    matmul_coalesced_kernel[(cdiv(N, block[0]), cdiv(M, block[1])), block](A, B, C)


def matmul_tiled(A, B, C, tile: int = 32) -> None:
    M, N = C.shape
    tiled_kernel(tile)[(cdiv(N, tile), cdiv(M, tile)), (tile, tile)](A, B, C)


def matmul_regblock(A, B, C, BM=128, BN=128, BK=8, TM=8, TN=8) -> None:
    M, N = C.shape
    kernel = regblock_kernel(BM, BN, BK, TM, TN)
    kernel[(cdiv(N, BN), cdiv(M, BM)), kernel.threads](A, B, C)


def matmul_vectorized(A, B, C, BM=128, BN=128, BK=8, TM=8, TN=8) -> None:
    M, N = C.shape
    kernel = vectorized_kernel(BM, BN, BK, TM, TN)
    kernel[(cdiv(N, BN), cdiv(M, BM)), kernel.threads](A, B, C)


def matmul_expert(A, B, C, BM=128, BN=128, BK=16, TM=8, TN=8, WX=8, GROUP=16, UNROLL=2, AMAP=False,
                  BMAP=True) -> None:
    # BK=16: half the barriers and tile loads of BK=8 per multiply-add (bench/lab05_sweep.py: best of its shapes)
    M, N = C.shape
    exact = M % BM == 0 and N % BN == 0 and A.shape[1] % BK == 0
    kernel = expert_kernel(BM, BN, BK, TM, TN, WX, GROUP, UNROLL, exact, AMAP, BMAP)
    kernel[(cdiv(N, BN), cdiv(M, BM)), kernel.threads](A, B, C)


LADDER = {"v1_naive": matmul_naive, "v2_coalesced": matmul_coalesced, "v3_tiled": matmul_tiled,
          "v4_regblock": matmul_regblock, "v5_vectorized": matmul_vectorized, "v6_expert": matmul_expert}


def gpu_operands(n: int) -> tuple:
    """((A, B, C), (dA, dB, dC), ref): random n×n float32 A and B and an empty C on the GPU (torch, TF32 off for
    the cuBLAS baseline), their numba views, and the float64 product A @ B — what the benchmarks time and check."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    A, B = torch.randn(n, n, device="cuda"), torch.randn(n, n, device="cuda")
    C = torch.empty(n, n, device="cuda")
    return (A, B, C), tuple(cuda.as_cuda_array(t, sync=False) for t in (A, B, C)), torch.mm(A.double(), B.double())


def bench(n: int = 4096) -> dict:
    """TFLOP/s of every rung at n×n×n float32 against cuBLAS SGEMM (torch.mm, TF32 off), same run."""
    import torch

    from cuda_labs._timing import tflops, time_ms

    (A, B, C), (dA, dB, dC), ref = gpu_operands(n)
    flops = 2.0 * n**3
    res = {"n": n, "cublas_sgemm_TFLOPs": tflops(flops, time_ms(lambda: torch.mm(A, B, out=C)))}
    for name, fn in LADDER.items():
        slow = name in ("v1_naive", "v2_coalesced")
        ms = time_ms(lambda f=fn: f(dA, dB, dC), warmup=1 if slow else 3, reps=3 if slow else 10)
        res[f"{name}_TFLOPs"] = tflops(flops, ms)
        res[f"{name}_rel_err"] = float((C.double() - ref).norm() / ref.norm())
        res[f"{name}_pct_cublas"] = 100 * res[f"{name}_TFLOPs"] / res["cublas_sgemm_TFLOPs"]
    for bk in (8,):  # v6 with shallower k-tiles (v4's and v5's): twice the barriers per multiply-add
        res[f"v6_expert_bk{bk}_TFLOPs"] = tflops(flops, time_ms(lambda b=bk: matmul_expert(dA, dB, dC, BK=b)))
        res[f"v6_expert_bk{bk}_rel_err"] = float((C.double() - ref).norm() / ref.norm())
        res[f"v6_expert_bk{bk}_pct_cublas"] = 100 * res[f"v6_expert_bk{bk}_TFLOPs"] / res["cublas_sgemm_TFLOPs"]
    for name, make in (("v4_regblock", regblock_kernel), ("v5_vectorized", vectorized_kernel)):
        k = make(BIG["BM"], BIG["BN"], BIG["BK"], BIG["TM"], BIG["TN"])  # the cache key of the launches
        try:
            one = lambda v: int(next(iter(v.values()))) if isinstance(v, dict) else int(v)
            res[f"{name}_registers"] = one(k.get_regs_per_thread())
            res[f"{name}_local_bytes"] = one(k.get_local_mem_per_thread())
            res[f"{name}_shared_bytes"] = one(k.get_shared_mem_per_block())
            asm = k.inspect_asm()
            ptx = "".join(asm.values()) if isinstance(asm, dict) else str(asm)
            res[f"{name}_ld_global_v4"] = ptx.count("ld.global.v4") + ptx.count("ld.global.nc.v4")
            res[f"{name}_ld_shared_v4"] = ptx.count("ld.shared.v4")
            res[f"{name}_ld_local"] = ptx.count("ld.local")
            res[f"{name}_fma"] = ptx.count("fma.rn.f32")
            Path(os.environ.get("OUT", "/tmp"), f"{name}.ptx").write_text(ptx)
        except Exception as e:  # inspection is a diagnostic; the timing above stands without it
            res[f"{name}_inspect_error"] = repr(e)[:200]
    return res


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>28}: {v}")
