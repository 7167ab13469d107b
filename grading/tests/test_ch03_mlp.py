"""Tests of Chapter 3 (storylib/mlp.py): the MLP language model and its backward pass by hand.

Oracles: a plain sliding-window loop for the dataset, `@` for the matmul, torch.nn.functional.gelu for
GELU, and PyTorch autograd in float64 for every gradient. Inputs are seeded, non-uniform, odd-sized.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from storylib import mlp
from storylib.bigram import BOUNDARY, Vocab, pairs
from storylib.data import synthetic_stories


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int, scale: float = 1.0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Random normal values, shifted and scaled per element so that no two columns look alike."""
    g = gen(seed)
    return (torch.randn(shape, generator=g, dtype=dtype) * scale + 0.3 * torch.rand(shape, generator=g, dtype=dtype))


def close(ours: torch.Tensor, theirs: torch.Tensor, what: str, atol: float = 1e-10, rtol: float = 1e-8) -> None:
    assert isinstance(ours, torch.Tensor), f"{what} should be a torch.Tensor, got {type(ours).__name__}"
    assert ours.shape == theirs.shape, f"{what} should have shape {tuple(theirs.shape)}, got {tuple(ours.shape)}"
    assert ours.dtype == theirs.dtype, f"{what} should have dtype {theirs.dtype}, got {ours.dtype}"
    diff = (ours - theirs).abs().max().item() if ours.numel() else 0.0
    assert torch.allclose(ours, theirs, atol=atol, rtol=rtol), (
        f"{what} differs from PyTorch's answer: largest difference {diff:.3g}"
    )


# ----------------------------------------------------------------------------- ch03.dataset


def windows_oracle(stories: list[str], vocab: Vocab, n: int) -> tuple[list[list[int]], list[int]]:
    xs, ys = [], []
    for s in stories:
        ids = [BOUNDARY] * n + vocab.encode(s) + [BOUNDARY]
        for t in range(n, len(ids)):
            xs.append(ids[t - n : t])
            ys.append(ids[t])
    return xs, ys


@pytest.mark.exercise("ch03.dataset")
@pytest.mark.parametrize("context", [3, 7])
def test_dataset_is_every_window(context):
    stories = synthetic_stories(9, seed=31)
    vocab = Vocab.from_stories(stories)
    X, Y = mlp.build_dataset(stories, vocab, context)
    xs, ys = windows_oracle(stories, vocab, context)
    N = sum(len(s) + 1 for s in stories)
    assert X.shape == (N, context), f"X should have shape (N, context) = {(N, context)}, got {tuple(X.shape)}"
    assert Y.shape == (N,), f"Y should have shape (N,) = {(N,)}, got {tuple(Y.shape)}"
    assert X.dtype == torch.int64 and Y.dtype == torch.int64, f"X and Y should be int64, got {X.dtype}, {Y.dtype}"
    assert X.tolist() == xs, "the rows of X should be the context windows, story after story, padded with ◆ in front"
    assert Y.tolist() == ys, "Y[t] should be the token that follows the window X[t], ending each story with ◆"


@pytest.mark.exercise("ch03.dataset")
def test_dataset_with_context_1_is_the_bigram_pairs():
    stories = synthetic_stories(5, seed=8)
    vocab = Vocab.from_stories(stories)
    X, Y = mlp.build_dataset(stories, vocab, 1)
    x, y = pairs(stories, vocab)
    assert X.shape == (len(x), 1), f"with context=1, X should have shape {(len(x), 1)}, got {tuple(X.shape)}"
    assert torch.equal(X[:, 0], x) and torch.equal(Y, y), "with context=1, (X, Y) should be Chapter 1's bigram pairs"


