"""Chapter 7 — optimization: fan-in init, SGD, Adam/AdamW, parameter groups, clipping, accumulation, Muon.

Oracles: PyTorch's own optimizers (torch.optim.SGD, Adam, AdamW, Muon) run side by side with ours on the same model,
torch.nn.utils.clip_grad_norm_, autograd on one big batch, and float64 formulas written out here.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from grading.testmodels import CausalLM, TiedLM, TinyNet
from storylib import optim


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny_net(seed: int, dtype: torch.dtype) -> TinyNet:
    torch.manual_seed(seed)
    net = TinyNet().to(dtype)
    with torch.no_grad():  # LayerNorm gains and all biases away from (1, 0), so decaying them would show
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen(p.numel()), dtype=dtype))
    return net


def batch(seed: int, n: int = 19):
    g = gen(seed)
    return torch.randint(0, 13, (n,), generator=g), torch.randint(0, 5, (n,), generator=g)


def hand_groups(net: TinyNet, wd: float) -> list[dict]:
    """Decay on the matrices, none on biases and LayerNorm: built here, not with optim.param_groups."""
    params = list(net.parameters())
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def train_side_by_side(make_ours, make_ref, dtype, steps: int, seed: int = 0):
    """Train two copies of one TinyNet, one with each optimizer, on the same batches; return both nets."""
    a = tiny_net(seed, dtype)
    b = copy.deepcopy(a)
    opt_a, opt_b = make_ours(a), make_ref(b)
    for step in range(steps):
        idx, y = batch(1000 + step)
        for net, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(net(idx), y).backward()
            opt.step()
    return a, b


def max_param_diff(a: nn.Module, b: nn.Module) -> tuple[float, str]:
    worst, where = 0.0, ""
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        d = (p.detach() - q.detach()).abs().max().item()
        if d > worst:
            worst, where = d, name
    return worst, where


def moved(a: nn.Module, seed: int, dtype) -> float:
    """How far training moved a's parameters from their start (so that 'equal' is not trivially true)."""
    start = tiny_net(seed, dtype)
    pairs = zip(a.parameters(), start.parameters(), strict=True)
    return max((p.detach() - q.detach()).abs().max().item() for p, q in pairs)


# ----------------------------------------------------------------------------- ch07.fan_in_init


@pytest.mark.exercise("ch07.fan_in_init")
@pytest.mark.parametrize("shape, gain", [((301, 523), 1.0), ((250, 97), 5 / 3), ((64, 19, 5), math.sqrt(2))])
def test_fan_in_init_has_the_right_std(shape, gain):
    w = torch.full(shape, 7.0, dtype=torch.float64)
    out = optim.init_fan_in_(w, gain, generator=gen(1))
    assert out is w, "init_fan_in_ should fill the tensor in place and return that same tensor"
    fan = shape[1] * math.prod(shape[2:])
    want = gain / math.sqrt(fan)
    std, mean = w.std().item(), w.mean().item()
    n = w.numel()
    assert abs(std / want - 1) < 5 / math.sqrt(n), (
        f"weight {shape} with gain {gain:.3f}: std should be gain / sqrt(fan_in = {fan}) = {want:.5f}, got {std:.5f}"
        " (fan_in is weight.shape[1] times the kernel size, not shape[0])"
    )
    assert abs(mean) < 5 * want / math.sqrt(n), f"the weights should have mean 0, got {mean:.5f}"


@pytest.mark.exercise("ch07.fan_in_init")
def test_fan_in_init_is_normal_and_uses_the_generator():
    w = torch.empty(400, 300, dtype=torch.float64)
    optim.init_fan_in_(w, 2.0, generator=gen(7))
    z = (w / (2.0 / math.sqrt(300))).flatten()
    kurtosis = (z**4).mean().item() / (z**2).mean().item() ** 2
    assert abs(kurtosis - 3) < 0.1, f"weights should be normal (kurtosis 3, uniform has 1.8); got {kurtosis:.3f}"
    w2 = torch.empty(400, 300, dtype=torch.float64)
    torch.manual_seed(123)  # the global generator must not matter
    optim.init_fan_in_(w2, 2.0, generator=gen(7))
    assert torch.equal(w, w2), "the same seeded generator should give the same weights"
    optim.init_fan_in_(w2, 2.0, generator=gen(8))
    assert not torch.equal(w, w2), "another seed should give other weights"


