"""Chapter 9 — precision: floating-point formats from the bits, stochastic rounding, memory per parameter, dynamic
loss scaling, FP8 current and delayed scaling.

Oracles: torch's own dtypes (every bit pattern of fp16, bf16, float8_e4m3fn and float8_e5m2 viewed as a number;
torch's casts of float32 inputs, which round once), numpy's float64 -> float16 cast (rounds once, from float64),
the nearest of a format's 256 values found by brute force in float64, torch.amp.GradScaler's decisions on the same
gradients, the bytes torch.optim's state actually holds, and float64 simulations written out here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from storylib import precision as P

# name: (exp_bits, man_bits, fn, torch dtype, integer dtype of the same width)
FORMATS = {
    "fp16": (5, 10, False, torch.float16, torch.int16),
    "bf16": (8, 7, False, torch.bfloat16, torch.int16),
    "e4m3": (4, 3, True, torch.float8_e4m3fn, torch.uint8),
    "e5m2": (5, 2, False, torch.float8_e5m2, torch.uint8),
}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def torch_values(name: str) -> torch.Tensor:
    """The value (float64) of every bit pattern 0 .. 2**bits - 1 of a format, as torch reads it."""
    e, m, _, dtype, itype = FORMATS[name]
    bits = torch.arange(2 ** (1 + e + m))
    if itype is torch.int16:
        bits = bits.to(torch.int32).to(torch.int16)  # 32768.. wrap to the negative int16s: the same bits
    return bits.to(itype).view(dtype).double()


def torch_bits(x32: torch.Tensor, name: str) -> torch.Tensor:
    """The bit pattern (int64, unsigned) of torch's cast of float32 values to a format."""
    e, m, _, dtype, itype = FORMATS[name]
    return x32.to(dtype).view(itype).to(torch.int64) & (2 ** (1 + e + m) - 1)