@pytest.mark.exercise("ch03.dataset")
def test_dataset_story_shorter_than_the_context():
    stories = ["Hi", "a", "Bob ran."]
    vocab = Vocab.from_stories(stories)
    X, Y = mlp.build_dataset(stories, vocab, 6)
    xs, ys = windows_oracle(stories, vocab, 6)
    assert X.shape == (len(xs), 6), f"X should have shape {(len(xs), 6)}, got {tuple(X.shape)}"
    assert X[0].tolist() == [BOUNDARY] * 6, "the first window of a story should be all boundary tokens ◆"
    assert X.tolist() == xs and Y.tolist() == ys, "short stories should still give len + 1 windows, padded with ◆"


# ----------------------------------------------------------------------------- ch03.matmul


@pytest.mark.exercise("ch03.matmul")
@pytest.mark.parametrize("n, k, m", [(7, 13, 5), (1, 1, 1), (3, 1, 4), (2, 9, 1)])
def test_matmul_loops_matches_at(n, k, m):
    A, B = randn(n, k, seed=n * 100 + k), randn(k, m, seed=m * 7 + 1)
    C = mlp.matmul_loops(A, B)
    close(C, A @ B, f"matmul_loops of {(n, k)} by {(k, m)}", atol=1e-12)


@pytest.mark.exercise("ch03.matmul")
def test_matmul_loops_keeps_float32():
    A, B = randn(4, 6, seed=1, dtype=torch.float32), randn(6, 3, seed=2, dtype=torch.float32)
    close(mlp.matmul_loops(A, B), A @ B, "matmul_loops in float32", atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- ch03.gelu


@pytest.mark.exercise("ch03.gelu")
@pytest.mark.parametrize("form", ["none", "tanh"])
def test_gelu_matches_torch(form):
    x = randn(5, 3, 11, seed=12, scale=3.0)
    close(mlp.gelu(x, form), F.gelu(x, approximate=form), f"gelu(x, approximate={form!r})", atol=1e-12)


@pytest.mark.exercise("ch03.gelu")
def test_gelu_default_is_exact_and_forms_differ():
    x = torch.linspace(-4, 4, 97, dtype=torch.float64)
    exact, approx = mlp.gelu(x), mlp.gelu(x, "tanh")
    close(exact, F.gelu(x), "gelu(x) with the default approximate='none' (the erf form)", atol=1e-12)
    gap = (exact - approx).abs().max().item()
    assert 1e-5 < gap < 1e-3, f"the tanh form should differ from the exact one by ~1e-4 at most, not {gap:.3g}"


@pytest.mark.exercise("ch03.gelu")
def test_gelu_float32_and_autograd():
    x = randn(7, 13, seed=5, scale=2.0, dtype=torch.float32).requires_grad_()
    y = mlp.gelu(x)
    assert y.dtype == torch.float32, f"gelu of a float32 tensor should be float32, got {y.dtype}"
    y.sum().backward()
    assert x.grad is not None, "gelu should be built from torch operations so that autograd can differentiate it"
    close(y.detach(), F.gelu(x.detach()), "gelu in float32", atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- ch03.forward


@pytest.fixture
def torch_gelu(monkeypatch):
    """Forward tests use PyTorch's GELU inside the model, so they grade forward() alone, not your gelu()."""
    monkeypatch.setattr(mlp, "gelu", lambda x, approximate="none": F.gelu(x, approximate=approximate))


def forward_oracle(model: mlp.MLPLanguageModel, idx: torch.Tensor) -> torch.Tensor:
    emb = F.embedding(idx, model.C)
    x = emb.flatten(1)
    h = F.gelu(F.linear(x, model.W1.T, model.b1), approximate=model.approximate)
    return F.linear(h, model.W2.T, model.b2)


def small_model(form: str = "none", seed: int = 0) -> mlp.MLPLanguageModel:
    model = mlp.MLPLanguageModel(13, 5, n_embd=3, n_hidden=11, approximate=form, generator=gen(seed)).double()
    with torch.no_grad():  # biases start at zero: give them values, so that a forgotten bias shows
        model.b1.copy_(randn(11, seed=seed + 1))
        model.b2.copy_(randn(13, seed=seed + 2))
    return model


@pytest.mark.exercise("ch03.forward")
@pytest.mark.parametrize("form", ["none", "tanh"])
def test_forward_matches_oracle(torch_gelu, form):
    model = small_model(form, seed=3)
    idx = torch.randint(0, 13, (7, 5), generator=gen(4))
    logits = model(idx)
    with torch.no_grad():
        close(logits.detach(), forward_oracle(model, idx), f"model(idx) logits (approximate={form!r})", atol=1e-10)


@pytest.mark.exercise("ch03.forward")
def test_forward_gradients_reach_every_parameter(torch_gelu):
    model = small_model(seed=9)
    idx = torch.randint(0, 13, (6, 5), generator=gen(10))
    loss = F.cross_entropy(model(idx), torch.randint(0, 13, (6,), generator=gen(11)))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reached {name}: use the model's parameters"


@pytest.mark.exercise("ch03.forward")
def test_forward_single_example_float32(torch_gelu):
    model = mlp.MLPLanguageModel(11, 4, n_embd=2, n_hidden=7, generator=gen(2))
    idx = torch.tensor([[0, 3, 3, 10]])
    logits = model(idx)
    assert logits.shape == (1, 11), f"logits should have shape (B, V) = (1, 11), got {tuple(logits.shape)}"
    assert logits.dtype == torch.float32, f"logits should have the parameters' dtype float32, got {logits.dtype}"
    with torch.no_grad():
        close(logits.detach(), forward_oracle(model, idx), "logits of one example", atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------- ch03.cross_entropy_backward


def ce_oracle(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    z = logits.clone().requires_grad_()
    F.cross_entropy(z, targets).backward()
    return z.grad


@pytest.mark.exercise("ch03.cross_entropy_backward")
@pytest.mark.parametrize("B, V", [(7, 13), (1, 5), (32, 3)])
def test_cross_entropy_backward_matches_autograd(B, V):
    logits = randn(B, V, seed=B * V, scale=2.5)
    targets = torch.randint(0, V, (B,), generator=gen(B))
    before = logits.clone()
    d = mlp.cross_entropy_backward(logits, targets)
    assert torch.equal(logits, before), "cross_entropy_backward should not change the logits it is given"
    close(d, ce_oracle(logits, targets), f"dlogits for logits of shape {(B, V)}", atol=1e-12)


@pytest.mark.exercise("ch03.cross_entropy_backward")
def test_cross_entropy_backward_large_logits_are_stable():
    logits = randn(5, 9, seed=77, scale=900.0)  # exp(900) overflows even float64: use a stable softmax
    targets = torch.tensor([0, 8, 3, 3, 1])
    d = mlp.cross_entropy_backward(logits, targets)
    assert torch.isfinite(d).all(), (
        "dlogits has inf or nan for large logits: subtract each row's max first (torch.softmax does)"
    )
    close(d, ce_oracle(logits, targets), "dlogits for large logits", atol=1e-12)


# ----------------------------------------------------------------------------- ch03.linear_backward


def linear_oracle(x, W, b, dout):
    x, W, b = (t.clone().requires_grad_() for t in (x, W, b))
    ((x @ W + b) * dout).sum().backward()
    return x.grad, W.grad, b.grad


@pytest.mark.exercise("ch03.linear_backward")
@pytest.mark.parametrize("xshape, n_out", [((7, 13), 5), ((5, 3, 11), 4), ((1, 6), 1)])
def test_linear_backward_matches_autograd(xshape, n_out):
    n_in = xshape[-1]
    x, W, b = randn(*xshape, seed=1), randn(n_in, n_out, seed=2), randn(n_out, seed=3)
    dout = randn(*xshape[:-1], n_out, seed=4)
    got = mlp.linear_backward(x, W, dout)
    assert isinstance(got, tuple) and len(got) == 3, "linear_backward should return the tuple (dx, dW, db)"
    for name, ours, theirs in zip(("dx", "dW", "db"), got, linear_oracle(x, W, b, dout), strict=True):
        close(ours, theirs, f"{name} for x of shape {xshape} and W of shape {(n_in, n_out)}", atol=1e-11)


# ----------------------------------------------------------------------------- ch03.gelu_backward


@pytest.mark.exercise("ch03.gelu_backward")
@pytest.mark.parametrize("form", ["none", "tanh"])
@pytest.mark.parametrize("shape", [(7, 13), (5, 3, 11)])
def test_gelu_backward_matches_autograd(form, shape):
    x = randn(*shape, seed=21, scale=3.0).requires_grad_()
    dout = randn(*shape, seed=22)
    (F.gelu(x, approximate=form) * dout).sum().backward()
    dx = mlp.gelu_backward(x.detach(), dout, form)
    close(dx, x.grad, f"dx of gelu (approximate={form!r}) for shape {shape}", atol=1e-12)


@pytest.mark.exercise("ch03.gelu_backward")
def test_gelu_backward_default_is_exact():
    x = torch.linspace(-5, 5, 41, dtype=torch.float64).requires_grad_()
    F.gelu(x).sum().backward()
    dx = mlp.gelu_backward(x.detach(), torch.ones(41, dtype=torch.float64))
    close(dx, x.grad, "gelu'(x) with the default approximate='none'", atol=1e-12)


# ----------------------------------------------------------------------------- ch03.embedding_backward


def embedding_oracle(idx, C, demb):
    C = C.clone().requires_grad_()
    (F.embedding(idx, C) * demb).sum().backward()
    return C.grad


@pytest.mark.exercise("ch03.embedding_backward")
def test_embedding_backward_adds_repeated_tokens():
    V, d = 13, 3
    idx = torch.randint(0, V - 2, (7, 5), generator=gen(6))  # 35 lookups among 11 ids: many repeats
    demb = randn(7, 5, d, seed=7)
    dC = mlp.embedding_backward(idx, demb, V)
    close(dC, embedding_oracle(idx, randn(V, d, seed=8), demb), "dC for idx of shape (7, 5)", atol=1e-12)
    assert (dC[V - 2 :] == 0).all(), "rows of tokens that never occur should be zero"


@pytest.mark.exercise("ch03.embedding_backward")
def test_embedding_backward_one_dimensional_idx():
    V, d = 9, 4
    idx = torch.tensor([4, 0, 4, 4, 8, 1, 0, 4, 2, 2, 7])
    demb = randn(11, d, seed=9)
    close(mlp.embedding_backward(idx, demb, V), embedding_oracle(idx, randn(V, d, seed=10), demb),
          "dC for idx of shape (11,)", atol=1e-12)


# ----------------------------------------------------------------------------- ch03.lr_schedule


def schedule_oracle(step, total, lr_max, warmup, lr_min):
    if step < warmup:
        return lr_max * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return lr_min + (lr_max - lr_min) * (1 + math.cos(math.pi * p)) / 2


@pytest.mark.exercise("ch03.lr_schedule")
@pytest.mark.parametrize("total, warmup, lr_max, lr_min", [(37, 5, 0.3, 0.01), (20, 0, 1.5, 0.0), (9, 3, 2.0, 0.5)])
def test_lr_schedule_matches_formula(total, warmup, lr_max, lr_min):
    got = [mlp.warmup_cosine_lr(s, total, lr_max, warmup, lr_min) for s in range(total)]
    want = [schedule_oracle(s, total, lr_max, warmup, lr_min) for s in range(total)]
    for s, (g, w) in enumerate(zip(got, want, strict=True)):
        call = f"warmup_cosine_lr({s}, {total}, {lr_max}, {warmup}, {lr_min})"
        assert math.isclose(g, w, rel_tol=1e-12, abs_tol=1e-15), f"{call} should be {w:.6g}, got {g!r}"


@pytest.mark.exercise("ch03.lr_schedule")
def test_lr_schedule_shape():
    lrs = [mlp.warmup_cosine_lr(s, 50, 0.8, 10, 0.04) for s in range(50)]
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10], strict=False)), "the warm-up should rise at every step"
    assert math.isclose(lrs[9], 0.8) and math.isclose(lrs[10], 0.8), "lr_max at the last warm-up step and just after"
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False)), "after the warm-up the rate should only fall"
    assert math.isclose(lrs[-1], 0.04), f"the last step should reach lr_min = 0.04, got {lrs[-1]}"


