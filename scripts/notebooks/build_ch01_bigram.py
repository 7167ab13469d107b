"""Build solutions/ch01_bigram.ipynb, the nbgrader source notebook of Chapter 1 (run from the repo root)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from grading.authoring import SolutionNotebook  # noqa: E402

nb = SolutionNotebook("ch01_bigram", title="Chapter 1 — the bigram language model")
nb.markdown(
    """
    In this notebook you write the character-level bigram model of `storylib/bigram.py`, in the order of the
    book: count the bigrams, turn counts into smoothed probabilities, sample stories with a temperature,
    measure the model (negative log-likelihood, bits per byte), then build the same model as a one-layer
    neural net and train it by gradient descent. Each graded cell runs the package tests of one exercise
    against *your* `storylib`; the book (Chapter 1) explains the ideas and the math.

    The cells below use a small slice of TinyStories so that they run in seconds; the try-it cells work
    once the function above them does.
    """
)
nb.code(
    """
    import math

    import torch

    from storylib.bigram import BOUNDARY, Vocab, bigram_probs, count_bigrams, pairs
    from storylib.data import load_stories, synthetic_stories

    try:
        train_stories, valid_stories = load_stories("train", limit=1000), load_stories("valid", limit=200)
    except Exception:  # no TinyStories on this machine yet: story-like synthetic text instead
        train_stories, valid_stories = synthetic_stories(1000, seed=0), synthetic_stories(200, seed=1)
    vocab = Vocab.from_stories(train_stories, valid_stories)
    V = len(vocab)
    print(f"{len(train_stories)} training stories, V = {V} tokens")
    print(vocab.story_ids("Once upon")[:6], "...")
    """,
    locked=True,
)
nb.exercise(
    "ch01.counts",
    try_it="""
    N = count_bigrams(train_stories, vocab)
    print(N.shape, N.dtype, "pairs counted:", int(N.sum()))
    q = vocab.stoi["q"] if "q" in vocab.stoi else 1
    print("after", vocab.label(q), "comes:", [(vocab.label(int(j)), int(N[q, j])) for j in N[q].topk(3).indices])
    """,
)
nb.exercise(
    "ch01.smooth",
    try_it="""
    P = bigram_probs(N, alpha=1.0)
    print("rows sum to 1:", torch.allclose(P.sum(dim=1), torch.ones(V)))
    print("how stories start:", [(vocab.label(int(j)), round(float(P[BOUNDARY, j]), 3))
                                 for j in P[BOUNDARY].topk(5).indices])
    """,
)
nb.exercise(
    "ch01.sample",
    try_it="""
    g = torch.Generator().manual_seed(0)
    for T in (1.0, 0.5, 0.0):
        print(f"T = {T}:", sample(P, vocab, max_len=200, temperature=T, generator=g), "\\n")
    """,
)
nb.question(
    "ch01_q_temperature",
    points=1,
    prompt="""
    A next-character distribution is `p = torch.tensor([0.5, 0.3, 0.2])`. Compute `p_half`, the distribution
    that sampling at temperature T = 0.5 draws from (a float tensor of 3 probabilities that sum to 1).
    """,
    solution="""
    p = torch.tensor([0.5, 0.3, 0.2])
    p_half = p ** (1 / 0.5)
    p_half = p_half / p_half.sum()
    """,
    test="""
    assert abs(float(p_half.sum()) - 1) < 1e-6, "the probabilities should sum to 1"
    assert abs(float(p_half[0]) - 0.25 / 0.38) < 1e-5, "each p is raised to the power 1/T = 2, then renormalised"
    """,
)
nb.exercise(
    "ch01.nll",
    try_it="""
    print(f"uniform model: {math.log(V):.4f} nats per token")
    print(f"bigram model:  train {nll(P, train_stories, vocab):.4f}, valid {nll(P, valid_stories, vocab):.4f}")
    """,
)
nb.question(
    "ch01_q_uniform",
    points=1,
    prompt="""
    A model that knows nothing gives every one of the V tokens the same probability after every character.
    Set `uniform_nll` to its negative log-likelihood in nats per token, on any text, as a number computed
    from `V`.
    """,
    solution="uniform_nll = math.log(V)",
    test="""
    assert abs(uniform_nll - math.log(V)) < 1e-9, "every prediction costs -ln(1/V) nats"
    """,
)
nb.exercise(
    "ch01.bits_per_byte",
    try_it="""
    print(f"validation: {bits_per_byte(P, valid_stories, vocab):.3f} bits per byte (raw UTF-8: 8)")
    """,
)
nb.exercise(
    "ch01.neural_loss",
    try_it="""
    x, y = pairs(train_stories[:200], vocab)
    model = BigramNet(V, generator=torch.Generator().manual_seed(0))
    print(f"untrained loss {model.loss(x, y).item():.4f}   ln V = {math.log(V):.4f}")
    """,
)
nb.exercise(
    "ch01.train_step",
    try_it="""
    from storylib.bigram import nll

    few = train_stories[:100]
    x, y = pairs(few, vocab)
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest
    model = BigramNet(V, generator=torch.Generator().manual_seed(0))
    for step in range(301):
        loss = train_step(model, x, y, lr=50.0)  # full batch: every pair of the 100 stories, every step
        if step % 100 == 0:
            print(f"step {step:3d}  loss {loss:.4f}")
    counting = nll(bigram_probs(count_bigrams(few, vocab), 0.0), few, vocab)
    print(f"the counting model on the same pairs (alpha = 0): {counting:.4f}")
    """,
)

if __name__ == "__main__":
    print(nb.write())
