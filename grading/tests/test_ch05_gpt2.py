"""Chapter 5 — GPT-2: LayerNorm by hand, attention, the block, init, the forward pass, generation.

Oracles: torch's own F.layer_norm / autograd / gradcheck, float64 references written out here, and
Hugging Face's GPT2LMHeadModel (randomly initialised from a small config, never downloaded) with
the same weights copied in. transformers is imported lazily, only by the tests that need it.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from storylib import gpt2
from storylib.gpt2 import GPT, Block, CausalSelfAttention, GPTConfig, LayerNorm, LayerNormFunction

# The small config of the exactness oracle: odd vocabulary, 3 heads of 16.
SMALL = dict(n_layer=2, n_head=3, n_embd=48, vocab_size=101, block_size=32)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hf_model(seed: int = 0):
    """A randomly initialised Hugging Face GPT-2 of the SMALL config, eval mode, with non-trivial LayerNorms."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    config = GPT2Config(
        n_layer=SMALL["n_layer"],
        n_head=SMALL["n_head"],
        n_embd=SMALL["n_embd"],
        vocab_size=SMALL["vocab_size"],
        n_positions=SMALL["block_size"],
        attn_pdrop=0.0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config).eval()
    with torch.no_grad():  # HF initialises LayerNorms to (1, 0) and biases to 0: make them all count
        for name, p in model.named_parameters():
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen(len(name))))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen(len(name) + 1)))
    return model


def small_model(seed: int = 0, **overrides) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(**{**SMALL, **overrides})).eval()


def randn(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


# ----------------------------------------------------------------------------- ch05.layernorm


@pytest.mark.exercise("ch05.layernorm")
@pytest.mark.parametrize("shape", [(13,), (3, 5, 13), (2, 3, 4, 7)])
def test_layernorm_forward_matches_torch(shape):
    C = shape[-1]
    x = 3.0 + 2.5 * randn(*shape, seed=1)  # not already centred nor of unit scale
    w, b = 1 + randn(C, seed=2), randn(C, seed=3)
    y, xhat, rstd = gpt2.layer_norm_forward(x, w, b, 1e-5)
    want = F.layer_norm(x, (C,), w, b, 1e-5)
    assert y.shape == x.shape, f"y should have the shape of x, {tuple(x.shape)}, got {tuple(y.shape)}"
    assert torch.allclose(y, want, atol=1e-10), f"y differs from F.layer_norm by {(y - want).abs().max():.3g}"
    assert xhat.shape == x.shape, f"xhat should have the shape of x, got {tuple(xhat.shape)}"
    assert rstd.shape == (*shape[:-1], 1), (
        f"rstd should have shape (..., 1) = {(*shape[:-1], 1)}, got {tuple(rstd.shape)}"
    )
    var = x.var(dim=-1, unbiased=False, keepdim=True)
    assert torch.allclose(rstd, 1 / torch.sqrt(var + 1e-5), atol=1e-10), "rstd should be 1/sqrt(biased var + eps)"
    assert torch.allclose(xhat, (x - x.mean(-1, keepdim=True)) * rstd, atol=1e-10), "xhat should be (x - mean) * rstd"


@pytest.mark.exercise("ch05.layernorm")
def test_layernorm_forward_eps_and_no_bias():
    C = 9
    x = 1e-3 * randn(4, C, seed=4)  # variance ~1e-6, so eps = 1e-4 changes the answer a lot
    w = 1 + randn(C, seed=5)
    y, _, _ = gpt2.layer_norm_forward(x, w, None, 1e-4)
    want = F.layer_norm(x, (C,), w, None, 1e-4)
    assert torch.allclose(y, want, atol=1e-10), (
        "with bias=None and eps=1e-4, y should equal F.layer_norm(x, (C,), w, None, eps)"
    )


@pytest.mark.exercise("ch05.layernorm")
def test_layernorm_module_float32_matches_nn_layernorm():
    C = 48
    ours, ref = LayerNorm(C), torch.nn.LayerNorm(C)
    with torch.no_grad():
        for p in (ours.weight, ref.weight):
            p.copy_(1 + randn(C, seed=6, dtype=torch.float32))
        for p in (ours.bias, ref.bias):
            p.copy_(randn(C, seed=7, dtype=torch.float32))
        x = randn(2, 5, C, seed=8, dtype=torch.float32) * 4 - 1
        assert torch.allclose(ours(x), ref(x), atol=1e-5), "storylib.gpt2.LayerNorm differs from nn.LayerNorm"


# ----------------------------------------------------------------------------- ch05.layernorm_backward


def _saved(x, eps=1e-5):
    """xhat and rstd computed here, so these tests do not depend on the forward exercise."""
    mean = x.mean(-1, keepdim=True)
    rstd = 1 / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)
    return (x - mean) * rstd, rstd


