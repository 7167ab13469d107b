"""Lab 3 (softmax, naive and online) on the simulator, against float64 NumPy; rows with -inf entries too; the
online kernel's access pattern from a log of which thread touched which address (cuda_labs/_trace.py)."""

import numpy as np
import pytest

from cuda_labs import _trace
from cuda_labs import lab03_softmax as lab
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab03_softmax")  # the float64 references: the course's, not the learner's
TRACE = course_copy("cuda_labs._trace")  # reading the access logs: the course's code, not the learner's



def logits(rows, cols, seed, masked=False):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.5, 8, (rows, 1)) + 50 * rng.uniform(-1, 1, (rows, 1)))
    if masked:  # a causal-style mask: the tail of each row is -inf
        for r in range(rows):
            x[r, r + 2:] = -np.inf
    return x.astype(np.float32)


def check(out, x):
    assert not np.isnan(out).any(), f"{int(np.isnan(out).sum())} outputs are NaN (unwritten, or -inf - -inf)"
    np.testing.assert_allclose(out, REF.softmax_reference(x), rtol=1e-4, atol=1e-6)


@pytest.mark.exercise("lab03.naive")
@pytest.mark.parametrize("rows, cols, threads", [(9, 29, 4), (3, 5, 32)])
def test_naive_softmax(rows, cols, threads):
    x = logits(rows, cols, rows)
    out = np.full_like(x, np.nan)
    lab.softmax_naive(x, out, threads=threads)
    check(out, x)


@pytest.mark.exercise("lab03.merge")
def test_merge_inside_the_online_kernel_with_masked_rows():
    x = logits(3, 29, 7, masked=True)  # many lanes see only -inf: their states are (-inf, 0)
    out = np.full_like(x, np.nan)
    lab.softmax_online(x, out, threads=32)
    check(out, x)


@pytest.mark.exercise("lab03.online")
@pytest.mark.parametrize("rows, cols, masked", [(2, 29, False), (2, 150, True)])
def test_online_softmax(rows, cols, masked):
    x = logits(rows, cols, cols, masked=masked)  # 150 columns: more than 4 x 32, so the loop runs twice
    out = np.full_like(x, np.nan)
    lab.softmax_online(x, out, threads=32)
    check(out, x)


@pytest.mark.parametrize("rows, cols, threads, masked", [(3, 29, 32, True), (2, 150, 64, False)])
def test_reference_only_register_softmax(rows, cols, threads, masked):
    """v3 (the row in registers): a reference-only rung, no exercise. 150 columns: 3 values a thread."""
    x = logits(rows, cols, cols + 1, masked=masked)
    out = np.full_like(x, np.nan)
    lab.softmax_registers(x, out, threads=threads)
    check(out, x)


@pytest.mark.exercise("lab03.online")
def test_online_softmax_reads_its_row_coalesced():
    """A block per row, its threads on neighbouring columns, each element read at most twice (pass 1, pass 2)."""
    rows, cols = 2, 128  # 4 x 32 columns: every thread makes the same loads
    x = logits(rows, cols, 3)
    out = np.full_like(x, np.nan)
    log = _trace.trace(lab.softmax_online_kernel, rows, 32, x, out)
    check(out, x)
    reads, writes = log["A"], log["B"]
    assert (reads[:, 7] // cols == reads[:, 0]).all(), "block r must read row r, and only row r"
    assert TRACE.neighbour_steps(reads) == {1}, f"x: neighbouring threads are {TRACE.neighbour_steps(reads)} apart"
    assert TRACE.neighbour_steps(writes) == {1}, "out: neighbouring threads must write neighbouring columns"
    assert TRACE.most_reads_per_block(reads) <= 2, "each element of x read more than twice"
