"""Chapter 17 — pictures: vector quantisation (VQ-VAE), flow matching, the diffusion transformer, the sampler.

Oracles are written out here, differently from the reference: brute-force distances (torch.cdist and a loop over
the codes) for the nearest code; autograd on float64 leaves for the straight-through estimator and the commitment
loss (the gradient reaches z, never the codebook side); per-example float64 formulas for the interpolation, the
guided velocity and the Euler step; explicit (i, j, a, b, c) loops for the patch layout; LayerNorm, the modulation
and non-causal attention written out in float64 for an adaLN-Zero block; and, for the sampler, the flow's own
fixed points (a straight line lands on its start; a constant field moves by exactly -v) and a step-by-step loop
that calls the model on the caption and on the null caption separately. Models are tiny random DiTs made here;
nothing is downloaded and ../shared is never read.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from storylib import dit, vqvae
from storylib.gpt2 import GPTConfig


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than several, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def err(a, b) -> float:
    return (torch.as_tensor(a).double() - torch.as_tensor(b).double()).abs().max().item()


# ----------------------------------------------------------------------------- ch17.nearest_codes


@pytest.mark.exercise("ch17.nearest_codes")
@pytest.mark.parametrize("N, K, D", [(37, 11, 5), (50, 2, 1), (23, 64, 7)])
def test_nearest_codes_match_brute_force_distances(N, K, D):
    codebook = 0.5 + 2.0 * randn(K, D, seed=K * D)  # off-centre and spread: |e|² differs from code to code
    z = 0.5 + 2.0 * randn(N, D, seed=N + D) + torch.rand(N, D, generator=gen(N), dtype=torch.float64)
    idx = vqvae.nearest_codes(z, codebook)
    assert isinstance(idx, torch.Tensor) and idx.shape == (N,), f"nearest_codes should return a tensor of shape ({N},)"
    assert idx.dtype == torch.int64, f"nearest_codes should return int64 indices, got {idx.dtype}"
    want = torch.cdist(z, codebook).argmin(dim=1)
    assert torch.equal(idx, want), (
        f"N={N}, K={K}, D={D}: rows {(idx != want).nonzero().flatten()[:5].tolist()} are not given their nearest "
        "code (torch.cdist's argmin): the squared distance is |z|² - 2 z·e + |e|², summed over D"
    )
    for i in range(0, N, 7):  # one row at a time, the distance to every code written out
        d2 = [float(((z[i] - codebook[k]) ** 2).sum()) for k in range(K)]
        assert int(idx[i]) == min(range(K), key=d2.__getitem__), f"row {i}: the nearest code is not index {idx[i]}"


@pytest.mark.exercise("ch17.nearest_codes")
def test_nearest_codes_of_the_codes_themselves_and_ties():
    codebook = randn(9, 3, seed=5) * torch.tensor([1.0, 3.0, 0.2], dtype=torch.float64)
    codebook[6] = codebook[2]  # a duplicate code: ties go to the lower index
    order = torch.randperm(9, generator=gen(6))
    got = vqvae.nearest_codes(codebook[order], codebook)
    want = torch.where(order == 6, 2, order)
    assert torch.equal(got, want), f"each code's nearest code is itself (the lower index on a tie): got {got.tolist()}"
    z32, cb32 = randn(41, 4, seed=7).float(), randn(13, 4, seed=8).float()  # float32, as the quantiser calls it
    d2 = torch.cdist(z32.double(), cb32.double()) ** 2
    two = d2.topk(2, dim=1, largest=False).values
    clear = two[:, 1] - two[:, 0] > 1e-4  # rows whose nearest code float32 can tell apart from the second
    assert clear.sum() >= 30, "test setup: most rows should have a clear nearest code"
    got = vqvae.nearest_codes(z32, cb32)
    assert torch.equal(got[clear], d2.argmin(1)[clear]), "float32 vectors should find their nearest code too"


# ----------------------------------------------------------------------------- ch17.straight_through


@pytest.mark.exercise("ch17.straight_through")
def test_straight_through_value_is_zq_and_gradient_is_the_identity():
    z = randn(2, 3, 5, 4, seed=10).requires_grad_()
    zq = (randn(2, 3, 5, 4, seed=11) * 2 + 1).requires_grad_()  # a leaf, to see that no gradient reaches it
    out = vqvae.straight_through(z, zq)
    assert out.shape == z.shape, f"straight_through should return z's shape {tuple(z.shape)}"
    assert err(out.detach(), zq.detach()) < 1e-12, "forward, straight_through(z, zq) must have the value of zq"
    g = randn(2, 3, 5, 4, seed=12)
    out.backward(g)
    assert z.grad is not None, "no gradient reached z: the output must be computed from z (z + something)"
    assert err(z.grad, g) < 1e-12, "the gradient must reach z unchanged (d out / d z = identity)"
    assert zq.grad is None or not zq.grad.any(), "no gradient may reach zq (detach the correction zq - z)"


@pytest.mark.exercise("ch17.straight_through")
def test_straight_through_hands_the_gradient_at_zq_to_z():
    """As in the quantiser: zq comes from a codebook lookup (no graph of its own), float32 vectors (N, D). A loss
    sum(w·out³) sees zq, so its gradient 3·w·zq² (taken at zq, not at z) must arrive at z as it is."""
    w = 0.5 + torch.rand(7, 6, generator=gen(13))
    z = randn(7, 6, seed=14, dtype=torch.float32).requires_grad_()
    codebook = randn(5, 6, seed=15, dtype=torch.float32) * 3
    zq = codebook[torch.randint(0, 5, (7,), generator=gen(16))]
    out = vqvae.straight_through(z, zq)
    assert err(out.detach(), zq) < 1e-6, "forward, straight_through(z, zq) must have the value of zq"
    out.backward(3 * w * zq**2)  # d sum(w·out³) / d out, at out = zq
    assert z.grad is not None, "no gradient reached z: the output must be computed from z (z + something)"
    assert err(z.grad, 3 * w * zq**2) < 1e-5, "z.grad must be the loss's gradient at zq, unchanged"


# ----------------------------------------------------------------------------- ch17.commitment_loss


@pytest.mark.exercise("ch17.commitment_loss")
@pytest.mark.parametrize("beta, shape", [(0.25, (2, 4, 3, 5)), (0.37, (1, 3, 7, 2)), (1.9, (5, 1, 1, 1))])
def test_commitment_loss_value_and_gradients(beta, shape):
    n = math.prod(shape)
    z = (randn(*shape, seed=n) * 1.5).requires_grad_()
    zq = (randn(*shape, seed=n + 1) + 0.3).requires_grad_()  # stands for the codebook side
    loss = vqvae.commitment_loss(z, zq, beta)
    assert loss.dim() == 0, f"commitment_loss should return a 0-dim tensor, got shape {tuple(loss.shape)}"
    want = beta * sum(float(a - b) ** 2 for a, b in zip(z.detach().flatten(), zq.detach().flatten(), strict=True)) / n
    assert abs(loss.item() - want) < 1e-12 * max(1.0, want), (
        f"beta={beta}: the loss should be beta · mean((z - zq)²) = {want:.6g}, got {loss.item():.6g}"
    )
    loss.backward()
    assert z.grad is not None, "the commitment loss must pull on z"
    assert err(z.grad, 2 * beta * (z.detach() - zq.detach()) / n) < 1e-12, "d loss / d z must be 2·beta·(z - zq)/n"
    assert zq.grad is None or not zq.grad.any(), "no gradient may reach zq: the codebook moves by its moving average"


# ----------------------------------------------------------------------------- ch17.interpolate


@pytest.mark.exercise("ch17.interpolate")
def test_interpolate_ends_are_the_data_and_the_noise():
    x0, noise = randn(4, 3, 5, 4, seed=20), randn(4, 3, 5, 4, seed=21) * 2
    t = torch.tensor([0.0, 1.0, 1.0, 0.0], dtype=torch.float64)  # B = 4 = W: t must broadcast over dims 1.., not W
    xt = dit.interpolate(x0, noise, t)
    assert xt.shape == x0.shape, f"interpolate should keep x0's shape {tuple(x0.shape)}"
    for b in range(4):
        want = x0[b] if t[b] == 0 else noise[b]
        what = "x0" if t[b] == 0 else "noise"
        assert err(xt[b], want) < 1e-15, f"example {b} has t = {float(t[b])}: x_t must be {what}"


@pytest.mark.exercise("ch17.interpolate")
@pytest.mark.parametrize("shape", [(3, 2, 5, 3), (5, 7), (2, 3, 4)])
def test_interpolate_is_the_straight_line_for_each_example(shape):
    B = shape[0]
    x0, noise = randn(*shape, seed=22 + B), 0.5 + randn(*shape, seed=23 + B)
    t = torch.rand(B, generator=gen(24 + B), dtype=torch.float64)
    xt = dit.interpolate(x0, noise, t)
    for b in range(B):
        want = (1 - float(t[b])) * x0[b] + float(t[b]) * noise[b]
        assert err(xt[b], want) < 1e-14, f"shape {shape}, example {b}: x_t = (1 - t)·x0 + t·noise with its own t"


# ----------------------------------------------------------------------------- ch17.patchify, ch17.unpatchify


GRIDS = [(2, 3, 6, 10, 2), (1, 5, 9, 6, 3), (3, 1, 4, 4, 1), (1, 4, 4, 8, 4)]  # B, C, H, W, p: odd C, non-square


def patchify_oracle(x: torch.Tensor, p: int) -> torch.Tensor:
    """Token i·(W/p) + j holds the patch of rows i·p.., columns j·p..; its element (a·p + b)·C + c is x[c, i·p+a,
    j·p+b]."""
    B, C, H, W = x.shape
    out = torch.zeros(B, (H // p) * (W // p), p * p * C, dtype=x.dtype)
    for i in range(H // p):
        for j in range(W // p):
            for a in range(p):
                for b in range(p):
                    for c in range(C):
                        out[:, i * (W // p) + j, (a * p + b) * C + c] = x[:, c, i * p + a, j * p + b]
    return out


@pytest.mark.exercise("ch17.patchify")
@pytest.mark.parametrize("B, C, H, W, p", GRIDS)
def test_patchify_token_order_matches_a_loop(B, C, H, W, p):
    x = randn(B, C, H, W, seed=30 + H * W)
    got = dit.patchify(x, p)
    want = patchify_oracle(x, p)
    assert got.shape == want.shape, f"patchify of {(B, C, H, W)} with p = {p} should be {tuple(want.shape)}"
    assert torch.equal(got, want), (
        f"(C, H, W, p) = {(C, H, W, p)}: token i·(W/p) + j must be the patch at rows i·p.., columns j·p.. (row-major), "
        "and inside it element (a·p + b)·C + c must be x[c, i·p + a, j·p + b]"
    )


@pytest.mark.exercise("ch17.unpatchify")
@pytest.mark.parametrize("B, C, H, W, p", GRIDS)
def test_unpatchify_inverts_the_loop_layout(B, C, H, W, p):
    tokens = randn(B, (H // p) * (W // p), p * p * C, seed=40 + H * W)
    got = dit.unpatchify(tokens, p, C, H, W)
    assert got.shape == (B, C, H, W), f"unpatchify should return (B, C, H, W) = {(B, C, H, W)}"
    assert torch.equal(patchify_oracle(got, p), tokens), (
        f"(C, H, W, p) = {(C, H, W, p)}: the grid must put token element (a·p + b)·C + c of token i·(W/p) + j "
        "at x[c, i·p + a, j·p + b]"
    )


@pytest.mark.exercise("ch17.unpatchify")
def test_unpatchify_and_patchify_round_trip():
    x = randn(2, 3, 8, 6, seed=50)
    assert torch.equal(dit.unpatchify(dit.patchify(x, 2), 2, 3, 8, 6), x), "unpatchify(patchify(x)) must give x back"
    tokens = randn(2, 12, 12, seed=51)
    assert torch.equal(dit.patchify(dit.unpatchify(tokens, 2, 3, 8, 6), 2), tokens), "and patchify(unpatchify(t)) t"


# ----------------------------------------------------------------------------- ch17.adaln_zero


def block_config(C: int = 24, n_head: int = 3, T: int = 9) -> GPTConfig:
    return GPTConfig(block_size=T, vocab_size=1, n_layer=1, n_head=n_head, n_embd=C, dropout=0.0, bias=True,
                     fused=True, causal=False)


def layer_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(((x - mean) ** 2).mean(-1, keepdim=True) + eps)


def attention_oracle(x, w_attn, b_attn, w_proj, b_proj, n_head):
    """Non-causal multi-head attention, one head at a time: every token reads every token."""
    B, T, C = x.shape
    hs = C // n_head
    q, k, v = (x @ w_attn.t() + b_attn).split(C, dim=-1)
    heads = []
    for h in range(n_head):
        s = slice(h * hs, (h + 1) * hs)
        att = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(hs), dim=-1)
        heads.append(att @ v[..., s])
    return torch.cat(heads, dim=-1) @ w_proj.t() + b_proj


def mlp_oracle(x, w_fc, b_fc, w_proj, b_proj):
    u = x @ w_fc.t() + b_fc
    return (0.5 * u * (1 + torch.tanh(math.sqrt(2 / math.pi) * (u + 0.044715 * u**3)))) @ w_proj.t() + b_proj


def block_oracle(block, x, c, n_head):
    """adaLN-Zero written out in float64 from the block's weights (DiT §3.2)."""
    W = {name: p.detach().double() for name, p in block.named_parameters()}
    mod = F.silu(c) @ W["adaLN_modulation.1.weight"].t() + W["adaLN_modulation.1.bias"]
    shift1, scale1, gate1, shift2, scale2, gate2 = (m[:, None, :] for m in mod.chunk(6, dim=-1))
    h = layer_norm(x) * (1 + scale1) + shift1
    x = x + gate1 * attention_oracle(h, W["attn.c_attn.weight"], W["attn.c_attn.bias"], W["attn.c_proj.weight"],
                                     W["attn.c_proj.bias"], n_head)
    h = layer_norm(x) * (1 + scale2) + shift2
    return x + gate2 * mlp_oracle(h, W["mlp.c_fc.weight"], W["mlp.c_fc.bias"], W["mlp.c_proj.weight"],
                                  W["mlp.c_proj.bias"])


