"""Lab 7 (fused AdamW) on the simulator, against torch.optim.AdamW in float64 over several steps; and the bytes it
moves, from a log of which thread touched which address (cuda_labs/_trace.py)."""

import numpy as np
import pytest
import torch

from cuda_labs import _trace
from cuda_labs import lab07_adamw as lab
from grading.testmodels import course_copy

TRACE = course_copy("cuda_labs._trace")  # reading the access logs: the course's code, not the learner's


@pytest.mark.exercise("lab07.adamw")
@pytest.mark.parametrize("n, threads, weight_decay", [(37, 16, 0.1), (5, 32, 0.0)])
def test_three_steps_match_torch(n, threads, weight_decay):
    rng = np.random.default_rng(n)
    p = rng.standard_normal(n).astype(np.float32)
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    ref = torch.nn.Parameter(torch.tensor(p, dtype=torch.float64))
    opt = torch.optim.AdamW([ref], lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay)
    for step in range(1, 4):
        g = (rng.standard_normal(n) * rng.uniform(0.1, 3)).astype(np.float32)
        lab.adamw_step(p, g, m, v, step, lr=0.02, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay,
                       threads=threads)
        ref.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    state = opt.state[ref]
    np.testing.assert_allclose(p, ref.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg="parameters")
    np.testing.assert_allclose(m, state["exp_avg"].numpy(), rtol=1e-5, atol=1e-6, err_msg="first moment m")
    np.testing.assert_allclose(v, state["exp_avg_sq"].numpy(), rtol=1e-5, atol=1e-6, err_msg="second moment v")


@pytest.mark.exercise("lab07.adamw")
def test_each_array_is_read_once_and_written_once():
    """28 bytes a parameter: p, g, m, v each read once, p, m, v each written once, by neighbouring threads."""
    n, threads = 20, 8
    rng = np.random.default_rng(2)
    p, g, m, v = (rng.standard_normal(n).astype(np.float32) for _ in range(4))
    v = np.abs(v)
    f = np.float32
    log = _trace.trace(lab.adamw_kernel, (n + threads - 1) // threads, threads, p, g, m, v,
                       f(0.01), f(0.9), f(0.99), f(1e-8), f(0.1), f(0.1), f(0.01), names="pgmv")
    for name in "pgmv":
        reads, writes = log[name][log[name][:, 8] == 0], log[name][log[name][:, 8] == 1]
        assert sorted(reads[:, 7].tolist()) == list(range(n)), f"{name}: each element must be read exactly once"
        want = [] if name == "g" else list(range(n))
        assert sorted(writes[:, 7].tolist()) == want, f"{name}: written {len(writes)} times for {n} elements"
        assert TRACE.neighbour_steps(log[name]) <= {1}, f"{name}: neighbouring threads on non-neighbouring elements"
