"""Lab 7 — the fused AdamW update (book §8.12).

PyTorch's reference AdamW (foreach=False) launches several elementwise kernels per parameter tensor, each
reading and writing whole tensors. Fused, one thread per parameter reads p, g, m, v once and writes p, m, v
once: 7 × 4 bytes per parameter, the least there is. (Loshchilov & Hutter, decoupled weight decay, 2019.)

    m = β1·m + (1 - β1)·g            m̂ = m / (1 - β1^t)
    v = β2·v + (1 - β2)·g²           v̂ = v / (1 - β2^t)
    p = p - lr·(m̂ / (√v̂ + eps) + wd·p)

    python -m cuda_labs.lab07_adamw   # benchmark on a GPU
"""

from __future__ import annotations

import math

import numpy as np

from cuda_labs._compat import cuda

THREADS = 256


@cuda.jit
def adamw_kernel(p, g, m, v, lr, beta1, beta2, eps, weight_decay, bias1, bias2):
    """One AdamW step for every element, in place on p, m, v; one thread per element, guarded.
    (exercise lab07.adamw)

    bias1 = 1 - β1^t and bias2 = 1 - β2^t are computed once on the host. The weight decay is decoupled:
    it uses the parameter before this step's update. Read each of p[i], g[i], m[i], v[i] once and write p[i],
    m[i], v[i] once (28 bytes a parameter; the tests count the accesses).
    """
    ### BEGIN SOLUTION lab07.adamw (§8.12, 2 pts): Chapter 7's update, each array touched once
    i = cuda.grid(1)
    if i < p.shape[0]:
        gi = g[i]
        mi = beta1 * m[i] + (1 - beta1) * gi
        vi = beta2 * v[i] + (1 - beta2) * gi * gi
        m[i], v[i] = mi, vi
        pi = p[i]
        p[i] = pi - lr * ((mi / bias1) / (math.sqrt(vi / bias2) + eps) + weight_decay * pi)
    ### END SOLUTION


def adamw_step(p, g, m, v, step: int, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
               weight_decay: float = 0.01, threads: int = THREADS) -> None:
    """Step number `step` (1, 2, ...) of AdamW on 1-D float32 device arrays (flatten parameters first)."""
    f = np.float32
    adamw_kernel[(p.shape[0] + threads - 1) // threads, threads](
        p, g, m, v, f(lr), f(betas[0]), f(betas[1]), f(eps), f(weight_decay), f(1 - betas[0] ** step),
        f(1 - betas[1] ** step))


def bench(n: int = 1 << 26) -> dict:
    import torch

    from cuda_labs._timing import gbps, time_queued_ms

    p, g = torch.randn(n, device="cuda"), torch.randn(n, device="cuda")
    m, v = torch.zeros(n, device="cuda"), torch.zeros(n, device="cuda")
    dp, dg, dm, dv = (cuda.as_cuda_array(t, sync=False) for t in (p, g, m, v))
    nb = 7 * 4 * n
    scratch = torch.empty_like(p)
    res = {"n": n, "copy_GBps": gbps(2 * 4 * n, time_queued_ms(lambda: scratch.copy_(p)))}  # p -> scratch
    res["fused_GBps"] = gbps(nb, time_queued_ms(lambda: adamw_step(dp, dg, dm, dv, 10)))
    for name, kw in (("torch_foreach", dict(foreach=True)), ("torch_fused", dict(fused=True))):
        q = torch.nn.Parameter(p.clone())
        q.grad = g.clone()
        opt = torch.optim.AdamW([q], lr=1e-3, **kw)
        res[f"{name}_GBps"] = gbps(nb, time_queued_ms(opt.step))
    return res


if __name__ == "__main__":
    for k, v in bench().items():
        print(f"{k:>18}: {v}")
