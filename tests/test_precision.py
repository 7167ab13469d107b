"""storylib.precision: FP8 training matmuls. On a CPU the FP8 matmuls are emulated (FP8-rounded inputs, fp32
products), so these tests check the scaling and the three matmuls of forward and backward against float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from storylib.gpt2 import GPT, GPTConfig
from storylib.precision import E4M3, E5M2, Float8Linear, float8_linears, to_float8


@pytest.mark.parametrize("dtype", [E4M3, E5M2])
def test_to_float8_scales_amax_onto_the_largest_value(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 53, generator=g) * torch.rand(37, 1, generator=g) * 1e-3  # tiny, uneven rows
    x8, inv = to_float8(x, dtype)
    assert x8.dtype == dtype
    assert x8.float().abs().max().item() == torch.finfo(dtype).max
    rel = ((x8.float() * inv) - x).abs().max() / x.abs().max()
    assert rel < {E4M3: 2 ** -4, E5M2: 2 ** -3}[dtype]  # half an ulp of the mantissa, relative to amax
    assert not torch.equal(x8.float() * inv, x)  # it really rounds


def test_float8_linear_forward_and_backward_match_float64():
    g = torch.Generator().manual_seed(1)
    lin = nn.Linear(48, 80)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(80, 48, generator=g) * 0.05)
        lin.bias.copy_(torch.randn(80, generator=g))
    f8 = Float8Linear.from_linear(lin)
    assert f8.weight is lin.weight and f8.bias is lin.bias
    x = torch.randn(3, 16, 48, generator=g, requires_grad=True)
    gy = torch.randn(3, 16, 80, generator=g)
    (f8(x) * gy).sum().backward()
    dx, dw, db = x.grad.clone(), lin.weight.grad.clone(), lin.bias.grad.clone()
    x64, w64 = x.detach().double().requires_grad_(), lin.weight.detach().double().requires_grad_()
    y64 = x64 @ w64.T + lin.bias.detach().double()
    (y64 * gy.double()).sum().backward()

    def rel(a, b):
        return ((a.double() - b).norm() / b.norm()).item()

    assert rel(f8(x).detach(), y64.detach()) < 0.05
    assert rel(dx, x64.grad) < 0.1 and rel(dw, w64.grad) < 0.1
    assert torch.allclose(db.double(), gy.double().sum((0, 1)), rtol=1e-5, atol=1e-4)  # the bias is not in FP8
    assert rel(dx, x64.grad) > 1e-4  # and the matmuls really are in FP8


def test_eval_mode_and_odd_shapes_take_the_ordinary_path():
    lin = nn.Linear(20, 30)  # 20, 30: not multiples of 16
    f8 = Float8Linear.from_linear(lin)
    x = torch.randn(5, 20)
    assert torch.equal(f8(x), lin(x))
    f8b = Float8Linear.from_linear(nn.Linear(32, 48)).eval()
    x = torch.randn(16, 32)
    assert torch.equal(f8b(x), nn.functional.linear(x, f8b.weight, f8b.bias))


def test_float8_linears_keeps_ties_and_state_dict():
    m = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    keys = list(m.state_dict())
    float8_linears(m)
    assert list(m.state_dict()) == keys
    assert m.lm_head.weight is m.transformer.wte.weight
    n = sum(isinstance(x, Float8Linear) for x in m.modules())
    assert n == 2 * 4 + 1 and not any(type(x) is nn.Linear for x in m.modules())
    idx = torch.randint(0, 64, (2, 16))
    _, loss = m(idx, idx)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_float8_linears_only_swaps_the_named_one():
    m = GPT(GPTConfig(block_size=32, vocab_size=64, n_layer=2, n_head=2, n_embd=32))
    float8_linears(m, only="lm_head")
    assert [n for n, x in m.named_modules() if isinstance(x, Float8Linear)] == ["lm_head"]
    assert m.lm_head.weight is m.transformer.wte.weight
    assert sum(type(x) is nn.Linear for x in m.modules()) == 2 * 4