@pytest.mark.exercise("ch05.layernorm_backward")
@pytest.mark.parametrize("shape", [(11,), (3, 7), (2, 5, 13)])
def test_layernorm_backward_matches_autograd(shape):
    C = shape[-1]
    x = (2 + 3 * randn(*shape, seed=10)).requires_grad_()
    w, b = (1 + randn(C, seed=11)).requires_grad_(), randn(C, seed=12).requires_grad_()
    dy = randn(*shape, seed=13)
    F.layer_norm(x, (C,), w, b, 1e-5).backward(dy)
    xhat, rstd = _saved(x.detach())
    dx, dw, db = gpt2.layer_norm_backward(dy, xhat, rstd, w.detach())
    for name, got, want in (("dx", dx, x.grad), ("dweight", dw, w.grad), ("dbias", db, b.grad)):
        assert got.shape == want.shape, f"{name} should have shape {tuple(want.shape)}, got {tuple(got.shape)}"
        err = (got - want).abs().max()
        assert err < 1e-10, f"{name} differs from autograd's by {err:.3g}"


@pytest.mark.exercise("ch05.layernorm_backward")
def test_layernorm_function_passes_gradcheck():
    C = 6
    x = (1 + 2 * randn(2, 3, C, seed=14)).requires_grad_()
    w, b = (1 + randn(C, seed=15)).requires_grad_(), randn(C, seed=16).requires_grad_()
    ok = torch.autograd.gradcheck(
        lambda x, w, b: LayerNormFunction.apply(x, w, b, 1e-5), (x, w, b), raise_exception=False
    )
    assert ok, "LayerNormFunction's backward disagrees with finite differences (torch.autograd.gradcheck)"


@pytest.mark.exercise("ch05.layernorm_backward")
def test_layernorm_module_backward_without_bias():
    C = 10
    ln = LayerNorm(C, bias=False).double()
    with torch.no_grad():
        ln.weight.copy_(1 + randn(C, seed=17))
    x = randn(4, C, seed=18).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    w_ref = ln.weight.detach().clone().requires_grad_()
    dy = randn(4, C, seed=19)
    ln(x).backward(dy)
    F.layer_norm(x_ref, (C,), w_ref, None, 1e-5).backward(dy)
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-10), "dx of LayerNorm(bias=False) differs from autograd's"
    assert torch.allclose(ln.weight.grad, w_ref.grad, atol=1e-10), "dweight of LayerNorm(bias=False) differs"


# ----------------------------------------------------------------------------- ch05.attention


def _attention_reference(attn: CausalSelfAttention, x: torch.Tensor) -> torch.Tensor:
    """Attention written the slow way: one head, one query position at a time, in float64."""
    x = x.double()
    W, bias = attn.c_attn.weight.double(), attn.c_attn.bias.double()
    B, T, C = x.shape
    nh, hs = attn.n_head, C // attn.n_head
    qkv = x @ W.T + bias
    q, k, v = qkv[..., :C], qkv[..., C : 2 * C], qkv[..., 2 * C :]
    y = torch.zeros(B, T, C, dtype=torch.float64)
    for h in range(nh):
        cols = slice(h * hs, (h + 1) * hs)
        for t in range(T):
            scores = (k[:, : t + 1, cols] @ q[:, t, cols].unsqueeze(-1)).squeeze(-1) / math.sqrt(hs)  # (B, t+1)
            y[:, t, cols] = (torch.softmax(scores, dim=-1).unsqueeze(-1) * v[:, : t + 1, cols]).sum(1)
    return y @ attn.c_proj.weight.double().T + attn.c_proj.bias.double()