# ----------------------------------------------------------------------------- plain package tests (not graded)


def test_manual_backward_matches_autograd_for_the_whole_model():
    for form in ("none", "tanh"):
        model = small_model(form, seed=12)
        idx = torch.randint(0, 13, (9, 5), generator=gen(13))
        targets = torch.randint(0, 13, (9,), generator=gen(14))
        loss, ours = mlp.manual_backward(model, idx, targets)
        loss_ref, theirs = mlp.autograd_backward(model, idx, targets)
        assert math.isclose(loss, loss_ref, rel_tol=1e-12)
        for name in theirs:
            assert mlp.cmp(name, ours[name], theirs[name], verbose=False).approx, name


def test_cmp_reports_exact_approx_and_maxdiff(capsys, worker):
    a = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    r = mlp.cmp("a", a, a.clone())
    assert r.exact and r.approx and r.maxdiff == 0.0
    if worker is None:  # in the grader, what the learner's code prints goes to the worker's log, not here
        assert "exact: True" in capsys.readouterr().out
    r = mlp.cmp("b", a, a + 1e-9, verbose=False)
    assert not r.exact and r.approx and math.isclose(r.maxdiff, 1e-9, rel_tol=1e-3)
    assert not mlp.cmp("c", a, a + 1.0, verbose=False).approx
    with pytest.raises(ValueError):
        mlp.cmp("d", a, a[:2])