@pytest.mark.exercise("ch07.fan_in_init")
def test_fan_in_init_keeps_a_deep_linear_stack_at_unit_scale():
    """With gain 1, a stack of 20 linear layers of different widths keeps the std of its input."""
    widths = [37, 129, 64, 211, 50] * 4 + [37]
    g = gen(3)
    x = torch.randn(512, widths[0], generator=g, dtype=torch.float64)
    for fi, fo in zip(widths[:-1], widths[1:], strict=True):
        w = optim.init_fan_in_(torch.empty(fo, fi, dtype=torch.float64), 1.0, generator=g)
        x = x @ w.T
    std = x.std().item()
    assert 0.5 < std < 2.0, f"after 20 fan-in initialised linear layers the std should stay near 1, got {std:.3g}"


# ----------------------------------------------------------------------------- ch07.sgd


@pytest.mark.exercise("ch07.sgd")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sgd_with_momentum_and_decay_groups_matches_torch(dtype):
    def ours(net):
        groups = hand_groups(net, 3e-2)
        groups[1]["momentum"] = 0.5  # a group with its own momentum
        return optim.SGD(groups, lr=0.07, momentum=0.9)

    def ref(net):
        groups = hand_groups(net, 3e-2)
        groups[1]["momentum"] = 0.5
        return torch.optim.SGD(groups, lr=0.07, momentum=0.9)

    a, b = train_side_by_side(ours, ref, dtype, steps=120)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    diff, where = max_param_diff(a, b)
    assert moved(a, 0, dtype) > 0.1, "the parameters should have moved during training"
    assert diff < tol, (
        f"after 120 steps ({dtype}), parameters differ from torch.optim.SGD(momentum=0.9, weight_decay on matrices)"
        f" by {diff:.3g} (at {where}); tolerance {tol:g}"
    )


@pytest.mark.exercise("ch07.sgd")
def test_plain_sgd_is_p_minus_lr_grad():
    p = torch.randn(7, 3, generator=gen(20), dtype=torch.float64, requires_grad=True)
    g = torch.randn(7, 3, generator=gen(21), dtype=torch.float64)
    start = p.detach().clone()
    p.grad = g.clone()
    opt = optim.SGD([p], lr=0.3)
    opt.step()
    assert torch.allclose(p.detach(), start - 0.3 * g, atol=1e-14), "without momentum or decay, p should be p - lr·g"
    assert torch.equal(p.grad, g), "step() should not change p.grad"


@pytest.mark.exercise("ch07.sgd")
def test_sgd_momentum_buffer_follows_pytorch_convention():
    """buf = g at the first step (not (1 - μ)·g), then μ·buf + g; weight decay adds λ·p to g first."""
    p = torch.randn(5, generator=gen(22), dtype=torch.float64, requires_grad=True)
    q = p.detach().clone()
    opt = optim.SGD([p], lr=0.1, momentum=0.8, weight_decay=0.05)
    buf = None
    for step in range(4):
        g = torch.randn(5, generator=gen(30 + step), dtype=torch.float64)
        p.grad = g.clone()
        opt.step()
        d = g + 0.05 * q
        buf = d.clone() if buf is None else 0.8 * buf + d
        q = q - 0.1 * buf
        assert torch.allclose(p.detach(), q, atol=1e-13), (
            f"step {step + 1}: p should follow buf = μ·buf + (g + λ·p), p -= lr·buf (buf = g + λ·p at the first step)"
        )
        assert torch.equal(p.grad, g), "step() should not change p.grad (add λ·p out of place: g = g.add(p, ...))"


# ----------------------------------------------------------------------------- ch07.adamw


@pytest.mark.exercise("ch07.adamw")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adamw_with_decay_groups_matches_torch_over_many_steps(dtype):
    # float32: a smaller lr keeps the two runs from drifting apart through rounding alone (the order of the
    # float operations may differ from PyTorch's); the check is then |ours - torch| <= 1e-6 · (1 + |torch|).
    lr = 3e-2 if dtype == torch.float64 else 1e-2
    kw = dict(lr=lr, betas=(0.85, 0.97), eps=1e-7)
    a, b = train_side_by_side(
        lambda net: optim.AdamW(hand_groups(net, 0.1), **kw),
        lambda net: torch.optim.AdamW(hand_groups(net, 0.1), **kw),
        dtype,
        steps=150,
    )
    assert moved(a, 0, dtype) > 0.2, "the parameters should have moved during training"
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        err = ((p - q).abs() / (1 + q.abs())).max().item()
        assert err < 1e-6, (
            f"after 150 steps ({dtype}), {name} differs from torch.optim.AdamW's (decay 0.1 on matrices, 0 elsewhere)"
            f" by {err:.3g}, relative to 1 + |p|"
        )


