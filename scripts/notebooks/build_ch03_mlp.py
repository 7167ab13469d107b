"""Build solutions/ch03_mlp.ipynb, the nbgrader source notebook of Chapter 3 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch03_mlp", title="Chapter 3 — a multilayer perceptron language model")
nb.markdown(
    """
    In this notebook you write the pieces of `storylib/mlp.py`, in the order of the book: the dataset of
    context windows, matrix multiplication as three loops, GELU in its two forms, the model's forward pass,
    then the backward pass of every operation by hand (cross-entropy, linear layer, GELU, embedding), and
    the learning-rate schedule. Each graded cell runs the package tests of one exercise against *your*
    `storylib`; the book (Chapter 3) explains the ideas and the math.

    The backward exercises are checked against PyTorch's autograd. Once all four pass, the last cells put
    them together and compare every gradient of the whole model with autograd, like the book does.
    """
)
nb.code(
    """
    import math

    import torch
    import torch.nn.functional as F

    from storylib.bigram import Vocab
    from storylib.data import load_stories, synthetic_stories

    try:
        train_stories, valid_stories = load_stories("train", limit=300), load_stories("valid", limit=100)
    except Exception:  # no TinyStories on this machine yet: story-like synthetic text instead
        train_stories, valid_stories = synthetic_stories(300, seed=0), synthetic_stories(100, seed=1)
    vocab = Vocab.from_stories(train_stories, valid_stories)
    V = len(vocab)
    g = torch.Generator().manual_seed(0)
    print(f"{len(train_stories)} training stories, V = {V} tokens")
    """,
    locked=True,
)
nb.exercise(
    "ch03.dataset",
    try_it="""
    X, Y = build_dataset(train_stories, vocab, context=8)
    print(X.shape, Y.shape)
    for t in range(10):
        print("".join(vocab.label(int(i)) for i in X[t]), "->", vocab.label(int(Y[t])))
    """,
)
nb.exercise(
    "ch03.matmul",
    try_it="""
    import time

    A, B = torch.randn(40, 30, generator=g), torch.randn(30, 20, generator=g)
    A @ B  # a first call pays one-off setup costs: keep it out of the timing
    t0 = time.perf_counter(); C = matmul_loops(A, B); t1 = time.perf_counter(); A @ B; t2 = time.perf_counter()
    print("same as A @ B:", torch.allclose(C, A @ B, atol=1e-5), f"  loops {t1 - t0:.4f} s, @ {t2 - t1:.6f} s")
    """,
)
nb.exercise(
    "ch03.gelu",
    try_it="""
    x = torch.linspace(-4, 4, 9, dtype=torch.float64)
    print(gelu(x))
    print("largest gap between the two forms:", (gelu(x) - gelu(x, "tanh")).abs().max().item())
    """,
)
nb.question(
    "ch03_q_gelu_min",
    points=1,
    prompt="""
    GELU dips below zero for negative inputs. Using your `gelu` (or `torch.nn.functional.gelu`), find its
    minimum value on the real line to within 1e-3 and set `gelu_min` to it, as a Python float.
    (Hint: evaluate it on a fine grid of x between -3 and 0.)
    """,
    solution="""
    xs = torch.linspace(-3, 0, 30001, dtype=torch.float64)
    gelu_min = float(F.gelu(xs).min())
    """,
    test="""
    assert isinstance(gelu_min, float), "gelu_min should be a Python float (use float(...))"
    assert abs(gelu_min - (-0.16997)) < 1e-3, "the smallest value of x·Φ(x) is about -0.17, near x = -0.75"
    """,
)
nb.exercise(
    "ch03.forward",
    try_it="""
    model = MLPLanguageModel(V, context=8, n_embd=16, n_hidden=128, generator=g)
    logits = model(X[:512])
    print(logits.shape, f"first loss {F.cross_entropy(logits, Y[:512]).item():.3f}, ln V = {math.log(V):.3f}")
    """,
)
nb.exercise(
    "ch03.cross_entropy_backward",
    try_it="""
    from storylib.mlp import cmp

    logits = torch.randn(5, V, dtype=torch.float64, generator=g)
    targets = torch.randint(0, V, (5,), generator=g)
    z = logits.clone().requires_grad_()
    F.cross_entropy(z, targets).backward()
    _ = cmp("dlogits", cross_entropy_backward(logits, targets), z.grad)
    """,
)
nb.exercise(
    "ch03.linear_backward",
    try_it="""
    from storylib.mlp import cmp

    x, W, b = (torch.randn(*s, dtype=torch.float64, generator=g, requires_grad=True) for s in ((6, 4), (4, 3), (3,)))
    dout = torch.randn(6, 3, dtype=torch.float64, generator=g)
    ((x @ W + b) * dout).sum().backward()
    for name, ours, theirs in zip(("dx", "dW", "db"), linear_backward(x.detach(), W.detach(), dout),
                                  (x.grad, W.grad, b.grad)):
        cmp(name, ours, theirs)
    """,
)
nb.exercise(
    "ch03.gelu_backward",
    try_it="""
    from storylib.mlp import cmp

    for form in ("none", "tanh"):
        x = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
        F.gelu(x, approximate=form).sum().backward()
        cmp(f"dx {form}", gelu_backward(x.detach(), torch.ones(7, 5, dtype=torch.float64), form), x.grad)
    """,
)
nb.exercise(
    "ch03.embedding_backward",
    try_it="""
    idx = torch.tensor([[1, 2, 1], [2, 1, 0]])
    print(embedding_backward(idx, torch.ones(2, 3, 2), 4))  # rows: how often each token occurs
    """,
)
nb.question(
    "ch03_q_embedding_grad",
    points=1,
    prompt="""
    A batch `idx = torch.tensor([[4, 4, 1], [4, 0, 1]])` looks up rows of an embedding table with d = 2,
    and every entry of the upstream gradient `demb` (shape (2, 3, 2)) equals 0.5. Set `row4` to the
    gradient of the loss with respect to row 4 of the table, as a list of two floats.
    """,
    solution="""
    row4 = [1.5, 1.5]  # token 4 occurs three times: 3 × 0.5 in each of the 2 dimensions
    """,
    test="""
    assert [float(v) for v in row4] == [1.5, 1.5], "every occurrence of a token adds its gradient to the token's row"
    """,
)
nb.exercise(
    "ch03.lr_schedule",
    try_it="""
    print([round(warmup_cosine_lr(s, 20, 1.0, warmup=4, lr_min=0.1), 3) for s in range(20)])
    """,
)
nb.markdown(
    """
    ## All together: the whole backward pass

    With all four backward pieces written, `manual_backward` chains them into every gradient of the model.
    Compare each one with autograd; then try training with your gradients (copy them into `p.grad` and call
    the optimiser) and see that the loss goes down just as it does with `loss.backward()`.
    """
)
nb.code(
    """
    from storylib.mlp import MLPLanguageModel, autograd_backward, cmp, manual_backward

    model = MLPLanguageModel(V, context=8, n_embd=16, n_hidden=128, generator=torch.Generator().manual_seed(1))
    X, Y = build_dataset(train_stories, vocab, context=8)
    _, ours = manual_backward(model, X[:256], Y[:256])
    _, theirs = autograd_backward(model, X[:256], Y[:256])
    for name in theirs:
        cmp(name, ours[name], theirs[name], rtol=1e-4, atol=1e-6)
    """
)

if __name__ == "__main__":
    print(nb.write())
