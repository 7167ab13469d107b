"""Tests for Chapter 4 — attention (storylib/attention.py).

Oracles: torch.softmax in float64, torch.nn.functional.scaled_dot_product_attention, torch.autograd.gradcheck,
nn.MultiheadAttention with copied weights, float64 einsum references and the sinusoid formula written out.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import is_tensor_like

from storylib import attention as A

ex = pytest.mark.exercise


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    return (scale * torch.randn(*shape, generator=gen(seed), dtype=torch.float64)).to(dtype)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max())


# ----------------------------------------------------------------------------- ch04.softmax


@ex("ch04.softmax")
def test_softmax_matches_torch_on_every_dim():
    x = randn(3, 5, 7, seed=0, scale=3.0)
    for dim in (-1, 0, 1):
        got = A.softmax(x, dim=dim)
        assert got.shape == x.shape, f"softmax should keep the shape {tuple(x.shape)}, got {tuple(got.shape)}"
        assert got.dtype == torch.float64, f"a float64 input should give float64, got {got.dtype}"
        err = max_err(got, torch.softmax(x, dim=dim))
        assert err < 1e-12, f"softmax(x, dim={dim}) differs from torch.softmax by up to {err:.2e}"


@ex("ch04.softmax")
def test_softmax_does_not_overflow_on_large_logits():
    x = randn(4, 9, seed=1, dtype=torch.float32, scale=1e4)  # exp(1e4) is inf in every float dtype
    x[0, 3] = 1e4
    got = A.softmax(x)
    assert torch.isfinite(got).all(), "softmax of logits around 1e4 gave inf or NaN: subtract the row max before exp"
    err = max_err(got, torch.softmax(x.double(), dim=-1))
    assert err < 1e-6, f"softmax of large logits is off by up to {err:.2e} from the float64 reference"


@ex("ch04.softmax")
def test_softmax_masked_entries_get_zero_and_all_masked_rows_are_zero():
    x = randn(5, 6, seed=2, scale=2.0)
    x[0, [1, 4]] = float("-inf")  # some keys masked
    x[2, :] = float("-inf")  # every key masked
    got = A.softmax(x)
    assert not torch.isnan(got).any(), "softmax gave NaN: a row of all -inf must give zeros, not NaN"
    assert (got[0, [1, 4]] == 0).all(), "an entry of -inf must get exactly weight 0"
    assert (got[2] == 0).all(), f"a row that is all -inf must be all zeros, got {got[2].tolist()}"
    keep = [0, 1, 3, 4]
    err = max_err(got[keep], torch.softmax(x[keep], dim=-1))
    assert err < 1e-12, f"rows with some -inf entries differ from torch.softmax by up to {err:.2e}"


@ex("ch04.softmax")
def test_softmax_float16_and_bfloat16_keep_their_dtype():
    x64 = randn(6, 33, seed=3, scale=4.0)
    x64[1] *= 2000.0  # logits up to ~ 3e4: fine in float16 (max 65504), but exp(x) is not
    for dtype, tol in ((torch.float16, 2e-3), (torch.bfloat16, 1e-2)):
        x = x64.to(dtype)
        got = A.softmax(x)
        assert got.dtype == dtype, f"softmax of a {dtype} tensor should return {dtype}, got {got.dtype}"
        assert torch.isfinite(got).all(), f"softmax in {dtype} gave inf or NaN"
        err = max_err(got, torch.softmax(x.double(), dim=-1))
        assert err < tol, f"softmax in {dtype} is off by {err:.2e} (more than {tol}) from the float64 reference"


@ex("ch04.softmax")
def test_softmax_gradient_matches_finite_differences():
    x = randn(3, 4, seed=4).requires_grad_()
    ok = torch.autograd.gradcheck(lambda t: A.softmax(t, dim=-1), (x,), eps=1e-6, atol=1e-8, raise_exception=False)
    assert ok, "the gradient of softmax (through autograd) does not match finite differences"


# ----------------------------------------------------------------------------- ch04.causal_mask


@ex("ch04.causal_mask")
def test_causal_mask_is_true_exactly_on_and_below_the_diagonal():
    for T in (1, 2, 7):
        m = A.causal_mask(T)
        assert m.dtype == torch.bool, f"the mask should be a bool tensor, got {m.dtype}"
        assert m.shape == (T, T), f"causal_mask({T}) should have shape ({T}, {T}), got {tuple(m.shape)}"
        for i in range(T):
            for j in range(T):
                want = j <= i
                assert bool(m[i, j]) == want, f"mask[{i}, {j}] should be {want}: query i may see key j iff j <= i"


@ex("ch04.causal_mask")
def test_causal_mask_lives_on_the_requested_device():
    m = A.causal_mask(5, device="meta")
    assert m.device.type == "meta", f"causal_mask(T, device=...) should create the mask on that device, got {m.device}"


# ----------------------------------------------------------------------------- ch04.attention


def _qkv(B, H, Tq, Tk, D, Dv, seed, dtype=torch.float64):
    return (randn(B, H, Tq, D, seed=seed, dtype=dtype), randn(B, H, Tk, D, seed=seed + 1, dtype=dtype),
            randn(B, H, Tk, Dv, seed=seed + 2, dtype=dtype))


@ex("ch04.attention")
def test_attention_matches_torch_on_non_square_shapes():
    q, k, v = _qkv(3, 5, 7, 11, 13, 6, seed=10)
    out, w = A.scaled_dot_product_attention(q, k, v)
    assert out.shape == (3, 5, 7, 6), f"out should be (B, H, Tq, Dv) = (3, 5, 7, 6), got {tuple(out.shape)}"
    assert w.shape == (3, 5, 7, 11), f"weights should be (B, H, Tq, Tk) = (3, 5, 7, 11), got {tuple(w.shape)}"
    err = max_err(out, F.scaled_dot_product_attention(q, k, v))
    assert err < 1e-10, f"out differs from F.scaled_dot_product_attention by up to {err:.2e}"
    ref_w = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(13), dim=-1)
    assert max_err(w, ref_w) < 1e-12, "weights should be softmax(q kᵀ / sqrt(D)) over the keys"


@ex("ch04.attention")
def test_attention_causal_matches_torch():
    q, k, v = _qkv(3, 5, 9, 9, 13, 13, seed=20)
    out, w = A.scaled_dot_product_attention(q, k, v, causal=True)
    err = max_err(out, F.scaled_dot_product_attention(q, k, v, is_causal=True))
    assert err < 1e-10, f"causal out differs from F.scaled_dot_product_attention(is_causal=True) by {err:.2e}"
    future = torch.triu(torch.ones(9, 9, dtype=torch.bool), diagonal=1)
    assert (w[..., future] == 0).all(), "with causal=True, query i must give weight exactly 0 to every key j > i"
    assert max_err(w.sum(-1), torch.ones(3, 5, 9)) < 1e-12, "each row of weights should sum to 1"


@ex("ch04.attention")
def test_attention_bool_mask_matches_torch():
    q, k, v = _qkv(3, 5, 7, 11, 13, 4, seed=30)
    mask = torch.rand(3, 1, 7, 11, generator=gen(31)) > 0.4  # broadcast over heads
    mask[..., 0] = True  # every query keeps at least one key (torch gives NaN for none)
    out, w = A.scaled_dot_product_attention(q, k, v, mask=mask)
    err = max_err(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert err < 1e-10, f"with a bool mask, out differs from F.scaled_dot_product_attention by {err:.2e}"
    assert (w.masked_select(~mask.expand_as(w)) == 0).all(), "keys where mask is False must get weight exactly 0"
    q2, k2, v2 = _qkv(3, 5, 7, 7, 13, 4, seed=33)
    mask2 = torch.rand(3, 5, 7, 7, generator=gen(34)) > 0.5
    mask2[..., 0] = True  # key 0 is in every query's past: no query is left with nothing to see
    out2, _ = A.scaled_dot_product_attention(q2, k2, v2, mask=mask2, causal=True)
    ref2 = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=mask2 & torch.ones(7, 7, dtype=torch.bool).tril())
    assert max_err(out2, ref2) < 1e-10, "mask and causal=True together should forbid the union of both"


@ex("ch04.attention")
def test_attention_scale_argument_and_fully_masked_rows():
    q, k, v = _qkv(2, 3, 4, 6, 5, 5, seed=40)
    out, _ = A.scaled_dot_product_attention(q, k, v, scale=0.3)
    err = max_err(out, F.scaled_dot_product_attention(q, k, v, scale=0.3))
    assert err < 1e-10, f"with scale=0.3, out differs from torch by {err:.2e}: scale replaces 1/sqrt(D)"
    mask = torch.ones(4, 6, dtype=torch.bool)
    mask[2] = False  # query 2 may look at nothing
    out, w = A.scaled_dot_product_attention(q, k, v, mask=mask)
    assert not torch.isnan(out).any(), "a query with every key masked gave NaN; it should get zero weights and out 0"
    assert (w[..., 2, :] == 0).all() and (out[..., 2, :] == 0).all(), "a fully masked query: weights 0, out 0"


@ex("ch04.attention")
def test_attention_gradients_match_finite_differences():
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, 3, 4, 3, 2, seed=50))
    mask = torch.tensor([[True, False, True, True], [True, True, False, False], [False, True, True, True]])

    def f(q, k, v):
        return A.scaled_dot_product_attention(q, k, v, mask=mask)[0]

    ok = torch.autograd.gradcheck(f, (q, k, v), eps=1e-6, atol=1e-7, raise_exception=False)
    assert ok, "the gradients of attention with respect to q, k, v do not match finite differences"


# ----------------------------------------------------------------------------- ch04.split_heads / merge_heads


@ex("ch04.split_heads")
def test_split_heads_gives_each_head_its_own_channels():
    B, T, H, D = 2, 5, 3, 4
    x = randn(B, T, H * D, seed=60)
    y = A.split_heads(x, H)
    assert y.shape == (B, H, T, D), f"split_heads should give (B, H, T, D) = {(B, H, T, D)}, got {tuple(y.shape)}"
    for h in range(H):
        want = x[:, :, h * D : (h + 1) * D]
        assert torch.equal(y[:, h], want), f"head {h} should hold channels {h * D}..{(h + 1) * D - 1} of x"


@ex("ch04.split_heads")
def test_split_heads_is_a_view_not_a_copy():
    x = randn(3, 7, 10, seed=61)
    y = A.split_heads(x, 5)
    assert y.shape == (3, 5, 7, 2), f"expected (3, 5, 7, 2), got {tuple(y.shape)}"
    assert y.data_ptr() == x.data_ptr() and y._base is not None, "split_heads should return a view of x, not a copy"
    with pytest.raises(ValueError):
        A.split_heads(x, 3)


@ex("ch04.merge_heads")
def test_merge_heads_puts_the_heads_side_by_side():
    B, H, T, D = 2, 3, 5, 4
    x = randn(B, H, T, D, seed=70)
    y = A.merge_heads(x)
    assert y.shape == (B, T, H * D), f"merge_heads should give (B, T, H*D) = {(B, T, H * D)}, got {tuple(y.shape)}"
    for h in range(H):
        got = y[:, :, h * D : (h + 1) * D]
        assert torch.equal(got, x[:, h]), f"channels {h * D}..{(h + 1) * D - 1} should hold head {h}"


@ex("ch04.merge_heads")
def test_merge_heads_undoes_split_heads_on_transposed_input():
    x = randn(3, 11, 12, seed=71)
    assert torch.equal(A.merge_heads(A.split_heads(x, 4)), x), "merge_heads(split_heads(x, H)) should give x back"
    y = randn(2, 6, 3, 5, seed=72).transpose(1, 2)  # (B, H, T, D), not contiguous
    assert torch.equal(A.merge_heads(y), y.transpose(1, 2).reshape(2, 6, 15)), "merge_heads must work on any layout"


# ----------------------------------------------------------------------------- ch04.multihead


def _mha_pair(C: int, H: int, seed: int) -> tuple[A.MultiHeadAttention, nn.MultiheadAttention]:
    torch.manual_seed(seed)
    ours = A.MultiHeadAttention(C, H).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.normal_(0.0, 0.3, generator=gen(seed + p.numel()))
    ref = nn.MultiheadAttention(C, H, batch_first=True).double()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.proj.weight)
        ref.out_proj.bias.copy_(ours.proj.bias)
    return ours, ref


@ex("ch04.multihead")
def test_multihead_matches_nn_multiheadattention():
    ours, ref = _mha_pair(C=15, H=3, seed=80)
    x = randn(2, 9, 15, seed=81)
    y, w = ours(x, causal=False, need_weights=True)
    ry, rw = ref(x, x, x, need_weights=True, average_attn_weights=False)
    assert y.shape == (2, 9, 15), f"y should be (B, T, C) = (2, 9, 15), got {tuple(y.shape)}"
    assert w.shape == (2, 3, 9, 9), f"weights should be (B, H, T, T) = (2, 3, 9, 9), got {tuple(w.shape)}"
    assert max_err(y, ry) < 1e-10, f"y differs from nn.MultiheadAttention by {max_err(y, ry):.2e}"
    assert max_err(w, rw) < 1e-12, "the per-head weights differ from nn.MultiheadAttention's"


@ex("ch04.multihead")
def test_multihead_causal_matches_nn_multiheadattention():
    ours, ref = _mha_pair(C=12, H=4, seed=90)
    x = randn(3, 7, 12, seed=91)
    y = ours(x)  # causal by default
    future = torch.triu(torch.ones(7, 7, dtype=torch.bool), diagonal=1)  # nn.MultiheadAttention: True = forbidden
    ry, _ = ref(x, x, x, attn_mask=future, need_weights=False)
    assert is_tensor_like(y), "without need_weights, forward should return only y"
    err = max_err(y, ry)
    assert err < 1e-10, f"causal y differs from nn.MultiheadAttention with a causal mask by {err:.2e}"


@ex("ch04.multihead")
def test_multihead_matches_a_float64_einsum_reference_and_backprops():
    ours, _ = _mha_pair(C=8, H=2, seed=100)
    x = randn(2, 5, 8, seed=101).requires_grad_()
    y, w = ours(x, causal=True, need_weights=True)
    qkv = x @ ours.qkv.weight.T + ours.qkv.bias
    q, k, v = (t.reshape(2, 5, 2, 4) for t in qkv.split(8, dim=-1))  # (B, T, H, D)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / 2.0
    s = s.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
    heads = torch.einsum("bhij,bjhd->bihd", torch.softmax(s, -1), v).reshape(2, 5, 8)
    ref = heads @ ours.proj.weight.T + ours.proj.bias
    assert max_err(y, ref) < 1e-10, f"y differs from the einsum reference by {max_err(y, ref):.2e}"
    y.square().sum().backward()
    assert x.grad is not None and ours.qkv.weight.grad is not None, "gradients should flow to x and to the weights"


# ----------------------------------------------------------------------------- ch04.sinusoidal


@ex("ch04.sinusoidal")
def test_sinusoidal_matches_the_formula():
    T, d = 37, 18
    pe = A.sinusoidal_positions(T, d)
    assert pe.shape == (T, d), f"expected shape (T, d) = ({T}, {d}), got {tuple(pe.shape)}"
    assert pe.dtype == torch.float32, f"expected float32, got {pe.dtype}"
    for t in (0, 1, 5, 36):
        for i in range(d // 2):
            angle = t / 10000.0 ** (2 * i / d)
            assert abs(pe[t, 2 * i] - math.sin(angle)) < 1e-6, f"PE[{t}, {2 * i}] should be sin(t / 10000^(2i/d))"
            assert abs(pe[t, 2 * i + 1] - math.cos(angle)) < 1e-6, f"PE[{t}, {2 * i + 1}] should be cos(same angle)"


@ex("ch04.sinusoidal")
def test_sinusoidal_far_positions_and_base():
    pe = A.sinusoidal_positions(5000, 8, base=100.0)
    t = torch.arange(5000, dtype=torch.float64)[:, None]
    ref = torch.stack([f(t[:, 0] / 100.0 ** (k / 8)) for k in (0, 2, 4, 6) for f in (torch.sin, torch.cos)], 1)
    err = max_err(pe, ref)
    assert err < 1e-6, f"with base=100 and positions up to 4999, PE is off by {err:.2e}: compute angles in float64"
    with pytest.raises(ValueError):
        A.sinusoidal_positions(4, 7)


@ex("ch04.sinusoidal")
def test_sinusoidal_dot_product_depends_only_on_the_offset():
    pe = A.sinusoidal_positions(60, 16).double()
    dots = pe[:-7] @ pe[7:].T  # dots[a, b] = PE[a] · PE[b + 7]
    diag = torch.diagonal(dots, offset=0)  # PE[a] · PE[a + 7] for every a
    assert diag.std() < 1e-5, "PE[t] · PE[t + k] should be the same for every t (sum of cos(k·freq))"
    assert abs(float(pe[3] @ pe[3]) - 8.0) < 1e-5, "every row should have squared norm d/2 (sin² + cos² = 1 per pair)"


# ----------------------------------------------------------------------------- the model and the widget (not graded)


def test_tiny_model_shapes_and_loss():
    torch.manual_seed(0)
    for positions in ("learned", "sinusoidal", "none"):
        cfg = A.TinyConfig(vocab_size=11, block_size=16, n_layer=2, n_head=2, d_model=16, positions=positions)
        m = A.TinyAttentionLM(cfg)
        idx = torch.randint(0, 11, (3, 10))
        logits, loss, attn = m(idx, idx)
        assert logits.shape == (3, 10, 11) and len(attn) == 2 and attn[0].shape == (3, 2, 10, 10)
        assert abs(loss.item() - math.log(11)) < 0.5


def test_bits_per_byte_matches_a_direct_computation():
    """Each story read on its own as ◆ story ◆; short windows (block 16) must give what one long window gives."""
    from storylib.bigram import BOUNDARY, Vocab

    stories = ["Tom saw a cat. The cat ran away.", "Lily had a red ball, and she threw it high.", "Hi!"]
    vocab = Vocab.from_stories(stories)
    torch.manual_seed(0)
    model = A.TinyAttentionLM(A.TinyConfig(vocab_size=len(vocab), block_size=64, n_layer=1)).eval()
    nats = 0.0
    with torch.no_grad():
        for s in stories:
            ids = torch.tensor([[BOUNDARY, *vocab.encode(s), BOUNDARY]])
            nats += F.cross_entropy(model(ids[:, :-1])[0][0].double(), ids[0, 1:], reduction="sum").item()
    want = nats / math.log(2) / sum(len(s.encode("utf-8")) for s in stories)
    assert A.bits_per_byte(model, stories, vocab) == pytest.approx(want, rel=1e-9)
    model.cfg.block_size = 16  # the same model read in overlapping windows: a different, finite number
    assert 0 < A.bits_per_byte(model, stories, vocab) < 2 * want


def test_widget_javascript_forward_matches_torch(tmp_path):
    """The widget recomputes the model in JavaScript: its attention maps and next-character probabilities."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    from storylib.bigram import Vocab
    from storylib.widgets.attention import FORWARD_JS, export_model

    vocab = Vocab.from_stories(["Once upon a time, Lily saw a cat."])
    torch.manual_seed(1)
    for positions in ("learned", "sinusoidal"):
        cfg = A.TinyConfig(vocab_size=len(vocab), block_size=24, n_layer=2, n_head=2, d_model=16, positions=positions)
        model = A.TinyAttentionLM(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.2 * torch.randn(p.shape))
        text = "Lily saw a cat."
        ids = [0, *vocab.encode(text)]
        with torch.no_grad():
            logits, _, attn = model(torch.tensor([ids]))
        (tmp_path / "model.json").write_text(json.dumps(export_model(model, vocab)))
        script = tmp_path / "run.mjs"
        script.write_text(
            FORWARD_JS
            + "\nimport fs from 'node:fs';\n"
            + f"const json = fs.readFileSync({json.dumps(str(tmp_path / 'model.json'))}, 'utf8');\n"
            + "const model = decodeModel(JSON.parse(json));\n"
            + f"const r = forward(model, {json.dumps(ids)});\n"
            + "const attn = r.attn.map(l => l.map(h => Array.from(h)));\n"
            + "console.log(JSON.stringify({attn, probs: Array.from(r.probs)}));\n"
        )
        out = json.loads(subprocess.run(["node", str(script)], capture_output=True, text=True, check=True).stdout)
        T = len(ids)
        js_attn = torch.tensor(out["attn"], dtype=torch.float64).reshape(2, 2, T, T)
        assert max_err(js_attn, torch.stack([a[0] for a in attn])) < 1e-5
        assert max_err(torch.tensor(out["probs"]), torch.softmax(logits[0, -1].double(), -1)) < 1e-5