@pytest.mark.exercise("ch07.adamw")
def test_adamw_defaults_and_a_second_lr_group_match_torch():
    def groups(net):
        gr = hand_groups(net, 0.02)
        gr[1]["lr"] = 5e-3  # the no-decay group with its own learning rate
        return gr

    a, b = train_side_by_side(
        lambda net: optim.AdamW(groups(net), lr=2e-2),
        lambda net: torch.optim.AdamW(groups(net), lr=2e-2),
        torch.float64,
        steps=100,
        seed=5,
    )
    diff, where = max_param_diff(a, b)
    assert diff < 1e-6, f"with default betas/eps and a per-group lr, parameters differ by {diff:.3g} (at {where})"


@pytest.mark.exercise("ch07.adamw")
def test_adam_with_l2_decay_matches_torch_adam():
    kw = dict(lr=2e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.05)
    a, b = train_side_by_side(
        lambda net: optim.Adam(net.parameters(), **kw),
        lambda net: torch.optim.Adam(net.parameters(), **kw),
        torch.float64,
        steps=100,
        seed=2,
    )
    diff, where = max_param_diff(a, b)
    assert diff < 1e-6, (
        f"Adam (weight decay as L2, added to the gradient) differs from torch.optim.Adam by {diff:.3g} (at {where})"
    )


@pytest.mark.exercise("ch07.adamw")
def test_adamw_first_step_is_bias_corrected_sign_step():
    """At t = 1, m̂ = g and v̂ = g², so each coordinate moves by lr · g / (|g| + eps): almost exactly lr."""
    p = torch.randn(9, generator=gen(40), dtype=torch.float64, requires_grad=True)
    start = p.detach().clone()
    g = torch.randn(9, generator=gen(41), dtype=torch.float64) * torch.logspace(-3, 2, 9, dtype=torch.float64)
    p.grad = g.clone()
    opt = optim.AdamW([p], lr=0.01, weight_decay=0.0, eps=1e-8)
    opt.step()
    want = start - 0.01 * g / (g.abs() + 1e-8)
    assert torch.allclose(p.detach(), want, atol=1e-14), (
        "the first AdamW step should move every coordinate by lr · g / (|g| + eps), whatever the size of g "
        "(bias correction undoes the zero start of m and v)"
    )
    assert opt.state[p]["step"] == 1, "the step count t should be kept in state['step'] and be 1 after one step"
    assert torch.equal(p.grad, g), "step() should not change p.grad"


# ----------------------------------------------------------------------------- ch07.param_groups


@pytest.mark.exercise("ch07.param_groups")
def test_param_groups_split_by_dimension_with_a_tied_head():
    torch.manual_seed(0)
    model = TiedLM()
    groups = optim.param_groups(model, 0.13)
    assert isinstance(groups, list) and len(groups) == 2, "param_groups should return a list of two dicts"
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.13 and no_decay["weight_decay"] == 0.0, (
        "the first group should carry the given weight_decay, the second 0.0"
    )
    names = {id(p): n for n, p in model.named_parameters()}
    got_decay = [names.get(id(p), "?") for p in decay["params"]]
    got_none = [names.get(id(p), "?") for p in no_decay["params"]]
    want_decay = ["wte.weight", "wpe.weight", "fc.weight", "proj.weight"]
    want_none = ["ln_1.weight", "ln_1.bias", "fc.bias", "proj.bias", "ln_f.weight", "ln_f.bias"]
    assert got_decay == want_decay, (
        f"decay should hold the matrices (dim >= 2) in model order, the tied wte/lm_head once: {want_decay}; "
        f"got {got_decay}"
    )
    assert got_none == want_none, f"no_decay should hold the biases and LayerNorm weights {want_none}; got {got_none}"


