"""Write book/ch17_multimodal.ipynb, the Chapter 17 page (the book executes it at build time).

    .venv/bin/python scripts/notebooks/build_ch17_book.py

The page loads the shipped illustrator (models/illustrator, or $LLM101N_ILLUSTRATOR) and the GPU run's table
(bench/results/illustrator.json); it trains only a small VQ-VAE itself.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import BookPage  # noqa: E402

page = BookPage("ch17_multimodal")
md, code, ex = page.md, page.code, page.exercise

md("""
# Pictures: a VQ-VAE and a diffusion transformer

The storyteller writes "Lily kicked her big red ball under the old tree", and a picture book would show it. This
chapter gives the storyteller a second half that *draws*: type a sentence, get a little picture of it. It is built
the way today's image generators are (Stable Diffusion 3, DiT, Sora), only small enough to read in an afternoon and
to run on a laptop:

- **pictures with captions**, drawn by rules (`storylib/scenes.py`), because nobody drew TinyStories;
- a **VQ-VAE** (`storylib/vqvae.py`) that squeezes a picture into a small grid of codes and paints it back;
- **flow matching**, the training objective: learn to walk from noise to a picture in a straight line;
- a **diffusion transformer** (`storylib/dit.py`): Chapter 5's attention and MLP blocks, told the time and the
  caption through adaLN-Zero;
- **sampling with classifier-free guidance**, and a way to **measure** pictures: a judge that reads them back;
- the **illustrator** (`storylib/illustrate.py`) that turns a story's sentence into a caption and a caption into a
  picture, in the chat and the web app.
""")
code("""
import json
import os
import re
import textwrap
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from IPython.display import Image, display

from storylib import dit as D
from storylib import scene_classifier as J
from storylib import scenes
from storylib import vqvae as V
from storylib.data import course_file, load_stories
from storylib.illustrate import Illustrator, NothingToDraw, caption_for, illustrator_folder, pick_sentence, read_scene

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 2)))  # the book is built on two CPU cores
t_page = time.perf_counter()

# the quality table of the GPU run that trained the shipped illustrator (bench/train_illustrator.py)
RESULTS = course_file("bench/results/illustrator.json")
table = json.loads(RESULTS.read_text())
ill = Illustrator.load(illustrator_folder())  # models/illustrator: vqvae/, dit/ (and judge/, §17.6)
judge = J.load_classifier(illustrator_folder() / "judge")
tok = ill.tokenizer
print(f"the illustrator: {illustrator_folder()}; its table: {RESULTS.name}, trained on {table['card']} "
      f"({table['date']})")


