"""Chapter 13 — quantization: absmax and zero-point, groups, int8 arithmetic, int4 packing, a quantized linear, GPTQ.

Oracles: float64 formulas written out here one slice or group at a time, Python integers (bytes packed bit by bit,
int64 matrix products), and GPTQ transcribed as the Optimal Brain Quantization loop it was derived from: the full
inverse Hessian, downdated by one Gaussian elimination step after every column (no Cholesky factor, no blocks).
Inputs are heavy-tailed (normal times log-normal, as trained weights with outliers are), with odd sizes.
Models are small random GPTs made here; nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import pytest
import torch

from storylib import quantize as Q


def heavy(*shape, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=dtype) * torch.exp(torch.randn(*shape, generator=g, dtype=dtype))
            + 0.3 * torch.rand(*shape, generator=g, dtype=dtype))


def absmax_oracle(x: torch.Tensor, bits: int):
    """One slice: float64 scale and integers, written out."""
    qmax = 2 ** (bits - 1) - 1
    amax = float(x.abs().max())
    s = amax / qmax if amax > 0 else 1.0 / qmax
    return [max(-qmax, min(qmax, round(float(v) / s))) for v in x.flatten()], s


# ----------------------------------------------------------------------------- ch13.absmax


@pytest.mark.exercise("ch13.absmax")
@pytest.mark.parametrize("bits", [8, 4, 3])
def test_absmax_per_tensor(bits):
    x = heavy(9, 13, seed=bits)
    q, s = Q.quantize_absmax(x, bits)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and q.shape == x.shape, "q: int8, shaped as x"
    assert s.dim() == 0 and s.dtype == x.dtype, "dim=None: one scale, a 0-d tensor of x's dtype"
    want_q, want_s = absmax_oracle(x, bits)
    assert float(s) == pytest.approx(want_s, rel=1e-12), "scale = max|x| / qmax"
    assert q.flatten().tolist() == want_q
    assert int(q.abs().max()) == qmax, "the largest |x| maps to ±qmax"
    assert ((x - s * q.double()).abs() <= s / 2 + 1e-12).all(), "|x - s q| <= s / 2"


@pytest.mark.exercise("ch13.absmax")
@pytest.mark.parametrize("dim", [0, 1])
def test_absmax_per_channel(dim):
    x = heavy(7, 11, seed=3 + dim)
    x[2] = 0.0  # an all-zero row (and column 2 below)
    x[:, 2] = 0.0
    q, s = Q.quantize_absmax(x, 8, dim=dim)
    want_shape = (1, 11) if dim == 0 else (7, 1)
    assert tuple(s.shape) == want_shape, f"dim={dim}: the max over that dimension, kept (keepdim)"
    assert torch.isfinite(s).all() and (s > 0).all(), "an all-zero slice still gets a usable scale"
    for i in range(x.shape[1 - dim]):
        sl = x[:, i] if dim == 0 else x[i]
        got = q[:, i] if dim == 0 else q[i]
        want_q, want_s = absmax_oracle(sl, 8)
        assert got.tolist() == want_q, f"slice {i}"
        assert float(s.flatten()[i]) == pytest.approx(want_s, rel=1e-12)
    assert ((x - s * q.double()).abs() <= s / 2 + 1e-12).all()


# ----------------------------------------------------------------------------- ch13.zeropoint


@pytest.mark.exercise("ch13.zeropoint")
@pytest.mark.parametrize("bits, dim, shift", [(8, None, 0.0), (8, 1, 0.0), (4, 1, 0.0), (8, 0, 2.5), (5, None, -1.0)])
def test_zeropoint(bits, dim, shift):
    x = heavy(6, 17, seed=bits) + shift
    q, s, z = Q.quantize_zeropoint(x, bits, dim=dim)
    qmax = 2**bits - 1
    assert q.dtype == torch.uint8 and q.shape == x.shape
    assert z.dtype == torch.int32 and z.shape == s.shape, "zero: int32, shaped as scale"
    slices = [x] if dim is None else [x[:, i] if dim == 0 else x[i] for i in range(x.shape[1 - dim])]
    for i, sl in enumerate(slices):
        lo, hi = min(float(sl.min()), 0.0), max(float(sl.max()), 0.0)
        want_s = (hi - lo) / qmax
        want_z = round(-lo / want_s)
        got_q = q if dim is None else (q[:, i] if dim == 0 else q[i])
        assert float(s.flatten()[i]) == pytest.approx(want_s, rel=1e-12), "scale = (hi - lo) / (2^bits - 1)"
        assert int(z.flatten()[i]) == want_z, "zero = round(-lo / scale)"
        want_q = [max(0, min(qmax, round(float(v) / want_s) + want_z)) for v in sl.flatten()]
        assert got_q.flatten().tolist() == want_q
    dq = Q.dequantize(q, s, z)
    assert ((x - dq).abs() <= s / 2 + 1e-12).all(), "|x - dequantize| <= scale / 2"
    zero_q = (torch.round(torch.zeros_like(s) / s) + z)
    assert (Q.dequantize(zero_q, s, z) == 0).all(), "0.0 is represented exactly"


@pytest.mark.exercise("ch13.zeropoint")
def test_zeropoint_one_sided_and_constant():
    x = heavy(3, 9, seed=5).abs() + 1.0  # all positive: lo = 0, zero = 0
    q, s, z = Q.quantize_zeropoint(x, 8, dim=1)
    assert (z == 0).all() and int(q.max()) == 255
    q, s, z = Q.quantize_zeropoint(torch.zeros(2, 5, dtype=torch.float64), 8, dim=1)
    assert torch.isfinite(s).all() and (Q.dequantize(q, s, z) == 0).all(), "all zeros: a finite scale, exact zeros"


# ----------------------------------------------------------------------------- ch13.groupwise


@pytest.mark.exercise("ch13.groupwise")
@pytest.mark.parametrize("rows, cols, gs, bits", [(5, 70, 32, 4), (3, 64, 16, 8), (4, 13, 13, 8), (2, 9, 4, 4)])
def test_groupwise(rows, cols, gs, bits):
    w = heavy(rows, cols, seed=cols)
    q, s = Q.quantize_groupwise(w, bits, gs)
    n_groups = -(-cols // gs)
    assert q.dtype == torch.int8 and q.shape == (rows, cols), "q: int8, shaped as w"
    assert tuple(s.shape) == (rows, n_groups), "one scale per (row, group); the last group may be shorter"
    for r in range(rows):
        for g in range(n_groups):
            want_q, want_s = absmax_oracle(w[r, g * gs : (g + 1) * gs], bits)
            assert q[r, g * gs : (g + 1) * gs].tolist() == want_q, f"row {r}, group {g}"
            assert float(s[r, g]) == pytest.approx(want_s, rel=1e-12), f"row {r}, group {g}"
    dq = Q.dequantize_groupwise(q, s, gs)
    bound = s.repeat_interleave(gs, dim=1)[:, :cols] / 2
    assert ((w - dq).abs() <= bound + 1e-12).all(), "|w - dq| <= its group's scale / 2"


@pytest.mark.exercise("ch13.groupwise")
def test_groups_beat_one_scale_per_row_on_outliers():
    w = heavy(8, 256, seed=11)
    w[:, 7] *= 40  # one outlier input: per-channel scales are ruined by it; groups of 32 contain it
    err = [Q.weight_error(w, 4, gs) for gs in (256, 128, 32)]
    assert err[2] < err[1] <= err[0] * 1.0001, f"smaller groups, smaller error: {err}"


# ----------------------------------------------------------------------------- ch13.int8_matmul


@pytest.mark.exercise("ch13.int8_matmul")
@pytest.mark.parametrize("N, K, M", [(5, 4099, 7), (1, 3, 1), (4, 288, 9)])
def test_int8_matmul_exact(N, K, M):
    g = torch.Generator().manual_seed(K)
    xq = torch.randint(-127, 128, (N, K), generator=g, dtype=torch.int8)
    wq = torch.randint(-127, 128, (M, K), generator=g, dtype=torch.int8)
    xq[0, :] = 127  # a long run of the largest products: their sum needs more than float32's 24 bits
    wq[0, :] = 127
    xs = torch.rand(N, 1, generator=g, dtype=torch.float64) + 0.01
    ws = torch.rand(M, 1, generator=g, dtype=torch.float64) + 0.01
    acc = xq.long() @ wq.long().T  # exact, in int64
    want = acc.double() * xs * ws.T
    got = Q.int8_matmul(xq, xs, wq, ws)
    assert got.shape == (N, M) and got.dtype == torch.float64, "(N, M), in the scales' dtype"
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    ones = Q.int8_matmul(xq, torch.ones(N, 1, dtype=torch.float64), wq, torch.ones(M, 1, dtype=torch.float64))
    assert torch.equal(ones, acc.double()), "with unit scales: exactly the integer sums (no float accumulation)"


@pytest.mark.exercise("ch13.int8_matmul")
def test_int8_matmul_approximates_float():
    x, w = heavy(6, 96, seed=1), heavy(10, 96, seed=2)
    xq, xs = Q.quantize_absmax(x, 8, dim=1)
    wq, ws = Q.quantize_absmax(w, 8, dim=1)
    got = Q.int8_matmul(xq, xs, wq, ws)
    assert (got - x @ w.T).abs().max() < 0.05 * (x @ w.T).abs().max()


# ----------------------------------------------------------------------------- ch13.pack_int4, ch13.unpack_int4


def pack_oracle(row: list[int]) -> list[int]:
    row = row + [0] * (len(row) % 2)
    return [(row[i] & 0xF) | ((row[i + 1] & 0xF) << 4) for i in range(0, len(row), 2)]


@pytest.mark.exercise("ch13.pack_int4")
@pytest.mark.parametrize("shape", [(3, 11), (2, 8), (1,), (4, 2, 5)])
def test_pack_int4(shape):
    g = torch.Generator().manual_seed(sum(shape))
    q = torch.randint(-8, 8, shape, generator=g, dtype=torch.int8)
    p = Q.pack_int4(q)
    assert p.dtype == torch.uint8 and p.shape == (*shape[:-1], -(-shape[-1] // 2)), "uint8, ceil(n / 2) a row"
    rows = q.reshape(-1, shape[-1]).tolist()
    assert p.reshape(len(rows), -1).tolist() == [pack_oracle(r) for r in rows]
    assert Q.pack_int4(torch.tensor([1, -1], dtype=torch.int8)).tolist() == [0xF1], "q[0] low nibble, q[1] high"


@pytest.mark.exercise("ch13.unpack_int4")
@pytest.mark.parametrize("n", [11, 8, 1])
def test_unpack_int4(n):
    g = torch.Generator().manual_seed(n)
    q = torch.randint(-8, 8, (3, n), generator=g, dtype=torch.int8)
    packed = torch.tensor([pack_oracle(r) for r in q.tolist()], dtype=torch.uint8)
    got = Q.unpack_int4(packed, n)
    assert got.dtype == torch.int8 and torch.equal(got, q)


@pytest.mark.exercise("ch13.unpack_int4")
def test_unpack_every_byte():
    every = torch.arange(256, dtype=torch.int64).to(torch.uint8)[None]
    got = Q.unpack_int4(every, 512)[0].tolist()
    want = [v - 16 if v >= 8 else v for b in range(256) for v in (b & 0xF, b >> 4)]
    assert got == want, "8..15 in a nibble stand for -8..-1"


# ----------------------------------------------------------------------------- ch13.qlinear


@pytest.mark.exercise("ch13.qlinear")
@pytest.mark.parametrize("gs, bias", [(5, True), (13, False), (4, True)])
def test_qlinear_forward(gs, bias):
    g = torch.Generator().manual_seed(gs)
    q = torch.randint(-127, 128, (6, 13), generator=g, dtype=torch.int8)
    scale = (torch.rand(6, -(-13 // gs), generator=g) * 0.01 + 1e-3).half()
    b = torch.randn(6, generator=g) if bias else None
    layer = Q.QuantLinear(q, scale, b, bits=8, group_size=gs)
    x = heavy(2, 3, 13, seed=gs)
    w = scale.double().repeat_interleave(gs, dim=1)[:, :13] * q.double()
    want = x @ w.T + (b.half().double() if bias else 0)
    got = layer(x)
    assert got.shape == (2, 3, 6) and got.dtype == torch.float64, "(..., out_features), in x's dtype"
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert layer(x.float()).dtype == torch.float32


@pytest.mark.exercise("ch13.qlinear")
def test_qlinear_matches_its_float_linear():
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 24)
    layer = Q.QuantLinear.from_linear(lin, bits=8, group_size=8)
    x = torch.randn(5, 40)
    assert (layer(x) - lin(x)).abs().max() < 0.02 * lin(x).abs().max(), "int8 in groups of 8: close to the float"


# ----------------------------------------------------------------------------- ch13.gptq_block


def gptq_oracle(w: torch.Tensor, h: torch.Tensor, bits: int, gs: int, damp: float = 0.01):
    """Optimal Brain Quantization in columns order, float64: after each column, the inverse Hessian of the
    columns left is downdated by one Gaussian elimination step (no Cholesky factor, no lazy blocks)."""
    qmax = 2 ** (bits - 1) - 1
    W, H = w.double().clone(), h.double().clone()
    K = W.shape[1]
    H += damp * torch.diag(H).mean() * torch.eye(K, dtype=torch.float64)
    hinv = torch.linalg.inv(H)
    Qd = torch.zeros_like(W)
    for i in range(K):
        if i % gs == 0:
            amax = W[:, i : i + gs].abs().amax(dim=1)
            s = torch.where(amax > 0, amax, torch.ones_like(amax)) / qmax
        q = torch.round(W[:, i] / s).clamp(-qmax, qmax) * s
        err = (W[:, i] - q) / hinv[i, i]
        W[:, i:] -= err[:, None] * hinv[i, i:][None, :]
        Qd[:, i] = q
        hinv = hinv - hinv[:, i : i + 1] @ hinv[i : i + 1, :] / hinv[i, i]  # eliminate column i
    return Qd


def correlated_inputs(n: int, K: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(K, K, generator=g, dtype=torch.float64) / K**0.5 + torch.eye(K, dtype=torch.float64)
    base = torch.randn(n, K, generator=g, dtype=torch.float64) @ mix
    return base + 0.8 * base.roll(1, dims=1)  # neighbouring inputs move together


@pytest.mark.exercise("ch13.gptq_block")
@pytest.mark.parametrize("M, K, gs, block, bits", [(6, 40, 8, 16, 4), (5, 27, 9, 9, 3), (4, 21, 7, 64, 4)])
def test_gptq_matches_obq_transcription(M, K, gs, block, bits):
    w = heavy(M, K, seed=K)
    h = Q.hessian(correlated_inputs(300, K, seed=K))
    q, scale, dq = Q.gptq(w, h, bits, gs, block_size=block)
    want = gptq_oracle(w, h, bits, gs)
    torch.testing.assert_close(dq.double(), want, rtol=1e-9, atol=1e-9)
    assert tuple(scale.shape) == (M, -(-K // gs))
    torch.testing.assert_close(Q.dequantize_groupwise(q, scale, gs), want, rtol=1e-9, atol=1e-9)


@pytest.mark.exercise("ch13.gptq_block")
def test_gptq_block_alone():
    M, K, gs = 4, 12, 5  # groups of 5, 5 and 2
    w = heavy(M, K, seed=7)
    h = Q.hessian(correlated_inputs(100, K, seed=7))
    h += 0.01 * torch.diag(h).mean() * torch.eye(K, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    w_before = w.clone()
    q1, e1, s1 = Q.gptq_block(w, u, 4, gs)
    assert torch.equal(w, w_before), "gptq_block works on a copy: its argument is not changed"
    want = gptq_oracle(w, h, 4, gs, damp=0.0)
    torch.testing.assert_close(q1, want, rtol=1e-9, atol=1e-9)
    assert tuple(s1.shape) == (M, 3)
    # the errors: (w_i - q_i) / U[i, i], with w_i the corrected column
    assert e1.shape == (M, K) and (e1[:, 0] - (w[:, 0] - q1[:, 0]) / u[0, 0]).abs().max() < 1e-12


@pytest.mark.exercise("ch13.gptq_block")
def test_gptq_beats_round_to_nearest_on_correlated_inputs():
    M, K, gs = 16, 64, 16
    w = heavy(M, K, seed=1)
    x = correlated_inputs(512, K, seed=2)
    _, _, dq = Q.gptq(w, Q.hessian(x), 4, gs)
    rtn = torch.cat([torch.tensor(absmax_oracle(row[g : g + gs], 4)[0], dtype=torch.float64)
                     * absmax_oracle(row[g : g + gs], 4)[1] for row in w for g in range(0, K, gs)]).view(M, K)
    err_gptq = float((x @ (w - dq).T).pow(2).mean())
    err_rtn = float((x @ (w - rtn).T).pow(2).mean())
    assert err_gptq < 0.8 * err_rtn, f"GPTQ output error {err_gptq:.4g}, round-to-nearest {err_rtn:.4g}"


# ----------------------------------------------------------------------------- the int8 KV cache


@pytest.mark.exercise("ch13.absmax")
def test_quant_kv_cache_stores_int8_per_head_and_token():
    cache = Q.QuantKVCache(2, 2, 3, 10, 8, dtype=torch.float64)
    cache.lengths = torch.tensor([3, 0])
    k, v = heavy(2, 3, 4, 8, seed=1), heavy(2, 3, 4, 8, seed=2)
    keys, values = cache.update(1, k, v)
    assert cache.k.dtype == torch.int8 and cache.v.dtype == torch.int8, "keys and values stored as int8"
    assert keys.shape == (2, 3, 7, 8) and keys.dtype == torch.float64
    for got, want in ((keys[0, :, 3:7], k[0]), (values[1, :, 0:4], v[1])):
        step = want.abs().amax(dim=-1, keepdim=True) / 127  # one absmax scale per (head, token) vector
        bound = step / 2 + 127 * step / 2048  # half a step, plus the rounding of the scale to fp16
        assert ((got - want).abs() <= bound + 1e-12).all(), "within half a step of its vector's scale"
    n = cache.k.numel()
    assert cache.nbytes() == 2 * n + 2 * (n // 8) * 2, "1 byte a number, plus one fp16 scale per vector of 8"