@pytest.mark.exercise("ch07.param_groups")
def test_param_groups_skip_frozen_parameters_and_feed_an_optimizer():
    net = tiny_net(3, torch.float32)
    net.fc1.weight.requires_grad_(False)
    net.ln.bias.requires_grad_(False)
    decay, no_decay = optim.param_groups(net, 0.5)
    assert [id(p) for p in decay["params"]] == [id(net.emb.weight), id(net.fc2.weight)], (
        "decay should be the trainable matrices: emb.weight and fc2.weight (fc1.weight is frozen)"
    )
    assert [id(p) for p in no_decay["params"]] == [id(net.fc1.bias), id(net.ln.weight), id(net.fc2.bias)], (
        "no_decay should be the trainable biases and gains: fc1.bias, ln.weight, fc2.bias (ln.bias is frozen)"
    )
    opt = torch.optim.AdamW(optim.param_groups(net, 0.5), lr=1e-3)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]


# ----------------------------------------------------------------------------- ch07.clip


def _grads_of(seed, dtype=torch.float64, scale=1.0):
    g = gen(seed)
    shapes = [(7, 5), (5,), (3, 2, 4), (1,)]
    params = [torch.zeros(s, dtype=dtype, requires_grad=True) for s in shapes]
    for p in params:
        p.grad = scale * torch.randn(p.shape, generator=g, dtype=dtype) * (1 + torch.rand(p.shape, generator=g))
    return params


@pytest.mark.exercise("ch07.clip")
@pytest.mark.parametrize("max_norm", [0.5, 3.0, 1e3])
def test_clip_matches_torch(max_norm):
    ours, ref = _grads_of(50), _grads_of(50)
    ours.append(torch.zeros(3, requires_grad=True, dtype=torch.float64))  # no .grad: skipped by both
    ref.append(torch.zeros(3, requires_grad=True, dtype=torch.float64))
    total = optim.clip_grad_norm_(ours, max_norm)
    want = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    assert torch.is_tensor(total) and total.dim() == 0, "clip_grad_norm_ should return a 0-dim tensor"
    assert abs(total.item() - want.item()) < 1e-10, (
        f"the total norm before clipping should be {want.item():.6g}, got {total.item():.6g}"
    )
    for i, (p, q) in enumerate(zip(ours[:-1], ref[:-1], strict=True)):
        assert torch.allclose(p.grad, q.grad, atol=1e-12, rtol=0), (
            f"gradient {i} after clipping to {max_norm} differs from torch.nn.utils.clip_grad_norm_'s"
        )
    assert ours[-1].grad is None, "a parameter without a gradient should stay without one"


@pytest.mark.exercise("ch07.clip")
def test_clip_rescales_all_gradients_together():
    params = _grads_of(51, scale=10.0)
    before = [p.grad.clone() for p in params]
    total = optim.clip_grad_norm_(iter(params), 1.0)  # any iterable, even a one-shot generator
    norm_after = math.sqrt(sum((p.grad**2).sum().item() for p in params))
    assert total.item() > 10, "test setup: the gradients are large"
    assert abs(norm_after - 1.0) < 1e-5, f"after clipping to 1.0 the total norm should be 1, got {norm_after:.6g}"
    ratios = [(p.grad / b).flatten() for p, b in zip(params, before, strict=True)]
    r = torch.cat(ratios)
    assert (r - r[0]).abs().max() < 1e-12, "every gradient should be scaled by the same factor (the direction is kept)"


# ----------------------------------------------------------------------------- ch07.accumulate


def _mse(model, b):
    x, y = b
    return ((model(x) - y) ** 2).mean()


