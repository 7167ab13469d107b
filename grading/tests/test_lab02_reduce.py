"""Lab 2 (block sum, warp shuffles, prefix sum) on the simulator, against float64 NumPy."""

import numpy as np
import pytest

from cuda_labs import lab02_reduce as lab
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab02_reduce")  # the float64 references: the course's, not the learner's



def data(n, seed):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(n) + rng.uniform(-1, 1)).astype(np.float32)


@pytest.mark.exercise("lab02.shared_sum")
@pytest.mark.parametrize("n, blocks, threads", [(29, 3, 8), (30, 2, 4)])
def test_shared_memory_sum(n, blocks, threads):
    x = data(n, n)
    partial = np.full(blocks, np.nan, np.float32)
    lab.block_sum_shared_kernel[blocks, threads, 0, 4 * threads](x, partial)
    assert not np.isnan(partial).any(), "every block must write its partial sum (thread 0 writes partial[block])"
    total = lab.sum_shared(x, blocks=blocks, threads=threads)
    got = float(np.asarray(total.copy_to_host())[0])
    assert got == pytest.approx(REF.sum_reference(x), rel=1e-5, abs=1e-5), "sum of the partial sums"


@pytest.mark.exercise("lab02.warp_sum")
def test_shuffle_sum_over_two_warps():
    x = data(61, 2)  # 2 warps of 32, grid-stride over 61 elements, 3 lanes idle
    total = lab.sum_shuffle(x, blocks=1, threads=64)
    got = float(np.asarray(total.copy_to_host())[0])
    assert got == pytest.approx(REF.sum_reference(x), rel=1e-5, abs=1e-5), "block sum built on warp_sum"


@pytest.mark.exercise("lab02.scan")
@pytest.mark.parametrize("n, threads", [(29, 8), (7, 4)])
def test_prefix_sum_over_several_blocks(n, threads):
    x = data(n, n + 1)
    out = np.full(n, np.nan, np.float32)
    lab.prefix_sum(x, out, threads=threads)
    assert not np.isnan(out).any(), "every element of the scan must be written"
    np.testing.assert_allclose(out, REF.prefix_sum_reference(x), rtol=1e-5, atol=1e-5)