def show(pictures, titles=(), cols=6, size=1.9, fontsize=7.5, wrap=24):
    \"\"\"A grid of uint8 pictures with wrapped titles.\"\"\"
    rows = -(-len(pictures) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * size, rows * (size + 0.35)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, picture, title in zip(axes.flat, pictures, list(titles) + [""] * len(pictures)):
        ax.imshow(picture, interpolation="nearest")
        lines = [w for line in title.split("\\n") for w in textwrap.wrap(line, wrap)]
        ax.set_title("\\n".join(lines), fontsize=fontsize)
    plt.tight_layout()
    plt.show()
""")

# --------------------------------------------------------------------------------------------------- 17.1
md("""
## Pictures as tensors

To learn to draw from captions, a model needs many pictures *with* captions. Image generators learn from hundreds
of millions of photos and their alt texts; we have stories and no pictures at all. So we draw them by rules.
`storylib.scenes` knows a few things from the stories (a girl, a dog, a ball, a tree, a boat...), eight colours, two
sizes, where a thing stands, whether it is *on*, *under* or *next to* another, two or three of a thing, the time of
day and the weather. A random **scene** is drawn at four times the size with PIL and shrunk, with jitter everywhere
(positions, sizes, shades, the sky's gradient, a little sensor noise), so that a model has to learn "a dog" and
"blue" rather than memorise a few pixels. Every scene comes with its caption, written the way a story would say it:
""")
code("""
demo = scenes.make_dataset(18, seed=0, split="train", size=64)
show(demo["pictures"], demo["captions"])
""")
md("""
A picture is an array of integers: height × width × 3 colour channels (red, green, blue), each a byte from 0 to
255. Networks prefer numbers around zero with a spread of about one, and PyTorch's convolutions want the channels
first, so `to_tensor` maps 0…255 to $[-1, 1]$ and moves the channels: $x = p / 127.5 - 1$. That range matters a
second time in §17.3, where pictures are mixed with Gaussian noise of the same scale. `to_pictures` goes back.
""")
code("""
pictures = demo["pictures"][:4]
x = V.to_tensor(pictures)
print(f"pictures: {pictures.dtype} {pictures.shape}  ->  x: {x.dtype} {tuple(x.shape)}, "
      f"min {x.min():.3f}, max {x.max():.3f}, mean {x.mean():+.3f}")
print("the round trip gives the same bytes:", np.array_equal(V.to_pictures(x), pictures))
""")
md("""
One more thing the scenes are for: a test of **composition**. A few colour + thing pairs are *held out*: the training
split never has them, the held-out split always has one. A model that draws "a blue dog" has never seen one; it
has seen blue things and dogs of other colours, and has to put the two together.
""")
code("""
import random

print("held-out pairs:", ", ".join(f"{c} {k}" for c, k in scenes.HELDOUT_PAIRS))
n = 5000
train_specs = [scenes.sample_spec(random.Random(i), "train") for i in range(n)]
heldout_specs = [scenes.sample_spec(random.Random(i), "heldout") for i in range(n)]
print(f"of {n} training scenes, {sum(map(scenes.has_heldout_pair, train_specs))} hold a held-out pair; "
      f"of {n} held-out scenes, {sum(map(scenes.has_heldout_pair, heldout_specs))}")
held = scenes.make_dataset(6, seed=3, split="heldout", size=64)
show(held["pictures"], held["captions"])
""")

# --------------------------------------------------------------------------------------------------- 17.2
md("""
## The VQ-VAE: pictures as a grid of codes

A diffusion model could learn to draw the pixels directly. But most of a picture's numbers are detail a model
should not spend its effort on: the exact shade of each pixel of the sky, the antialiased edge of a ball. **Latent
diffusion** (Rombach et al. 2022, the "Stable" in Stable Diffusion) first learns a *compressor*: an encoder that
turns a picture into a much smaller grid of numbers, and a decoder that paints the picture back from it. The
generator then draws in the small grid, and the decoder does the painting.

Our compressor is a **VQ-VAE** (van den Oord et al. 2017, "Neural Discrete Representation Learning"). The encoder,
a stack of convolutions, halves the picture's side twice; at each position of the resulting grid it outputs a
vector of $D$ numbers. Each of those vectors is then replaced by the nearest of $K$ learnt **code** vectors, the
codebook. The picture becomes a grid of code numbers, like a sentence becomes a list of token ids:
""")
code("""
vq = ill.vq
c = vq.cfg
S, s = c.image_size, c.latent_size
print(f"a picture: {S}·{S}·3 = {S * S * 3:,} numbers")
print(f"its latent grid: {s}·{s} vectors of D = {c.latent_dim} numbers = {s * s * c.latent_dim:,} numbers, "
      f"{S * S * 3 / (s * s * c.latent_dim):.0f}× fewer")
print(f"as codes: {s}·{s} = {s * s} numbers out of K = {c.codebook_size}, "
      f"{s * s * np.log2(c.codebook_size):,.0f} bits (the picture: {S * S * 3 * 8:,} bits)")
""")
md("""
### The nearest code

With the encoder's output $z \\in \\mathbb{R}^D$ at one position and the codebook $e_1, \\dots, e_K$, quantisation
picks

$$
k^* = \\arg\\min_k \\lVert z - e_k \\rVert^2, \\qquad z_q = e_{k^*}.
$$

For $N$ vectors at once, the $N \\times K$ squared distances need not be built as an $N \\times K \\times D$ tensor:
$\\lVert z - e \\rVert^2 = \\lVert z \\rVert^2 - 2\\, z \\cdot e + \\lVert e \\rVert^2$, and the middle term for all
pairs is one matrix product $z\\, E^\\top$. That is how every vector-quantisation library computes it.
""")
ex("ch17.nearest_codes", "The index of the nearest codebook row for every row of `z_flat`, with the distances as one "
   "$(N, K)$ matrix from the expansion above.")
md("""
In two dimensions you can see what it does: every point belongs to its nearest code, and the codes split the plane
into cells (a Voronoi diagram). A VQ-VAE does the same in $D$ dimensions, with codes placed where the encoder's
vectors are.
""")
code("""
g = torch.Generator().manual_seed(0)
points = torch.randn(600, 2, generator=g) * torch.tensor([1.0, 0.6])
codebook = torch.randn(8, 2, generator=g)
idx = V.nearest_codes(points, codebook)
plt.figure(figsize=(5, 3.6))
plt.scatter(points[:, 0], points[:, 1], c=idx, cmap="tab10", vmin=0, vmax=9, s=8)
plt.scatter(codebook[:, 0], codebook[:, 1], c=range(8), cmap="tab10", vmin=0, vmax=9, s=160, marker="*",
            edgecolors="black")
plt.title("600 vectors, each coloured by its nearest of 8 codes (stars)", fontsize=9)
plt.axis("equal"); plt.tight_layout(); plt.show()
""")
md("""
### Gradients through a lookup: the straight-through estimator

The decoder's loss has a gradient with respect to $z_q$, but $z_q = e_{k^*}$ is a table lookup, and the argmin has
no useful gradient: nudge $z$ a little and $k^*$ does not change. The encoder would never learn. The VQ-VAE's fix
is to *pretend* quantisation is the identity on the way back: copy the gradient of $z_q$ onto $z$. In code that is
one line, with sg the stop-gradient (`.detach()`):

$$
z_q^{\\text{st}} = z + \\operatorname{sg}(z_q - z),
$$

whose value is $z + z_q - z = z_q$ and whose gradient, since the bracket counts as a constant, is that of $z$.
""")
ex("ch17.straight_through", "The value of `zq`, the gradient of `z`.")
code("""
z = torch.randn(5, 2, requires_grad=True)
zq = codebook[V.nearest_codes(z.detach(), codebook)]
out = V.straight_through(z, zq)
(out * torch.arange(1.0, 3.0)).sum().backward()  # a loss whose gradient is (1, 2) for every row
print("value equals the codes (up to rounding):", torch.allclose(out.detach(), zq))
print("gradient reaching z, row by row:", z.grad.tolist())
""")
md("""
### The loss, and a codebook learnt by moving averages

The straight-through trick teaches the encoder; what teaches the codebook? And what stops the encoder's outputs from
drifting ever further from their codes (the decoder only ever sees the codes, so nothing in the reconstruction
loss keeps $z$ near them)? The VQ-VAE's loss has a second term, the **commitment loss**:

$$
\\mathcal{L} = \\underbrace{\\lVert \\hat x - x \\rVert^2}_{\\text{reconstruction}}
  + \\beta\\, \\lVert z - \\operatorname{sg}(z_q) \\rVert^2 ,
$$

which pulls each $z$ toward its code (the gradient goes to the encoder only). The codebook itself is not trained by
gradient descent at all: each code moves to the **running mean** of the vectors that chose it (the paper's appendix;
a k-means step, smoothed over batches). With $n_k$ the number of vectors that chose code $k$ in a batch and
$s_k$ their sum,

$$
N_k \\leftarrow \\gamma N_k + (1 - \\gamma)\\, n_k, \\qquad S_k \\leftarrow \\gamma S_k + (1 - \\gamma)\\, s_k, \\qquad
e_k = S_k / N_k .
$$

One failure is common: a code that no vector chooses never moves again, a **dead code**, and the codebook shrinks to
the few codes the encoder settled on first. `VectorQuantizer` restarts a code whose $N_k$ has fallen below a
threshold on a random encoder output of the current batch (as Jukebox does), so every code stays in use. The
**perplexity** of the code usage, $\\exp(-\\sum_k p_k \\log p_k)$, counts how many codes are really in use: $K$ when
all are used equally, 1 when one code does everything.
""")
code("""
print(f"the shipped VQ-VAE: beta = {c.beta}, EMA decay gamma = {c.ema_decay}, "
      f"a code is dead below {c.dead_threshold} vectors a batch")
""")
ex("ch17.commitment_loss", "$\\beta$ times the mean of $(z - \\operatorname{sg}(z_q))^2$.")
md("""
### A small VQ-VAE, trained here

Here is the whole recipe on a small scale: 32 × 32 pictures (a grid of 8 × 8 codes), a narrow network, a codebook
of 64 codes, a few hundred steps on the CPU. `train_vqvae` logs the loss, the PSNR of the reconstructions (peak
signal-to-noise ratio, $10 \\log_{10}(\\text{peak}^2 / \\text{MSE})$ in decibels: higher is better, and every 6 dB
halves the error's size), the perplexity and the restarts.
""")
code("""
small_cfg = V.VQConfig(image_size=32, channels=(32, 64), n_res=1, latent_dim=4, codebook_size=64)
train32 = scenes.make_dataset(2000, seed=1, split="train", size=32)["pictures"]
val32 = scenes.make_dataset(200, seed=2, split="train", size=32)["pictures"]
t0 = time.perf_counter()
small, log = V.train_vqvae(train32, small_cfg, steps=250, batch_size=32, lr=1e-3, progress=False)
print(f"{sum(p.numel() for p in small.parameters()):,} parameters, 250 steps in {time.perf_counter() - t0:.0f} s")

fig, axes = plt.subplots(1, 3, figsize=(12, 2.8))
for ax, key, label in zip(axes, ["recon_mse", "psnr", "perplexity"],
                          ["reconstruction MSE", "PSNR (dB)", f"perplexity (of K = {small_cfg.codebook_size})"]):
    ax.plot([r["step"] for r in log], [r[key] for r in log])
    ax.set_xlabel("step"); ax.set_title(label, fontsize=10)
axes[0].set_yscale("log")
plt.tight_layout(); plt.show()
ev = V.evaluate_vqvae(small, val32)
print(f"on {len(val32)} validation pictures: PSNR {ev['psnr']:.1f} dB, perplexity {ev['perplexity']:.1f}, "
      f"{ev['codes_used']} of {small_cfg.codebook_size} codes used; {log[-1]['restarts']} codes restarted "
      f"(the first {small_cfg.codebook_size} are the initialisation: every code starts dead)")
""")
code("""
with torch.no_grad():
    recon32, codes32, _ = small(V.to_tensor(val32[:8]))
show(list(val32[:8]) + list(V.to_pictures(recon32)), ["picture"] * 8 + ["reconstruction"] * 8, cols=8, size=1.5)
""")
md("""
The shapes and colours come back after a few hundred steps; the fine detail (a bird's beak, the rain) does not yet.
The shipped VQ-VAE is the same code, larger and at 64 × 64, trained on the GPU on many more pictures for many more
steps (`bench/train_illustrator.py`). Its reconstructions of pictures it never saw, with the grid of codes each
one became:
""")
code("""
val64 = scenes.make_dataset(200, seed=2, split="train", size=64)
with torch.no_grad():
    recon, codes, _ = vq(V.to_tensor(val64["pictures"][:6]))
fig, axes = plt.subplots(3, 6, figsize=(12, 6.3))
for i in range(6):
    axes[0, i].imshow(val64["pictures"][i]); axes[0, i].set_title("picture", fontsize=8)
    axes[1, i].imshow(codes[i], cmap="tab20", interpolation="nearest")
    axes[1, i].set_title(f"{s}×{s} codes", fontsize=8)
    axes[2, i].imshow(V.to_pictures(recon)[i]); axes[2, i].set_title("decoded", fontsize=8)
for ax in axes.flat:
    ax.axis("off")
plt.tight_layout(); plt.show()
ev = V.evaluate_vqvae(vq, val64["pictures"])
print(f"the shipped VQ-VAE on {len(val64['pictures'])} validation pictures: PSNR {ev['psnr']:.1f} dB, perplexity "
      f"{ev['perplexity']:.0f}, {ev['codes_used']} of {c.codebook_size} codes used")
vf = table["vq_final"]
print(f"its last training steps ({table['steps']['vq']:,} steps on {table['n']['train']:,} pictures in "
      f"{table['vq_s'] / 60:.1f} min on {table['card']}): PSNR {vf['psnr']:.1f} dB, "
      f"perplexity {vf['perplexity']:.0f}, {vf['restarts']:,} restarts in all")
""")

# --------------------------------------------------------------------------------------------------- 17.3
md("""
## Diffusion by flow matching

Now the generator. Its job: produce a latent grid (that the decoder turns into a picture) for a caption. A
**diffusion model** learns this by learning to *undo noise*. Take a real latent grid $x_0$ and Gaussian noise
$\\varepsilon \\sim \\mathcal{N}(0, I)$ of the same shape, and mix them: **flow matching** (Lipman et al. 2023; the
same idea as rectified flow, Liu et al. 2023, and the objective of Stable Diffusion 3) uses the straight line

$$
x_t = (1 - t)\\, x_0 + t\\, \\varepsilon, \\qquad t \\in [0, 1],
$$

from the data at $t = 0$ to pure noise at $t = 1$. (For the mix to make sense, the latents should have the noise's
scale: the VQ-VAE's `latent_scale` divides them by their standard deviation.) Here is one picture's latent grid
walked along that line, each grid decoded as if it were a picture's:
""")
ex("ch17.interpolate", "$x_t = (1 - t)\\,x_0 + t\\,\\varepsilon$, with one $t$ per example broadcast over the grid.")
code("""
x0_all = vq.latents(V.to_tensor(val64["pictures"]))  # (N, D, s, s), the codes times latent_scale
print(f"latents {tuple(x0_all.shape)}: mean {x0_all.mean():+.3f}, std {x0_all.std():.3f} (the noise: 0 and 1)")
x0 = x0_all[:1].expand(6, -1, -1, -1)
noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0)).expand(6, -1, -1, -1)
ts = torch.linspace(0, 1, 6)
xt = D.interpolate(x0, noise, ts)
show(V.to_pictures(vq.decode_latents(xt)), [f"t = {t:.1f}" for t in ts], cols=6)
""")
md("""
Going forward is easy: no learning at all. The model learns to go *back*. Along the line, $x_t$ moves with constant
velocity

$$
\\frac{d x_t}{d t} = \\varepsilon - x_0 ,
$$

and the network $v_\\theta(x_t, t, c)$, given the mixed grid, the time and the caption $c$, is trained to predict
it. The loss is a plain mean squared error, at a random time for every example:

$$
\\mathcal{L}(\\theta) = \\mathbb{E}_{x_0, c,\\, \\varepsilon,\\, t}\\,
  \\bigl\\lVert v_\\theta(x_t, t, c) - (\\varepsilon - x_0) \\bigr\\rVert^2 .
$$

Why would predicting a velocity teach the model to draw? From pure noise, $x_1 = \\varepsilon$, a model that knows
the velocity can walk the line backwards to $t = 0$. It cannot know *which* $x_0$ a given noise came from, so it
learns the average direction over every picture that fits the caption; following those averaged directions step by
step still ends on a plausible picture (that is the theorem of flow matching). The times are drawn from a
logit-normal distribution (SD3's choice), most of them near $t = 0.5$, where guessing the velocity is hardest.

A useful yardstick: a model that always answers 0 (which is what the DiT of §17.4 does before training) has a loss
of $\\mathbb{E}\\lVert \\varepsilon - x_0 \\rVert^2 = 1 + \\operatorname{Var}(x_0)$ per number, about 2. The shipped
model, on validation latents and their captions:
""")
code("""
val_tokens = D.encode_captions(tok, val64["captions"], ill.dit.config.text_len)
g = torch.Generator().manual_seed(0)
with torch.no_grad():
    loss = np.mean([D.flow_matching_loss(ill.dit, x0_all[i:i + 50], val_tokens[i:i + 50], g).item()
                    for i in range(0, 200, 50)])
zero = (torch.randn(x0_all.shape, generator=g) - x0_all).pow(2).mean()
print(f"flow-matching loss on {len(x0_all)} validation latents: the shipped DiT {loss:.3f}; "
      f"a model that answers 0: {zero:.3f}")
print(f"the DiT's last training steps: loss {table['dit_final']['loss']:.3f} "
      f"({table['steps']['dit']:,} steps in {table['dit_s'] / 60:.1f} min on {table['card']})")
""")
md("""
The loss never goes near zero, and should not: the same $x_t$ can come from many pairs $(x_0, \\varepsilon)$, and
the model is rewarded for their average velocity, not for any one of them.
""")

# --------------------------------------------------------------------------------------------------- 17.4
md("""
## The diffusion transformer

The network $v_\\theta(x_t, t, c)$ is a **DiT** (Peebles & Xie 2023, "Scalable Diffusion Models with Transformers"):
Chapter 5's transformer blocks, with three changes. Its inputs are patches of a grid instead of tokens; it attends in
both directions (no causal mask: every patch may look at every other); and it is told the time and the caption.

**Patches.** The $D \\times s \\times s$ latent grid is cut into $p \\times p$ squares, each flattened into one
vector of $p \\cdot p \\cdot D$ numbers: a sequence of $(s/p)^2$ "tokens". A linear layer embeds them, and fixed 2-D
sine-cosine positions (half the channels for the row, half for the column) say where each one was. At the end the
same cut is undone.
""")
code("""
cfg = ill.dit.config
tokens = D.patchify(x0_all[:2], cfg.patch)
print(f"latents {tuple(x0_all[:2].shape)} -> patchify(p = {cfg.patch}) -> {tuple(tokens.shape)}: "
      f"{cfg.n_patches} tokens of {cfg.patch}·{cfg.patch}·{cfg.latent_channels} numbers")
back = D.unpatchify(tokens, cfg.patch, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
print("unpatchify gives the grid back:", torch.equal(back, x0_all[:2]))
""")
ex("ch17.patchify", "Cut `(B, C, H, W)` into `(B, (H/p)(W/p), p·p·C)`: two reshapes around one permute, in DiT's "
   "element order.")
ex("ch17.unpatchify", "patchify's inverse.")
md("""
**The caption.** The illustrator reads captions with the storyteller's own tokenizer (Chapter 6), so the words
"blue" and "dog" are the same ids the storyteller writes. A small text encoder (Chapter 5's `gpt2.Block`, without the
causal mask) turns the ids into one feature vector per token; short captions are padded with a PAD id, and an
all-PAD caption is the *null caption* (§17.5). The word features go *in front of* the patches, and the whole
sequence goes through the blocks, so every patch can attend to every word: this **in-context** conditioning is
what binds "blue" to "dog".
""")
code("""
caption = "a blue dog on the left in the rain"
ids = D.encode_captions(tok, [caption], cfg.text_len)[0]
words = [tok.decode([i]) for i in ids.tolist() if i != cfg.pad_id]
print(f"{caption!r} -> {len(words)} tokens {words}, padded to {cfg.text_len} with PAD = {cfg.pad_id}")
""")
md("""
**The time** enters as sinusoidal features, as positions did in Chapter 5, followed by a small MLP: many frequencies,
so that $t = 0.50$ and $t = 0.52$ differ in the fast ones and $t = 0.1$ and $t = 0.9$ in the slow ones.
""")
code("""
emb = D.timestep_embedding(torch.linspace(0, 1, 401), 128)
plt.figure(figsize=(9, 2.6))
plt.imshow(emb.T, aspect="auto", cmap="RdBu", extent=[0, 1, 128, 0])
plt.xlabel("t"); plt.ylabel("feature"); plt.colorbar()
plt.title("timestep_embedding(t, 128): cosines then sines, from fast to slow frequencies", fontsize=9)
plt.tight_layout(); plt.show()
""")
md("""
**adaLN-Zero.** The time embedding plus the mean of the caption's word features make one conditioning vector $c$
per example, and $c$ sets every block's layer norms. From $c$, a linear layer makes six vectors: a shift $\\beta$,
a scale $\\gamma$ and a gate $\\alpha$ for the attention, and three more for the MLP. The block is Chapter 5's
pre-norm block with the norm modulated and each residual branch gated:

$$
\\begin{aligned}
x &\\leftarrow x + \\alpha_1 \\odot \\operatorname{Attn}\\bigl(\\operatorname{LN}(x)\\,(1 + \\gamma_1)
  + \\beta_1\\bigr) \\\\
x &\\leftarrow x + \\alpha_2 \\odot \\operatorname{MLP}\\bigl(\\operatorname{LN}(x)\\,(1 + \\gamma_2) + \\beta_2\\bigr)
\\end{aligned}
$$

The "Zero": that linear layer starts with all its weights and biases at zero. Then every gate $\\alpha$ is 0 and
each block adds nothing: **at initialisation every block is the identity**, and the final layer (zero too) outputs
0. A deep stack of identities passes its input and its gradients through untouched, so training starts from a
stable network and each block learns how much to add (DiT found this beat every other way of conditioning).
""")
ex("ch17.adaln_zero", "The six vectors from `c`, the two modulated norms and the two gated residual branches above.")
code("""
fresh = D.DiT(D.DiTConfig(latent_channels=cfg.latent_channels, n_layer=2, n_embd=64, n_head=2)).eval()
xt = torch.randn(3, cfg.latent_channels, cfg.latent_size, cfg.latent_size)
t = torch.rand(3)
tokens = D.encode_captions(tok, ["a blue dog", "two cats at night", "a red ball under a tree"], cfg.text_len)
with torch.no_grad():
    seq = torch.randn(3, cfg.text_len + cfg.n_patches, 64)
    cond = fresh.t_embed(t) + fresh.text(tokens)[1]
    print("a fresh block changes its input by", (fresh.blocks[0](seq, cond) - seq).abs().max().item())
    print("a fresh DiT outputs at most", fresh(xt, t, tokens).abs().max().item())
""")
md("""
The shipped model, part by part:
""")
code("""
dit = ill.dit
parts = {"patch embedding": dit.x_embed, "time embedding": dit.t_embed, "text encoder": dit.text,
         "DiT blocks": dit.blocks, "final layer": dit.final}
for name, module in parts.items():
    print(f"  {name:<16} {sum(p.numel() for p in module.parameters()):>12,}")
print(f"  {'all':<16} {dit.num_params():>12,}  ({cfg.n_layer} blocks, width {cfg.n_embd}, {cfg.n_head} heads; "
      f"a sequence of {cfg.text_len} words + {cfg.n_patches} patches)")
""")

# --------------------------------------------------------------------------------------------------- 17.5
md("""
## Sampling and guidance

To draw, start from noise at $t = 1$ and walk the velocity backwards to $t = 0$. The simplest way is **Euler's
method**: split $[0, 1]$ into $n$ steps of size $\\Delta = 1/n$ and repeat

$$
x_{t - \\Delta} = x_t - \\Delta \\, v_\\theta(x_t, t, c).
$$

If the velocity were exact and constant, one step would do; it is neither (it is an average over many pictures, and
it changes as the picture takes shape), so we take a few dozen. Straight paths are the point of flow matching:
the curvier the path, the more steps it needs.

**Classifier-free guidance** (Ho & Salimans 2022) makes the pictures follow their captions more closely. During
training, each caption is replaced by the null caption with a small probability, so the *same* network learns both
the conditional velocity $v_\\theta(x_t, t, c)$ and the unconditional one $v_\\theta(x_t, t, \\varnothing)$. When
sampling, take both and go further in the direction the caption adds:

$$
v = v_\\theta(x_t, t, \\varnothing) + w \\,\\bigl(v_\\theta(x_t, t, c) - v_\\theta(x_t, t, \\varnothing)\\bigr).
$$

$w = 1$ is the plain conditional model; $w > 1$ exaggerates what distinguishes "a blue dog" from "any picture".
The two velocities come from one forward pass on a batch of twice the size.
""")
code("""
print(f"the shipped DiT was trained with the caption dropped {cfg.cond_dropout:.0%} of the time")
""")
ex("ch17.cfg_velocity", "The guided velocity above.")
ex("ch17.euler_step", "One step of $dx/dt = v$ from `t` to `t_next`.")
ex("ch17.sample", "The loop: noise at $t = 1$, then `steps` Euler steps with the guided velocity, both velocities from "
   "one forward pass.")
md("""
Here is one drawing, decoded at several points of its way from noise to picture (the viewer of §17.7 shows the
same frames for any caption):
""")
code("""
from storylib.widgets.denoise import denoise_frames

caption = "a red ball under a tree"
frames = denoise_frames(ill, caption, steps=25, guidance=3.0, seed=0, frames=6)
show([p for _, p in frames], [f"t = {t:.2f}" for t, _ in frames], cols=6)
print(f"{caption!r}, 25 Euler steps, guidance 3; the last frame is Illustrator.draw's picture:",
      np.array_equal(frames[-1][1], ill.draw(caption, steps=25, guidance=3.0, seed=0)))
""")
md("""
The coarse layout (sky, ground, where the thing is) settles first, while the grid is still mostly noise; the
details come last. Now the guidance scale: the same caption and the same three noises, at $w$ from 1 to 6.
""")
code("""
caption, guidances, seeds = "a yellow ball on a car", [1, 2, 3, 4, 5, 6], [0, 1, 2]
t0 = time.perf_counter()
grid = [ill.draw(caption, steps=25, guidance=w, seed=seed) for seed in seeds for w in guidances]
print(f"{caption!r}: {len(grid)} pictures in {time.perf_counter() - t0:.1f} s")
show(grid, [f"guidance {w}" for _ in seeds for w in guidances], cols=6)
""")
md("""
How does guidance trade off? The GPU run measured it on thousands of captions with the judge of §17.6:
**caption accuracy** (the share of pictures whose every attribute the judge reads back right), on captions like the
training ones ("seen") and on the held-out colour + thing pairs, and the **Fréchet distance** between generated and
real pictures (lower: closer to real pictures in quality and variety).
""")
code("""
print(f"{'steps':>5} {'guidance':>8} {'seen':>7} {'held-out':>9} {'Fréchet':>9} {'GPU s/picture':>14}")
for r in table["sweep"]:
    print(f"{r['steps']:>5} {r['guidance']:>8} {r['val']['all']:>7.1%} {r['heldout']['all']:>9.1%} "
          f"{r['frechet']:>9.2f} {r['gpu_s_per_picture']:>14.4f}")
best = table["best"]
print(f"best (seen + held-out): {best['steps']} steps, guidance {best['guidance']}")

by_w = sorted((r for r in table["sweep"] if r["steps"] == 25), key=lambda r: r["guidance"])
w_steps = max({r["guidance"] for r in table["sweep"]},  # the guidance of the steps sweep: the most rows
              key=lambda w: sum(r["guidance"] == w for r in table["sweep"]))
by_n = sorted((r for r in table["sweep"] if r["guidance"] == w_steps), key=lambda r: r["steps"])
fig, axes = plt.subplots(1, 3, figsize=(13, 3))
w = [r["guidance"] for r in by_w]
axes[0].plot(w, [r["val"]["all"] for r in by_w], "o-", label="seen")
axes[0].plot(w, [r["heldout"]["all"] for r in by_w], "s-", label="held-out pairs")
axes[0].set_xlabel("guidance w (25 steps)"); axes[0].set_title("caption accuracy", fontsize=10); axes[0].legend()
axes[1].plot(w, [r["frechet"] for r in by_w], "o-", color="tab:red")
axes[1].axhline(table["frechet_real_vs_real"], color="gray", ls="--", label="real vs real")
axes[1].set_xlabel("guidance w (25 steps)"); axes[1].set_title("Fréchet distance", fontsize=10); axes[1].legend()
n = [r["steps"] for r in by_n]
axes[2].plot(n, [r["val"]["all"] for r in by_n], "o-", label="seen")
axes[2].plot(n, [r["heldout"]["all"] for r in by_n], "s-", label="held-out pairs")
axes[2].set_xlabel(f"Euler steps (guidance {w_steps})"); axes[2].set_title("caption accuracy", fontsize=10)
axes[2].set_xscale("log"); axes[2].legend()
plt.tight_layout(); plt.show()
""")
md("""
Guidance is a dial between *faithful* and *varied*: more of it makes the pictures follow their captions more
closely, up to a point; past it they become exaggerated and alike, which the Fréchet distance (it compares the
spread of the pictures too, not only their average) sees before the accuracy does. The steps are a dial between
quality and time: each step costs one forward pass (of a double batch, with guidance), while the accuracy stops
improving once the steps follow the paths closely enough, and the straighter the paths, the sooner.
""")

# --------------------------------------------------------------------------------------------------- 17.6
md("""
## Measuring pictures

How do you grade a picture? People do it by looking; papers use automatic scores that correlate with looking. Ours
are built on a **judge**, `storylib.scene_classifier`: a small convolutional network trained on the scene
generator's *real* pictures (of both splits: it must know a blue dog when it sees one) to read back every attribute
a caption states, with one classification head each: the thing, its colour, how many, where, the relation, the
other thing and its colour, the time, the weather. A generated picture **matches its caption** when the judge
reads back every one of them.

The judge is not perfect, so first its score on real pictures, the ceiling any generator is measured against:
""")
code("""
jr, b = table["judge_real"], table["best"]
print(f"{'':<28} {'seen captions':>14} {'held-out pairs':>15}")
print(f"{'the judge on real pictures':<28} {jr['val']['all']:>14.1%} {jr['heldout']['all']:>15.1%}")
print(f"{'the illustrator (best)':<28} {b['val']['all']:>14.1%} {b['heldout']['all']:>15.1%}")
print(f"(on {b['val']['n']:,} + {b['heldout']['n']:,} captions; {b['steps']} steps, guidance {b['guidance']})")

keys = list(b["val"]["per_attribute"])
xs = np.arange(len(keys))
plt.figure(figsize=(11, 3))
for k, (label, acc) in enumerate([("real, seen", jr["val"]), ("real, held-out", jr["heldout"]),
                                  ("drawn, seen", b["val"]), ("drawn, held-out", b["heldout"])]):
    plt.bar(xs + (k - 1.5) * 0.2, [acc["per_attribute"][key] for key in keys], 0.2, label=label)
plt.xticks(xs, keys); plt.ylim(0, 1.3); plt.yticks(np.linspace(0, 1, 6)); plt.ylabel("judge agrees")
plt.legend(ncol=4, fontsize=8, loc="upper center")
plt.title("what the judge reads back, attribute by attribute", fontsize=10)
plt.tight_layout(); plt.show()
""")
md("""
The **Fréchet distance** (the idea of FID, Heusel et al. 2017) compares whole *sets* of pictures rather than one
picture with its caption. Take the judge's penultimate-layer features of many real pictures and of many generated
ones, fit a Gaussian to each set (means $\\mu_r, \\mu_g$, covariances $\\Sigma_r, \\Sigma_g$) and measure

$$
d^2 = \\lVert \\mu_r - \\mu_g \\rVert^2 + \\operatorname{tr}\\bigl(\\Sigma_r + \\Sigma_g
  - 2\\,(\\Sigma_r^{1/2}\\, \\Sigma_g\\, \\Sigma_r^{1/2})^{1/2}\\bigr).
$$

Pictures that all look alike have a small $\\Sigma_g$ and are penalised as surely as odd-looking ones. Its value
depends on the features, so it means something only next to a floor: the distance between two independent sets of
*real* pictures.
""")
code("""
print(f"Fréchet distance, generated vs real: {b['frechet']:.2f}; real vs real (the floor): "
      f"{table['frechet_real_vs_real']:.2f}")
cpu = table["cpu_seconds_per_picture"]
print("seconds a picture on 2 CPU cores (the GPU run's measurement): "
      + ", ".join(f"{k.replace('_', ' ')}: {v:.2f} s" for k, v in cpu.items()))
t0 = time.perf_counter()
ill.draw("a blue dog", steps=25, guidance=3.0, seed=0)
print(f"and here, now: {time.perf_counter() - t0:.2f} s for 25 steps")
""")
md("""
And a few held-out captions, drawn here, with what the judge reads in each picture (✓ where it agrees with the
caption). None of these colour + thing pairs was ever in the illustrator's training data.
""")
code("""
held_captions = ["a blue dog", "a red cat on the left", "a yellow car in the rain", "a green bird on a house",
                 "a big pink boat at night", "two blue dogs in the snow"]
drawn = np.stack([ill.draw(cap, steps=25, guidance=best["guidance"], seed=0) for cap in held_captions])
reads = J.predict(judge, drawn)
titles = []
for cap, read in zip(held_captions, reads):
    want = scenes.attributes(read_scene(cap))
    ok = [key for key in ("thing", "colour", "count", "place", "time", "weather") if read[key] == want[key]]
    titles.append(f"{cap}\\njudge: {read['colour'] or ''} {read['thing']}, {read['time']}, {read['weather']}\\n"
                  f"{'✓ all' if J.caption_match(read, want) else '✓ ' + ', '.join(ok)}")
show(drawn, titles, cols=6, size=2.1, fontsize=6.5, wrap=40)
""")

# --------------------------------------------------------------------------------------------------- 17.7
md("""
## The storyteller illustrates

The illustrator knows only the scene generator's little language. A story says "At last, Tom found his ball near a
big tree", and the caption the model knows is something like "a ball next to a big tree". `caption_for` bridges
the two by rules, the way a child reading aloud points at a picture book: which things the sentence names (Tom is a
boy, a puppy is a dog), the colour and size words just before each, whether one is on, under or next to another,
and the time and the weather. A colour or size the sentence leaves out comes from the rest of the story when it
gives one (Tom's ball was red three sentences earlier, so it is drawn red); if the story never says, the sentence
itself seeds the choice, so the same sentence always draws the same way. A sentence that names nothing drawable is
said so, with the reason. On real sentences from the validation stories, each read on its own:
""")
code("""
stories = load_stories("valid")
sentences = [s for story in stories[:100] for s in re.split(r"(?<=[.!?])\\s+", story.strip())
             if len(s) < 90 and '"' not in s]  # dialogue is split badly at a closing quote: leave it out
read, nothing = [], None
for sentence in sentences:
    try:
        read.append((sentence, caption_for(sentence), len(read_scene(sentence).things)))
    except NothingToDraw as e:
        nothing = nothing or str(e)
# a few sentences with one thing to draw, and a few with two things in a relation
for sentence, cap, _ in [r for r in read if r[2] == 1][:5] + [r for r in read if r[2] == 2][:4]:
    print(f"{sentence!r:<90} -> {cap!r}")
print(f"\\n{len(read)} of {len(sentences)} sentences have something to draw; when there is nothing:\\n  {nothing}")
""")
md("""
A story has many sentences; `pick_sentence` chooses the one with the most to draw (two things in a relation beat
one, a time or a weather adds to it), and `Illustrator.illustrate` draws it: the sentence, the caption it became,
and the picture. This is exactly what the **Illustrate** button does.
""")
code("""
def two_things(story):
    try:
        return len(read_scene(pick_sentence(story)).things) == 2
    except NothingToDraw:
        return False

story = next(s for s in stories if len(s) < 800 and two_things(s))
print(textwrap.fill(story, 110), "\\n")
picture = ill.illustrate(story, steps=25, guidance=3.0, seed=0)
print(f"drawn: {picture.sentence!r}\\ncaption: {picture.caption!r}")
display(Image(picture.png(scale=4)))
""")
md("""
Below, any caption's denoising, frame by frame: pick a caption, drag the slider from $t = 1$ (noise) to $t = 0$ (the
picture). In JupyterLab (`make start`) the box draws your own caption, or a story sentence (read with
`caption_for`).
""")
code("""
from storylib.widgets import DenoiseViewer

DenoiseViewer(ill, captions=["a blue dog on the left", "a red ball under a tree", "two birds in the rain",
                             "a girl in a yellow dress at night"], steps=25, guidance=3.0, frames=6)
""")
md("""
The same illustrator is in every place the storyteller is:

- the chat widget (Chapter 12's `StoryChat`, and `storyteller.ipynb` in `make start`): select words in a story, or
  nothing, and press **Illustrate**; the picture appears under the paragraph it illustrates;
- the web app (Chapter 16, `llm101n serve`): the same **Illustrate** button, and the pictures are kept with the
  conversation; its API is `POST /v1/images/generations`;
- the terminal: in `llm101n chat`, `/illustrate` draws the story's most drawable sentence (or the sentence you give
  it) into a PNG file.

They all load the folder `models/illustrator` (or the one `$LLM101N_ILLUSTRATOR` names), and they all run *your*
`storylib`: when `llm101n check ch17` passes, the quantiser, the sampler and the blocks drawing these pictures are
the ones you wrote.
""")
code("""
print(f"this page ran in {time.perf_counter() - t_page:.0f} s")
""")
md("""
## Summary

- Pictures are uint8 arrays; networks see them as floats in $[-1, 1]$, channels first. Captioned scenes drawn by
  rules give unlimited training data, and held-out colour + thing pairs test composition.
- A VQ-VAE compresses a picture to a small grid of codes: nearest code by one matrix product, the straight-through
  estimator for the gradient, a commitment loss for the encoder, an EMA codebook with dead-code restarts.
- Flow matching mixes data and noise on a straight line, $x_t = (1 - t)x_0 + t\\varepsilon$, and trains the model to
  predict the velocity $\\varepsilon - x_0$ with a mean squared error.
- A DiT is a transformer over patches, with the caption's words in its sequence and adaLN-Zero blocks that start as
  the identity.
- Sampling walks from noise to a picture with Euler steps; classifier-free guidance, $v_\\varnothing + w(v_c -
  v_\\varnothing)$, trades variety for faithfulness.
- Pictures are measured by a judge: caption accuracy on seen and held-out captions against the judge's own ceiling,
  and a Fréchet distance against the real-vs-real floor.

The exercises of this chapter are in `exercises/ch17_multimodal.ipynb`; check them all with `llm101n check ch17`.
""")
print("wrote", page.write())