@pytest.mark.exercise("ch07.accumulate")
@pytest.mark.parametrize("k", [1, 3, 7])
def test_accumulated_grads_equal_one_big_batch(k):
    torch.manual_seed(k)
    model = nn.Sequential(nn.Linear(9, 13), nn.Tanh(), nn.Linear(13, 3)).double()
    g = gen(60 + k)
    n = 5 * k
    x, y = torch.randn(n, 9, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    big = copy.deepcopy(model)
    big_loss = _mse(big, (x, y))
    big_loss.backward()
    micro = [(x[i : i + 5], y[i : i + 5]) for i in range(0, n, 5)]
    loss = optim.accumulate_grads(model, _mse, micro)
    assert isinstance(loss, float), f"accumulate_grads should return the mean loss as a float, got {type(loss)}"
    assert abs(loss - big_loss.item()) < 1e-12, (
        f"the mean of the micro-batch losses should be the big batch's loss {big_loss.item():.8f}, got {loss:.8f}"
    )
    for (name, p), q in zip(model.named_parameters(), big.parameters(), strict=True):
        assert p.grad is not None, f"{name} has no gradient after accumulate_grads"
        err = (p.grad - q.grad).abs().max().item()
        assert err < 1e-10, f"{k} micro-batches: grad of {name} differs from the one-big-batch grad by {err:.3g}"


@pytest.mark.exercise("ch07.accumulate")
def test_accumulation_runs_one_backward_per_micro_batch_and_adds(worker):
    torch.manual_seed(1)
    model = nn.Linear(4, 2).double()
    calls = []
    weight = worker.shared(model.weight) if worker is not None else model.weight  # backward runs where it lives
    weight.register_hook(lambda grad: calls.append(1))
    g = gen(70)
    micro = [
        (torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 2, generator=g, dtype=torch.float64))
        for _ in range(4)
    ]
    model.weight.grad = torch.ones_like(model.weight)  # an earlier gradient: accumulate_grads adds to it
    optim.accumulate_grads(model, _mse, micro)
    assert len(calls) == 4, f"expected one backward pass per micro-batch (4), saw {len(calls)}"
    ref = copy.deepcopy(model)
    ref.weight.grad = None
    _mse(ref, (torch.cat([m[0] for m in micro]), torch.cat([m[1] for m in micro]))).backward()
    assert torch.allclose(model.weight.grad, 1 + ref.weight.grad, atol=1e-12), (
        "accumulate_grads should add to p.grad, like loss.backward() (the caller zeroes gradients first)"
    )


@pytest.mark.exercise("ch07.accumulate")
def test_k_micro_steps_make_the_same_adamw_steps_on_a_transformer():
    torch.manual_seed(9)
    a = CausalLM().double()
    b, start = copy.deepcopy(a), copy.deepcopy(a)
    g = gen(80)
    idx = torch.randint(0, 29, (12, 11), generator=g)
    tgt = torch.randint(0, 29, (12, 11), generator=g)
    opt_a = torch.optim.AdamW(a.parameters(), lr=1e-2)
    opt_b = torch.optim.AdamW(b.parameters(), lr=1e-2)
    micro = [(idx[i : i + 3], tgt[i : i + 3]) for i in range(0, 12, 3)]
    for _ in range(3):
        opt_a.zero_grad()
        optim.accumulate_grads(a, lambda m, bt: m(*bt), micro)
        opt_a.step()
        opt_b.zero_grad()
        b(idx, tgt).backward()
        opt_b.step()
    diff, where = max_param_diff(a, b)
    assert max_param_diff(a, start)[0] > 0.01, "test setup: the parameters should have moved"
    assert diff < 1e-10, (
        f"3 AdamW steps with 4 accumulated micro-batches differ from big-batch steps by {diff:.3g} (at {where})"
    )


# ----------------------------------------------------------------------------- ch07.newton_schulz

NS = (3.4445, -4.7750, 2.0315)


