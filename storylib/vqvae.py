"""Chapter 17 — the VQ-VAE: pictures as a small grid of codes, written to be read from top to bottom.

A diffusion model that drew 64×64×3 pixels directly would spend most of its effort on pixels; a latent diffusion
model draws a small latent grid instead and lets a decoder paint the pixels. The latent grid comes from a VQ-VAE
(van den Oord, Vinyals & Kavukcuoglu 2017, "Neural Discrete Representation Learning"): an encoder shrinks the
picture 4× in each direction to a 16×16 grid of D-dimensional vectors, each vector is replaced by the nearest of K
codebook vectors ("vector quantisation"), and a decoder paints the picture back from the quantised grid.

    VQConfig                 the hyperparameters
    to_tensor, to_pictures   uint8 (N, H, W, 3) pictures <-> float (N, 3, H, W) in [-1, 1]
    nearest_codes            the index of the nearest codebook vector, for every vector
    straight_through         forward zq, backward as if zq were z
    commitment_loss          beta · |z - sg(zq)|²: the encoder commits to its codes
    codebook_perplexity      exp(entropy of code usage): how many codes are really in use
    psnr                     peak signal-to-noise ratio in dB
    VectorQuantizer          the codebook, learnt by EMA k-means, with dead-code restarts
    Encoder, Decoder, VQVAE  convolutions and residual blocks around the quantiser
    train_vqvae              MSE reconstruction + commitment, AdamW, warm-up + cosine schedule
    save_vqvae, load_vqvae   vqvae.safetensors + vqvae.json

    model, log = train_vqvae(make_dataset(20_000, size=64)["pictures"], VQConfig(), steps=3000, device="cuda")
    lat = model.latents(to_tensor(pictures))      # (N, D, 16, 16), unit variance: what the diffusion model draws
    pictures = to_pictures(model.decode_latents(lat))
    save_vqvae(model, "models/illustrator/vqvae")

The codebook is not learnt by gradient descent but by an exponential moving average of the encoder outputs
assigned to each code (the paper's appendix A.1; Sonnet's VectorQuantizerEMA): a running k-means. A code that
no encoder output chooses any more is "dead"; it is restarted on a random encoder output of the current batch
(as Jukebox does, Dhariwal et al. 2020), so the whole codebook stays in use.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

# ----------------------------------------------------------------------------- configuration

VQ_FORMAT = "llm101n-vqvae/1"


@dataclass
class VQConfig:
    image_size: int = 64
    channels: tuple[int, ...] = (64, 128)  # one stage per entry, each halves the picture's side
    n_res: int = 2  # residual blocks per stage
    latent_dim: int = 4  # D: the size of a latent vector (and a codebook vector)
    codebook_size: int = 512  # K: the number of codes
    downsample: int = 4  # the picture's side / the latent grid's side: 2 ** len(channels)
    beta: float = 0.25  # the weight of the commitment loss (the paper's 0.25)
    ema_decay: float = 0.99  # the codebook's moving average (the paper's 0.99)
    dead_threshold: float = 0.5  # a code whose EMA count falls below this many vectors per batch is restarted

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)  # JSON gives a list back
        if not self.channels or min(self.channels) < 1 or self.n_res < 0:
            raise ValueError(f"channels must be positive and n_res >= 0, got {self.channels}, {self.n_res}")
        if self.downsample != 2 ** len(self.channels):
            raise ValueError(f"downsample must be 2**len(channels) = {2 ** len(self.channels)}, got {self.downsample}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} is not a multiple of downsample {self.downsample}")
        if self.latent_dim < 1 or self.codebook_size < 2:
            raise ValueError(f"need latent_dim >= 1, codebook_size >= 2, got {self.latent_dim}, {self.codebook_size}")
        if not 0 <= self.ema_decay < 1 or self.beta < 0 or self.dead_threshold < 0:
            raise ValueError(f"need 0 <= ema_decay < 1, beta >= 0, dead_threshold >= 0; got {self}")

    @property
    def latent_size(self) -> int:
        """The side of the latent grid: 64 // 4 = 16."""
        return self.image_size // self.downsample


# ----------------------------------------------------------------------------- pictures <-> tensors


