"""Build solutions/ch05_gpt2.ipynb, the nbgrader source notebook of Chapter 5 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch05_gpt2", title="Chapter 5 — GPT-2, from scratch")
nb.markdown(
    """
    In this notebook you write the GPT-2 of `storylib/gpt2.py`, one piece at a time, in the order of the book:
    LayerNorm (forward, then its backward by hand), causal self-attention, the MLP, the pre-norm block, GPT-2's
    initialisation, the forward pass with its loss, and generation. Each graded cell runs the package tests of
    one exercise against *your* `storylib`; the book (Chapter 5) explains the ideas and the math.

    The model reads raw UTF-8 bytes: ids 0..255 are bytes, 256 is `<|endoftext|>`.
    """
)
nb.exercise(
    "ch05.layernorm",
    try_it="""
    import torch
    import torch.nn.functional as F

    x = 3 + 2 * torch.randn(2, 5, 8, dtype=torch.float64)
    w, b = 1 + torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    y, xhat, rstd = layer_norm_forward(x, w, b)
    print("max |y - F.layer_norm|:", (y - F.layer_norm(x, (8,), w, b)).abs().max().item())
    print("xhat mean ~ 0, std ~ 1:", xhat.mean(-1)[0, 0].item(), xhat.std(-1, unbiased=False)[0, 0].item())
    """,
)
nb.exercise(
    "ch05.layernorm_backward",
    try_it="""
    import torch
    from storylib.gpt2 import LayerNormFunction

    x = torch.randn(2, 3, 6, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, w, b: LayerNormFunction.apply(x, w, b, 1e-5), (x, w, b))
    """,
    notes="Derive it on paper first: which terms does the gradient lose, since shifting or scaling $x$ leaves "
    "$\\hat x$ unchanged?",
)
nb.exercise(
    "ch05.attention",
    try_it="""
    import torch
    from storylib.gpt2 import GPTConfig

    attn = CausalSelfAttention(GPTConfig(n_embd=48, n_head=3, block_size=16))
    x = torch.randn(2, 7, 48)
    y = attn(x)
    x2 = x.clone(); x2[:, 4:] = 0                                  # change the future of position 3 ...
    print(y.shape, "causal:", torch.allclose(y[:, :4], attn(x2)[:, :4], atol=1e-6))  # ... positions 0..3 must not move
    # the fused path cuts c_attn's output into heads in GPT-2's layout: yours must agree with it
    attn.fused = True
    print("same as the fused path:", torch.allclose(y, attn(x), atol=1e-6))
    """,
)
nb.exercise(
    "ch05.mlp",
    try_it="""
    import torch
    from storylib.gpt2 import GPTConfig

    mlp = MLP(GPTConfig(n_embd=48))
    mlp(torch.randn(2, 7, 48)).shape
    """,
)
nb.exercise(
    "ch05.block",
    try_it="""
    import torch
    from storylib.gpt2 import GPTConfig

    block = Block(GPTConfig(n_embd=48, n_head=3, block_size=16))
    x = torch.randn(2, 7, 48)
    print("how much one block moves the residual stream:", (block(x) - x).std().item())
    """,
)
nb.exercise(
    "ch05.init",
    try_it="""
    from storylib.gpt2 import GPTConfig

    model = GPT(GPTConfig(n_layer=8, n_embd=128, n_head=4))
    for name, p in list(model.named_parameters())[:12]:
        print(f"{name:40s} std {p.std().item():.4f}")
    """,
)
nb.question(
    "ch05_q_tying",
    points=1,
    prompt="""
    GPT-2 small has a vocabulary of 50,257 tokens and `n_embd = 768`. How many parameters does weight tying
    (`lm_head.weight is wte.weight`) save? Set `saved` to that number.
    """,
    solution="saved = 50257 * 768",
    test="assert saved == 50257 * 768, 'the head would be a second (vocab_size, n_embd) matrix'",
)
nb.exercise(
    "ch05.forward",
    try_it="""
    import math
    import torch
    from storylib.gpt2 import GPTConfig, story_stream

    model = GPT(GPTConfig())
    ids = story_stream(["Once upon a time, there was a little cat."])
    logits, loss = model(ids[None, :-1], ids[None, 1:])
    print(logits.shape, f"loss {loss.item():.3f} nats; at initialisation close to ln 257 = {math.log(257):.3f}")
    """,
)
nb.question(
    "ch05_q_init",
    points=1,
    prompt="""
    GPT-2 small has 12 layers. With GPT-2's initialisation, what is the standard deviation of the weights of
    `mlp.c_proj`? Set `std_c_proj` to it (a float).
    """,
    solution="import math\nstd_c_proj = 0.02 / math.sqrt(2 * 12)",
    test="import math\nassert abs(std_c_proj - 0.02 / math.sqrt(24)) < 1e-9, 'two residual additions per layer'",
)
nb.exercise(
    "ch05.generate",
    try_it="""
    import torch
    from storylib.gpt2 import EOT_ID, GPTConfig, decode

    model = GPT(GPTConfig())  # untrained: expect noise, but of the right length and reproducible
    g = torch.Generator().manual_seed(0)
    out = model.generate(torch.tensor([[EOT_ID]]), 40, temperature=1.0, top_k=10, generator=g)
    print(out.shape, repr(decode(out[0].tolist())))
    """,
)
nb.markdown(
    """
    ## What next

    Train your model with the loop of the book's training section, then measure it on the yardstick every chapter
    shares, bits per byte on all 1,000 validation stories, and compare with your Chapter 3 MLP:
    `storylib.gpt2.bits_per_byte(model, storylib.scoreboard.yardstick_stories())`.
    """
)

if __name__ == "__main__":
    print(nb.write())