def same_values(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise: equal with the same sign (so +0 != -0), or both NaN."""
    return ((a == b) & (torch.signbit(a) == torch.signbit(b))) | (a.isnan() & b.isnan())


def encode_inputs(name: str, seed: int) -> torch.Tensor:
    """float32 values (held in float64): random over the whole range and beyond, every tie between neighbours,
    the float32 values just either side of each tie, zeros, infinities, NaN, the largest and smallest float32."""
    values = torch_values(name)
    finite = values[values.isfinite()].unique()  # sorted, -max .. max (one zero)
    g = gen(seed)
    n = 40_000
    e, m, fn, _, _ = FORMATS[name]
    bias = 2 ** (e - 1) - 1
    exps = torch.empty(n).uniform_(-bias - m - 4, bias + 3, generator=g)  # subnormals .. beyond max
    random = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0) * torch.exp2(exps) * (
        1 + torch.rand(n, generator=g))
    ties = ((finite[1:] + finite[:-1]) / 2).float()
    top = finite[-1].float()
    beyond = torch.stack([top * 1.03, top * 1.06, top * 1.07, top * 1.2, top * 4]).float()
    edges = torch.tensor([0.0, -0.0, math.inf, -math.inf, math.nan, 3.4e38, -3.4e38, 1e-45, -1e-45, 1e-40])
    x = torch.cat([random.float(), ties, torch.nextafter(ties, torch.tensor(math.inf)),
                   torch.nextafter(ties, torch.tensor(-math.inf)), beyond, -beyond, edges])
    return x.double()


# ----------------------------------------------------------------------------- 9.1 decode


@pytest.mark.exercise("ch09.decode")
@pytest.mark.parametrize("name", list(FORMATS))
def test_decode_every_bit_pattern_like_torch(name):
    e, m, fn, _, _ = FORMATS[name]
    ref = torch_values(name)
    got = P.decode(torch.arange(len(ref)), e, m, fn)
    assert got.dtype == torch.float64 and got.shape == ref.shape
    bad = ~same_values(got, ref)
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {len(ref)} patterns decode wrong, e.g. bits "
                           f"{bad.nonzero()[:4, 0].tolist()} -> {got[bad][:4].tolist()}, "
                           f"torch: {ref[bad][:4].tolist()}")


@pytest.mark.exercise("ch09.decode")
def test_decode_odd_shape_and_formats_torch_lacks():
    # a made-up 7-bit format (3 exponent, 3 mantissa bits), written out by hand from the rules
    bits = torch.tensor([[0b0000001, 0b0001000, 0b0011100], [0b1011000, 0b0111000, 0b0111011]])
    want = torch.tensor([[0.125 * 0.25, 0.25, 1.5], [-1.0, math.inf, math.nan]], dtype=torch.float64)
    got = P.decode(bits, 3, 3)
    assert got.shape == (2, 3) and same_values(got, want).all(), got
    # tf32 (8, 10) and fp32 (8, 23): random patterns against float32's own reading (fp32) or its top 19 bits (tf32)
    g = gen(3)
    b32 = torch.randint(0, 2**32, (5001,), generator=g, dtype=torch.int64)
    with np.errstate(invalid="ignore"):  # (NaN patterns)
        ref32 = torch.from_numpy(b32.numpy().astype(np.uint32).view(np.float32).astype(np.float64))
        b19 = b32 >> 13
        ref19 = torch.from_numpy((b19 << 13).numpy().astype(np.uint32).view(np.float32).astype(np.float64))
    assert same_values(P.decode(b32, 8, 23), ref32).all()
    assert same_values(P.decode(b19, 8, 10), ref19).all()


# ----------------------------------------------------------------------------- 9.1 encode


@pytest.mark.exercise("ch09.encode")
@pytest.mark.parametrize("name", list(FORMATS))
def test_encode_matches_torch_casts(name):
    e, m, fn, _, _ = FORMATS[name]
    x = encode_inputs(name, seed=len(name))
    want = torch_bits(x.float(), name)
    got = P.encode(x, e, m, fn)
    assert got.dtype == torch.int64 and got.shape == x.shape
    values = torch_values(name)
    ok = (got == want) | (values[want].isnan() & (got >= 0) & (got < len(values)) &
                          values[got.clamp(0, len(values) - 1)].isnan())
    bad = ~ok
    assert not bad.any(), (f"{name}: {int(bad.sum())} of {len(x)} values encode wrong, e.g. {x[bad][:4].tolist()} "
                           f"-> bits {got[bad][:4].tolist()}, torch: {want[bad][:4].tolist()}")


@pytest.mark.exercise("ch09.encode")
@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_encode_float64_rounds_once_to_the_nearest_of_all_values(name):
    """From float64 directly (torch's cast would round twice): the nearest of the format's values, by brute force,
    ties to the even pattern; beyond the range, inf (e5m2) or the largest value (e4m3fn saturates)."""
    e, m, fn, _, _ = FORMATS[name]
    values = torch_values(name)
    ok = values.isfinite()
    candidates, cbits = values[ok], torch.arange(len(values))[ok]
    g = gen(7)
    top = float(candidates.max())
    ties = (candidates.unique()[1:] + candidates.unique()[:-1]) / 2
    x = torch.cat([(torch.rand(6001, generator=g, dtype=torch.float64) * 2 - 1) * top,
                   torch.randn(3001, generator=g, dtype=torch.float64) * 2.0 ** -(2 ** (e - 1) - 1),
                   ties + 2.0 ** -60 * ties.abs(), ties - 2.0 ** -60 * ties.abs()])
    dist = (x[:, None] - candidates[None, :]).abs()
    best = dist.min(dim=1, keepdim=True).values
    tied = dist == best
    pick = torch.where(tied, cbits[None, :] % 2 == 0, False).float().argmax(dim=1)  # the even one of a tie
    pick = torch.where(tied.sum(1) > 1, pick, tied.float().argmax(dim=1))
    want = cbits[pick]
    want = torch.where(torch.signbit(x) & (candidates[pick] == 0), want | (1 << (e + m)), want)  # -0 for tiny < 0
    got = P.encode(x, e, m, fn)
    bad = ~same_values(values[got.clamp(0, len(values) - 1)], values[want]) | (got < 0) | (got >= len(values))
    assert not bad.any(), f"{name}: {x[bad][:4].tolist()} -> {got[bad][:4].tolist()}, nearest: {want[bad][:4].tolist()}"
    big = torch.tensor([top * 1.01, top * 1.5, 1e300, math.inf], dtype=torch.float64)
    over = P.decode(P.encode(torch.cat([big, -big]), e, m, fn), e, m, fn)
    if fn:  # e4m3fn has no inf: everything beyond saturates at ±max
        want_over = torch.tensor([top] * 4 + [-top] * 4, dtype=torch.float64)
    else:  # e5m2: top · 1.01 still rounds down to max; beyond the tie with the next power of two it is inf
        want_over = torch.tensor([top] + [math.inf] * 3 + [-top] + [-math.inf] * 3, dtype=torch.float64)
    assert torch.equal(over, want_over), over


@pytest.mark.exercise("ch09.encode")
def test_encode_fp16_from_float64_like_numpy():
    g = gen(11)
    x = torch.cat([torch.randn(20001, generator=g, dtype=torch.float64) * 10.0 ** torch.randint(-8, 5, (20001,),
                   generator=g), torch.tensor([65519.99, 65520.0, -65520.0, 2.0**-25, 2.0**-25 * (1 + 1e-12)],
                                              dtype=torch.float64)])
    with np.errstate(over="ignore"):
        want = torch.from_numpy(x.numpy().astype(np.float16).astype(np.float64))
    got = P.decode(P.encode(x, 5, 10), 5, 10)
    bad = ~same_values(got, want)
    assert not bad.any(), f"{x[bad][:4].tolist()} -> {got[bad][:4].tolist()}, numpy: {want[bad][:4].tolist()}"


# ----------------------------------------------------------------------------- 9.2 stochastic rounding


def neighbours(x: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest format value <= x and the smallest >= x (float64), from the sorted list of all its values."""
    v = torch_values(name)
    v = v[v.isfinite()].unique()
    hi = v[torch.searchsorted(v, x, side="left").clamp(max=len(v) - 1)]
    lo = v[(torch.searchsorted(v, x, side="right") - 1).clamp(min=0)]
    return lo, hi


@pytest.mark.exercise("ch09.stochastic_round")
@pytest.mark.parametrize("name", ["bf16", "e4m3", "fp16"])
def test_stochastic_round_is_unbiased_and_lands_on_a_neighbour(name):
    e, m, fn, _, _ = FORMATS[name]
    top = float(P.format_info(e, m, fn)["max"])
    g = gen(5)
    k = 37
    x = torch.randn(k, generator=g, dtype=torch.float64) * torch.exp2(torch.empty(k, dtype=torch.float64).uniform_(
        -2.0 ** (e - 1) - m, math.log2(top) - 1, generator=g))
    x = torch.cat([x, torch.tensor([0.0, 1.0, -1.5, 1 + 2.0**-m / 3])])  # exact values stay; a third of a step
    n = 3001
    draws = P.stochastic_round(x[None, :].expand(n, -1).contiguous(), e, m, generator=gen(1234))
    assert draws.shape == (n, len(x)) and draws.dtype == torch.float64
    lo, hi = neighbours(x, name)
    assert ((draws == lo) | (draws == hi)).all(), "every draw is one of the two format values around x"
    p = torch.where(hi > lo, (x - lo) / (hi - lo), 0.0)
    sd = (hi - lo) * torch.sqrt(p * (1 - p) / n)
    err = (draws.mean(0) - x).abs()
    assert (err <= 5 * sd + 1e-12 * x.abs()).all(), (f"the mean of {n} draws is off by {(err / sd).max():.1f} "
                                                      "standard errors: stochastic rounding must be unbiased")
    frac = (draws == hi).double().mean(0)
    ok = hi > lo
    assert ((frac[ok] - p[ok]).abs() <= 5 * torch.sqrt(p[ok] * (1 - p[ok]) / n) + 1e-9).all()


@pytest.mark.exercise("ch09.stochastic_round")
def test_stochastic_round_is_seeded_and_keeps_a_long_sum():
    x = torch.full((4000,), 1e-3, dtype=torch.float64)
    a = P.stochastic_round(x, 8, 7, generator=gen(0))
    b = P.stochastic_round(x, 8, 7, generator=gen(0))
    c = P.stochastic_round(x, 8, 7, generator=gen(1))
    assert torch.equal(a, b) and not torch.equal(a, c), "the same generator seed gives the same draws"
    # a bf16 running sum of 4000 times 0.001: round-to-nearest stalls; stochastic rounding stays near 4
    total_rn, total_sr = torch.zeros(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    g = gen(2)
    for _ in range(4000):
        total_rn = torch.tensor([1e-3], dtype=torch.float64).add(total_rn).bfloat16().double()
        total_sr = P.stochastic_round(total_sr + 1e-3, 8, 7, generator=g)
    assert total_rn.item() < 0.6 and abs(total_sr.item() - 4.0) < 0.25, (total_rn.item(), total_sr.item())


# ----------------------------------------------------------------------------- 9.3 memory per parameter


def measured_bytes(weight_dtype, grad_dtype, optimizer: str, master: bool) -> dict[str, float]:
    """Train a small model one step and count the bytes, per parameter, that its tensors really hold."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(37, 23), torch.nn.GELU(), torch.nn.Linear(23, 11))
    masters = [p.detach().float().clone().requires_grad_() for p in model.parameters()] if master else None
    model = model.to(weight_dtype)
    n = sum(p.numel() for p in model.parameters())
    opt_params = masters if master else list(model.parameters())
    opt = {"adamw": lambda ps: torch.optim.AdamW(ps, lr=1e-3, foreach=False),
           "momentum": lambda ps: torch.optim.SGD(ps, lr=1e-3, momentum=0.9, foreach=False),
           "sgd": lambda ps: torch.optim.SGD(ps, lr=1e-3, foreach=False)}[optimizer](opt_params)
    model(torch.randn(5, 37, dtype=weight_dtype)).square().mean().backward()
    for p in model.parameters():
        p.grad = p.grad.to(grad_dtype)
    if master:
        for mp, p in zip(masters, model.parameters(), strict=True):
            mp.grad = p.grad.float()
    opt.step()
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts) / n  # noqa: E731
    states = [t for s in opt.state.values() for k, t in s.items() if k != "step" and torch.is_tensor(t)]
    return {"weights": nbytes(model.parameters()), "grads": nbytes(p.grad for p in model.parameters()),
            "optimizer": nbytes(states), "master": nbytes(masters) if master else 0}


@pytest.mark.exercise("ch09.memory")
@pytest.mark.parametrize("weights, grads, optimizer, master", [
    (torch.float32, torch.float32, "adamw", False),
    (torch.bfloat16, torch.bfloat16, "adamw", False),
    (torch.bfloat16, torch.bfloat16, "adamw", True),
    (torch.float16, torch.float16, "adamw", True),
    (torch.float16, torch.float16, "momentum", False),
    (torch.float64, torch.float64, "sgd", False),
    (torch.bfloat16, torch.bfloat16, "momentum", True),
])
def test_memory_per_parameter_matches_what_training_holds(weights, grads, optimizer, master):
    want = measured_bytes(weights, grads, optimizer, master)
    n_states = {"adamw": 2, "momentum": 1, "sgd": 0}[optimizer]
    state_dtype = torch.float32 if master else weights
    got = P.memory_per_parameter(weights, grads, state_dtype, n_states, torch.float32 if master else None)
    assert {k: got[k] for k in want} == want, (got, want)
    assert got["total"] == sum(want.values())


# ----------------------------------------------------------------------------- 9.4 dynamic loss scaling


@pytest.mark.exercise("ch09.loss_scaler")
def test_loss_scaler_decides_like_grad_scaler():
    """The same gradients (some with inf or NaN) through torch.amp.GradScaler and through LossScaler: the same
    scale after every step, the same steps skipped, the same unscaled gradients."""
    g = gen(9)
    interval = 3
    pattern = "ggggiggggggnggggiiggggggggg"  # g: finite gradients, i: an inf somewhere, n: a NaN somewhere
    ref = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=interval)
    mine = P.LossScaler(init_scale=2.0**10, growth_interval=interval)
    w = torch.nn.Parameter(torch.zeros(13))
    opt = torch.optim.SGD([w], lr=1.0)
    for t, kind in enumerate(pattern):
        grad = torch.randn(13, generator=g) * 100
        if kind != "g":
            grad[t % 13] = math.inf if kind == "i" else math.nan
        w.grad = grad.clone()
        before = w.detach().clone()
        ref.scale(torch.tensor(1.0))  # (GradScaler wants to have scaled a loss this step)
        ref.step(opt)
        ref.update()
        ref_skipped = torch.equal(before, w.detach())
        out = mine.step([grad.clone()])
        assert (out is None) == ref_skipped, f"step {t} ({kind}): skipped {out is None}, GradScaler {ref_skipped}"
        if out is not None:
            assert torch.allclose(out[0], before - w.detach(), rtol=1e-5, atol=1e-6)  # SGD, lr 1
        assert mine.scale == ref.get_scale(), f"step {t} ({kind}): scale {mine.scale}, GradScaler {ref.get_scale()}"


@pytest.mark.exercise("ch09.loss_scaler")
def test_loss_scaler_unscales_every_gradient_in_float32():
    mine = P.LossScaler(init_scale=1024.0, growth_interval=2, growth_factor=4.0, backoff_factor=0.25)
    grads = [torch.randn(3, 5, generator=gen(1)).half(), torch.randn(7, generator=gen(2)).bfloat16()]
    out = mine.step(grads)
    assert [o.dtype for o in out] == [torch.float32] * 2 and out[0].shape == (3, 5)
    for o, gr in zip(out, grads, strict=True):
        assert torch.equal(o, gr.float() / 1024.0)
    assert mine.scale == 1024.0
    mine.step(grads)
    assert mine.scale == 4096.0, "growth after growth_interval good steps, by growth_factor"
    assert mine.step([grads[0], torch.tensor([1.0, -math.inf])]) is None and mine.scale == 1024.0


def fp16_regression(scaler) -> tuple[float, float]:
    """Fit y = x·w* with fp16 weights and fp16 arithmetic, fp32 master weights and Adam. The loss is divided by
    2**23 (as a sum over millions of tokens divided by their count would be): representable in fp16, but its
    gradients are far below fp16's smallest number. Returns the first and last loss (undivided, in fp32)."""
    g = gen(4)
    x = torch.randn(64, 9, generator=g).half()
    w_true = torch.randn(9, generator=g)
    y = (x.float() @ w_true).half()
    master = torch.zeros(9, requires_grad=True)
    opt = torch.optim.Adam([master], lr=0.05)
    losses = []
    for _ in range(60):
        w = master.detach().half().requires_grad_()
        loss = (x @ w - y).square().mean() / 2**23  # all in fp16
        losses.append(float((x.float() @ master.detach() - y.float()).square().mean()))
        (loss if scaler is None else loss.float() * scaler.scale).backward()  # scale_loss, here: the graph is here
        grads = [w.grad] if scaler is None else scaler.step([w.grad])
        if grads is None:
            continue
        master.grad = grads[0].float()
        opt.step()
        opt.zero_grad()
    return losses[0], losses[-1]


@pytest.mark.exercise("ch09.loss_scaler")
def test_loss_scaling_makes_fp16_training_learn():
    first, last = fp16_regression(None)
    assert last == first, "(the test's premise: without scaling every gradient underflows to 0 and nothing moves)"
    first, last = fp16_regression(P.LossScaler(init_scale=2.0**24, growth_interval=5))
    assert last < 0.05 * first, f"with loss scaling the loss should fall: {first:.3g} -> {last:.3g}"


# ----------------------------------------------------------------------------- 9.5 FP8 scaling


def fp8_oracle(x: torch.Tensor, dtype: torch.dtype, amax: float) -> tuple[torch.Tensor, torch.Tensor]:
    fmax = torch.finfo(dtype).max
    scale = fmax / torch.tensor(max(amax, 1e-12), dtype=torch.float32)
    return (x.float() * scale).clamp(-fmax, fmax).to(dtype).float() / scale, scale


def spread(shape, seed: int) -> torch.Tensor:
    """float32 values whose magnitudes spread over many powers of two (like activations with outliers)."""
    g = gen(seed)
    return torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 2)


@pytest.mark.exercise("ch09.fp8_scale")
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2], ids=["e4m3", "e5m2"])
def test_fp8_current_scaling(dtype):
    x = spread((37, 19), seed=1)
    got, scale = P.fp8_quantize(x, dtype)
    amax = float(x.abs().max())
    want, want_scale = fp8_oracle(x, dtype, amax)
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.allclose(scale.float(), want_scale, rtol=1e-6), (float(scale), float(want_scale))
    assert torch.allclose(got, want, rtol=1e-5, atol=0), "x · scale, cast to the format, back, / scale"
    i = x.abs().argmax()
    assert abs(float(got.flatten()[i]) - float(x.flatten()[i])) <= 1e-5 * amax, "amax lands on the format's max"
    e, m = (4, 3) if dtype is torch.float8_e4m3fn else (5, 2)
    normal = (x.abs() * want_scale) >= 2.0 ** (2 - 2 ** (e - 1))
    rel = ((got - x).abs() / x.abs())[normal]
    assert rel.max() <= 2.0 ** -(m + 1) * 1.0001, "round to nearest: at most half a step, relative"


