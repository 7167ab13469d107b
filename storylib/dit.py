"""Chapter 17 — a diffusion transformer that draws a latent picture from a caption.

The illustrator draws in the small latent grid of a VQ-VAE (latent diffusion, Rombach et al. 2022): a picture is a
(D, 16, 16) grid of numbers, and this model learns to make such grids from a caption. It is a DiT (Peebles & Xie 2023,
"Scalable Diffusion Models with Transformers") built from Chapter 5's attention and MLP, trained with flow matching
(Lipman et al. 2023; rectified flow, Liu et al. 2023) and sampled with classifier-free guidance (Ho & Salimans 2022).

    DiTConfig               the hyperparameters (and the latents' shift and scale, set by train_dit)
    patchify, unpatchify    a (C, H, W) grid <-> a sequence of p x p patches, one vector each
    timestep_embedding      sinusoidal features of the time t (ADM/DiT), TimestepEmbedder adds an MLP
    modulate, DiTBlock      adaLN-Zero: the time and the caption shift, scale and gate each block
    TextEncoder             caption tokens -> per-word features and a pooled vector (non-causal gpt2.Blocks)
    DiT                     [words, patches] as one sequence through the blocks -> velocity (B, D, H, W)
    encode_captions         captions -> (B, text_len) token ids padded with PAD (= the null caption when all PAD)
    interpolate, flow_matching_loss, drop_captions    the training objective
    cfg_velocity, euler_step, sample                  drawing: from noise at t = 1 to a latent grid at t = 0
    train_dit, save_dit, load_dit

Usage:

    tok, _ = storylib.train.load_tokenizer("models/storyteller/tokenizer.json")
    tokens = encode_captions(tok, captions, text_len=24)            # (N, 24)
    model, log = train_dit(latents, tokens, DiTConfig(latent_channels=4), steps=5000, batch_size=256,
                           lr=3e-4, device="cuda")
    save_dit(model, "models/illustrator/dit")
    model = load_dit("models/illustrator/dit")
    z = sample(model, encode_captions(tok, ["a blue dog on the left"], 24), steps=20, guidance=3.0)  # (1, D, 16, 16)

Time runs from t = 0 (data) to t = 1 (pure noise): x_t = (1 - t)·x0 + t·noise, a straight line, and the model
predicts its velocity dx_t/dt = noise - x0. Sampling walks the line backwards with Euler steps.
"""

from __future__ import annotations

import copy
import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from storylib.gpt2 import MLP, Block, CausalSelfAttention, GPTConfig, LayerNorm

DIT_FORMAT = "llm101n-dit/1"


