"""Lab 1 (map, zip, guards, 2-D, blocks) on the numba CUDA simulator: odd sizes, outputs poisoned with NaN; the
2-D kernel's access pattern read from a log of which thread touched which address (cuda_labs/_trace.py)."""

import numpy as np
import pytest

from cuda_labs import _trace
from cuda_labs import lab01_map as lab
from cuda_labs._compat import SIMULATOR
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab01_map")  # the float64 references: the course's, not the learner's
TRACE = course_copy("cuda_labs._trace")  # reading the access logs: the course's code, not the learner's


def poisoned(shape):
    return np.full(shape, np.nan, dtype=np.float32)


def assert_close(out, ref, what):
    assert not np.isnan(out).any(), f"{what}: {int(np.isnan(out).sum())} elements were never written (still NaN)"
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5, err_msg=what)


@pytest.mark.exercise("lab01.map")
@pytest.mark.parametrize("n, threads", [(29, 8), (5, 32)])
def test_map_covers_every_element_and_guards(n, threads):
    rng = np.random.default_rng(n)
    x = rng.standard_normal(n).astype(np.float32) * 3
    out = poisoned(n + 3)  # 3 extra slots past the end: a missing guard writes them
    lab.axpb_kernel[lab.blocks_for(n, threads), threads](x, np.float32(1.7), np.float32(-0.4), out[:n])
    assert_close(out[:n], REF.axpb_reference(x, 1.7, -0.4), "axpb")
    assert np.isnan(out[n:]).all(), "threads past the end must not write (guard i < n)"


@pytest.mark.exercise("lab01.zip")
def test_zip_adds_pairs():
    rng = np.random.default_rng(1)
    x, y = (rng.standard_normal(31).astype(np.float32) for _ in range(2))
    out = poisoned(31)
    lab.add(x, y, out, threads=8)
    assert_close(out, REF.add_reference(x, y), "x + y")


@pytest.mark.exercise("lab01.grid2d")
@pytest.mark.parametrize("rows, cols, block", [(7, 13, (8, 4)), (11, 5, (4, 4))])
def test_grid2d_adds_bias_to_every_row(rows, cols, block):
    rng = np.random.default_rng(rows * cols)
    X = rng.standard_normal((rows, cols)).astype(np.float32)
    bias = rng.uniform(-2, 2, cols).astype(np.float32)
    out = poisoned((rows, cols))
    lab.add_bias(X, bias, out, block=block)
    assert_close(out, REF.add_bias_reference(X, bias), f"X + bias at {rows}x{cols}")


@pytest.mark.exercise("lab01.grid2d")
def test_grid2d_neighbouring_threads_read_neighbouring_addresses():
    """x, the coordinate that differs between the threads of a warp, must walk the columns of the row-major X."""
    rows, cols = 8, 8
    X = np.arange(rows * cols, dtype=np.float32).reshape(rows, cols)
    bias, out = np.ones(cols, np.float32), poisoned((rows, cols))
    log = _trace.trace(lab.add_bias_kernel, (1, 2), (8, 4), X, bias, out)
    assert_close(out, X + 1, "X + bias")
    for name, what in (("A", "X[r, c]"), ("C", "out[r, c]")):
        steps = TRACE.neighbour_steps(log[name])
        assert steps == {1}, f"{what}: threads next to each other in x are {steps} floats apart, not 1"


@pytest.mark.exercise("lab01.gridstride")
@pytest.mark.parametrize("n, blocks, threads", [(37, 2, 8), (23, 1, 32)])
def test_gridstride_gelu_with_fewer_threads_than_elements(n, blocks, threads):
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 2.5).astype(np.float32)
    out = poisoned(n)
    lab.gelu(x, out, blocks=blocks, threads=threads)
    assert_close(out, REF.gelu_reference(x), f"gelu of {n} elements with {blocks}x{threads} threads")


def test_benchmark_needs_a_gpu():
    if SIMULATOR:
        pytest.skip("not graded here: lab01.bench needs a real GPU (python -m cuda_labs.bench)")
    assert lab.bench(n=1 << 20)["map_GBps"] > 0
