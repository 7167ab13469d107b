"""Build solutions/ch07_optimization.ipynb, the nbgrader source notebook of Chapter 7 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch07_optimization", title="Chapter 7 — optimization")
nb.markdown(
    """
    In this notebook you write `storylib/optim.py`, the tools that turn a model and its gradients into training:
    fan-in initialisation, SGD with momentum, Adam and AdamW as `torch.optim.Optimizer` subclasses, the two
    weight-decay groups, gradient-norm clipping and gradient accumulation (the learning-rate schedule is the one
    you wrote in Chapter 3), and, optionally, Muon. Each graded cell runs the package tests of one exercise against
    *your* `storylib`; the book (Chapter 7) explains the ideas and the math.

    Your optimizers are checked against PyTorch's own, step for step, so follow PyTorch's conventions exactly
    (they are spelled out in each docstring).
    """
)
nb.exercise(
    "ch07.fan_in_init",
    try_it="""
    import math
    import torch
    from storylib.optim import GAINS

    w = init_fan_in_(torch.empty(512, 300), GAINS["relu"], generator=torch.Generator().manual_seed(0))
    print(f"std {w.std().item():.4f}, want sqrt(2) / sqrt(300) = {math.sqrt(2 / 300):.4f}")

    x = torch.randn(1000, 300)  # ten ReLU layers keep the scale of their input
    for _ in range(10):
        x = torch.relu(x @ init_fan_in_(torch.empty(300, 300), GAINS["relu"]).T)
    print("root mean square after 10 ReLU layers:", x.pow(2).mean().sqrt().item())
    """,
)
nb.question(
    "ch07_q_fan_in",
    points=1,
    prompt="""
    GPT-2 small's `mlp.c_fc` maps 768 features to 3072 (its `nn.Linear` weight has shape (3072, 768)). With fan-in
    initialisation and gain 1, what would the standard deviation of its weights be? Set `std_c_fc` to it (a float).
    """,
    solution="import math\nstd_c_fc = 1 / math.sqrt(768)",
    test="import math\nassert abs(std_c_fc - 1 / math.sqrt(768)) < 1e-9, 'fan_in is the number of inputs, 768'",
)
nb.exercise(
    "ch07.sgd",
    try_it="""
    import torch

    w0 = torch.randn(5, 3)
    ours, ref = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    opts = [SGD([ours], lr=0.1, momentum=0.9, weight_decay=0.01),
            torch.optim.SGD([ref], lr=0.1, momentum=0.9, weight_decay=0.01)]
    for step in range(20):
        for p, opt in zip([ours, ref], opts):
            opt.zero_grad()
            (p**2).sum().backward()
            opt.step()
    print("max |ours - torch.optim.SGD| after 20 steps:", (ours - ref).abs().max().item())
    """,
)
nb.question(
    "ch07_q_momentum",
    points=1,
    prompt="""
    With PyTorch's momentum convention (buf = μ·buf + g, p -= lr·buf) and a gradient g that stays the same at
    every step, the step lr·buf grows toward a limit. For μ = 0.95, how many times larger than the first step
    (lr·g) is that limit? Set `speedup` to it.
    """,
    solution="speedup = 1 / (1 - 0.95)",
    test="assert abs(speedup - 20) < 1e-6, 'buf -> g + μ g + μ² g + ... = g / (1 - μ)'",
)
nb.exercise(
    "ch07.adamw",
    try_it="""
    import torch

    w0 = torch.randn(7, 4, dtype=torch.float64)
    ours, ref = w0.clone().requires_grad_(), w0.clone().requires_grad_()
    opts = [AdamW([ours], lr=1e-2, weight_decay=0.1), torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1)]
    for step in range(100):
        for p, opt in zip([ours, ref], opts):
            opt.zero_grad()
            (p.sin() * torch.arange(4.0, dtype=torch.float64)).sum().backward()
            opt.step()
    print("max |ours - torch.optim.AdamW| after 100 steps:", (ours - ref).abs().max().item())
    """,
    notes="`Adam` is the same class with `decoupled = False`: one `if` in your code decides how the decay is applied.",
)
nb.exercise(
    "ch07.param_groups",
    try_it="""
    from storylib.gpt2 import GPT, GPTConfig

    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16))
    names = {id(p): n for n, p in model.named_parameters()}
    for group in param_groups(model, 0.1):
        print(group["weight_decay"], [names[id(p)] for p in group["params"]][:6], "...")
    """,
)
nb.exercise(
    "ch07.clip",
    try_it="""
    import torch

    params = [torch.zeros(3, 4, requires_grad=True), torch.zeros(5, requires_grad=True)]
    for p in params:
        p.grad = 3 * torch.randn(p.shape)
    total = clip_grad_norm_(params, 1.0)
    after = sum((p.grad**2).sum() for p in params).sqrt()
    print(f"norm before {total.item():.3f}, after {after.item():.3f}")
    """,
)
nb.exercise(
    "ch07.accumulate",
    try_it="""
    import torch

    model = torch.nn.Linear(6, 2).double()
    x, y = torch.randn(12, 6, dtype=torch.float64), torch.randn(12, 2, dtype=torch.float64)
    mse = lambda m, b: ((m(b[0]) - b[1]) ** 2).mean()

    mse(model, (x, y)).backward()
    big = model.weight.grad.clone()
    model.zero_grad()
    loss = accumulate_grads(model, mse, [(x[i : i + 4], y[i : i + 4]) for i in range(0, 12, 4)])
    print("loss", loss, "max grad difference from one big batch:", (model.weight.grad - big).abs().max().item())
    """,
)
nb.markdown(
    """
    ## Muon (optional)

    The last two exercises are an optimizer for matrices: Muon (book §7.11) replaces a matrix's momentum by the
    nearest matrix whose singular values are all about 1, computed by five steps of a Newton–Schulz iteration. Your
    `newton_schulz` is checked against a float64 transcription and against `torch.optim.Muon`'s own kernel, bit for
    bit in bf16; your `Muon` against `torch.optim.Muon`, step for step.
    """
)
nb.exercise(
    "ch07.newton_schulz",
    try_it="""
    import torch

    G = torch.randn(40, 100) * torch.linspace(0.1, 3, 100)  # columns of very different sizes
    print("singular values of G / |G|:", torch.linalg.svdvals(G / G.norm())[[0, 19, 39]])
    print("after 5 Newton-Schulz steps:", torch.linalg.svdvals(newton_schulz(G))[[0, 19, 39]])
    """,
)
nb.exercise(
    "ch07.muon",
    try_it="""
    import copy
    import torch

    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 32), torch.nn.Tanh(),
                              torch.nn.Linear(32, 4))
    ref = copy.deepcopy(net)
    mats = lambda m: [p for p in m.parameters() if p.dim() == 2]
    opts = [Muon(mats(net), lr=0.02, ns_dtype=torch.bfloat16), torch.optim.Muon(mats(ref), lr=0.02)]
    for step in range(10):
        x = torch.randn(16, 8)
        for m, opt in zip([net, ref], opts):
            opt.zero_grad()
            m(x).pow(2).mean().backward()
            opt.step()
    print("max |ours - torch.optim.Muon| after 10 steps:",
          max((p - q).abs().max().item() for p, q in zip(mats(net), mats(ref))))
    """,
    notes="`orthogonalize(updates, steps, dtype)` (given) calls your `newton_schulz` once per shape, on a stack.",
)
nb.markdown(
    """
    ## What next

    Put the pieces together: train the GPT of Chapter 5 with *your* `AdamW(param_groups(model, 0.1), ...)`,
    Chapter 3's `warmup_cosine_lr` (from `storylib.mlp`) for the learning rate of every step and
    `clip_grad_norm_(model.parameters(), 1.0)` before each step, then sweep the peak learning rate as in book
    §7.8.
    """
)

if __name__ == "__main__":
    print(nb.write())