def to_tensor(pictures: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 pictures (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1] (0 -> -1, 255 -> 1), on their device."""
    x = torch.as_tensor(pictures)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected uint8 pictures (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0


def to_pictures(x: torch.Tensor) -> np.ndarray:
    """float (N, 3, H, W), nominally in [-1, 1] -> uint8 numpy (N, H, W, 3): clamped, then rounded."""
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"expected (N, 3, H, W), got {tuple(x.shape)}")
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- the pieces of vector quantisation


def nearest_codes(z_flat: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """The index of the nearest codebook vector (squared Euclidean distance) to every row of z_flat.

    z_flat: (N, D); codebook: (K, D), same dtype. Returns int64 (N,) in [0, K). The distances are computed as
    |z|² - 2 z·e + |e|² (one (N, K) matrix product, never an (N, K, D) tensor); ties go to the lower index (argmin).
    """
    ### BEGIN SOLUTION ch17.nearest_codes (§17.2, 2 pts): d² = |z|² - 2 z·eᵀ + |e|² as one (N, K) matrix; argmin over K
    d2 = z_flat.pow(2).sum(1, keepdim=True) - 2 * z_flat @ codebook.t() + codebook.pow(2).sum(1)
    return d2.argmin(dim=1)
    ### END SOLUTION


def straight_through(z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
    """The straight-through estimator: the value of zq, the gradient of z.

    Returns a tensor whose value equals zq and whose gradient goes to z unchanged (quantisation has no useful
    gradient, so we pretend it is the identity); none goes to zq.
    """
    ### BEGIN SOLUTION ch17.straight_through (§17.2, 1 pt): z plus a detached correction that makes the value zq
    return z + (zq - z).detach()
    ### END SOLUTION


def commitment_loss(z: torch.Tensor, zq: torch.Tensor, beta: float) -> torch.Tensor:
    """beta · mean((z - sg(zq))²), a 0-dim tensor: pulls the encoder output z toward its code zq.

    sg = stop-gradient (zq.detach()): the gradient goes to z only; the codebook moves by its moving average.
    """
    ### BEGIN SOLUTION ch17.commitment_loss (§17.2, 1 pt): beta · mean of (z - zq.detach())²
    return beta * (z - zq.detach()).pow(2).mean()
    ### END SOLUTION


def codebook_perplexity(indices: torch.Tensor, K: int) -> float:
    """exp(entropy of the code usage), a float in [1, K]: K when all K codes are used equally, 1 for a single code.

    indices: int tensor of any shape with values in [0, K); p_k = the fraction of indices equal to k;
    entropy = -Σ p_k log p_k (natural log; 0·log 0 = 0).
    """
    p = torch.bincount(indices.flatten(), minlength=K).double()
    p = p / p.sum()
    entropy = -(p * p.clamp_min(1e-30).log()).sum()  # p = 0 contributes 0·finite = 0
    return math.exp(entropy.item())


def psnr(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB, averaged over pictures: mean_i 10·log10(peak² / MSE_i).

    x, y: two batches of pictures of the same shape (N, ...), either both uint8 (peak 255: 10·log10(255² / MSE))
    or both float in [-1, 1] (a range of 2: 10·log10(4 / MSE)); the same pictures give the same PSNR either way.
    MSE_i is over all the values of picture i. Identical pictures give inf.
    """
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape or (x.dtype == torch.uint8) != (y.dtype == torch.uint8) or x.dim() < 2:
        raise ValueError(f"psnr needs two batches alike, got {x.dtype} {tuple(x.shape)} and {y.dtype} {tuple(y.shape)}")
    peak2 = 255.0**2 if x.dtype == torch.uint8 else 4.0
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return (10 * torch.log10(peak2 / mse)).mean().item()


# ----------------------------------------------------------------------------- the quantiser, with an EMA codebook


class VectorQuantizer(nn.Module):
    """K codebook vectors of size D, learnt by exponential moving averages (EMA k-means), with dead-code restarts.

    Buffers (saved, not trained by the optimizer): codebook (K, D); cluster_size (K,), the EMA of how many vectors
    chose each code per batch; embed_sum (K, D), the EMA of their sum; restarts, how many codes were restarted.
    Every code starts dead (cluster_size 0), so the first training batch sets the whole codebook to encoder outputs
    (a data-dependent initialisation; `restarts` counts those K too).
    """

    def __init__(self, K: int, D: int, beta: float = 0.25, decay: float = 0.99, dead_threshold: float = 0.5,
                 eps: float = 1e-5):
        super().__init__()
        self.K, self.D, self.beta, self.decay, self.dead_threshold, self.eps = K, D, beta, decay, dead_threshold, eps
        self.register_buffer("codebook", torch.randn(K, D))
        self.register_buffer("cluster_size", torch.zeros(K))
        self.register_buffer("embed_sum", torch.zeros(K, D))
        self.register_buffer("restarts", torch.zeros((), dtype=torch.int64))

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (B, D, h, w) -> (zq straight-through (B, D, h, w), indices int64 (B, h, w), commitment loss 0-dim).

        In training mode the codebook is then updated from this batch (EMA, then restarts); zq keeps the chosen codes.
        Computed in float32 even under autocast: distances of nearby vectors need the precision.
        """
        if z.dim() != 4 or z.shape[1] != self.D:
            raise ValueError(f"expected z of shape (B, {self.D}, h, w), got {tuple(z.shape)}")
        with torch.autocast(z.device.type, enabled=False):
            z = z.float()
            B, D, h, w = z.shape
            z_flat = z.permute(0, 2, 3, 1).reshape(-1, D)
            idx = nearest_codes(z_flat.detach(), self.codebook)
            zq = self.codebook[idx].view(B, h, w, D).permute(0, 3, 1, 2)  # a copy: the updates below leave it be
            if self.training:
                self.ema_update(z_flat.detach(), idx)
                self.restart_dead_codes(z_flat.detach())
            loss = commitment_loss(z, zq, self.beta)
            return straight_through(z, zq), idx.view(B, h, w), loss

    @torch.no_grad()
    def ema_update(self, z_flat: torch.Tensor, idx: torch.Tensor) -> None:
        """Move each code toward the mean of the vectors (N, D) assigned to it: a k-means step, smoothed over time.

        N_k <- decay·N_k + (1-decay)·n_k;  S_k <- decay·S_k + (1-decay)·Σ_{i: idx_i = k} z_i;  e_k = S_k / Ñ_k,
        with Ñ_k = (N_k + eps) / (Σ N + K·eps) · Σ N, Laplace smoothing so an unused code never divides by 0.
        """
        onehot = F.one_hot(idx, self.K).type_as(z_flat)  # (N, K)
        self.cluster_size.lerp_(onehot.sum(0), 1 - self.decay)
        self.embed_sum.lerp_(onehot.t() @ z_flat, 1 - self.decay)
        n = self.cluster_size.sum()
        smoothed = (self.cluster_size + self.eps) / (n + self.K * self.eps) * n
        self.codebook.copy_(self.embed_sum / smoothed.unsqueeze(1))

    @torch.no_grad()
    def restart_dead_codes(self, z_flat: torch.Tensor) -> torch.Tensor:
        """Put every code whose EMA count is below dead_threshold on a random row of z_flat (N, D).

        Returns the (K,) bool mask of the restarted codes. A restarted code counts as chosen by one vector
        (cluster_size 1, embed_sum = its vector): a few dozen steps to attract vectors before it can be restarted
        again. Written with torch.where, not a loop over the dead codes, so a GPU never waits for the CPU.
        """
        dead = self.cluster_size < self.dead_threshold
        pick = z_flat[torch.randint(len(z_flat), (self.K,), device=z_flat.device)]
        self.codebook.copy_(torch.where(dead[:, None], pick, self.codebook))
        self.embed_sum.copy_(torch.where(dead[:, None], pick, self.embed_sum))
        self.cluster_size.masked_fill_(dead, 1.0)
        self.restarts += dead.sum()
        return dead


# ----------------------------------------------------------------------------- encoder and decoder


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c)  # 32 groups when the channels allow it (Wu & He 2018)


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))): a pre-norm residual block (as in DDPM and the VQGAN)."""

    def __init__(self, c: int):
        super().__init__()
        self.net = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1),
                                 _norm(c), nn.SiLU(), nn.Conv2d(c, c, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)  # each block starts as the identity: a deep stack trains from step one
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class Encoder(nn.Module):
    """(B, 3, S, S) -> (B, D, S/f, S/f): a stem conv, then per stage a stride-2 conv and n_res residual blocks."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        layers, c_in = [nn.Conv2d(3, cfg.channels[0], 3, padding=1)], cfg.channels[0]
        for c in cfg.channels:
            layers.append(nn.Conv2d(c_in, c, 3, stride=2, padding=1))
            layers += [ResBlock(c) for _ in range(cfg.n_res)]
            c_in = c
        layers += [_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, cfg.latent_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Decoder(nn.Module):
    """(B, D, s, s) -> (B, 3, s·f, s·f): the encoder mirrored, nearest-neighbour upsampling + conv for each stride."""

    def __init__(self, cfg: VQConfig):
        super().__init__()
        chans = cfg.channels[::-1]
        layers = [nn.Conv2d(cfg.latent_dim, chans[0], 3, padding=1)]
        for c, c_out in zip(chans, chans[1:] + chans[-1:], strict=True):
            layers += [ResBlock(c) for _ in range(cfg.n_res)]
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1)]
        layers += [_norm(chans[-1]), nn.SiLU(), nn.Conv2d(chans[-1], 3, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)  # no tanh: the MSE keeps it in [-1, 1], to_pictures clamps


# ----------------------------------------------------------------------------- the VQ-VAE


class VQVAE(nn.Module):
    """Encoder -> VectorQuantizer -> Decoder.

    "zq" is a grid of codebook vectors (B, D, h, w); "latents" are zq · latent_scale, the unit-variance version a
    diffusion model draws (latent_scale = 1 / std of zq over the training set, set by fit_latent_scale and saved).
    """

    def __init__(self, cfg: VQConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder, self.decoder = Encoder(cfg), Decoder(cfg)
        self.quantizer = VectorQuantizer(cfg.codebook_size, cfg.latent_dim, cfg.beta, cfg.ema_decay,
                                         cfg.dead_threshold)
        self.latent_scale = 1.0

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, S, S) in [-1, 1] -> z (B, D, S/f, S/f), continuous. ValueError if S is not a multiple of f."""
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] % self.cfg.downsample or x.shape[3] % self.cfg.downsample:
            raise ValueError(f"expected (B, 3, H, W), H and W multiples of {self.cfg.downsample}; got {tuple(x.shape)}")
        return self.encoder(x)

    def quantize(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z (B, D, h, w) -> (zq (B, D, h, w) straight-through, indices (B, h, w))."""
        zq, idx, _ = self.quantizer(z)
        return zq, idx

    def decode(self, zq: torch.Tensor) -> torch.Tensor:
        """zq (B, D, h, w) -> x̂ (B, 3, h·f, w·f), nominally in [-1, 1]."""
        return self.decoder(zq)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, 3, S, S) -> (x̂ (B, 3, S, S), indices (B, S/f, S/f), commitment loss)."""
        zq, idx, commit = self.quantizer(self.encode(x))
        return self.decode(zq), idx, commit

    def codes_to_latents(self, idx: torch.Tensor) -> torch.Tensor:
        """Code indices (B, h, w) -> latents (B, D, h, w): the codebook vectors, times latent_scale."""
        if idx.dim() != 3 or idx.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"expected integer code indices (B, h, w), got {idx.dtype} {tuple(idx.shape)}")
        return self.quantizer.codebook[idx].permute(0, 3, 1, 2) * self.latent_scale

    @torch.no_grad()
    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """Pictures x (B, 3, S, S) in [-1, 1] -> latents (B, D, S/f, S/f) = quantised z · latent_scale (no grad)."""
        _, idx = self.quantize(self.encode(x))
        return self.codes_to_latents(idx)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, snap: bool = False) -> torch.Tensor:
        """Latents (B, D, h, w) -> pictures (B, 3, h·f, w·f) in [-1, 1] (no grad). snap=True first moves every
        latent vector to its nearest code (a sampler's output is only near the codebook)."""
        zq = latents / self.latent_scale
        if snap:
            zq, _ = self.quantize(zq)
        return self.decode(zq)


