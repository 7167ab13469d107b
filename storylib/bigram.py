"""Chapter 1 — the character-level bigram language model.

A language model gives a probability to every possible next token, given the text so far. The bigram
model is the simplest one that is still useful: it looks only at the *one* previous character.

Read this file from top to bottom; it follows the chapter:

    Vocab            characters <-> integer ids, plus a boundary token that starts and ends stories
    count_bigrams    N[a, b] = how often character b follows character a            (exercise ch01.counts)
    bigram_probs     P[a, b] = (N[a, b] + alpha) / row total: add-alpha smoothing   (exercise ch01.smooth)
    sample           draw a story from P, one character at a time, with temperature (exercise ch01.sample)
    nll              average negative log-likelihood of real stories, in nats        (exercise ch01.nll)
    bits_per_byte    the same cost in bits per UTF-8 byte, comparable across models  (ch01.bits_per_byte)
    BigramNet        the model as a one-layer neural net: logits = one_hot(a) @ W    (ch01.neural_loss)
    train_step       one step of plain gradient descent                              (ch01.train_step)
    train            the loop that calls train_step on random mini-batches of pairs
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

# ----------------------------------------------------------------------------- the vocabulary

BOUNDARY = 0  # the id of the boundary token; it is not a character of any story


@dataclass(frozen=True)
class Vocab:
    """The characters the model knows, and their integer ids.

    Id 0 is the boundary token: it stands *before* the first character of every story ("a story starts
    here") and *after* the last one ("the story ends here"). The characters, sorted, get ids 1..V-1.
    """

    chars: tuple[str, ...]
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("chars must be distinct single characters")
        object.__setattr__(self, "stoi", {c: i + 1 for i, c in enumerate(self.chars)})

    @classmethod
    def from_stories(cls, *corpora: Iterable[str]) -> Vocab:
        """Every character that occurs in any of the given lists of stories, sorted."""
        seen: set[str] = set()
        for stories in corpora:
            for story in stories:
                seen.update(story)
        return cls(tuple(sorted(seen)))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """The ids of the characters of `text` (no boundary tokens)."""
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise KeyError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: Iterable[int]) -> str:
        """The text of a list of ids; boundary tokens are dropped."""
        return "".join(self.chars[i - 1] for i in ids if i != BOUNDARY)

    def story_ids(self, story: str) -> list[int]:
        """A story as the model reads it: [boundary, c1, c2, ..., cn, boundary]."""
        return [BOUNDARY, *self.encode(story), BOUNDARY]

    def label(self, i: int) -> str:
        """A printable name for token i, for plots: the boundary is '◆', a space '␣', a newline '⏎'."""
        if i == BOUNDARY:
            return "◆"
        c = self.chars[i - 1]
        return {" ": "␣", "\n": "⏎", "\t": "⇥"}.get(c, c if c.isprintable() else f"U+{ord(c):04X}")


def pairs(stories: Sequence[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """All (previous, next) token pairs of the stories, as two int64 tensors x and y of equal length.

    A story of n characters gives n + 1 pairs: (◆, c1), (c1, c2), ..., (cn, ◆).
    """
    ids = [vocab.story_ids(s) for s in stories]
    x = torch.tensor([i for s in ids for i in s[:-1]], dtype=torch.int64)
    y = torch.tensor([i for s in ids for i in s[1:]], dtype=torch.int64)
    return x, y


# ----------------------------------------------------------------------------- the counting model


def count_bigrams(stories: Sequence[str], vocab: Vocab) -> torch.Tensor:
    """Count character bigrams.  (exercise ch01.counts)

    Returns N, an int64 tensor of shape (V, V), V = len(vocab), with N[a, b] = how many times token b
    follows token a in the stories, each story read as vocab.story_ids(story) = [◆, c1, ..., cn, ◆].
    So row ◆ counts the first characters of the stories and column ◆ counts their last characters;
    a story of n characters adds n + 1 to N.sum().
    """
    V = len(vocab)
    N = torch.zeros((V, V), dtype=torch.int64)
    ### BEGIN SOLUTION ch01.counts (§1.3, 2 pts): walk each story_ids' (a, b) pairs, add 1 to N[a, b]
    for story in stories:
        ids = torch.tensor(vocab.story_ids(story))
        a, b = ids[:-1], ids[1:]  # the pairs (a[t], b[t]) = (ids[t], ids[t + 1])
        # N[a, b] += 1 would count a repeated pair only once; accumulate=True adds every occurrence.
        N.index_put_((a, b), torch.ones_like(a), accumulate=True)
    ### END SOLUTION
    return N


def bigram_probs(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Turn counts into next-character probabilities, with add-alpha smoothing.  (exercise ch01.smooth)

    Returns P, a float32 tensor of the same (V, V) shape, with
        P[a, b] = (N[a, b] + alpha) / sum over b' of (N[a, b'] + alpha),
    so every row sums to 1. alpha >= 0; raise ValueError if it is negative. With alpha = 0, a row whose counts
    are all zero (a character never seen in front of anything) is uniform, 1/V — the limit as alpha -> 0.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    ### BEGIN SOLUTION ch01.smooth (§1.4, 2 pts): add alpha to every count, divide each row by its sum
    smoothed = counts.double() + alpha
    totals = smoothed.sum(dim=1, keepdim=True)
    P = smoothed / totals
    P[totals[:, 0] == 0] = 1.0 / P.shape[1]  # alpha = 0 and a row never seen: 0/0, make it uniform
    ### END SOLUTION
    return P.float()


def sample(
    probs: torch.Tensor,
    vocab: Vocab,
    max_len: int = 500,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
) -> str:
    """Generate one story, one character at a time.  (exercise ch01.sample)

    Start from the boundary token. At each step, take the row probs[prev], reshape it by the temperature,
    p_T(b) ∝ p(b) ** (1 / T), draw the next id with torch.multinomial(..., generator=generator), and stop
    when the boundary comes out or after max_len characters. Return the characters drawn (without ◆).

    temperature = 1 samples the model as it is, T < 1 sharpens it (T -> 0 always picks the most likely
    character), T > 1 flattens it. temperature = 0 means greedy: take the argmax, draw nothing.
    The same generator seed must give the same story. Raise ValueError if temperature < 0.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    ids: list[int] = []
    ### BEGIN SOLUTION ch01.sample (§1.5, 3 pts): softmax(log p / T) of row prev, multinomial, stop at ◆
    prev = BOUNDARY
    while len(ids) < max_len:
        p = probs[prev].double()
        if temperature == 0:
            nxt = int(p.argmax())
        else:
            # p ** (1/T), renormalised, computed in log space so that small T cannot underflow to 0/0.
            p = torch.softmax(torch.log(p) / temperature, dim=0)
            nxt = int(torch.multinomial(p, 1, generator=generator))
        if nxt == BOUNDARY:
            break
        ids.append(nxt)
        prev = nxt
    ### END SOLUTION
    return vocab.decode(ids)


# ----------------------------------------------------------------------------- measuring a model


def nll(probs: torch.Tensor, stories: Sequence[str], vocab: Vocab) -> float:
    """Average negative log-likelihood of the stories under the model, in nats per token.  (exercise ch01.nll)

    Every pair (a, b) of every story's vocab.story_ids contributes -ln probs[a, b]; return the sum divided
    by the number of pairs (n + 1 for a story of n characters: every character, and the final ◆).
    A pair of probability 0 makes the result inf. Put the result, a Python float, in `mean_nats`.
    """
    ### BEGIN SOLUTION ch01.nll (§1.6, 2 pts): mean of -log probs[a, b] over all pairs (use pairs())
    x, y = pairs(stories, vocab)
    mean_nats = float(-torch.log(probs[x, y].double()).mean())
    ### END SOLUTION
    return mean_nats


def bits_per_byte(probs: torch.Tensor, stories: Sequence[str], vocab: Vocab) -> float:
    """The cost of the stories in bits per UTF-8 byte.  (exercise ch01.bits_per_byte)

    Total bits = total nats / ln 2, over every pair, ending ◆ included (use nll: it gives the mean).
    Divide by the number of bytes of the stories in UTF-8 (len(story.encode("utf-8")), summed).
    Put the result, a Python float, in `bpb`.
    """
    ### BEGIN SOLUTION ch01.bits_per_byte (§1.7, 1 pt): nll × pairs / ln 2 / UTF-8 bytes
    n_pairs = sum(len(s) + 1 for s in stories)
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    total_bits = nll(probs, stories, vocab) * n_pairs / math.log(2)
    bpb = total_bits / n_bytes
    ### END SOLUTION
    return bpb


# ----------------------------------------------------------------------------- the neural version


class BigramNet:
    """The bigram model as a neural net: one linear layer, no bias, then a softmax.

    The input is the previous token as a one-hot vector of length V; the output is V logits,
    logits = one_hot(a) @ W, so the logits for a are simply row a of W. softmax(W[a]) is the model's
    next-token distribution, the neural counterpart of row a of the counting table P.
    """

    def __init__(self, vocab_size: int, generator: torch.Generator | None = None) -> None:
        self.vocab_size = vocab_size
        self.W = (0.01 * torch.randn((vocab_size, vocab_size), generator=generator)).requires_grad_()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) int64 ids -> (n, V) logits. one_hot(x) @ W picks rows of W; W[x] is the same, faster."""
        return self.W[x]  # the same numbers as F.one_hot(x, V).float() @ self.W, without the V-fold work

    def loss(self, x: torch.Tensor, y: torch.Tensor, l2: float = 0.0) -> torch.Tensor:
        """Cross-entropy of targets y given inputs x, plus an L2 penalty.  (exercise ch01.neural_loss)

        x, y: (n,) int64 ids. Returns a scalar tensor (differentiable with respect to W):
            mean over t of  -log softmax(logits[t])[y[t]]   +   l2 * sum of W ** 2.
        Compute the log-softmax yourself: log softmax(z)_j = z_j - logsumexp(z) (torch.logsumexp is stable).
        Put the result in `loss`.
        """
        ### BEGIN SOLUTION ch01.neural_loss (§1.8, 2 pts): logits - logsumexp, pick y, mean, negate, + l2·ΣW²
        logits = self.logits(x)
        log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        data_loss = -log_probs[torch.arange(len(y)), y].mean()
        loss = data_loss + l2 * (self.W**2).sum()
        ### END SOLUTION
        return loss

    def probs(self) -> torch.Tensor:
        """The (V, V) table of next-token probabilities, softmax of each row of W, like bigram_probs."""
        with torch.no_grad():
            return torch.softmax(self.W, dim=1)


def train_step(model: BigramNet, x: torch.Tensor, y: torch.Tensor, lr: float, l2: float = 0.0) -> float:
    """One step of plain gradient descent on model.loss(x, y, l2).  (exercise ch01.train_step)

    Compute the loss, clear the old gradient (model.W.grad = None: backward() *adds* to .grad),
    backpropagate, then update in place without tracking: W <- W - lr * dLoss/dW.
    Keep the loss tensor in `loss`: the function returns loss.item(), the loss before the update.
    """
    ### BEGIN SOLUTION ch01.train_step (§1.9, 2 pts): loss, W.grad = None, backward, no_grad W -= lr·grad
    loss = model.loss(x, y, l2)
    model.W.grad = None
    loss.backward()
    with torch.no_grad():
        model.W -= lr * model.W.grad
    ### END SOLUTION
    return loss.item()


def train(
    model: BigramNet,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 4096,
    l2: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[float]:
    """Train with train_step on `steps` random mini-batches of (x, y) pairs; return the loss of each step."""
    losses = []
    for _ in range(steps):
        batch = torch.randint(0, len(x), (batch_size,), generator=generator)
        losses.append(train_step(model, x[batch], y[batch], lr, l2))
    return losses