def randomise(module, scale: float, seed: int) -> None:
    with torch.no_grad():
        for k, p in enumerate(module.parameters()):
            p.copy_(scale * torch.randn(p.shape, generator=gen(seed + k), dtype=p.dtype))


@pytest.mark.exercise("ch17.adaln_zero")
def test_adaln_zero_block_starts_as_the_identity():
    block = dit.DiTBlock(block_config()).double().eval()
    with torch.no_grad():  # attention and MLP weights random; the modulation stays as built: zero
        for name, p in block.named_parameters():
            if not name.startswith("adaLN"):
                p.copy_(0.4 * torch.randn(p.shape, generator=gen(len(name)), dtype=torch.float64))
    x, c = randn(2, 9, 24, seed=60) * 2 + 1, randn(2, 24, seed=61)
    with torch.no_grad():
        y = block(x, c)
    assert y.shape == x.shape, f"the block should return x's shape {tuple(x.shape)}"
    assert err(y, x) < 1e-14, "with a zero-initialised modulation every gate is 0: the block must return x unchanged"


@pytest.mark.exercise("ch17.adaln_zero")
@pytest.mark.parametrize("B, T, C, n_head", [(2, 9, 24, 3), (3, 5, 16, 1)])
def test_adaln_zero_block_matches_the_written_out_formula(B, T, C, n_head):
    block = dit.DiTBlock(block_config(C, n_head, T)).double().eval()
    randomise(block, 0.3, seed=70 + C)
    x, c = randn(B, T, C, seed=71) * 1.5 + 0.5, randn(B, C, seed=72) * 2
    with torch.no_grad():
        y = block(x, c)
    want = block_oracle(block, x, c, n_head)
    e = err(y, want)
    assert e < 1e-10, (
        f"(B, T, C) = {(B, T, C)}: the block differs from x + gate·attn(norm(x)·(1 + scale) + shift), then the same "
        f"with the MLP (shift, scale, gate: the six chunks of adaLN_modulation(c), in that order) by {e:.3g}"
    )