def _attention(seed=0, **cfg):
    torch.manual_seed(seed)
    attn = CausalSelfAttention(GPTConfig(**{**SMALL, "block_size": 16, **cfg})).eval()
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=gen(p.numel())))  # large enough for peaked attention
    return attn


@pytest.mark.exercise("ch05.attention")
@pytest.mark.parametrize("n_head, T", [(3, 7), (1, 16), (6, 5)])
def test_attention_matches_slow_reference(n_head, T):
    attn = _attention(n_head=n_head)
    x = randn(2, T, 48, seed=20, dtype=torch.float32)
    with torch.no_grad():
        y = attn(x)
    assert y.shape == x.shape, f"attention output should have shape (B, T, C) = {tuple(x.shape)}, got {tuple(y.shape)}"
    err = (y.double() - _attention_reference(attn, x)).abs().max()
    assert err < 5e-5, f"attention (n_head={n_head}, T={T}) differs from a head-by-head reference by {err:.3g}"


@pytest.mark.exercise("ch05.attention")
def test_attention_matches_scaled_dot_product_attention():
    attn = _attention().double()
    x = randn(3, 11, 48, seed=21)
    with torch.no_grad():
        y = attn(x)
        q, k, v = attn.c_attn(x).split(48, dim=2)
        q, k, v = (t.view(3, 11, 3, 16).transpose(1, 2) for t in (q, k, v))
        want = attn.c_proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(3, 11, 48))
    assert torch.allclose(y, want, atol=1e-10), (
        f"attention differs from F.scaled_dot_product_attention by {(y - want).abs().max():.3g}"
    )


@pytest.mark.exercise("ch05.attention")
def test_attention_is_causal():
    attn = _attention()
    x = randn(1, 9, 48, seed=22, dtype=torch.float32)
    x2 = x.clone()
    x2[:, 5:] = randn(1, 4, 48, seed=23, dtype=torch.float32)  # change the future of position 4
    with torch.no_grad():
        y, y2 = attn(x), attn(x2)
    assert torch.allclose(y[:, :5], y2[:, :5], atol=1e-6), (
        "positions 0..4 changed when only positions 5.. did: not causal"
    )
    assert not torch.allclose(y[:, 5:], y2[:, 5:], atol=1e-3), "positions 5.. should depend on their own inputs"


