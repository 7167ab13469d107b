"""Build solutions/ch17_multimodal.ipynb, the nbgrader source notebook of Chapter 17 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch17_multimodal", title="Chapter 17 — Pictures: a VQ-VAE and a diffusion transformer")
nb.markdown(
    """
    In this notebook you write the parts of the illustrator, in the order of the book: vector quantisation in
    `storylib/vqvae.py` (the nearest code, the straight-through estimator, the commitment loss), then in
    `storylib/dit.py` the straight line of flow matching, the patches a transformer reads, the adaLN-Zero block
    that lets the time and the caption steer it, classifier-free guidance, the Euler step and the sampler.

    The small cells use random tensors and a tiny random DiT (fast). The last cell trains a tiny VQ-VAE and a tiny
    DiT for a few seconds and draws with *your* code. The DiT is built from Chapter 5's attention and MLP: your
    Chapter 5 must pass for the block and the sampler to run.
    """
)
nb.code(
    """
    import torch

    from storylib.dit import DiT, DiTConfig

    torch.manual_seed(0)
    cfg = DiTConfig(latent_channels=3, latent_size=4, patch=2, n_layer=2, n_head=2, n_embd=32, text_vocab=50,
                    text_len=6, text_layers=1)
    tiny = DiT(cfg).eval()  # random and untrained: zero-initialised modulations, so it outputs 0 at first
    """,
    locked=True,
)
nb.exercise(
    "ch17.nearest_codes",
    try_it="""
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    z = torch.tensor([[0.9, 0.1], [0.1, 1.6], [-0.2, 0.1], [0.6, 0.0]])
    print(nearest_codes(z, codebook), "(expected tensor([1, 2, 0, 1]))")
    """,
)
nb.exercise(
    "ch17.straight_through",
    try_it="""
    z = torch.tensor([0.9, 0.1, 1.6], requires_grad=True)
    zq = torch.tensor([1.0, 0.0, 2.0])  # the nearest codes
    out = straight_through(z, zq)
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    print(out.detach(), "(the value of zq)")
    print(z.grad, "(expected tensor([1., 2., 3.]): the gradient passes to z unchanged)")
    """,
)
nb.exercise(
    "ch17.commitment_loss",
    try_it="""
    z = torch.tensor([0.9, 0.1, 1.6], requires_grad=True)
    zq = torch.tensor([1.0, 0.0, 2.0], requires_grad=True)
    loss = commitment_loss(z, zq, beta=0.25)
    loss.backward()
    print(loss.item(), "(expected 0.015 = 0.25 · (0.01 + 0.01 + 0.16) / 3)")
    print(z.grad, zq.grad, "(zq gets no gradient: None)")
    """,
)
nb.question(
    "ch17_q_codes",
    points=1,
    prompt="""
    The illustrator's VQ-VAE turns a 64×64 picture into a 16×16 grid of codes, each one of K = 512 codebook
    vectors. How many bits does the grid of codes hold (log2 of the number of different grids)? Set `bits` (an
    int).
    """,
    solution="bits = 16 * 16 * 9",
    test="assert bits == 2304, '256 codes of log2(512) = 9 bits each'",
)
nb.exercise(
    "ch17.interpolate",
    try_it="""
    x0, noise = torch.zeros(3, 2, 2, 2), torch.ones(3, 2, 2, 2)
    xt = interpolate(x0, noise, torch.tensor([0.0, 0.25, 1.0]))
    print(xt[:, 0, 0, 0], "(expected tensor([0.0000, 0.2500, 1.0000]))")
    """,
)
nb.exercise(
    "ch17.patchify",
    try_it="""
    x = torch.arange(2 * 4 * 6).reshape(1, 2, 4, 6)  # C = 2 channels of a 4 x 6 grid
    tokens = patchify(x, 2)
    print(tokens.shape, "(expected (1, 6, 8): 2 x 3 patches, 2·2·2 numbers each)")
    print(tokens[0, 0], "(expected tensor([ 0, 24,  1, 25,  6, 30,  7, 31]))")
    """,
)
nb.exercise(
    "ch17.unpatchify",
    try_it="""
    from storylib.dit import patchify

    x = torch.randn(2, 3, 4, 6)
    print(torch.equal(unpatchify(patchify(x, 2), 2, 3, 4, 6), x), "(expected True)")
    """,
)
nb.exercise(
    "ch17.adaln_zero",
    try_it="""
    block = tiny.blocks[0]
    x, c = torch.randn(2, 5, 32), torch.randn(2, 32)
    with torch.no_grad():
        print("zero modulation, the block is the identity:", torch.equal(block(x, c), x))
        block.adaLN_modulation[1].weight.normal_(0, 0.1)
        print("with a modulation it changes x by", (block(x, c) - x).abs().mean().item())
        block.adaLN_modulation[1].weight.zero_()
    """,
)
nb.exercise(
    "ch17.cfg_velocity",
    try_it="""
    v_cond, v_uncond = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.5])
    print(cfg_velocity(v_cond, v_uncond, 1.0), "(expected v_cond)")
    print(cfg_velocity(v_cond, v_uncond, 3.0), "(expected tensor([2.0000, 1.0000]))")
    """,
)
nb.exercise(
    "ch17.euler_step",
    try_it="""
    x0, noise = torch.tensor([0.3, -1.0]), torch.tensor([1.5, 0.5])
    x = noise
    for k in range(4):  # the straight line from noise (t = 1) to x0 (t = 0) has velocity noise - x0
        x = euler_step(x, noise - x0, 1 - k / 4, 1 - (k + 1) / 4)
    print(x, "(expected x0 = tensor([ 0.3000, -1.0000]))")
    """,
)
nb.exercise(
    "ch17.sample",
    try_it="""
    tokens = torch.randint(0, 50, (2, 6))
    z = sample(tiny, tokens, steps=5, guidance=3.0, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    print(z.shape, "(expected (2, 3, 4, 4))")
    print("the untrained DiT's velocity is 0, so the sample is the noise:", torch.allclose(z, noise))
    """,
)
nb.markdown(
    """
    ## Your code draws

    A tiny VQ-VAE learns 16×16 scenes for a few seconds (your nearest codes, straight-through estimator and
    commitment loss in every step), then a tiny DiT learns to draw its latents by flow matching (your
    interpolation, patches and blocks) and draws four new grids (your guidance, Euler steps and sampler). The
    captions are random ids here and forty steps teach little: the four drawings (right) are rough patches of the
    scenes' colours. The book's illustrator is the same code, trained for longer on 64×64 scenes with real captions.
    """
)
nb.code(
    """
    import numpy as np
    from PIL import Image

    from storylib.dit import sample, train_dit
    from storylib.scenes import make_dataset
    from storylib.vqvae import VQConfig, to_pictures, to_tensor, train_vqvae

    data = make_dataset(128, seed=0, size=16)
    vq, vq_log = train_vqvae(data["pictures"], VQConfig(image_size=16, channels=(16, 16), n_res=0, latent_dim=3,
                                                        codebook_size=32),
                             steps=40, batch_size=32, progress=False, log_every=40, scale_pictures=128)
    print(f"VQ-VAE: reconstruction PSNR {vq_log[-1]['psnr']:.1f} dB, {vq_log[-1]['perplexity']:.1f} codes in use")
    latents = vq.latents(to_tensor(data["pictures"]))  # (128, 3, 4, 4)
    tokens = torch.randint(0, 50, (128, 6), generator=torch.Generator().manual_seed(0))
    model, dit_log = train_dit(latents, tokens, cfg, steps=40, batch_size=32, progress=False, log_every=40)
    print(f"DiT: flow-matching loss {dit_log[-1]['loss']:.3f}")
    z = sample(model, tokens[:4], steps=10, guidance=2.0, generator=torch.Generator().manual_seed(0))
    drawn = to_pictures(vq.decode_latents(z, snap=True))
    row = np.concatenate([*data["pictures"][:4], *drawn], axis=1)  # four scenes, then four drawings
    Image.fromarray(row).resize((row.shape[1] * 6, row.shape[0] * 6), Image.NEAREST)
    """,
    locked=True,
)

if __name__ == "__main__":
    print(nb.write())
