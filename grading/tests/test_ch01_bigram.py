"""Tests for Chapter 1, the bigram language model (storylib/bigram.py).

Each test grades one exercise and uses only that exercise's function (plus given code and earlier
exercises), compared with an independent oracle: collections.Counter, float64 formulas, PyTorch's
own cross-entropy and autograd.
"""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.overrides import is_tensor_like

from storylib import bigram
from storylib.bigram import BOUNDARY, BigramNet, Vocab
from storylib.data import synthetic_stories

UNICODE_STORIES = [
    "Zoé saw a “big” 🐉!",
    "Mia said: “Hi, café!”",
    "",  # an empty story is still one pair: (◆, ◆)
    "aaa",
    "Tom ran.\nThe end.",
]


@pytest.fixture(autouse=True)
def one_thread():
    """These tensors are tiny: one thread is faster than several, and immune to a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def corpus(n: int = 17, seed: int = 3) -> list[str]:
    return synthetic_stories(n, seed) + UNICODE_STORIES


def random_probs(V: int, seed: int, zeros: int = 0) -> torch.Tensor:
    """A non-uniform (V, V) table whose rows sum to 1, with `zeros` entries per row set to 0."""
    g = torch.Generator().manual_seed(seed)
    P = torch.rand((V, V), generator=g, dtype=torch.float64) ** 3 + 1e-3
    for row in range(V):
        P[row, torch.randperm(V, generator=g)[:zeros]] = 0.0
    return (P / P.sum(dim=1, keepdim=True)).float()


def story_pairs(story: str, vocab: Vocab) -> list[tuple[int, int]]:
    stoi = vocab.stoi  # once: in the grader, each attribute access is a request to the learner's worker
    ids = [BOUNDARY] + [stoi[c] for c in story] + [BOUNDARY]
    return list(zip(ids[:-1], ids[1:], strict=True))


# ----------------------------------------------------------------------------- ch01.counts


@pytest.mark.exercise("ch01.counts")
def test_counts_match_a_counter_of_pairs():
    stories = corpus()
    vocab = Vocab.from_stories(stories)
    V = len(vocab)
    N = bigram.count_bigrams(stories, vocab)
    assert isinstance(N, torch.Tensor), f"count_bigrams should return a torch.Tensor, got {type(N).__name__}"
    assert N.shape == (V, V), f"N should have shape (V, V) = {(V, V)}, got {tuple(N.shape)}"
    assert N.dtype == torch.int64, f"N should hold int64 counts, got {N.dtype}"
    expected = Counter(p for s in stories for p in story_pairs(s, vocab))
    for (a, b), n in expected.items():
        assert N[a, b] == n, (
            f"N[{vocab.label(a)!r}, {vocab.label(b)!r}] should be {n} (that pair occurs {n} times), got {int(N[a, b])}"
        )
    assert int(N.sum()) == sum(expected.values()), (
        f"N should count every pair exactly once: {sum(expected.values())} pairs in all, N.sum() = {int(N.sum())}"
    )


@pytest.mark.exercise("ch01.counts")
def test_counts_include_story_start_and_end():
    stories = ["ab", "ba", "b", ""]
    vocab = Vocab.from_stories(stories)
    N = bigram.count_bigrams(stories, vocab)
    a, b = vocab.stoi["a"], vocab.stoi["b"]
    assert N[BOUNDARY, a] == 1 and N[BOUNDARY, b] == 2, "row ◆ should count how often each character starts a story"
    assert N[a, BOUNDARY] == 1 and N[b, BOUNDARY] == 2, "column ◆ should count how often each character ends a story"
    assert N[BOUNDARY, BOUNDARY] == 1, "an empty story is the single pair (◆, ◆)"
    assert int(N.sum()) == 3 + 3 + 2 + 1, (
        f"stories of 2, 2, 1 and 0 characters give 3+3+2+1 pairs, N.sum() = {int(N.sum())}"
    )


@pytest.mark.exercise("ch01.counts")
def test_counts_repeated_pairs_and_empty_input():
    stories = ["aaaa", "é🐉é🐉é"]
    vocab = Vocab.from_stories(stories, ["xyz"])
    N = bigram.count_bigrams(stories, vocab)
    a = vocab.stoi["a"]
    assert N[a, a] == 3, (
        f"'aaaa' holds the pair (a, a) three times; N[a, a] = {int(N[a, a])} (did a repeat count once?)"
    )
    assert N[vocab.stoi["é"], vocab.stoi["🐉"]] == 2, "'é🐉é🐉é' holds (é, 🐉) twice"
    assert N[vocab.stoi["x"]].sum() == 0, "characters of the vocabulary that never occur should have a zero row"
    empty = bigram.count_bigrams([], vocab)
    assert empty.shape == (len(vocab), len(vocab)) and int(empty.sum()) == 0, "no stories should give all-zero counts"


# ----------------------------------------------------------------------------- ch01.smooth


def random_counts(V: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    N = torch.randint(0, 50, (V, V), generator=g) * (torch.rand((V, V), generator=g) < 0.4)
    return N.to(torch.int64)


@pytest.mark.exercise("ch01.smooth")
@pytest.mark.parametrize("alpha", [1.0, 0.3, 7.0])
def test_smoothing_matches_the_formula(alpha):
    V = 13
    N = random_counts(V, seed=11)
    N[4] = 0  # a row never seen
    P = bigram.bigram_probs(N, alpha)
    assert P.shape == (V, V), f"P should have the shape of N, {(V, V)}, got {tuple(P.shape)}"
    assert P.dtype == torch.float32, f"P should be float32, got {P.dtype}"
    Nd = N.double() + alpha
    expected = Nd / Nd.sum(dim=1, keepdim=True)
    err = (P.double() - expected).abs().max().item()
    assert err < 1e-6, f"P[a, b] should be (N[a, b] + alpha) / (row total + V * alpha); largest difference {err:.3g}"
    assert torch.allclose(P.double().sum(dim=1), torch.ones(V, dtype=torch.float64), atol=1e-5), "rows should sum to 1"
    assert torch.allclose(P[4].double(), torch.full((V,), 1 / V, dtype=torch.float64)), (
        "a row with no counts should become uniform, 1/V, once alpha is added"
    )


@pytest.mark.exercise("ch01.smooth")
def test_alpha_zero_is_plain_normalisation_and_empty_rows_are_uniform():
    V = 9
    N = random_counts(V, seed=5)
    N[2] = 0
    N[6, 0] = 3  # make sure the other rows are not empty
    P = bigram.bigram_probs(N, 0.0)
    assert not torch.isnan(P).any(), "alpha = 0 must not give NaN: a row of zero counts should become uniform (1/V)"
    for a in range(V):
        total = int(N[a].sum())
        for b in range(V):
            want = N[a, b].item() / total if total else 1 / V
            assert abs(P[a, b].item() - want) < 1e-6, (
                f"with alpha = 0, P[{a}, {b}] should be {want:.6f}, got {P[a, b]:.6f}"
            )


@pytest.mark.exercise("ch01.smooth")
def test_smoothing_rejects_negative_alpha_and_keeps_counts():
    N = random_counts(7, seed=2)
    before = N.clone()
    bigram.bigram_probs(N, 2.5)
    assert torch.equal(N, before), "bigram_probs must not change the counts it is given (add alpha to a copy)"
    with pytest.raises(ValueError):
        bigram.bigram_probs(N, -0.5)


# ----------------------------------------------------------------------------- ch01.sample


def tiny_vocab() -> Vocab:
    return Vocab(tuple("abcdé🐉"))  # V = 7, ids 1..6


@pytest.mark.exercise("ch01.sample")
def test_sampling_is_reproducible_and_only_uses_allowed_transitions():
    vocab = tiny_vocab()
    V = len(vocab)
    P = random_probs(V, seed=8, zeros=3)
    P[BOUNDARY, BOUNDARY] = 0.0  # never an empty story
    P[BOUNDARY] /= P[BOUNDARY].sum()
    s1 = bigram.sample(P, vocab, max_len=200, generator=torch.Generator().manual_seed(42))
    s2 = bigram.sample(P, vocab, max_len=200, generator=torch.Generator().manual_seed(42))
    assert isinstance(s1, str), f"sample should return a str, got {type(s1).__name__}"
    assert s1 == s2, "the same generator seed should give the same story (pass generator= to torch.multinomial)"
    for seed in range(30):
        s = bigram.sample(P, vocab, max_len=200, generator=torch.Generator().manual_seed(seed))
        assert 1 <= len(s) <= 200, f"a story should have between 1 and max_len = 200 characters, got {len(s)}"
        ids = [BOUNDARY, *vocab.encode(s)] + ([BOUNDARY] if len(s) < 200 else [])
        for a, b in zip(ids[:-1], ids[1:], strict=False):
            assert P[a, b] > 0, (
                f"the story {s!r} uses the step {vocab.label(a)!r} -> {vocab.label(b)!r}, which has probability 0"
            )


@pytest.mark.exercise("ch01.sample")
def test_sampling_frequencies_follow_the_probabilities(repeat):
    vocab = tiny_vocab()
    V = len(vocab)
    # Every story is exactly one character long: row ◆ is the distribution, every other row ends the story.
    P = torch.zeros((V, V))
    first = torch.tensor([0.0, 0.05, 0.4, 0.1, 0.25, 0.15, 0.05])
    P[BOUNDARY] = first
    P[1:, BOUNDARY] = 1.0
    g = torch.Generator().manual_seed(7)
    n = 3000
    counts = Counter(repeat(n, bigram.sample, P, vocab, max_len=10, generator=g))
    assert set(counts) <= set(vocab.chars), f"every story here is one character, got {sorted(counts)[:5]}"
    chi2 = sum(
        (counts.get(vocab.chars[i - 1], 0) - n * first[i].item()) ** 2 / (n * first[i].item()) for i in range(1, V)
    )
    # 5 degrees of freedom: chi2 > 25 has probability < 0.0002 for a correct sampler.
    freqs = {c: round(k / n, 3) for c, k in sorted(counts.items())}
    assert chi2 < 25, f"first characters should follow P[◆] = {first.tolist()[1:]}; got frequencies {freqs}"


@pytest.mark.exercise("ch01.sample")
def test_temperature_reshapes_the_distribution(repeat):
    vocab = tiny_vocab()
    V = len(vocab)
    P = torch.zeros((V, V))
    first = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.15, 0.2, 0.05])
    P[BOUNDARY] = first
    P[1:, BOUNDARY] = 1.0
    for T in (0.5, 2.0):
        g = torch.Generator().manual_seed(123)
        n = 3000
        counts = Counter(repeat(n, bigram.sample, P, vocab, max_len=5, temperature=T, generator=g))
        want = first ** (1 / T)
        want = want / want.sum()
        chi2 = sum(
            (counts.get(vocab.chars[i - 1], 0) - n * want[i].item()) ** 2 / (n * want[i].item()) for i in range(1, V)
        )
        assert chi2 < 25, (
            f"at temperature {T}, first characters should follow p ** (1/T) renormalised = "
            f"{[round(w, 3) for w in want.tolist()[1:]]}; got {dict(sorted(counts.items()))}"
        )


@pytest.mark.exercise("ch01.sample")
def test_tiny_temperature_is_greedy_and_max_len_is_respected():
    vocab = tiny_vocab()
    V = len(vocab)
    P = random_probs(V, seed=21)
    P[torch.arange(V), P.argmax(dim=1)] *= 3  # a clear winner in every row: 3 times the runner-up or more
    P /= P.sum(dim=1, keepdim=True)
    greedy, prev = [], BOUNDARY
    for _ in range(40):  # follow the most likely next character by hand
        prev = int(P[prev].argmax())
        if prev == BOUNDARY:
            break
        greedy.append(vocab.chars[prev - 1])
    expected = "".join(greedy)[:25]
    for T in (0.01, 0.0):
        got = bigram.sample(P, vocab, max_len=25, temperature=T, generator=torch.Generator().manual_seed(0))
        assert got == expected, (
            f"at temperature {T} sampling should always take the most likely next character: "
            f"expected {expected!r}, got {got!r}"
        )
    with pytest.raises(ValueError):
        bigram.sample(P, vocab, temperature=-1.0)


# ----------------------------------------------------------------------------- ch01.nll


@pytest.mark.exercise("ch01.nll")
def test_nll_matches_a_float64_loop():
    stories = corpus(9, seed=4)
    vocab = Vocab.from_stories(stories)
    P = random_probs(len(vocab), seed=13)
    total, n = 0.0, 0
    for s in stories:
        for a, b in story_pairs(s, vocab):
            total -= math.log(P[a, b].item())
            n += 1
    got = bigram.nll(P, stories, vocab)
    assert isinstance(got, float), f"nll should return a Python float, got {type(got).__name__}"
    assert abs(got - total / n) < 1e-5, (
        f"nll should be the mean of -ln P[a, b] over all {n} pairs: {total / n:.6f}, got {got:.6f}"
    )


@pytest.mark.exercise("ch01.nll")
def test_nll_agrees_with_torch_cross_entropy():
    stories = ["“Hi!” 🐉", "abcab", "é"]
    vocab = Vocab.from_stories(stories)
    g = torch.Generator().manual_seed(9)
    logits = torch.randn((len(vocab), len(vocab)), generator=g, dtype=torch.float64) * 2
    P = torch.softmax(logits, dim=1).float()
    pairs = [p for s in stories for p in story_pairs(s, vocab)]
    x = torch.tensor([a for a, _ in pairs])
    y = torch.tensor([b for _, b in pairs])
    want = F.cross_entropy(torch.log(P.double())[x], y).item()
    got = bigram.nll(P, stories, vocab)
    assert abs(got - want) < 1e-5, (
        f"nll should equal PyTorch's cross-entropy on the same pairs, {want:.6f}; got {got:.6f}"
    )


@pytest.mark.exercise("ch01.nll")
def test_nll_of_uniform_model_and_of_impossible_text():
    stories = synthetic_stories(5, seed=1)
    vocab = Vocab.from_stories(stories)
    V = len(vocab)
    uniform = torch.full((V, V), 1 / V)
    got = bigram.nll(uniform, stories, vocab)
    assert abs(got - math.log(V)) < 1e-5, (
        f"a uniform model over V = {V} tokens costs ln V = {math.log(V):.5f} nats, got {got}"
    )
    P = uniform.clone()
    P[BOUNDARY, vocab.stoi[stories[0][0]]] = 0.0
    assert bigram.nll(P, stories, vocab) == math.inf, "a pair of probability 0 should make the NLL inf"


# ----------------------------------------------------------------------------- ch01.bits_per_byte


@pytest.mark.exercise("ch01.bits_per_byte")
def test_bits_per_byte_counts_utf8_bytes():
    stories = ["“é”", "🐉a", "ab\nc"]  # 3 characters, 8 bytes; 2 characters, 5 bytes; 4 and 4
    vocab = Vocab.from_stories(stories)
    P = random_probs(len(vocab), seed=17)
    bits = -sum(math.log2(P[a, b].item()) for s in stories for a, b in story_pairs(s, vocab))
    n_bytes = 8 + 5 + 4
    got = bigram.bits_per_byte(P, stories, vocab)
    assert abs(got - bits / n_bytes) < 1e-5, (
        f"expected {bits:.4f} bits over {n_bytes} UTF-8 bytes = {bits / n_bytes:.6f} bits/byte, got {got:.6f} "
        "(count bytes with len(s.encode('utf-8')), not characters)"
    )


@pytest.mark.exercise("ch01.bits_per_byte")
def test_bits_per_byte_of_uniform_model_on_ascii():
    stories = synthetic_stories(6, seed=2)
    vocab = Vocab.from_stories(stories)
    V = len(vocab)
    pairs = sum(len(s) + 1 for s in stories)
    n_bytes = sum(len(s) for s in stories)  # ASCII: one byte per character
    want = pairs * math.log2(V) / n_bytes
    got = bigram.bits_per_byte(torch.full((V, V), 1 / V), stories, vocab)
    assert abs(got - want) < 1e-5, (
        f"a uniform model spends log2 V bits per token: expected {want:.6f} bits/byte, got {got:.6f}"
    )


# ----------------------------------------------------------------------------- ch01.neural_loss


@pytest.mark.exercise("ch01.neural_loss")
def test_neural_loss_equals_torch_cross_entropy():
    V = 11
    g = torch.Generator().manual_seed(31)
    model = BigramNet(V, generator=g)
    with torch.no_grad():
        model.W.copy_(torch.randn((V, V), generator=g) * 3)  # large logits: the log-softmax must be stable
    x = torch.randint(0, V, (257,), generator=g)
    y = torch.randint(0, V, (257,), generator=g)
    loss = model.loss(x, y)
    assert is_tensor_like(loss) and loss.dim() == 0, "loss should return a scalar tensor"
    want = F.cross_entropy(model.W.detach().double()[x], y).item()
    assert abs(loss.item() - want) < 1e-5, (
        f"the loss should be the mean cross-entropy {want:.6f}, got {loss.item():.6f}"
    )


@pytest.mark.exercise("ch01.neural_loss")
def test_neural_loss_gradient_and_l2_penalty():
    V = 8
    g = torch.Generator().manual_seed(4)
    model = BigramNet(V, generator=g)
    x = torch.randint(0, V, (99,), generator=g)
    y = torch.randint(0, V, (99,), generator=g)
    l2 = 0.05
    loss = model.loss(x, y, l2=l2)
    loss.backward()
    assert model.W.grad is not None, "the loss must be computed from model.W so that backward() reaches it"
    W = model.W.detach().double().clone().requires_grad_()
    oracle = F.cross_entropy(W[x], y) + l2 * (W**2).sum()
    oracle.backward()
    assert abs(loss.item() - oracle.item()) < 1e-5, (
        f"with l2 = {l2} the loss should be cross-entropy + l2 * sum(W ** 2) = {oracle.item():.6f}, "
        f"got {loss.item():.6f}"
    )
    err = (model.W.grad.double() - W.grad).abs().max().item()
    assert err < 1e-5, f"the gradient of your loss differs from the expected one by {err:.3g}"


@pytest.mark.exercise("ch01.neural_loss")
def test_neural_loss_is_minimised_by_the_log_of_the_counting_table():
    stories = corpus(11, seed=9)
    vocab = Vocab.from_stories(stories)
    V = len(vocab)
    pairs = [p for s in stories for p in story_pairs(s, vocab)]
    x = torch.tensor([a for a, _ in pairs])
    y = torch.tensor([b for _, b in pairs])
    counts = Counter(pairs)
    rows = Counter(a for a, _ in pairs)
    want = -sum(k * math.log(k / rows[a]) for (a, _), k in counts.items()) / len(pairs)
    model = BigramNet(V)
    with torch.no_grad():  # W = log of the empirical table (pairs never seen: a very negative logit)
        model.W.fill_(-1e4)
        for (a, b), k in counts.items():
            model.W[a, b] = math.log(k / rows[a])
    got = model.loss(x, y).item()
    assert abs(got - want) < 1e-4, (
        f"with W = log of the counting probabilities the loss should be {want:.5f}, got {got:.5f}"
    )


# ----------------------------------------------------------------------------- ch01.train_step


def manual_step(W: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: float, l2: float) -> torch.Tensor:
    """One gradient-descent step, with the gradient of cross-entropy written out by hand in float64."""
    W = W.double()
    V = W.shape[0]
    G = torch.softmax(W[x], dim=1) - F.one_hot(y, V).double()  # d loss_t / d logits_t
    grad = torch.zeros_like(W).index_add_(0, x, G) / len(x) + 2 * l2 * W
    return W - lr * grad


@pytest.mark.exercise("ch01.train_step")
def test_train_step_is_one_gradient_descent_update():
    V = 10
    g = torch.Generator().manual_seed(12)
    model = BigramNet(V, generator=g)
    x = torch.randint(0, V, (301,), generator=g)
    y = torch.randint(0, V, (301,), generator=g)
    W0 = model.W.detach().clone()
    lr, l2 = 3.0, 0.01
    want_loss = (F.cross_entropy(W0.double()[x], y) + l2 * (W0.double() ** 2).sum()).item()
    got_loss = bigram.train_step(model, x, y, lr=lr, l2=l2)
    assert isinstance(got_loss, float), (
        f"train_step should return the loss as a Python float, got {type(got_loss).__name__}"
    )
    assert abs(got_loss - want_loss) < 1e-5, f"return the loss *before* the update, {want_loss:.6f}; got {got_loss:.6f}"
    err = (model.W.detach().double() - manual_step(W0, x, y, lr, l2)).abs().max().item()
    assert err < 1e-5, f"after one step W should be W - lr * dLoss/dW; it differs by up to {err:.3g}"
    assert model.W.requires_grad, "W should still require gradients after the update (update it in place under no_grad)"


@pytest.mark.exercise("ch01.train_step")
def test_train_step_does_not_accumulate_old_gradients():
    V = 6
    g = torch.Generator().manual_seed(2)
    model = BigramNet(V, generator=g)
    x = torch.randint(0, V, (50,), generator=g)
    y = torch.randint(0, V, (50,), generator=g)
    W = model.W.detach().clone()
    for _ in range(3):
        bigram.train_step(model, x, y, lr=2.0)
        W = manual_step(W, x, y, lr=2.0, l2=0.0)
    err = (model.W.detach().double() - W).abs().max().item()
    assert err < 1e-5, (
        f"three steps differ from three clean gradient steps by {err:.3g}: clear W.grad before backward()"
    )


@pytest.mark.exercise("ch01.train_step")
def test_training_converges_to_the_counting_solution(repeat):
    stories = corpus(25, seed=6)
    vocab = Vocab.from_stories(stories)
    V = len(vocab)
    pairs = [p for s in stories for p in story_pairs(s, vocab)]
    x = torch.tensor([a for a, _ in pairs])
    y = torch.tensor([b for _, b in pairs])
    counts, rows = Counter(pairs), Counter(a for a, _ in pairs)
    best = -sum(k * math.log(k / rows[a]) for (a, _), k in counts.items()) / len(pairs)  # the counting model's NLL
    model = BigramNet(V, generator=torch.Generator().manual_seed(0))
    losses = repeat(300, bigram.train_step, model, x, y, lr=50.0)
    assert losses[-1] < losses[0], f"the loss should go down: first {losses[0]:.4f}, last {losses[-1]:.4f}"
    assert losses[-1] - best < 0.05, (
        f"full-batch gradient descent should approach the counting model's NLL {best:.4f}; "
        f"after 300 steps: {losses[-1]:.4f}"
    )