@pytest.mark.exercise("ch05.attention")
@pytest.mark.parametrize("n_embd, n_head, T", [(15, 5, 7), (21, 3, 11)])
def test_attention_heads_match_hf_gpt2_attention(n_embd, n_head, T):
    """Odd widths and head sizes (hs = 3, 7) against Hugging Face's GPT2Attention with the same weights."""
    from transformers import GPT2Config
    from transformers.models.gpt2.modeling_gpt2 import GPT2Attention

    config = GPT2Config(n_embd=n_embd, n_head=n_head, n_positions=16, attn_pdrop=0.0, resid_pdrop=0.0)
    config._attn_implementation = "eager"  # a standalone attention module: no dispatch to pick its kernel
    hf = GPT2Attention(config, layer_idx=0).eval()
    attn = CausalSelfAttention(GPTConfig(n_embd=n_embd, n_head=n_head, block_size=16)).eval()
    with torch.no_grad():
        for name in ("c_attn", "c_proj"):  # random, not HF's init: every head and channel must count
            w = 0.4 * torch.randn(getattr(hf, name).weight.shape, generator=gen(n_embd + len(name)))
            b = 0.2 * torch.randn(getattr(hf, name).bias.shape, generator=gen(n_head + len(name)))
            getattr(hf, name).weight.copy_(w)
            getattr(hf, name).bias.copy_(b)
            getattr(attn, name).weight.copy_(w.T)  # HF's Conv1D stores (in, out)
            getattr(attn, name).bias.copy_(b)
        x = 1.5 + randn(2, T, n_embd, seed=24, dtype=torch.float32)  # not centred: every channel non-uniform
        causal = torch.full((T, T), float("-inf")).triu(1)  # HF's model builds this mask; its module alone needs it
        y, want = attn(x), hf(x, attention_mask=causal[None, None])[0]
    assert y.shape == x.shape, f"attention output should have shape (B, T, C) = {tuple(x.shape)}, got {tuple(y.shape)}"
    err = (y - want).abs().max()
    assert err < 1e-5, (
        f"attention (C={n_embd}, n_head={n_head}) differs from Hugging Face's GPT2Attention by {err:.3g}: are q, k, v "
        "cut into heads of C // n_head channels, laid out (B, n_head, T, hs), and merged back in the same order?"
    )


# ----------------------------------------------------------------------------- ch05.mlp


@pytest.mark.exercise("ch05.mlp")
def test_mlp_matches_tanh_gelu_reference():
    mlp = gpt2.MLP(GPTConfig(**SMALL)).double().eval()
    with torch.no_grad():
        for p in mlp.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen(p.numel()), dtype=torch.float64))
    x = 2 * randn(2, 5, 48, seed=30)
    u = mlp.c_fc(x)
    gelu = 0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))
    want = mlp.c_proj(gelu)
    assert (F.gelu(u) - gelu).abs().max() > 1e-6, "test setup: exact and tanh GELU should differ here"
    with torch.no_grad():
        y = mlp(x)
    assert y.shape == x.shape, f"MLP output should have shape {tuple(x.shape)}, got {tuple(y.shape)}"
    assert torch.allclose(y, want.detach(), atol=1e-12), (
        f"MLP differs from c_proj(gelu_tanh(c_fc(x))) by {(y - want).abs().max():.3g} (GPT-2 uses the tanh GELU)"
    )


@pytest.mark.exercise("ch05.mlp")
def test_mlp_matches_hf_gpt2_mlp():
    hf = hf_model(seed=3)
    sd = hf.state_dict()
    ours = gpt2.MLP(GPTConfig(**SMALL)).eval()  # built alone: needs no later exercise (GPT.init_weights)
    with torch.no_grad():
        for name in ("c_fc", "c_proj"):
            getattr(ours, name).weight.copy_(sd[f"transformer.h.1.mlp.{name}.weight"].T)
            getattr(ours, name).bias.copy_(sd[f"transformer.h.1.mlp.{name}.bias"])
        x = randn(2, 7, 48, seed=31, dtype=torch.float32)
        y, want = ours(x), hf.transformer.h[1].mlp(x)
    assert torch.allclose(y, want, atol=1e-5), (
        f"MLP differs from Hugging Face's GPT2MLP by {(y - want).abs().max():.3g}"
    )


# ----------------------------------------------------------------------------- ch05.block


@pytest.mark.exercise("ch05.block")
def test_block_matches_hf_gpt2_block():
    hf = hf_model(seed=1)
    ours = GPT.from_hf_state_dict(hf.state_dict(), GPTConfig(**SMALL)).eval()
    x = randn(2, 9, 48, seed=40, dtype=torch.float32)
    with torch.no_grad():
        for i in range(SMALL["n_layer"]):
            got, want = ours.transformer.h[i](x), hf.transformer.h[i](x)
            want = want[0] if isinstance(want, tuple) else want
            err = (got - want).abs().max()
            assert err < 1e-5, f"block {i} differs from Hugging Face's GPT2Block (same weights) by {err:.3g}"