@torch.no_grad()
def fit_latent_scale(model: VQVAE, pictures: np.ndarray, batch_size: int = 256) -> float:
    """Set model.latent_scale = 1 / std of zq over `pictures` (uint8 (N, S, S, 3)) and return it.

    The std is over all values of all latent grids (one number), so that latents = zq · scale have unit variance.
    """
    device, total, total2, count = next(model.parameters()).device, 0.0, 0.0, 0
    was_training = model.training
    model.eval()
    for i in range(0, len(pictures), batch_size):
        x = to_tensor(torch.as_tensor(pictures[i:i + batch_size]).to(device))
        zq = model.quantize(model.encode(x))[0].double()
        total, total2, count = total + zq.sum().item(), total2 + zq.pow(2).sum().item(), count + zq.numel()
    model.train(was_training)
    std = math.sqrt(max(total2 / count - (total / count) ** 2, 1e-12))
    model.latent_scale = 1.0 / std
    return model.latent_scale


# ----------------------------------------------------------------------------- training


def _check_pictures(pictures: np.ndarray, cfg: VQConfig) -> None:
    s = cfg.image_size
    if getattr(pictures, "dtype", None) != np.uint8 or tuple(pictures.shape[1:]) != (s, s, 3) or len(pictures) < 1:
        raise ValueError(f"expected uint8 pictures (N, {s}, {s}, 3), got {getattr(pictures, 'dtype', type(pictures))}"
                         f" {tuple(getattr(pictures, 'shape', ()))}")


