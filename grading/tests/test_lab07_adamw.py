"""Lab 7 (fused AdamW) on the simulator, against torch.optim.AdamW in float64 over several steps."""

import numpy as np
import pytest
import torch

from cuda_labs import lab07_adamw as lab


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