@pytest.mark.exercise("ch17.adaln_zero")
def test_adaln_zero_each_example_has_its_own_conditioning():
    """Swapping two examples' conditionings swaps their outputs: c modulates its own example's tokens only."""
    block = dit.DiTBlock(block_config()).double().eval()
    randomise(block, 0.3, seed=80)
    x, c = randn(2, 9, 24, seed=81), randn(2, 24, seed=82) * 2
    with torch.no_grad():
        y, y_swapped = block(x, c), block(x, c.flip(0))
        y0 = block(x[:1], c[1:])
    assert err(y_swapped[0], y0[0]) < 1e-12, "example 0 with example 1's c must not depend on what else is in the batch"
    assert err(y, y_swapped) > 1e-3, "the output must depend on c"


# ----------------------------------------------------------------------------- ch17.cfg_velocity


@pytest.mark.exercise("ch17.cfg_velocity")
@pytest.mark.parametrize("guidance", [0.0, 1.0, 3.7, -0.5])
def test_cfg_velocity_formula(guidance):
    v_cond, v_uncond = randn(3, 4, 5, 5, seed=90), randn(3, 4, 5, 5, seed=91) * 2 + 1
    v = dit.cfg_velocity(v_cond, v_uncond, guidance)
    for b in range(3):
        want = v_uncond[b] + guidance * (v_cond[b] - v_uncond[b])
        assert err(v[b], want) < 1e-13, f"guidance {guidance}: v_uncond + guidance·(v_cond - v_uncond)"
    if guidance == 1.0:
        assert err(v, v_cond) < 1e-14, "guidance 1 is the conditional model"
    if guidance == 0.0:
        assert err(v, v_uncond) < 1e-14, "guidance 0 is the unconditional model"


