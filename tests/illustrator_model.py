"""A tiny untrained illustrator for tests of the plumbing (widget, CLI, server): saved the way models/illustrator is,
so `Illustrator.load(folder)` reads it; draws noise in milliseconds.

    folder = tiny_illustrator(tmp_path / "illustrator")
"""

from __future__ import annotations

from pathlib import Path

import torch

from storylib import dit as D
from storylib import vqvae as V


def tiny_illustrator(folder: Path, image_size: int = 16) -> Path:
    """Save a random VQ-VAE (image_size², 4× down) + DiT under folder/vqvae and folder/dit; returns folder."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vq = V.VQVAE(V.VQConfig(image_size=image_size, channels=(8, 8), n_res=0, latent_dim=3,
                                codebook_size=11)).eval()
        dit = D.DiT(D.DiTConfig(latent_channels=3, latent_size=image_size // 4, patch=2, n_layer=1, n_head=2,
                                n_embd=16, text_layers=1)).eval()
    V.save_vqvae(vq, Path(folder) / "vqvae")
    D.save_dit(dit, Path(folder) / "dit")
    return Path(folder)