def train_vqvae(pictures: np.ndarray, cfg: VQConfig | None = None, steps: int = 2000, batch_size: int = 64,
                lr: float = 1e-3, device: str | torch.device = "cpu", seed: int = 0, progress: bool = True, *,
                weight_decay: float = 0.0, warmup: int | None = None, log_every: int | None = None,
                grad_clip: float = 1.0, scale_pictures: int = 8192) -> tuple[VQVAE, list[dict]]:
    """Train a VQ-VAE on uint8 pictures (N, S, S, 3) with S = cfg.image_size; returns (model in eval mode, log).

    Loss = MSE(x̂, x) on [-1, 1] + commitment; the codebook learns by EMA. Random batches (with replacement, no
    flips: left and right are attributes of a scene). AdamW (storylib.optim) with a linear warm-up then a cosine
    decay to lr/10 (storylib.mlp.warmup_cosine_lr), gradients clipped to grad_clip. bf16 autocast on CUDA only.
    log: one dict every log_every steps (and at the last), the means over those steps: step, loss, recon_mse,
    psnr (dB, of the batch reconstructions), perplexity (of the last batch's codes), restarts (so far), lr.
    At the end latent_scale is fitted on the first `scale_pictures` pictures.
    """
    from storylib.mlp import warmup_cosine_lr
    from storylib.optim import AdamW, param_groups, update

    cfg = cfg or VQConfig()
    _check_pictures(pictures, cfg)
    device = torch.device(device)
    torch.manual_seed(seed)  # weights, and the random encoder outputs restarted codes land on
    model = VQVAE(cfg).to(device).train()
    opt = AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.99))
    data = torch.as_tensor(pictures).to(device)  # uint8 on the device: 50k 64×64 pictures are 600 MB
    gen = torch.Generator().manual_seed(seed)
    warmup = min(100, steps // 10) if warmup is None else warmup
    log_every = log_every or max(1, steps // 50)
    log, sums = [], torch.zeros(3, device=device)
    for step in tqdm(range(steps), disable=not progress, desc="vqvae"):
        x = to_tensor(data[torch.randint(len(data), (batch_size,), generator=gen).to(device)])
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            x_hat, idx, commit = model(x)
        mse_each = (x_hat.float() - x).pow(2).flatten(1).mean(1)
        loss = mse_each.mean() + commit
        update(opt, loss, warmup_cosine_lr(step, steps, lr, warmup, lr / 10), grad_clip)
        sums += torch.stack([loss.detach(), mse_each.detach().mean(), (10 * torch.log10(4 / mse_each.detach())).mean()])
        if (step + 1) % log_every == 0 or step == steps - 1:
            n = log_every if (step + 1) % log_every == 0 else (step + 1) % log_every
            loss_m, mse_m, psnr_m = (sums / n).tolist()
            log.append({"step": step + 1, "loss": loss_m, "recon_mse": mse_m, "psnr": psnr_m,
                        "perplexity": codebook_perplexity(idx, cfg.codebook_size),
                        "restarts": int(model.quantizer.restarts), "lr": opt.param_groups[0]["lr"]})
            sums.zero_()
    model.eval()
    fit_latent_scale(model, pictures[:scale_pictures])
    return model, log


@torch.no_grad()
def evaluate_vqvae(model: VQVAE, pictures: np.ndarray, batch_size: int = 256) -> dict:
    """Reconstruct uint8 pictures (N, S, S, 3): {"psnr": dB of the uint8 reconstructions, "perplexity" of all
    their codes, "codes_used": how many distinct codes}. The model is left in the mode it was in."""
    was_training, device = model.training, next(model.parameters()).device
    model.eval()
    recon, codes = [], []
    for i in range(0, len(pictures), batch_size):
        x_hat, idx, _ = model(to_tensor(torch.as_tensor(pictures[i:i + batch_size]).to(device)))
        recon.append(to_pictures(x_hat))
        codes.append(idx.flatten().cpu())
    model.train(was_training)
    codes = torch.cat(codes)
    return {"psnr": psnr(np.concatenate(recon), np.asarray(pictures)),
            "perplexity": codebook_perplexity(codes, model.cfg.codebook_size),
            "codes_used": int(codes.unique().numel())}


# ----------------------------------------------------------------------------- saving and loading


def save_vqvae(model: VQVAE, folder: str | Path) -> Path:
    """Write <folder>/vqvae.safetensors (the weights and the codebook buffers) and <folder>/vqvae.json (format,
    config, latent_scale, the SHA-256 of the weights). Other files in the folder are left alone. Returns folder."""
    from safetensors.torch import save

    from storylib.checkpoint import write_file_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    doc = {"format": VQ_FORMAT, "config": asdict(model.cfg), "latent_scale": float(model.latent_scale),
           "sha256": hashlib.sha256(data).hexdigest()}
    write_file_atomic(folder / "vqvae.safetensors", data)
    write_file_atomic(folder / "vqvae.json", json.dumps(doc, indent=1).encode())
    return folder


def _read_config(file: Path) -> dict:
    if not file.is_file():
        raise ValueError(f"{file}: missing")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
        if doc["format"] != VQ_FORMAT:
            raise ValueError(f"format {doc['format']!r}, expected {VQ_FORMAT!r}")
        doc["cfg"], doc["latent_scale"] = VQConfig(**doc["config"]), float(doc["latent_scale"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{file}: not a VQ-VAE config ({type(e).__name__}: {e})") from None
    return doc


def load_vqvae(folder: str | Path, device: str | torch.device = "cpu") -> VQVAE:
    """The VQ-VAE saved by save_vqvae in `folder`, in eval mode on `device`.

    Raises ValueError naming the file when vqvae.json or vqvae.safetensors is missing, unreadable or corrupt (its
    SHA-256 differs from the one in vqvae.json), or when the weights' names or shapes do not fit the config.
    """
    from safetensors.torch import load

    folder = Path(folder)
    doc, file = _read_config(folder / "vqvae.json"), folder / "vqvae.safetensors"
    if not file.is_file():
        raise ValueError(f"{file}: missing")
    data = file.read_bytes()
    if hashlib.sha256(data).hexdigest() != doc.get("sha256"):
        raise ValueError(f"{file}: corrupt or not the file vqvae.json describes (SHA-256 mismatch)")
    try:
        tensors = load(data)
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise ValueError(f"{file}: not a readable safetensors file ({e})") from None
    model = VQVAE(doc["cfg"])
    ours = model.state_dict()
    if set(tensors) != set(ours):
        raise ValueError(f"{file}: weights do not fit the config: missing {sorted(set(ours) - set(tensors))}, "
                         f"unexpected {sorted(set(tensors) - set(ours))}")
    for k, v in tensors.items():
        if v.shape != ours[k].shape or v.dtype != ours[k].dtype:
            raise ValueError(f"{file}: {k} is {v.dtype} {tuple(v.shape)}, the config needs "
                             f"{ours[k].dtype} {tuple(ours[k].shape)}")
    model.load_state_dict(tensors)
    model.latent_scale = doc["latent_scale"]
    return model.to(device).eval()
