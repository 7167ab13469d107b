"""Lab 4 (layernorm forward and backward) on the simulator; the backward against float64 PyTorch autograd."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cuda_labs import lab04_layernorm as lab
from grading.testmodels import course_copy

REF = course_copy("cuda_labs.lab04_layernorm")  # the float64 references: the course's, not the learner's



def inputs(rows, cols, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, cols)) * rng.uniform(0.5, 3, (rows, 1)) + rng.uniform(-2, 2, (rows, 1)))
    w, b = rng.uniform(0.5, 1.5, cols), rng.standard_normal(cols) * 0.3
    return x.astype(np.float32), w.astype(np.float32), b.astype(np.float32)


def forward(x, w, b, threads=32):
    y = np.full_like(x, np.nan)
    mean, rstd = np.full(x.shape[0], np.nan, np.float32), np.full(x.shape[0], np.nan, np.float32)
    lab.layernorm_forward(x, w, b, y, mean, rstd, threads=threads)
    return y, mean, rstd


def check_backward(x, w, b, dy, dx, dw, db, dw0=0.0, db0=0.0):
    """dx, dw, db against float64 autograd; dw and db were added into buffers that held dw0, db0."""
    xt, wt, bt = (torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, w, b))
    gx, gw, gb = torch.autograd.grad(F.layer_norm(xt, (x.shape[1],), wt, bt), (xt, wt, bt),
                                     torch.tensor(dy, dtype=torch.float64))
    assert not np.isnan(dx).any(), "dx has unwritten (NaN) entries"
    np.testing.assert_allclose(dx, gx.numpy(), rtol=1e-4, atol=1e-5, err_msg="dx")
    np.testing.assert_allclose(dw, gw.numpy() + dw0, rtol=1e-4, atol=1e-5, err_msg="dw")
    np.testing.assert_allclose(db, gb.numpy() + db0, rtol=1e-4, atol=1e-5, err_msg="db")


@pytest.mark.exercise("lab04.forward")
@pytest.mark.parametrize("rows, cols, threads", [(3, 29, 32), (2, 70, 64)])
def test_forward_matches_float64(rows, cols, threads):
    x, w, b = inputs(rows, cols, cols)
    y, mean, rstd = forward(x, w, b, threads)
    y_ref, mean_ref, rstd_ref = REF.layernorm_reference(x, w, b)
    for name, got, ref in (("y", y, y_ref), ("mean", mean, mean_ref), ("rstd", rstd, rstd_ref)):
        assert not np.isnan(got).any(), f"{name} has unwritten (NaN) entries"
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.exercise("lab04.backward")
def test_backward_matches_autograd():
    rows, cols = 3, 29
    x, w, b = inputs(rows, cols, 5)
    dy = np.random.default_rng(6).standard_normal((rows, cols)).astype(np.float32)
    _, mean_ref, rstd_ref = REF.layernorm_reference(x, w, b)  # the saved statistics come from float64
    mean, rstd = mean_ref.astype(np.float32), rstd_ref.astype(np.float32)
    dx = np.full_like(x, np.nan)
    dw, db = np.zeros(cols, np.float32), np.zeros(cols, np.float32)
    lab.layernorm_backward(dy, x, w, mean, rstd, dx, dw, db, threads=32)
    check_backward(x, w, b, dy, dx, dw, db)


@pytest.mark.parametrize("launch, rows, cols, arg", [("layernorm_forward_warp", 5, 37, 2),
                                                     ("layernorm_forward_block", 3, 70, 32)])
def test_reference_only_v2_forward(launch, rows, cols, arg):
    """v2 (warp per row; block per row, the row in registers): reference-only rungs, no exercise."""
    x, w, b = inputs(rows, cols, cols + 1)
    y = np.full_like(x, np.nan)
    mean, rstd = np.full(rows, np.nan, np.float32), np.full(rows, np.nan, np.float32)
    kw = {"warps": arg} if launch.endswith("warp") else {"threads": arg}
    getattr(lab, launch)(x, w, b, y, mean, rstd, **kw)
    for name, got, ref in zip(("y", "mean", "rstd"), (y, mean, rstd), REF.layernorm_reference(x, w, b), strict=True):
        assert not np.isnan(got).any(), f"{name} has unwritten (NaN) entries"
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_reference_only_v2_backward_fused():
    """v2 backward: dx, dw, db from one kernel; 2 blocks of 2 warps walk 7 rows (some warps idle a turn)."""
    rows, cols = 7, 37
    x, w, b = inputs(rows, cols, 8)
    dy = np.random.default_rng(9).standard_normal((rows, cols)).astype(np.float32)
    _, mean_ref, rstd_ref = REF.layernorm_reference(x, w, b)
    dx = np.full_like(x, np.nan)
    dw, db = np.full(cols, 0.25, np.float32), np.full(cols, -0.5, np.float32)  # added into: start off zero
    lab.layernorm_backward_warp(dy, x, w, mean_ref.astype(np.float32), rstd_ref.astype(np.float32), dx, dw, db,
                                warps=2, blocks=2)
    check_backward(x, w, b, dy, dx, dw, db, dw0=0.25, db0=-0.5)


@pytest.mark.parametrize("rows, cols, warps", [(5, 37, 2), (3, 64, 2)])
def test_reference_only_v3_forward(rows, cols, warps):
    """v3 (expert) forward: 37 columns take the clamped and masked path, 64 = 32·2 the exact one."""
    x, w, b = inputs(rows, cols, cols + 2)
    y = np.full_like(x, np.nan)
    mean, rstd = np.full(rows, np.nan, np.float32), np.full(rows, np.nan, np.float32)
    lab.layernorm_forward_expert(x, w, b, y, mean, rstd, warps=warps)
    for name, got, ref in zip(("y", "mean", "rstd"), (y, mean, rstd), REF.layernorm_reference(x, w, b), strict=True):
        assert not np.isnan(got).any(), f"{name} has unwritten (NaN) entries"
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("rows, cols, threads, blocks", [(7, 37, 32, 2), (2, 70, 64, 3)])
def test_reference_only_v3_backward(rows, cols, threads, blocks):
    """v3 backward: dx and per-block partial sums, then a second kernel adds the partials into dw, db.
    7 rows over 2 blocks (uneven), and 2 rows over 3 blocks (one block has none: its partials must be zeros);
    37 columns on 32 threads and 70 on 64 leave threads with a clamped, masked column."""
    x, w, b = inputs(rows, cols, cols + 3)
    dy = np.random.default_rng(cols).standard_normal((rows, cols)).astype(np.float32)
    _, mean_ref, rstd_ref = REF.layernorm_reference(x, w, b)
    dx = np.full_like(x, np.nan)
    partials = np.full((2, blocks, cols), np.nan, np.float32)  # every entry must be written before it is summed
    dw, db = np.full(cols, 0.25, np.float32), np.full(cols, -0.5, np.float32)  # added into: start off zero
    lab.layernorm_backward_expert(dy, x, w, mean_ref.astype(np.float32), rstd_ref.astype(np.float32), dx, dw, db,
                                  partials=partials, threads=threads, blocks=blocks)
    check_backward(x, w, b, dy, dx, dw, db, dw0=0.25, db0=-0.5)


def test_layernorm_bytes_counts_every_tensor_once():
    """The benchmark's byte count: the sizes of the tensors each pass must read or write, nothing else."""
    R, C = 5, 7
    fwd = sum(4 * n for n in (R * C, C, C, R * C, R, R))  # x, w, b in; y, mean, rstd out
    bwd = sum(4 * n for n in (R * C, R * C, R, R, C, R * C, 2 * C, 2 * C))  # dy, x, mean, rstd, w in; dx; dw, db r+w
    assert lab.layernorm_bytes(R, C) == {"forward": fwd, "backward": bwd}