@dataclass
class DiTConfig:
    latent_channels: int = 4  # D: the VQ-VAE's latent channels
    latent_size: int = 16  # H = W of the latent grid
    patch: int = 2  # p: a token is a p x p patch of the grid -> (16 / 2)² = 64 image tokens
    n_layer: int = 8
    n_head: int = 4
    n_embd: int = 256
    text_vocab: int = 4104  # the storyteller tokenizer's n_vocab; PAD = text_vocab is one more id
    text_len: int = 24  # captions are padded (or refused) to this many tokens
    text_layers: int = 2  # non-causal transformer blocks of the text encoder
    cond_dropout: float = 0.1  # probability that a training caption becomes the null caption (for CFG)
    fused: bool = True  # PyTorch's attention and LayerNorm kernels (same math as Chapter 5's, faster)

    @property
    def pad_id(self) -> int:
        return self.text_vocab

    @property
    def n_patches(self) -> int:
        return (self.latent_size // self.patch) ** 2

    def validate(self) -> DiTConfig:
        """Raise ValueError on settings that cannot build a model; return self."""
        if self.latent_size % self.patch:
            raise ValueError(f"latent_size {self.latent_size} is not a multiple of patch {self.patch}")
        if self.n_embd % self.n_head or self.n_embd % 4:
            raise ValueError(f"n_embd {self.n_embd} must be a multiple of n_head {self.n_head} and of 4")
        if not 0.0 <= self.cond_dropout < 1.0:
            raise ValueError(f"cond_dropout must be in [0, 1), got {self.cond_dropout}")
        return self


def _gpt_config(cfg: DiTConfig, block_size: int) -> GPTConfig:
    """Chapter 5's config for the attention and MLP of a non-causal block of width n_embd."""
    return GPTConfig(block_size=block_size, vocab_size=1, n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd,
                     dropout=0.0, bias=True, fused=cfg.fused, causal=False)


# ----------------------------------------------------------------------------- patches


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Cut a grid into p x p patches, one token each: (B, C, H, W) -> (B, (H/p)·(W/p), p·p·C).

    Patches in row-major order (token i·(W/p) + j is the patch of rows i·p.., columns j·p..); inside a token,
    element (a·p + b)·C + c is x[:, c, i·p + a, j·p + b] (DiT's layout). Raises ValueError if x is not 4-D or
    H or W is not a multiple of p.
    """
    if x.dim() != 4:
        raise ValueError(f"patchify needs (B, C, H, W), got shape {tuple(x.shape)}")
    B, C, H, W = x.shape
    if p < 1 or H % p or W % p:
        raise ValueError(f"H = {H} and W = {W} must be multiples of the patch size p = {p}")
    ### BEGIN SOLUTION ch17.patchify (§17.4, 2 pts): (B, C, H/p, p, W/p, p), permute to (B, H/p, W/p, p, p, C), flatten
    x = x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)  # (B, H/p, W/p, p, p, C)
    return x.reshape(B, (H // p) * (W // p), p * p * C)
    ### END SOLUTION


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """patchify's inverse: (B, (H/p)·(W/p), p·p·C) -> (B, C, H, W). Raises ValueError on shapes that do not fit."""
    if p < 1 or H % p or W % p:
        raise ValueError(f"H = {H} and W = {W} must be multiples of the patch size p = {p}")
    h, w = H // p, W // p
    if tokens.dim() != 3 or tokens.shape[1:] != (h * w, p * p * C):
        raise ValueError(f"tokens of shape {tuple(tokens.shape)} do not make a ({C}, {H}, {W}) grid with p = {p}")
    ### BEGIN SOLUTION ch17.unpatchify (§17.4, 2 pts): reshape to (B, h, w, p, p, C), permute to (B, C, h, p, w, p)
    x = tokens.reshape(tokens.shape[0], h, w, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (B, C, h, p, w, p)
    return x.reshape(tokens.shape[0], C, H, W)
    ### END SOLUTION


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (MAE, DiT): (h·w, dim), row-major; half the channels encode the row, half the
    column, each as [sin, cos] of the position times frequencies 1 / 10000^(k / (dim/4)). dim: a multiple of 4."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                                indexing="ij")

    def one_d(pos):
        a = pos.reshape(-1, 1) * omega  # (h·w, dim/4)
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([one_d(rows), one_d(cols)], dim=1).float()


# ----------------------------------------------------------------------------- time


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of the time (ADM, DiT): t (B,) in [0, 1] -> (B, dim).

    With s = 1000·t (the scale of DiT's integer timesteps) and half = dim // 2 frequencies
    f_k = max_period^(-k / half), k = 0..half-1: [cos(s·f_0..), sin(s·f_0..)], and a zero column when dim is odd.
    TimestepEmbedder feeds them to an MLP.
    """
    if t.dim() != 1:
        raise ValueError(f"t must have shape (B,), got {tuple(t.shape)}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    """t (B,) -> (B, n_embd): timestep_embedding, then Linear -> SiLU -> Linear, as DiT's."""

    def __init__(self, n_embd: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, n_embd), nn.SiLU(), nn.Linear(n_embd, n_embd))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim))


# ----------------------------------------------------------------------------- adaLN-Zero blocks


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x·(1 + scale) + shift, one shift and scale per example for all its tokens: x (B, T, C); shift, scale (B, C)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class DiTBlock(nn.Module):
    """A pre-norm transformer block whose LayerNorms are set by the conditioning c (adaLN-Zero, DiT §3.2).

    From c (B, C) one zero-initialised Linear makes six vectors: shift, scale and gate for the attention and for
    the MLP. The norms have no weights of their own; a gate multiplies what the sub-layer adds to the stream, so at
    initialisation (gates 0) the block is the identity, which keeps deep stacks stable at the start of training.
    """

    def __init__(self, gcfg: GPTConfig):
        super().__init__()
        if gcfg.causal:
            raise ValueError("a DiT block attends in both directions: give it a GPTConfig with causal=False")
        C = gcfg.n_embd
        self.norm1 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.attn = CausalSelfAttention(gcfg)
        self.norm2 = nn.LayerNorm(C, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(gcfg)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(C, 6 * C))
        nn.init.zeros_(self.adaLN_modulation[1].weight)
        nn.init.zeros_(self.adaLN_modulation[1].bias)

    def forward(self, x, c):
        """x (B, T, C), c (B, C) -> (B, T, C):
        x + gate_msa·attn(modulate(norm1(x), shift_msa, scale_msa)), then the same with norm2, mlp and *_mlp."""
        ### BEGIN SOLUTION ch17.adaln_zero (§17.4, 3 pts): 6 vectors from c; modulate each norm; gate each residual
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=-1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x
        ### END SOLUTION


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c), then a Linear to p·p·D numbers per token; both zero-initialised (DiT)."""

    def __init__(self, n_embd: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(n_embd, elementwise_affine=False, eps=1e-6)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(n_embd, 2 * n_embd))
        self.linear = nn.Linear(n_embd, out_dim)
        for layer in (self.adaLN_modulation[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ----------------------------------------------------------------------------- the caption


class TextEncoder(nn.Module):
    """Caption ids (B, L) -> per-token features (B, L, C) and a pooled vector (B, C).

    Token embedding (text_vocab + 1 rows: the last is PAD) + learned positions, text_layers non-causal gpt2.Blocks
    and a LayerNorm. The pooled vector is the mean of the features of the non-PAD tokens; the null caption
    (all PAD) pools to 0, so c is then the time alone.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.pad_id = cfg.pad_id
        self.wte = nn.Embedding(cfg.text_vocab + 1, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.text_len, cfg.n_embd)
        self.h = nn.ModuleList([Block(_gpt_config(cfg, cfg.text_len)) for _ in range(cfg.text_layers)])
        self.ln_f = LayerNorm(cfg.n_embd, fused=cfg.fused)

    def forward(self, tokens):
        x = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        keep = (tokens != self.pad_id).unsqueeze(-1).to(x.dtype)  # (B, L, 1)
        pooled = (x * keep).sum(1) / keep.sum(1).clamp(min=1.0)  # all PAD: 0 / 1 = 0
        return x, pooled