@pytest.mark.exercise("ch05.block")
def test_block_is_a_pre_norm_residual():
    torch.manual_seed(4)
    block = Block(GPTConfig(**SMALL)).double().eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen(p.numel()), dtype=torch.float64))
        x = randn(2, 6, 48, seed=41)
        h = x + block.attn(block.ln_1(x))
        want = h + block.mlp(block.ln_2(h))
        got = block(x)
    assert torch.allclose(got, want, atol=1e-10), "the block should compute h = x + attn(ln_1(x)); h + mlp(ln_2(h))"


# ----------------------------------------------------------------------------- ch05.init


@pytest.mark.exercise("ch05.init")
def test_init_follows_gpt2():
    torch.manual_seed(5)
    L = 6
    model = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=96, vocab_size=257, block_size=64))
    small = 0.02 / math.sqrt(2 * L)
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            want = small
        elif name.endswith(("wte.weight", "wpe.weight", "c_attn.weight", "c_fc.weight")):
            want = 0.02
        elif name.endswith("bias"):
            assert torch.all(p == 0), f"{name} should start at 0"
            continue
        else:  # LayerNorm gains
            assert torch.all(p == 1), f"{name} (a LayerNorm weight) should start at 1"
            continue
        std, mean = p.detach().std().item(), p.detach().mean().item()
        assert abs(std / want - 1) < 0.05, f"{name} should have std {want:.5f}, got {std:.5f}"
        assert abs(mean) < 0.1 * want, f"{name} should have mean 0, got {mean:.5f}"


@pytest.mark.exercise("ch05.init")
def test_init_scales_residual_projections_with_depth_and_keeps_tying():
    stds = {}
    for L in (2, 8):
        torch.manual_seed(L)
        model = GPT(GPTConfig(n_layer=L, n_head=4, n_embd=64, vocab_size=257, block_size=16))
        assert model.lm_head.weight is model.transformer.wte.weight, "init must keep lm_head tied to wte"
        stds[L] = torch.cat(
            [p.detach().flatten() for n, p in model.named_parameters() if n.endswith("c_proj.weight")]
        ).std()
    ratio = (stds[2] / stds[8]).item()
    assert abs(ratio - 2) < 0.1, f"4× the layers should halve the c_proj std (1/sqrt(2·n_layer)); ratio {ratio:.3f}"


# ----------------------------------------------------------------------------- ch05.forward


@pytest.mark.exercise("ch05.forward")
def test_forward_logits_match_hugging_face():
    hf = hf_model(seed=2)
    ours = GPT.from_hf_state_dict(hf.state_dict(), GPTConfig(**SMALL)).eval()
    idx = torch.randint(0, SMALL["vocab_size"], (3, SMALL["block_size"]), generator=gen(50))
    with torch.no_grad():
        logits, loss = ours(idx)
        want = hf(idx).logits
    assert loss is None, "without targets, forward should return (logits, None)"
    assert logits.shape == want.shape, (
        f"logits should have shape (B, T, vocab) = {tuple(want.shape)}, got {tuple(logits.shape)}"
    )
    err = (logits - want).abs().max()
    assert err <= 1e-5, f"logits differ from Hugging Face GPT-2's (same weights) by {err:.3g}, more than 1e-5"


@pytest.mark.exercise("ch05.forward")
def test_forward_loss_is_mean_cross_entropy():
    model = small_model(seed=6)
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(20.0)  # spread the logits so a wrong loss shows
    idx = torch.randint(0, 101, (2, 13), generator=gen(51))
    targets = torch.randint(0, 101, (2, 13), generator=gen(52))
    logits, loss = model(idx, targets)
    assert loss is not None and loss.dim() == 0, "with targets, loss should be a scalar tensor"
    lp = logits.detach().double().log_softmax(-1)
    want = -lp.gather(-1, targets.unsqueeze(-1)).mean()
    assert abs(loss.item() - want.item()) < 1e-5, (
        f"loss should be mean -log p(target) = {want.item():.6f}, got {loss.item():.6f}"
    )
    loss.backward()
    assert model.transformer.wpe.weight.grad is not None, "the loss should flow back to the position embeddings"