# ----------------------------------------------------------------------------- ch17.euler_step


@pytest.mark.exercise("ch17.euler_step")
@pytest.mark.parametrize("steps", [1, 4, 25])
def test_euler_on_the_straight_line_lands_on_the_data(steps):
    """The flow x_t = (1 - t)·x0 + t·noise has the constant velocity noise - x0: Euler from the noise at t = 1
    reaches x0 at t = 0 in any number of steps."""
    x0, noise = randn(2, 3, 4, 4, seed=100), randn(2, 3, 4, 4, seed=101)
    ts = [1 - k / steps for k in range(steps + 1)]
    x = noise
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        x = dit.euler_step(x, noise - x0, t, t_next)
    assert err(x, x0) < 1e-12, f"{steps} Euler steps from t = 1 to 0 along v = noise - x0 must end at x0"


@pytest.mark.exercise("ch17.euler_step")
def test_euler_on_a_linear_field():
    """dx/dt = lam·x, n steps of -1/n from t = 1: x_0 = x_1·(1 - lam/n)^n, Euler's closed form."""
    x1, lam, n = randn(5, 7, seed=102), 0.8, 6
    x = x1
    for k in range(n):
        x = dit.euler_step(x, lam * x, 1 - k / n, 1 - (k + 1) / n)
    assert err(x, x1 * (1 - lam / n) ** n) < 1e-12, "x + (t_next - t)·v, with t_next < t when sampling"