def uneven(shape: tuple[int, ...], seed: int, dtype=torch.float64) -> torch.Tensor:
    """Gaussian entries times uneven column scales (0.1 to 3): singular values far from equal."""
    g = gen(seed)
    scale = 0.1 + 2.9 * torch.rand(*shape[:-2], 1, shape[-1], generator=g, dtype=torch.float64)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def ns_float64(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The quintic Newton–Schulz iteration of one matrix, written out in float64 (the short side first)."""
    a, b, c = NS
    X = G.double().T if G.shape[0] > G.shape[1] else G.double()
    X = X / torch.linalg.matrix_norm(X)
    for _ in range(steps):
        XXt = X @ X.T
        X = a * X + b * XXt @ X + c * XXt @ XXt @ X
    return X.T if G.shape[0] > G.shape[1] else X


@pytest.mark.exercise("ch07.newton_schulz")
@pytest.mark.parametrize("shape", [(37, 61), (61, 37), (23, 23), (4, 97)])
def test_newton_schulz_equals_a_float64_transcription(shape):
    G = uneven(shape, sum(shape))
    want = ns_float64(G)
    got64 = optim.newton_schulz(G, dtype=torch.float64)
    assert got64.shape == G.shape and got64.dtype == torch.float64
    assert torch.allclose(got64, want, rtol=1e-9, atol=1e-12), f"off by {(got64 - want).abs().max():.3g}"
    got32 = optim.newton_schulz(G.float())  # a CPU tensor: fp32 by default
    assert got32.dtype == torch.float32
    assert torch.allclose(got32.double(), want, rtol=1e-3, atol=2e-4), f"fp32 off by {(got32 - want).abs().max():.3g}"
    three = optim.newton_schulz(G, steps=3, dtype=torch.float64)
    assert torch.allclose(three, ns_float64(G, steps=3), rtol=1e-9, atol=1e-12), "`steps` iterations"


@pytest.mark.exercise("ch07.newton_schulz")
def test_newton_schulz_orthogonalises_each_matrix_of_a_stack():
    G = uneven((3, 29, 13), 5)
    got = optim.newton_schulz(G, dtype=torch.float64)
    assert got.shape == (3, 29, 13)
    for i in range(3):
        assert torch.allclose(got[i], ns_float64(G[i]), rtol=1e-9, atol=1e-12), f"matrix {i} of the stack"


@pytest.mark.exercise("ch07.newton_schulz")
@pytest.mark.parametrize("shape", [(40, 71), (71, 40)])
def test_newton_schulz_maps_each_singular_value_through_the_quintic(shape):
    # G = U diag(s) Vᵀ with chosen singular values: the iteration acts on each one alone, s -> a·s + b·s³ + c·s⁵
    g = gen(7)
    k = min(shape)
    U = torch.linalg.qr(torch.randn(shape[0], k, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(shape[1], k, generator=g, dtype=torch.float64)).Q
    s = torch.logspace(-2, 0, k, dtype=torch.float64)[torch.randperm(k, generator=g)]  # 100x apart
    G = U @ torch.diag(s) @ V.T
    a, b, c = NS
    x = s / s.norm()  # ‖G‖_F = ‖s‖
    for _ in range(5):
        x = a * x + b * x**3 + c * x**5
    got = torch.linalg.svdvals(optim.newton_schulz(G, dtype=torch.float64))
    assert torch.allclose(got, x.sort(descending=True).values, rtol=1e-8), "each singular value through the quintic"
    assert 0.6 < got.min() and got.max() < 1.2, f"singular values {got.min():.3f}..{got.max():.3f}: not in the band"
    bf16 = torch.linalg.svdvals(optim.newton_schulz(G.float(), dtype=torch.bfloat16).double())
    assert 0.5 < bf16.min() and bf16.max() < 1.3, "in bf16 too, every singular value lands near 1"


@pytest.mark.exercise("ch07.newton_schulz")
def test_newton_schulz_in_bf16_is_torch_muons_kernel():
    muon = pytest.importorskip("torch.optim._muon")
    for shape in ((19, 45), (45, 19)):
        G = uneven(shape, 3, torch.float32)
        want = muon._zeropower_via_newtonschulz(G, NS, 5, 1e-7)
        got = optim.newton_schulz(G, dtype=torch.bfloat16)
        assert got.dtype == torch.bfloat16 and torch.equal(got, want), f"{shape}: not torch.optim.Muon's bits"


# ----------------------------------------------------------------------------- ch07.muon


def mlp(seed: int) -> nn.Sequential:
    """Four Linear layers, two of one shape (orthogonalised together), tanh between."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(9, 23), nn.Tanh(), nn.Linear(23, 23), nn.Tanh(), nn.Linear(23, 23), nn.Tanh(),
                         nn.Linear(23, 5))


def muon_groups(net: nn.Module) -> list[dict]:
    mats = [p for p in net.parameters() if p.dim() == 2]
    return [{"params": mats[:2]}, {"params": mats[2:], "lr": 0.013, "weight_decay": 0.0}]


@pytest.mark.exercise("ch07.muon")
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_matches_torch_muon_step_for_step(nesterov):
    a = mlp(1)
    b = copy.deepcopy(a)
    settings = dict(lr=0.03, weight_decay=0.2, momentum=0.9, nesterov=nesterov)
    ours = optim.Muon(muon_groups(a), ns_dtype=torch.bfloat16, **settings)
    ref = torch.optim.Muon(muon_groups(b), **settings)
    g = gen(11)
    for step in range(8):
        x = torch.randn(17, 9, generator=g) * torch.linspace(0.2, 3, 9)
        y = torch.randn(17, 5, generator=g)
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
        diff, where = max_param_diff(a, b)
        assert diff == 0, f"step {step + 1}: differs from torch.optim.Muon by {diff:.3g} at {where}"
    start = mlp(1)
    assert (a[0].weight - start[0].weight).abs().max() > 0.01, "the matrices should have moved"
    assert torch.equal(a[0].bias, start[0].bias), "Muon updates only the parameters it was given"