def encode_captions(tokenizer, captions: list[str], text_len: int, pad: int | None = None) -> torch.LongTensor:
    """Captions -> int64 (B, text_len): each caption's tokenizer.encode ids, then PAD up to text_len.

    PAD defaults to tokenizer.n_vocab (= DiTConfig.text_vocab, one id past the tokenizer's). Raises ValueError
    when a caption has more than text_len tokens (a cut caption would draw something else).
    """
    pad = tokenizer.n_vocab if pad is None else pad
    out = torch.full((len(captions), text_len), pad, dtype=torch.int64)
    for i, text in enumerate(captions):
        ids = tokenizer.encode(text)
        if len(ids) > text_len:
            raise ValueError(f"caption {text!r} has {len(ids)} tokens, more than text_len = {text_len}")
        out[i, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
    return out


def null_tokens(cfg: DiTConfig, batch: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """The null caption, all PAD: (batch, text_len). The unconditional model of classifier-free guidance."""
    return torch.full((batch, cfg.text_len), cfg.pad_id, dtype=torch.int64, device=device)


# ----------------------------------------------------------------------------- the model


class DiT(nn.Module):
    """The diffusion transformer: forward(x_t (B, D, H, W), t (B,), tokens (B, L)) -> velocity (B, D, H, W).

    The patches of x_t are embedded by one Linear plus fixed 2-D sin-cos positions; the caption's word features
    are put in front of them and the whole sequence [words, patches] goes through the DiT blocks (in-context
    conditioning: every patch can attend to every word, which is what binds "blue" to "dog"). The time embedding
    plus the pooled caption, c, sets every block's adaLN. Only the patches are read out, and unpatchified.
    """

    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg.validate()
        C, p, D, S = cfg.n_embd, cfg.patch, cfg.latent_channels, cfg.latent_size
        self.x_embed = nn.Linear(p * p * D, C)
        self.register_buffer("pos_embed", sincos_2d(S // p, S // p, C), persistent=False)
        self.t_embed = TimestepEmbedder(C)
        self.text = TextEncoder(cfg)
        gcfg = _gpt_config(cfg, cfg.text_len + cfg.n_patches)
        self.blocks = nn.ModuleList([DiTBlock(gcfg) for _ in range(cfg.n_layer)])
        self.final = FinalLayer(C, p * p * D)
        self.init_weights()

    def init_weights(self):
        """DiT's: Linear weights xavier-uniform and biases 0, embeddings and the time MLP N(0, 0.02²); then the
        adaLN modulations and the final layer zero, so the model outputs 0 and every block is the identity."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
        for layer in self.t_embed.mlp[0], self.t_embed.mlp[2]:
            nn.init.normal_(layer.weight, std=0.02)
        for m in [*(b.adaLN_modulation[1] for b in self.blocks), self.final.adaLN_modulation[1], self.final.linear]:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def check_inputs(self, x, t, tokens):
        """Raise ValueError unless x is (B, D, S, S), t is (B,) and tokens (B, text_len) ids in 0..PAD."""
        cfg, B = self.config, x.shape[0]
        want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"x must have shape (B, {', '.join(map(str, want))}), got {tuple(x.shape)}")
        if t.shape != (B,):
            raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
        if tokens.shape != (B, cfg.text_len):
            raise ValueError(f"tokens must have shape ({B}, {cfg.text_len}), got {tuple(tokens.shape)}")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() > cfg.pad_id):
            raise ValueError(f"token ids must be in 0..{cfg.pad_id} (PAD), got {tokens.min()}..{tokens.max()}")

    def forward(self, x, t, tokens):
        self.check_inputs(x, t, tokens)
        cfg = self.config
        h = self.x_embed(patchify(x, cfg.patch)) + self.pos_embed  # (B, N, C)
        words, pooled = self.text(tokens)  # (B, L, C), (B, C)
        c = self.t_embed(t) + pooled
        seq = torch.cat([words, h], dim=1)  # in-context: [words, patches]
        for block in self.blocks:
            seq = block(seq, c)
        out = self.final(seq[:, cfg.text_len :], c)  # only the patches are drawn
        return unpatchify(out, cfg.patch, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


# ----------------------------------------------------------------------------- flow matching


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t)·x0 + t·noise, t (B,) broadcast over the other dims: t = 0 is the data, t = 1 the noise."""
    ### BEGIN SOLUTION ch17.interpolate (§17.3, 1 pt): t as (B, 1, 1, ...) to broadcast; (1 - t)·x0 + t·noise
    t = t.reshape(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    return (1 - t) * x0 + t * noise
    ### END SOLUTION


def drop_captions(tokens: torch.Tensor, p: float, pad_id: int, generator: torch.Generator | None = None):
    """A copy of tokens (B, L) where each row, with probability p (independently), is the null caption (all
    pad_id). Training on both teaches one model the conditional and the unconditional velocity (CFG)."""
    drop = torch.rand(tokens.shape[0], generator=generator, device=tokens.device) < p
    return torch.where(drop[:, None], torch.full_like(tokens, pad_id), tokens)


def sample_t(n: int, dist: str = "logit_normal", generator=None, device="cpu") -> torch.Tensor:
    """n times in (0, 1). "logit_normal": sigmoid(N(0, 1)), SD3's choice (Esser et al. 2024): most draws near
    t = 0.5, where the velocity is hardest to guess; near 0 and 1 it is nearly given by x_t. "uniform": U(0, 1)."""
    if dist == "logit_normal":
        return torch.sigmoid(torch.randn(n, generator=generator, device=device))
    if dist == "uniform":
        return torch.rand(n, generator=generator, device=device)
    raise ValueError(f"t distribution must be 'logit_normal' or 'uniform', got {dist!r}")


def flow_matching_loss(model: DiT, x0: torch.Tensor, tokens: torch.Tensor, generator: torch.Generator | None = None,
                       t_dist: str = "logit_normal") -> torch.Tensor:
    """The rectified-flow loss: mean over all elements of (model(x_t, t, tokens') - (noise - x0))².

    x0 (B, D, H, W) latents in the model's scale; noise ~ N(0, 1) and t ~ sample_t(t_dist), one per example,
    drawn with `generator` (on x0's device); tokens' = drop_captions(tokens, cond_dropout) in training mode,
    tokens in eval mode. Returns a 0-dim tensor.
    """
    B = x0.shape[0]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    t = sample_t(B, t_dist, generator, x0.device)
    if model.training and model.config.cond_dropout > 0:
        tokens = drop_captions(tokens, model.config.cond_dropout, model.config.pad_id, generator)
    v = model(interpolate(x0, noise, t), t, tokens)
    return F.mse_loss(v.float(), (noise - x0).float())


# ----------------------------------------------------------------------------- sampling


def cfg_velocity(v_cond: torch.Tensor, v_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance: v_uncond + guidance·(v_cond - v_uncond). 1: the conditional model; > 1: further
    from the unconditional one, pictures that match the caption more (and vary less)."""
    ### BEGIN SOLUTION ch17.cfg_velocity (§17.5, 1 pt): start at v_uncond, go guidance times the step to v_cond
    return v_uncond + guidance * (v_cond - v_uncond)
    ### END SOLUTION


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step of dx/dt = v from t to t_next: x + (t_next - t)·v (t_next < t when sampling)."""
    ### BEGIN SOLUTION ch17.euler_step (§17.5, 1 pt): x + (t_next - t)·v
    return x + (t_next - t) * v
    ### END SOLUTION


@torch.no_grad()
def sample(model: DiT, tokens: torch.Tensor, steps: int = 20, guidance: float = 3.0,
           generator: torch.Generator | None = None, return_trajectory: bool = False):
    """Latent grids for the captions tokens (B, text_len): (B, D, S, S).

    Start from noise ~ N(0, 1) (drawn with `generator`, on its device) at t = 1 and take `steps` Euler steps on
    t = 1, 1 - 1/steps, ..., 0 with the guided velocity cfg_velocity(v(tokens), v(null caption), guidance); the two
    are one forward pass of a batch of 2B (one pass of B when guidance == 1). Eval mode; the model's mode is put
    back after. return_trajectory=True also returns the grids at every t, (steps + 1, B, D, S, S), same scale.
    """
    cfg, device = model.config, next(model.parameters()).device
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if tokens.dim() != 2 or tokens.shape[1] != cfg.text_len:
        raise ValueError(f"tokens must have shape (B, {cfg.text_len}), got {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    B, S = tokens.shape[0], cfg.latent_size
    tokens = tokens.to(device)
    x = torch.randn(B, cfg.latent_channels, S, S, generator=generator,
                    device=generator.device if generator is not None else device).to(device)
    guided = guidance != 1.0
    both = torch.cat([tokens, null_tokens(cfg, B, device)]) if guided else tokens
    ts = torch.linspace(1.0, 0.0, steps + 1).tolist()
    path = [x]
    ### BEGIN SOLUTION ch17.sample (§17.5, 3 pts): each step: one pass on [x, x] with both; cfg; euler_step
    for t, t_next in zip(ts[:-1], ts[1:], strict=True):
        xin = torch.cat([x, x]) if guided else x
        v = model(xin, torch.full((xin.shape[0],), t, device=device), both).float()
        if guided:
            v = cfg_velocity(v[:B], v[B:], guidance)
        x = euler_step(x, v, t, t_next)
        path.append(x)
    ### END SOLUTION
    model.train(was_training)
    return (x, torch.stack(path)) if return_trajectory else x


# ----------------------------------------------------------------------------- training


def _check_data(latents: torch.Tensor, tokens: torch.Tensor, cfg: DiTConfig) -> None:
    want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
    if latents.dim() != 4 or tuple(latents.shape[1:]) != want:
        raise ValueError(f"latents must have shape (N, {', '.join(map(str, want))}), got {tuple(latents.shape)}")
    if tokens.shape != (latents.shape[0], cfg.text_len):
        raise ValueError(f"tokens must have shape ({latents.shape[0]}, {cfg.text_len}), got {tuple(tokens.shape)}")
    if tokens.min() < 0 or tokens.max() > cfg.pad_id:
        raise ValueError(f"token ids must be in 0..{cfg.pad_id} (PAD)")


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay·ema + (1 - decay)·weights, for every parameter (DiT samples with such an average)."""
    for pe, p in zip(ema_model.parameters(), model.parameters(), strict=True):
        pe.lerp_(p.detach().to(pe.dtype), 1.0 - decay)


def train_dit(latents: torch.Tensor, tokens: torch.Tensor, cfg: DiTConfig, steps: int = 2000, batch_size: int = 128,
              lr: float = 3e-4, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True,
              ema: float | None = 0.999, warmup: int = 100, weight_decay: float = 0.0, grad_clip: float = 1.0,
              log_every: int = 50, t_dist: str = "logit_normal") -> tuple[DiT, list[dict]]:
    """Train a DiT on latents (N, D, S, S) with captions tokens (N, text_len); returns (model, log).

    AdamW (storylib.optim, betas 0.9, 0.95) with weight decay on matrices only, warmup_cosine_lr (linear warm-up
    of min(warmup, steps // 10) steps, cosine to lr/10), batches drawn with replacement, gradient clipping at
    grad_clip, bf16 autocast on CUDA only. The latents should have about unit variance, like the noise (the VQ-VAE's
    latent_scale sees to that). ema: the returned model is an exponential moving
    average of the weights, decay min(ema, (1 + step) / (10 + step)) (short runs average fewer steps); None: the
    raw weights. log: every log_every steps (and the last) {"step", "loss" (mean since the last entry), "lr",
    "grad_norm"}. The model comes back in eval mode, on `device`.
    """
    from tqdm.auto import tqdm

    from storylib.mlp import warmup_cosine_lr
    from storylib.optim import AdamW, param_groups, update

    _check_data(latents, tokens, cfg)
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # the same seed, the same initial weights, without touching the caller's
        torch.manual_seed(seed)
        model = DiT(cfg).to(device)
    ema_model = copy.deepcopy(model).requires_grad_(False) if ema else None
    x_all = latents.float().to(device)
    tok_all = tokens.long().to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    opt = AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.95))
    log, running, n_run = [], 0.0, 0
    model.train()
    for step in (bar := tqdm(range(steps), desc="dit", disable=not progress)):
        lr_now = warmup_cosine_lr(step, steps, lr, min(warmup, steps // 10), lr / 10)
        idx = torch.randint(0, x_all.shape[0], (batch_size,), generator=gen, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = flow_matching_loss(model, x_all[idx], tok_all[idx], gen, t_dist)
        norm = update(opt, loss, lr_now, grad_clip)
        if ema_model is not None:
            ema_update(ema_model, model, min(ema, (1 + step) / (10 + step)))
        running, n_run = running + loss.item(), n_run + 1
        if (step + 1) % log_every == 0 or step == steps - 1:
            log.append({"step": step + 1, "loss": running / n_run, "lr": lr_now, "grad_norm": float(norm)})
            bar.set_postfix(loss=f"{running / n_run:.4f}")
            running, n_run = 0.0, 0
    out = ema_model if ema_model is not None else model
    return out.eval(), log


# ----------------------------------------------------------------------------- saving and loading


def save_dit(model: DiT, folder: str | os.PathLike) -> Path:
    """Write dit.safetensors (the weights) and dit.json (format + DiTConfig) into folder (made if missing)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(folder / "dit.safetensors"), metadata={"format": "pt"})
    doc = {"format": DIT_FORMAT, "config": asdict(model.config)}
    (folder / "dit.json").write_text(json.dumps(doc, indent=1))
    return folder


def load_dit(folder: str | os.PathLike, device: str | torch.device = "cpu") -> DiT:
    """A DiT from a folder written by save_dit, in eval mode. Raises ValueError naming the file at fault when a
    file is missing or unreadable, the format or a setting is unknown, or a tensor is missing, extra or misshapen."""
    from safetensors.torch import load_file

    folder = Path(folder)
    for name in ("dit.json", "dit.safetensors"):
        if not (folder / name).is_file():
            raise ValueError(f"{folder / name}: no such file (save_dit writes dit.json and dit.safetensors)")
    try:
        doc = json.loads((folder / "dit.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{folder / 'dit.json'}: not valid JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != DIT_FORMAT or not isinstance(doc.get("config"), dict):
        raise ValueError(f"{folder / 'dit.json'}: expected format {DIT_FORMAT!r} with a 'config' section")
    unknown = set(doc["config"]) - {f.name for f in fields(DiTConfig)}
    if unknown:
        raise ValueError(f"{folder / 'dit.json'}: unknown settings {sorted(unknown)}")
    model = DiT(DiTConfig(**doc["config"]))
    try:
        tensors = load_file(str(folder / "dit.safetensors"))
    except Exception as e:  # safetensors raises its own error type on a damaged file
        raise ValueError(f"{folder / 'dit.safetensors'}: cannot read ({e})") from None
    want = model.state_dict()
    missing, extra = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or extra:
        raise ValueError(f"{folder / 'dit.safetensors'}: does not fit dit.json: missing {missing}, unexpected {extra}")
    for k, v in tensors.items():
        if v.shape != want[k].shape:
            raise ValueError(f"{folder / 'dit.safetensors'}: {k} has shape {tuple(v.shape)}, "
                             f"dit.json's model needs {tuple(want[k].shape)}")
    model.load_state_dict(tensors)
    return model.to(device).eval()