# ----------------------------------------------------------------------------- ch17.sample


TINY = dict(latent_channels=3, latent_size=6, patch=2, n_layer=2, n_head=2, n_embd=16, text_vocab=23, text_len=5,
            text_layers=1, cond_dropout=0.0)


def tiny_dit(seed: int | None):
    """A DiT of TINY size: random weights (seed), or (None) all zero but a random final bias: a constant field."""
    model = dit.DiT(dit.DiTConfig(**TINY)).eval()
    if seed is not None:
        randomise(model, 0.2, seed)
    else:
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
            model.final.linear.bias.copy_(randn(12, seed=110, dtype=torch.float32))
    return model


def captions(B: int, seed: int) -> torch.Tensor:
    tokens = torch.randint(0, TINY["text_vocab"], (B, TINY["text_len"]), generator=gen(seed))
    tokens[0, 3:] = TINY["text_vocab"]  # a short caption, padded
    return tokens


@pytest.mark.exercise("ch17.sample")
@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_sample_in_a_constant_field_moves_by_minus_v(guidance):
    """A DiT that outputs the same velocity v everywhere (its final bias): Euler from t = 1 to 0 takes noise to
    noise - v, whatever the guidance (both velocities are v) and the number of steps."""
    model = tiny_dit(None)
    bias = model.final.linear.bias.detach().clone()
    p, D, S = TINY["patch"], TINY["latent_channels"], TINY["latent_size"]
    v = torch.zeros(D, S, S)
    for c in range(D):
        for y in range(S):
            for x in range(S):
                v[c, y, x] = bias[((y % p) * p + x % p) * D + c]
    noise = torch.randn(2, D, S, S, generator=gen(111))
    z = dit.sample(model, captions(2, 112), steps=5, guidance=guidance, generator=gen(111))
    assert z.shape == (2, D, S, S), f"sample should return (B, D, S, S) = {(2, D, S, S)}, got {tuple(z.shape)}"
    assert err(z, noise - v) < 1e-5, "from the generator's noise, 5 steps in a constant field v must end at noise - v"


