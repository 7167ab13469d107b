"""Lab 5 (the matmul ladder) on the simulator: odd M, K, N that are not multiples of any tile, float64 oracle."""

import numpy as np
import pytest

from cuda_labs import lab05_matmul as lab
from cuda_labs._compat import SIMULATOR
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab05_matmul")  # the float64 references: the course's, not the learner's

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


@pytest.mark.exercise("lab05.naive")
def test_naive():
    check(lab.matmul_naive, 19, 29, 23, 0, block=(8, 8))


@pytest.mark.exercise("lab05.coalesced")
def test_coalesced():
    check(lab.matmul_coalesced, 23, 17, 19, 1, block=(8, 4))


@pytest.mark.exercise("lab05.tiled")
@pytest.mark.parametrize("M, K, N, tile", [(19, 29, 23, 8), (5, 3, 7, 4)])
def test_tiled(M, K, N, tile):
    check(lab.matmul_tiled, M, K, N, 2, tile=tile)


@pytest.mark.exercise("lab05.regblock")
@pytest.mark.parametrize("M, K, N", [(19, 29, 23), (32, 9, 17)])
def test_register_blocking(M, K, N):
    check(lab.matmul_regblock, M, K, N, 3, **SMALL)


@pytest.mark.exercise("lab05.vectorized")
@pytest.mark.parametrize("M, K, N", [(19, 29, 23), (17, 6, 32)])
def test_vectorized(M, K, N):
    check(lab.matmul_vectorized, M, K, N, 4, **SMALL)


@pytest.mark.parametrize("M, K, N, cfg", [(19, 29, 23, (32, 32, 8, 4, 4)), (37, 13, 70, (64, 64, 8, 8, 8))])
def test_reference_only_expert(M, K, N, cfg):
    """v6 (uint32 indices, 16-byte shared loads, prefetch): a reference-only rung, no exercise."""
    check(lab.matmul_expert, M, K, N, 6, **dict(zip(("BM", "BN", "BK", "TM", "TN"), cfg, strict=True)))


def test_big_tiles_on_a_gpu():
    if SIMULATOR:
        pytest.skip("not graded here: the 128x128 tiles (256 threads) need a real GPU; cuda_labs.bench runs them")
    check(lab.matmul_vectorized, 300, 257, 129, 5)
    check(lab.matmul_expert, 300, 257, 129, 7)