@pytest.mark.exercise("ch05.forward")
def test_forward_is_causal_and_uses_positions():
    model = small_model(seed=7)
    with torch.no_grad():
        model.transformer.wpe.weight.mul_(20)
    idx = torch.randint(0, 101, (1, 10), generator=gen(53))
    idx2 = idx.clone()
    idx2[0, 6:] = (idx2[0, 6:] + 1) % 101
    with torch.no_grad():
        a, b = model(idx)[0], model(idx2)[0]
        shifted = model(idx[:, 1:])[0]
    assert torch.allclose(a[:, :6], b[:, :6], atol=1e-6), "logits at t must not depend on tokens after t"
    assert not torch.allclose(a[:, 1:], shifted, atol=1e-4), (
        "the same tokens at other positions should give other logits"
    )


# ----------------------------------------------------------------------------- ch05.generate


def _gen_model(seed=8) -> GPT:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, vocab_size=11, block_size=8)).eval()
    with torch.no_grad():
        model.transformer.ln_f.weight.fill_(4.0)  # logits a few units apart: a clearly non-uniform distribution
    return model


@pytest.mark.exercise("ch05.generate")
def test_generate_greedy_is_argmax_unrolled():
    model = _gen_model()
    idx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = model.generate(idx, 12, temperature=0)  # 15 > block_size = 8: the context must be cropped
    want = idx
    with torch.no_grad():
        for _ in range(12):
            logits, _ = model(want[:, -8:])
            want = torch.cat([want, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert out.shape == (2, 15), f"generate should return (B, T + max_new_tokens) = (2, 15), got {tuple(out.shape)}"
    assert torch.equal(out, want), f"greedy generation should take the argmax each step:\n{out}\nwanted\n{want}"


@pytest.mark.exercise("ch05.generate")
def test_generate_sampling_is_seeded():
    model = _gen_model()
    idx = torch.zeros(3, 1, dtype=torch.int64)
    a = model.generate(idx, 20, temperature=1.0, generator=gen(1))
    b = model.generate(idx, 20, temperature=1.0, generator=gen(1))
    c = model.generate(idx, 20, temperature=1.0, generator=gen(2))
    assert torch.equal(a[:, :1], idx), "generate should keep the prompt at the start"
    assert torch.equal(a, b), "the same generator seed should give the same samples"
    assert not torch.equal(a, c), "different seeds should (almost surely) give different samples"
    assert not torch.equal(a, model.generate(idx, 20, temperature=0)), (
        "temperature 1 should sample, not take the argmax"
    )


@pytest.mark.exercise("ch05.generate")
def test_generate_top_k_keeps_to_the_top_k():
    model = _gen_model()
    idx = torch.zeros(64, 1, dtype=torch.int64)
    out = model.generate(idx, 6, temperature=2.0, top_k=3, generator=gen(3))  # high T: without top-k, anything goes
    with torch.no_grad():
        for t in range(1, out.shape[1]):
            top3 = model(out[:, max(0, t - 8) : t])[0][:, -1].topk(3).indices
            assert (top3 == out[:, t : t + 1]).any(1).all(), f"step {t}: a token outside the top 3 was drawn"
    assert torch.equal(
        model.generate(idx[:4], 5, top_k=1, generator=gen(4)), model.generate(idx[:4], 5, temperature=0)
    ), "top_k=1 should be greedy"


@pytest.mark.exercise("ch05.generate")
def test_generate_temperature_reshapes_the_distribution():
    model = _gen_model()
    n, T = 6000, 0.6
    idx = torch.full((n, 2), 7, dtype=torch.int64)
    with torch.no_grad():
        logits = model(idx[:1])[0][0, -1].double()
    want, plain = torch.softmax(logits / T, -1), torch.softmax(logits, -1)
    assert 0.5 * (want - plain).abs().sum() > 0.1, "test setup: temperature should matter here"
    drawn = model.generate(idx, 1, temperature=T, generator=gen(5))[:, -1]
    freq = torch.bincount(drawn, minlength=11).double() / n
    tv = 0.5 * (freq - want).abs().sum().item()
    assert tv < 0.03, f"frequencies of the drawn tokens should follow softmax(logits / T); total variation {tv:.3f}"


# ----------------------------------------------------------------------------- package tests (not graded)


def test_hf_state_dict_round_trip():
    from transformers import GPT2Config, GPT2LMHeadModel

    ours = small_model(seed=9)
    hf = GPT2LMHeadModel(
        GPT2Config(n_layer=2, n_head=3, n_embd=48, vocab_size=101, n_positions=32, bos_token_id=0, eos_token_id=0)
    ).eval()
    hf.load_state_dict(ours.to_hf_state_dict(), strict=True)
    idx = torch.randint(0, 101, (2, 32), generator=gen(60))
    with torch.no_grad():
        err = (ours(idx)[0] - hf(idx).logits).abs().max()
    assert err <= 1e-5, f"exported weights give logits off by {err:.3g} in Hugging Face GPT-2"
    back = GPT.from_hf_state_dict(ours.to_hf_state_dict(), GPTConfig(**SMALL))
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), f"{k} changed in an export -> import round trip"
    assert back.lm_head.weight is back.transformer.wte.weight, "the imported model should stay tied"


def test_from_hf_state_dict_rejects_a_wrong_config():
    sd = small_model().to_hf_state_dict()
    with pytest.raises(KeyError):
        GPT.from_hf_state_dict(sd, GPTConfig(**{**SMALL, "n_layer": 3}))
    with pytest.raises(ValueError):
        GPT.from_hf_state_dict(sd, GPTConfig(**{**SMALL, "n_embd": 24}))


def test_forward_rejects_a_too_long_sequence():
    with pytest.raises(ValueError):
        small_model()(torch.zeros(1, 33, dtype=torch.int64))


def test_bytes_round_trip_and_stream_layout():
    stories = ["Tom saw a café.", "Ben ran."]
    assert gpt2.decode(gpt2.encode(stories[0])) == stories[0]
    assert len(gpt2.encode(stories[0])) == len(stories[0]) + 1, "é is two UTF-8 bytes"
    s = gpt2.story_stream(stories).tolist()
    assert s[0] == s[17] == s[-1] == gpt2.EOT_ID and len(s) == 16 + 8 + 3


def test_bits_per_byte_scores_every_prediction_once():
    """With all logits equal, each prediction costs log2(V) bits, however the windows are laid out."""
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=257, block_size=16))
    with torch.no_grad():
        model.transformer.wte.weight.zero_()  # tied: zero logits everywhere
    stories = ["Once upon a time, Lily saw a big red ball in the park. She was happy.", "Hi!", "Ça va, très bien."]
    n = [len(s.encode()) for s in stories]
    want = sum(k + 1 for k in n) * math.log2(257) / sum(n)
    assert abs(gpt2.bits_per_byte(model, stories, batch_size=3) - want) < 1e-9


def test_bits_per_byte_matches_a_direct_computation_for_short_stories():
    model = small_model(seed=10, vocab_size=257, block_size=64)
    stories = ["A cat sat.", "The dog ran to the big tree and hid."]
    nats, n = 0.0, 0
    with torch.no_grad():
        for s in stories:
            ids = torch.tensor([[gpt2.EOT_ID, *gpt2.encode(s), gpt2.EOT_ID]])
            nats += F.cross_entropy(model(ids[:, :-1])[0][0].double(), ids[0, 1:], reduction="sum").item()
            n += len(s.encode())
    assert abs(gpt2.bits_per_byte(model, stories) - nats / math.log(2) / n) < 1e-6