@pytest.mark.exercise("ch17.sample")
@pytest.mark.parametrize("guidance, steps", [(3.0, 4), (1.0, 3)])
def test_sample_matches_a_step_by_step_loop(guidance, steps):
    model = tiny_dit(seed=120)
    tokens = captions(2, 121)
    null = torch.full_like(tokens, TINY["text_vocab"])
    calls = []
    hook = model.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        z, path = dit.sample(model, tokens, steps=steps, guidance=guidance, generator=gen(122), return_trajectory=True)
    finally:
        hook.remove()
    x = torch.randn(2, 3, 6, 6, generator=gen(122))
    want = [x]
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()  # 1, 1 - 1/steps, ..., 0 as float32 rounds them
    with torch.no_grad():
        for t, t_next in zip(ts[:-1], ts[1:], strict=True):
            tt = torch.full((2,), t)
            v = v_cond = model(x, tt, tokens)
            if guidance != 1.0:
                v_null = model(x, tt, null)
                v = v_null + guidance * (v_cond - v_null)
            x = x + (t_next - t) * v
            want.append(x)
    assert path.shape == (steps + 1, 2, 3, 6, 6), f"the trajectory should be (steps + 1, B, D, S, S), got {path.shape}"
    for k in range(steps + 1):
        assert err(path[k], want[k]) < 2e-5, (
            f"guidance {guidance}: after {k} of {steps} steps the latents differ from v = cfg(v(caption), v(null)), "
            f"x + (t_next - t)·v on t = 1, {1 - 1 / steps:.3g}, ..., 0 by {err(path[k], want[k]):.3g}"
        )
    assert err(z, want[-1]) < 2e-5, "sample should return the grids at t = 0"
    batch = 4 if guidance != 1.0 else 2
    assert calls == [batch] * steps, (
        f"expected {steps} forward passes of a batch of {batch} (caption and null caption together), got {calls}"
    )