def test_argument_checks():
    with pytest.raises(ValueError):
        mlp.build_dataset(["a"], Vocab.from_stories(["a"]), 0)
    with pytest.raises(ValueError):
        mlp.matmul_loops(torch.ones(2, 3), torch.ones(2, 3))
    for fn in (lambda: mlp.gelu(torch.ones(2), "relu"), lambda: mlp.gelu_backward(torch.ones(2), torch.ones(2), "x")):
        with pytest.raises(ValueError):
            fn()
    X, Y = mlp.build_dataset([], Vocab.from_stories(["a"]), 4)
    assert X.shape == (0, 4) and Y.shape == (0,)


def test_matmul_rows_and_cross_entropy():
    A, B = randn(6, 5, seed=1), randn(5, 4, seed=2)
    close(mlp.matmul_rows(A, B), A @ B, "matmul_rows")
    logits, y = randn(7, 13, seed=3), torch.randint(0, 13, (7,), generator=gen(1))
    close(mlp.cross_entropy(logits, y), F.cross_entropy(logits, y), "cross_entropy")


def test_training_lowers_the_loss_and_sampling_is_reproducible():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add overhead (and stall on a busy machine)
    try:
        stories = synthetic_stories(20, seed=2)
        vocab = Vocab.from_stories(stories)
        X, Y = mlp.build_dataset(stories, vocab, 4)
        model = mlp.MLPLanguageModel(len(vocab), 4, n_embd=8, n_hidden=32, generator=gen(0))
        before = mlp.bits_per_byte(model, stories[:5], vocab)
        log = mlp.train(model, X, Y, steps=80, lr=0.3, batch_size=64, warmup=10, val=(X, Y), eval_every=40,
                        generator=gen(1))
        assert log.eval_val[-1] < log.eval_val[0] and len(log.train_loss) == 80
        assert mlp.bits_per_byte(model, stories[:5], vocab) < before
        s1 = mlp.sample(model, vocab, max_len=60, generator=gen(5))
        assert s1 == mlp.sample(model, vocab, max_len=60, generator=gen(5)) and len(s1) <= 60
        lrs, losses = mlp.lr_finder(lambda: mlp.MLPLanguageModel(len(vocab), 4, 8, 32, generator=gen(0)), X, Y,
                                    steps=20, batch_size=32, generator=gen(2))
        assert len(lrs) == len(losses) and lrs == sorted(lrs)
    finally:
        torch.set_num_threads(threads)