@pytest.mark.exercise("ch07.muon")
def test_muon_first_step_is_an_orthogonal_matrix_scaled_by_the_shape_rule():
    # zero momentum, no decay: the first update is -lr · scale · NS(g), since NS ignores the scale of its input
    torch.manual_seed(0)
    tall = nn.Parameter(torch.randn(31, 12, dtype=torch.float64))
    wide = nn.Parameter(torch.randn(12, 31, dtype=torch.float64))
    start = [tall.detach().clone(), wide.detach().clone()]
    for p in (tall, wide):
        p.grad = uneven(tuple(p.shape), p.shape[0])
    opt = optim.Muon([tall, wide], lr=0.1, weight_decay=0.0, momentum=0.8, ns_dtype=torch.float64)
    opt.step()
    for p, p0, scale in ((tall, start[0], math.sqrt(31 / 12)), (wide, start[1], 1.0)):
        step = (p0 - p.detach()) / (0.1 * scale)
        assert torch.allclose(step, ns_float64(p.grad), rtol=1e-8, atol=1e-11), f"shape {tuple(p.shape)}"
        assert torch.allclose(opt.state[p]["momentum_buffer"], 0.2 * p.grad), "buf = μ·0 + (1 - μ)·g"


@pytest.mark.exercise("ch07.muon")
def test_muon_in_float64_follows_the_update_written_out():
    # momentum across steps, Nesterov, decoupled decay, the shape rule; two matrices of one shape share a call
    shapes = [(29, 11), (11, 29), (11, 29)]
    params = [nn.Parameter(uneven(s, i)) for i, s in enumerate(shapes)]
    want = [p.detach().clone() for p in params]
    bufs = [torch.zeros(s, dtype=torch.float64) for s in shapes]
    lr, wd, mu = 0.05, 0.3, 0.85
    opt = optim.Muon(params, lr=lr, weight_decay=wd, momentum=mu, ns_dtype=torch.float64)
    for step in range(4):
        grads = [uneven(s, 100 + 10 * step + i) for i, s in enumerate(shapes)]
        for p, g in zip(params, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        for k, g in enumerate(grads):
            bufs[k] = mu * bufs[k] + (1 - mu) * g
            u = (1 - mu) * g + mu * bufs[k]
            scale = math.sqrt(max(1.0, shapes[k][0] / shapes[k][1]))
            want[k] = want[k] * (1 - lr * wd) - lr * scale * ns_float64(u)
        for k, p in enumerate(params):
            assert torch.allclose(p.detach(), want[k], rtol=1e-9, atol=1e-12), (
                f"step {step + 1}, matrix {k} {shapes[k]}: off by {(p.detach() - want[k]).abs().max():.3g}")


# ----------------------------------------------------------------------------- package tests (not graded)


def test_fan_in_counts_inputs():
    assert optim.fan_in(torch.empty(5, 7)) == 7
    assert optim.fan_in(torch.empty(5, 3, 2, 4)) == 24
    with pytest.raises(ValueError):
        optim.fan_in(torch.empty(5))


def test_optimizers_reject_bad_hyperparameters():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.raises(ValueError):
        optim.SGD(p, lr=-1.0)
    with pytest.raises(ValueError):
        optim.AdamW(p, betas=(0.9, 1.0))


def test_muon_refuses_what_is_not_a_matrix():
    with pytest.raises(ValueError):
        optim.Muon([torch.zeros(3, requires_grad=True)])


def test_batched_muon_takes_torch_muons_steps():  # the trainer's Muon: multi-tensor kernels, the same bits
    a = mlp(2)
    b = copy.deepcopy(a)
    ours = optim.BatchedMuon(muon_groups(a), lr=0.03, weight_decay=0.2, momentum=0.9, ns_dtype=torch.bfloat16)
    ref = torch.optim.Muon(muon_groups(b), lr=0.03, weight_decay=0.2, momentum=0.9)
    g = gen(12)
    for _ in range(5):
        x, y = torch.randn(13, 9, generator=g), torch.randn(13, 5, generator=g)
        for net, opt in ((a, ours), (b, ref)):
            opt.zero_grad(set_to_none=True)
            ((net(x) - y) ** 2).mean().backward()
            opt.step()
    diff, where = max_param_diff(a, b)
    assert diff == 0, f"BatchedMuon differs from torch.optim.Muon by {diff:.3g} at {where}"
