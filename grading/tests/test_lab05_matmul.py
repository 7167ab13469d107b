"""Lab 5 (the matmul ladder) on the simulator: odd M, K, N that are not multiples of any tile, float64 oracle;
and the access pattern each rung is about, read from a log of which thread touched which address
(cuda_labs/_trace.py): coalesced rungs must have neighbouring threads on neighbouring addresses, tiled rungs
must load each element of A and B from device memory once per block."""

import numpy as np
import pytest

from cuda_labs import _trace
from cuda_labs import lab05_matmul as lab
from cuda_labs._compat import SIMULATOR
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab05_matmul")  # the float64 references: the course's, not the learner's
TRACE = course_copy("cuda_labs._trace")  # reading the access logs: the course's code, not the learner's

SMALL = dict(BM=16, BN=16, BK=4, TM=4, TN=4)  # 16 threads a block: the same code as the GPU's 128x128 tiles


def operands(M, K, N, seed):
    rng = np.random.default_rng(seed)
    A = (rng.standard_normal((M, K)) * rng.uniform(0.5, 2, (M, 1))).astype(np.float32)
    B = (rng.standard_normal((K, N)) + rng.uniform(-1, 1, (1, N))).astype(np.float32)
    return A, B


def check(launch, M, K, N, seed, **kw):
    A, B = operands(M, K, N, seed)
    C = np.full((M, N), np.nan, np.float32)
    launch(A, B, C, **kw)
    assert not np.isnan(C).any(), f"{int(np.isnan(C).sum())} of {M * N} outputs never written (NaN)"
    ref = REF.matmul_reference(A, B)
    err = np.linalg.norm(C - ref) / np.linalg.norm(ref)
    assert err < 1e-5, f"relative error {err:.2e} at {M}x{K} @ {K}x{N}"


def traced(kernel, grid, block, M, K, N, seed):
    """Run one rung's kernel under the access log; check its result too."""
    A, B = operands(M, K, N, seed)
    C = np.full((M, N), np.nan, np.float32)
    log = _trace.trace(kernel, grid, block, A, B, C)
    assert not np.isnan(C).any(), f"{int(np.isnan(C).sum())} of {M * N} outputs never written (NaN)"
    ref = REF.matmul_reference(A, B)
    assert np.linalg.norm(C - ref) / np.linalg.norm(ref) < 1e-5
    return log


@pytest.mark.exercise("lab05.naive")
def test_naive():
    check(lab.matmul_naive, 19, 29, 23, 0, block=(8, 8))


@pytest.mark.exercise("lab05.coalesced")
def test_coalesced():
    check(lab.matmul_coalesced, 23, 17, 19, 1, block=(8, 4))


@pytest.mark.exercise("lab05.coalesced")
def test_coalesced_access_pattern():
    """The lesson of v2: threads next to each other in x (one warp) work on neighbouring columns j, so they read
    neighbouring B[k, j], write neighbouring C[i, j] and all read the same A[i, k]."""
    M, K, N = 8, 5, 8
    log = traced(lab.matmul_coalesced_kernel, (1, 2), (8, 4), M, K, N, 8)
    steps = {name: TRACE.neighbour_steps(log[name]) for name in "ABC"}
    assert steps["B"] == {1}, f"B[k, j]: neighbouring threads are {steps['B']} floats apart, not 1"
    assert steps["C"] == {1}, f"C[i, j]: neighbouring threads are {steps['C']} floats apart, not 1"
    assert steps["A"] == {0}, "A[i, k]: the threads of one row should all read the same element"


@pytest.mark.exercise("lab05.tiled")
@pytest.mark.parametrize("M, K, N, tile", [(19, 29, 23, 8), (5, 3, 7, 4)])
def test_tiled(M, K, N, tile):
    check(lab.matmul_tiled, M, K, N, 2, tile=tile)


@pytest.mark.exercise("lab05.tiled")
def test_tiled_loads_through_shared_memory():
    """Each element of A and B comes from device memory once per block (then TILE times from shared memory),
    and the loads of a tile are coalesced: thread x reads A[row, k0 + x] and B[k0 + y, col]."""
    M, K, N, tile = 8, 12, 8, 4
    log = traced(lab.tiled_kernel(tile), (N // tile, M // tile), (tile, tile), M, K, N, 9)
    for name in "AB":
        assert TRACE.most_reads_per_block(log[name]) == 1, f"a block read an element of {name} more than once"
        steps = TRACE.neighbour_steps(log[name])
        assert steps == {1}, f"{name} tile loads: neighbouring threads are {steps} floats apart, not 1"


@pytest.mark.exercise("lab05.regblock")
@pytest.mark.parametrize("M, K, N", [(19, 29, 23), (32, 9, 17)])
def test_register_blocking(M, K, N):
    check(lab.matmul_regblock, M, K, N, 3, **SMALL)


@pytest.mark.exercise("lab05.regblock")
def test_register_blocking_loads_once_per_block():
    """The block tiles of A and B go through shared memory: one device-memory read per element and block."""
    kernel = lab.regblock_kernel(*SMALL.values())
    log = traced(kernel, (2, 2), kernel.threads, 32, 8, 32, 10)
    assert TRACE.most_reads_per_block(log["A"]) == 1 and TRACE.most_reads_per_block(log["B"]) == 1


@pytest.mark.exercise("lab05.vectorized")
@pytest.mark.parametrize("M, K, N", [(19, 29, 23), (17, 6, 32)])
def test_vectorized(M, K, N):
    check(lab.matmul_vectorized, M, K, N, 4, **SMALL)


@pytest.mark.exercise("lab05.vectorized")
def test_vectorized_loads_runs_of_four():
    """Once per block, and each thread reads A and B in runs of 4 consecutive floats (one 16-byte load each)."""
    kernel = lab.vectorized_kernel(*SMALL.values())
    log = traced(kernel, (2, 2), kernel.threads, 32, 8, 32, 11)
    for name in "AB":
        reads = log[name][log[name][:, 8] == 0]
        assert TRACE.most_reads_per_block(reads) == 1, f"a block read an element of {name} more than once"
        at = {tuple(r[:7]): r[7] for r in reads}  # (block, thread, access number) -> address
        in_run = [(key, a) for key, a in at.items() if key[6] % lab.VEC]
        assert in_run and all(at[(*key[:6], key[6] - 1)] == a - 1 for key, a in in_run), \
            f"{name}: a thread's reads are not runs of {lab.VEC} consecutive floats"


@pytest.mark.parametrize("M, K, N, cfg", [(19, 29, 23, (32, 32, 8, 4, 4)), (37, 13, 70, (64, 64, 8, 8, 8))])
def test_reference_only_expert(M, K, N, cfg):
    """v6 (uint32 indices, 16-byte shared loads, prefetch): a reference-only rung, no exercise."""
    check(lab.matmul_expert, M, K, N, 6, **dict(zip(("BM", "BN", "BK", "TM", "TN"), cfg, strict=True)))


def test_big_tiles_on_a_gpu():
    if SIMULATOR:
        pytest.skip("not graded here: the 128x128 tiles (256 threads) need a real GPU; cuda_labs.bench runs them")
    check(lab.matmul_vectorized, 300, 257, 129, 5)
    check(lab.matmul_expert, 300, 257, 129, 7)
