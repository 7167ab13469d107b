"""Lab 6 (attention: the naive scores kernel and the fused flash kernel) on the simulator, float64 oracle; the
scores kernel's access pattern from a log of which thread touched which address (cuda_labs/_trace.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cuda_labs import _trace
from cuda_labs import lab06_attention as lab
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab06_attention")  # the float64 references: the course's, not the learner's
TRACE = course_copy("cuda_labs._trace")  # reading the access logs: the course's code, not the learner's



def qkv(bh, T, D, seed):
    rng = np.random.default_rng(seed)
    return tuple((rng.standard_normal((bh, T, D)) * s).astype(np.float32) for s in (1.5, 1.5, 1.0))


@pytest.mark.exercise("lab06.scores")
def test_scores_are_scaled_and_causal():
    Q, K, _ = qkv(2, 13, 8, 0)
    S = np.full((2, 13, 13), np.nan, np.float32)
    lab.scores_kernel[(2, 4, 2), (8, 4)](Q, K, S, np.float32(1 / math.sqrt(8)))
    ref = Q.astype(np.float64) @ K.astype(np.float64).transpose(0, 2, 1) / math.sqrt(8)
    lower = np.tril(np.ones((13, 13), dtype=bool))
    assert not np.isnan(S).any(), "every score must be written (-inf above the diagonal)"
    np.testing.assert_allclose(S[:, lower], ref[:, lower], rtol=1e-5, atol=1e-5)
    assert np.isneginf(S[:, ~lower]).all(), "scores above the diagonal (j > i) must be -inf"


@pytest.mark.exercise("lab06.scores")
def test_scores_neighbouring_threads_write_neighbouring_scores():
    """x walks the keys j: a warp writes neighbouring S[h, i, j] and shares one query row Q[h, i]."""
    Q, K, _ = qkv(1, 8, 4, 1)
    S = np.full((1, 8, 8), np.nan, np.float32)
    log = _trace.trace(lab.scores_kernel, (1, 2, 1), (8, 4), Q, K, S, np.float32(0.5))
    assert not np.isnan(S).any(), "every score must be written (-inf above the diagonal)"
    steps = TRACE.neighbour_steps(log["C"])
    assert steps == {1}, f"S: neighbouring threads are {steps} floats apart, not 1"
    assert TRACE.neighbour_steps(log["A"]) == {0}, "Q: the threads of one query row should read the same element"


@pytest.mark.exercise("lab06.flash")
@pytest.mark.parametrize("bh, T, D, BR, BC", [(2, 21, 8, 8, 4), (1, 13, 4, 4, 8)])
def test_flash_matches_torch_sdpa(bh, T, D, BR, BC):
    Q, K, V = qkv(bh, T, D, T)
    O = np.full((bh, T, D), np.nan, np.float32)
    lab.attention_flash(Q, K, V, O, BR=BR, BC=BC)
    assert not np.isnan(O).any(), f"{int(np.isnan(O).sum())} outputs never written (NaN)"
    ref = F.scaled_dot_product_attention(*(torch.tensor(a, dtype=torch.float64) for a in (Q, K, V)), is_causal=True)
    np.testing.assert_allclose(O, ref.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(REF.attention_reference(Q, K, V), ref.numpy(), atol=1e-10)  # the NumPy reference