@pytest.mark.exercise("ch09.fp8_scale")
def test_fp8_given_amax_saturates_and_zero_is_safe():
    x = spread((5, 41), seed=2)
    amax = float(x.abs().max()) / 8  # a stale amax: the largest elements do not fit
    got, scale = P.fp8_quantize(x, torch.float8_e5m2, amax)
    want, _ = fp8_oracle(x, torch.float8_e5m2, amax)
    assert got.isfinite().all(), "saturate, never inf (e5m2 has one) or NaN"
    assert torch.allclose(got, want, rtol=1e-5, atol=0)
    assert torch.allclose(got[x.abs() > amax * 1.01].abs(), torch.tensor(amax), rtol=1e-5)
    z, s = P.fp8_quantize(torch.zeros(3, 7), torch.float8_e4m3fn)
    assert torch.equal(z, torch.zeros(3, 7)) and torch.isfinite(torch.as_tensor(s)).all()


def delayed_oracle(xs, history_len: int, dtype):
    history, out = [], []
    for x in xs:
        amax_now = float(x.abs().max())
        out.append(fp8_oracle(x, dtype, max(history) if history else amax_now))
        history = (history + [amax_now])[-history_len:]
    return out


@pytest.mark.exercise("ch09.amax_history")
@pytest.mark.parametrize("history_len", [1, 5])
def test_delayed_scaling_follows_the_amax_history(history_len):
    scales = [1.0, 1.3, 0.7, 0.9, 12.0, 1.1, 0.8, 1.0, 0.6, 0.5, 0.4, 0.45, 0.3]  # a spike at step 4
    xs = [spread((17, 23), seed=10 + t) * s for t, s in enumerate(scales)]
    ds = P.DelayedScaling(history_len=history_len, dtype=torch.float8_e4m3fn)
    want = delayed_oracle(xs, history_len, torch.float8_e4m3fn)
    for t, (x, (w, ws)) in enumerate(zip(xs, want, strict=True)):
        got, scale = ds(x)
        assert torch.allclose(torch.as_tensor(scale).float(), ws, rtol=1e-6), (t, float(scale), float(ws))
        assert torch.allclose(got, w, rtol=1e-5, atol=0), f"step {t}"
        assert len(ds.history) == min(t + 1, history_len)
    # the spike saturates on its own step; it sets the scale for exactly history_len steps after
    spike_scale = float(want[5][1])
    assert math.isclose(spike_scale, 448 / float(xs[4].abs().max()), rel_tol=1e-6)
    assert float(want[4 + history_len + 1][1]) > 2 * spike_scale


@pytest.mark.exercise("ch09.amax_history")
def test_delayed_scaling_first_step_uses_its_own_amax_and_saturates_a_spike():
    x = spread((9, 31), seed=3)
    ds = P.DelayedScaling(history_len=4, dtype=torch.float8_e5m2)
    got, scale = ds(x)
    assert torch.allclose(got, fp8_oracle(x, torch.float8_e5m2, float(x.abs().max()))[0], rtol=1e-5, atol=0)
    got, _ = ds(x * 100)
    assert got.isfinite().all() and math.isclose(float(got.abs().max()), float(x.abs().max()), rel_tol=1e-5), \
        "a step 100 times larger than the history saturates at the history's amax"
    assert ds.history == pytest.approx([float(x.abs().max()), float(x.abs().max()) * 100], rel=1e-6)
