"""storylib.dit: patches, adaLN-Zero, the non-causal attention, flow matching, CFG sampling, training, saving."""

from __future__ import annotations

import json

import pytest
import torch

from storylib import dit
from storylib.dit import DiT, DiTBlock, DiTConfig
from storylib.gpt2 import CausalSelfAttention, GPTConfig

TINY = dict(latent_channels=3, latent_size=6, patch=2, n_layer=2, n_head=2, n_embd=32, text_vocab=50, text_len=5,
            text_layers=1)


def tiny_model(seed: int = 0, **kw) -> DiT:
    torch.manual_seed(seed)
    return DiT(DiTConfig(**{**TINY, **kw}))


def randomise_(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Every parameter random (the zero-initialised ones too), so the tests see a model that does something."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


# ----------------------------------------------------------------------------- patches


def patchify_loops(x: torch.Tensor, p: int) -> torch.Tensor:
    """The layout of the docstring, one element at a time, in float64."""
    B, C, H, W = x.shape
    h, w = H // p, W // p
    out = torch.zeros(B, h * w, p * p * C, dtype=torch.float64)
    for b in range(B):
        for i in range(h):
            for j in range(w):
                for a in range(p):
                    for bb in range(p):
                        for c in range(C):
                            out[b, i * w + j, (a * p + bb) * C + c] = x[b, c, i * p + a, j * p + bb]
    return out


@pytest.mark.parametrize("B,C,H,W,p", [(2, 3, 6, 4, 2), (1, 5, 9, 3, 3), (3, 1, 4, 8, 1)])
def test_patchify_matches_loops_and_inverts(B, C, H, W, p):
    x = torch.randn(B, C, H, W, dtype=torch.float64, generator=torch.Generator().manual_seed(H * W + C))
    tokens = dit.patchify(x, p)
    assert tokens.shape == (B, (H // p) * (W // p), p * p * C)
    torch.testing.assert_close(tokens, patchify_loops(x, p), rtol=0, atol=0)
    torch.testing.assert_close(dit.unpatchify(tokens, p, C, H, W), x, rtol=0, atol=0)


def test_patchify_refuses_bad_shapes():
    with pytest.raises(ValueError, match="multiple"):
        dit.patchify(torch.zeros(1, 3, 6, 5), 2)
    with pytest.raises(ValueError, match="multiple"):
        dit.unpatchify(torch.zeros(1, 6, 12), 2, 3, 5, 4)
    with pytest.raises(ValueError, match="do not make"):
        dit.unpatchify(torch.zeros(1, 6, 12), 2, 4, 6, 4)
    with pytest.raises(ValueError):
        dit.patchify(torch.zeros(3, 6, 6), 2)


def test_timestep_embedding_formula_and_sincos_positions():
    t = torch.tensor([0.0, 0.37, 1.0])
    emb = dit.timestep_embedding(t, 7)  # odd: a zero column at the end
    half = 3
    f = torch.exp(-torch.log(torch.tensor(10000.0, dtype=torch.float64)) * torch.arange(half) / half)
    a = 1000 * t.double()[:, None] * f
    torch.testing.assert_close(emb[:, :6].double(), torch.cat([a.cos(), a.sin()], 1), atol=1e-3, rtol=1e-4)
    assert emb.shape == (3, 7) and emb[:, 6].abs().max() == 0
    pos = dit.sincos_2d(3, 5, 8)
    assert pos.shape == (15, 8) and len({tuple(r.tolist()) for r in pos}) == 15  # every position distinct
    torch.testing.assert_close(pos[:, 4:], dit.sincos_2d(5, 5, 8)[:15][[i % 5 for i in range(15)], 4:])  # cols


def test_modulate_broadcasts_over_tokens():
    g = torch.Generator().manual_seed(3)
    x, shift, scale = torch.randn(2, 5, 4, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    y = dit.modulate(x, shift, scale)
    for b in range(2):
        for t in range(5):
            torch.testing.assert_close(y[b, t], x[b, t] * (1 + scale[b]) + shift[b])


# ----------------------------------------------------------------------------- blocks and attention


def test_attention_noncausal_sees_the_future_causal_does_not():
    torch.manual_seed(0)
    for fused in (False, True):
        x = torch.randn(2, 7, 16)
        x2 = x.clone()
        x2[:, 3:] += torch.randn(2, 4, 16)  # change the later positions only
        for causal in (True, False):
            torch.manual_seed(1)
            attn = CausalSelfAttention(GPTConfig(n_embd=16, n_head=2, block_size=8, causal=causal, fused=fused))
            y, y2 = attn(x), attn(x2)
            moved = (y[:, 0] - y2[:, 0]).abs().max().item()
            assert (moved > 1e-3) if not causal else (moved == 0), (fused, causal, moved)
            torch.testing.assert_close(y[:, :3] if causal else y[:, :0], y2[:, :3] if causal else y2[:, :0])


def test_attention_fused_equals_handwritten_noncausal():
    torch.manual_seed(2)
    cfgs = [GPTConfig(n_embd=24, n_head=3, block_size=9, causal=False, fused=f) for f in (False, True)]
    a, b = CausalSelfAttention(cfgs[0]), CausalSelfAttention(cfgs[1])
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 9, 24)
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_gpt_config_without_causal_field_loads_causal():
    from dataclasses import asdict

    doc = asdict(GPTConfig(n_layer=2))
    del doc["causal"]  # a config.json written before the field existed
    assert GPTConfig(**doc).causal is True


def test_dit_block_is_identity_at_init_and_not_after():
    torch.manual_seed(0)
    block = DiTBlock(GPTConfig(n_embd=32, n_head=4, block_size=11, causal=False))
    x, c = torch.randn(2, 11, 32), torch.randn(2, 32)
    torch.testing.assert_close(block(x, c), x, rtol=0, atol=0)
    randomise_(block)
    assert (block(x, c) - x).abs().max() > 1e-2
    with pytest.raises(ValueError, match="causal=False"):
        DiTBlock(GPTConfig(n_embd=32, n_head=4))


def test_dit_output_zero_at_init_then_depends_on_words():
    model = tiny_model()
    x, t = torch.randn(4, 3, 6, 6), torch.rand(4)
    tokens = torch.randint(0, 51, (4, 5))
    v = model(x, t, tokens)
    assert v.shape == x.shape and v.abs().max() == 0
    randomise_(model)
    v = model(x, t, tokens)
    other = tokens.clone()
    other[:, -1] = (other[:, -1] + 1) % 50  # change one word: every patch may see it
    assert (model(x, t, other) - v).abs().amax(dim=(1, 2, 3)).min() > 1e-4
    with pytest.raises(ValueError, match="token ids"):
        model(x, t, tokens + 60)
    with pytest.raises(ValueError, match="x must have shape"):
        model(torch.randn(4, 3, 8, 8), t, tokens)


def test_text_encoder_pools_non_pad_tokens_and_null_caption_is_zero():
    model = randomise_(tiny_model())
    pad = model.config.pad_id
    tokens = torch.tensor([[3, 7, pad, pad, pad], [pad] * 5, [1, 2, 3, 4, 5]])
    feats, pooled = model.text(tokens)
    assert feats.shape == (3, 5, 32) and pooled.shape == (3, 32)
    torch.testing.assert_close(pooled[0], feats[0, :2].mean(0))
    torch.testing.assert_close(pooled[2], feats[2].mean(0))
    assert pooled[1].abs().max() == 0 and torch.isfinite(pooled).all()


def test_captions_dropped_at_the_rate():
    tokens = torch.randint(0, 50, (20000, 5), generator=torch.Generator().manual_seed(0))
    out = dit.drop_captions(tokens, 0.1, 50, torch.Generator().manual_seed(1))
    null = (out == 50).all(1)
    assert abs(null.float().mean().item() - 0.1) < 4 * (0.1 * 0.9 / 20000) ** 0.5
    torch.testing.assert_close(out[~null], tokens[~null], rtol=0, atol=0)  # the others untouched
    assert (dit.drop_captions(tokens, 0.0, 50) == tokens).all()


def test_encode_captions():
    class Tok:
        n_vocab = 30

        def encode(self, text):
            return [len(w) for w in text.split()]

    out = dit.encode_captions(Tok(), ["a red ball", "the big dog on the left"], 6)
    assert out.dtype == torch.int64
    assert out.tolist() == [[1, 3, 4, 30, 30, 30], [3, 3, 3, 2, 3, 4]]
    with pytest.raises(ValueError, match="more than text_len"):
        dit.encode_captions(Tok(), ["one two three four five six seven"], 6)


# ----------------------------------------------------------------------------- flow matching and sampling


def test_interpolate_and_loss_target():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    t = torch.rand(3, generator=g)
    xt = dit.interpolate(x0, noise, t)
    for i in range(3):
        torch.testing.assert_close(xt[i], (1 - t[i]) * x0[i] + t[i] * noise[i])
    torch.testing.assert_close(dit.interpolate(x0, noise, torch.zeros(3)), x0)
    torch.testing.assert_close(dit.interpolate(x0, noise, torch.ones(3)), noise)
    model = randomise_(tiny_model()).eval()
    x0 = torch.randn(5, 3, 6, 6)
    tokens = torch.randint(0, 50, (5, 5))
    loss = dit.flow_matching_loss(model, x0, tokens, torch.Generator().manual_seed(4))
    # the same draws by hand: noise first, then t (logit-normal)
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(x0.shape, generator=g)
    t = torch.sigmoid(torch.randn(5, generator=g))
    want = ((model(dit.interpolate(x0, noise, t), t, tokens) - (noise - x0)) ** 2).mean()
    torch.testing.assert_close(loss, want)


def test_cfg_velocity():
    g = torch.Generator().manual_seed(0)
    vc, vu = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    torch.testing.assert_close(dit.cfg_velocity(vc, vu, 1.0), vc)
    torch.testing.assert_close(dit.cfg_velocity(vc, vu, 0.0), vu)
    torch.testing.assert_close(dit.cfg_velocity(vc, vu, 2.5), vu + 2.5 * (vc - vu))


class StraightLines(torch.nn.Module):
    """The exact velocity of straight paths that end at `target` (caption) or at 0 (null caption):
    v = (x - end) / t, so that Euler steps stay on the line and land on the end point."""

    def __init__(self, cfg: DiTConfig, target: torch.Tensor):
        super().__init__()
        self.config, self.target = cfg, target
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.calls: list[int] = []

    def forward(self, x, t, tokens):
        self.calls.append(x.shape[0])
        null = (tokens == self.config.pad_id).all(1).view(-1, 1, 1, 1)
        end = torch.where(null, torch.zeros_like(x), self.target.expand_as(x))
        return (x - end) / t.view(-1, 1, 1, 1)


@pytest.mark.parametrize("steps,guidance", [(1, 1.0), (7, 1.0), (13, 2.5)])
def test_euler_sampling_reaches_the_end_of_a_linear_field(steps, guidance):
    cfg = DiTConfig(**TINY)
    target = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    model = StraightLines(cfg, target)
    tokens = torch.randint(0, 50, (2, 5))
    z, path = dit.sample(model, tokens, steps=steps, guidance=guidance, generator=torch.Generator().manual_seed(0),
                         return_trajectory=True)
    # guided: v = (x - g·target) / t, the straight line to g·target
    torch.testing.assert_close(z, (guidance * target).expand(2, -1, -1, -1), atol=1e-5, rtol=1e-5)
    assert path.shape == (steps + 1, 2, 3, 6, 6)
    noise = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(path[0], noise)  # starts at the noise
    assert model.calls == [2 * 2 if guidance != 1.0 else 2] * steps  # cond + uncond in one batch


def test_euler_step_constant_field():
    x, v = torch.randn(4), torch.randn(4)
    y = x
    ts = torch.linspace(1, 0, 6).tolist()
    for t, tn in zip(ts[:-1], ts[1:], strict=True):
        y = dit.euler_step(y, v, t, tn)
    torch.testing.assert_close(y, x - v)


# ----------------------------------------------------------------------------- training on captions


def toy_set(n: int, tok, text_len: int, seed: int = 0):
    """'red' things: +1 in the top-left 4x4 of channel 0; 'blue' things: -1; small noise elsewhere."""
    g = torch.Generator().manual_seed(seed)
    red = torch.rand(n, generator=g) < 0.5
    things = ["ball", "dog", "cat", "car"]
    captions = [f"a {'red' if r else 'blue'} {things[i % 4]}" for i, r in enumerate(red.tolist())]
    x = 0.1 * torch.randn(n, 2, 8, 8, generator=g)
    x[:, 0, :4, :4] += torch.where(red, 1.0, -1.0).view(-1, 1, 1)
    return x, dit.encode_captions(tok, captions, text_len)


def test_tiny_dit_learns_the_colour_word(tmp_path):
    from storylib.train import load_tokenizer

    tok, _ = load_tokenizer("models/storyteller/tokenizer.json")
    cfg = DiTConfig(latent_channels=2, latent_size=8, patch=2, n_layer=2, n_head=2, n_embd=48, text_vocab=tok.n_vocab,
                    text_len=6, text_layers=1, fused=True)
    x, tokens = toy_set(512, tok, cfg.text_len)
    torch.manual_seed(123)  # training must not depend on (or change) the global RNG
    before = torch.random.get_rng_state()
    model, log = dit.train_dit(x, tokens, cfg, steps=150, batch_size=64, lr=3e-3, seed=0, progress=False,
                               ema=0.99, warmup=10, log_every=25)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert [e["step"] for e in log] == [25, 50, 75, 100, 125, 150]
    assert log[-1]["loss"] < 0.6 * log[0]["loss"], log
    assert not model.training

    probe = dit.encode_captions(tok, ["a red ball", "a blue ball", "a red dog", "a blue car"], cfg.text_len)
    z = dit.sample(model, probe.repeat(4, 1), steps=10, guidance=3.0, generator=torch.Generator().manual_seed(5))
    corner = z[:, 0, :4, :4].mean((1, 2)).view(4, 4)  # (repeat, caption)
    assert (corner[:, [0, 2]] > 0.5).all() and (corner[:, [1, 3]] < -0.5).all(), corner

    # save, load: the same samples; bad files -> ValueError
    dit.save_dit(model, tmp_path / "m")
    again = dit.load_dit(tmp_path / "m")
    assert again.config == model.config
    z2 = dit.sample(again, probe.repeat(4, 1), steps=10, guidance=3.0, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(z2, z)


def test_load_refuses_bad_files(tmp_path):
    model = randomise_(tiny_model())
    folder = dit.save_dit(model, tmp_path / "ok")
    assert set(p.name for p in folder.iterdir()) == {"dit.json", "dit.safetensors"}
    x, t, tok = torch.randn(2, 3, 6, 6), torch.rand(2), torch.randint(0, 51, (2, 5))
    torch.testing.assert_close(dit.load_dit(folder)(x, t, tok), model(x, t, tok))

    with pytest.raises(ValueError, match="no such file"):
        dit.load_dit(tmp_path / "nowhere")
    (tmp_path / "nojson").mkdir()
    (tmp_path / "nojson" / "dit.safetensors").write_bytes((folder / "dit.safetensors").read_bytes())
    with pytest.raises(ValueError, match="dit.json: no such file"):
        dit.load_dit(tmp_path / "nojson")

    def variant(name, config=None, weights=None, raw_json=None):
        d = tmp_path / name
        d.mkdir()
        doc = json.loads((folder / "dit.json").read_text())
        doc["config"].update(config or {})
        (d / "dit.json").write_text(raw_json if raw_json is not None else json.dumps(doc))
        weights = weights if weights is not None else (folder / "dit.safetensors").read_bytes()
        (d / "dit.safetensors").write_bytes(weights)
        return d

    with pytest.raises(ValueError, match="has shape"):
        dit.load_dit(variant("wide", {"n_embd": 48, "n_head": 2}))
    with pytest.raises(ValueError, match="missing"):
        dit.load_dit(variant("deep", {"n_layer": 3}))
    with pytest.raises(ValueError, match="unknown settings"):
        dit.load_dit(variant("odd", {"colour": "blue"}))
    with pytest.raises(ValueError, match="not valid JSON"):
        dit.load_dit(variant("json", raw_json="{not json"))
    with pytest.raises(ValueError, match="cannot read"):
        dit.load_dit(variant("torn", weights=(folder / "dit.safetensors").read_bytes()[:100]))
