"""Chapter 3 — a multilayer perceptron language model (Bengio et al. 2003), on characters.

The bigram model of Chapter 1 sees one character. This model sees the last `context` characters: it looks
each one up in an embedding table, concatenates the embeddings, passes them through a hidden layer with a
GELU, and ends with one logit per vocabulary entry. Then we open the black box of `loss.backward()` and
write every gradient of the model by hand, checking each one against PyTorch's autograd.

Read this file from top to bottom; it follows the chapter:

    build_dataset           (context window, next token) examples, padded with ◆    (exercise ch03.dataset)
    matmul_loops            C = A @ B with three Python loops                          (exercise ch03.matmul)
    matmul_rows, matmul     one row at a time; then all of it in one call to `@`
    gelu                    GELU, exact (erf) and tanh approximation                   (exercise ch03.gelu)
    MLPLanguageModel        embed -> concatenate -> linear -> GELU -> linear -> logits (exercise ch03.forward)
    cross_entropy           mean of -log softmax(logits)[target]
    cross_entropy_backward  dloss/dlogits                                  (exercise ch03.cross_entropy_backward)
    linear_backward         dloss/dx, dW, db of y = x @ W + b                     (exercise ch03.linear_backward)
    gelu_backward           dloss/dx of y = gelu(x)                                 (exercise ch03.gelu_backward)
    embedding_backward      dloss/dC of emb = C[idx]: a scatter-add          (exercise ch03.embedding_backward)
    manual_backward         all of them chained: every gradient of the model, by hand
    autograd_backward, cmp  the same gradients from autograd, and a side-by-side comparison
    warmup_cosine_lr        the learning-rate schedule: linear warm-up, cosine decay  (exercise ch03.lr_schedule)
    lr_finder, train        minibatch SGD with momentum, and a sweep that finds a good learning rate
    mean_loss, bits_per_byte, sample
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from storylib.bigram import BOUNDARY, Vocab

GELU_FORMS = ("none", "tanh")  # the two forms of GELU, named as in torch.nn.functional.gelu(approximate=...)

# ----------------------------------------------------------------------------- 3.1 the data: context windows


def build_dataset(stories: Sequence[str], vocab: Vocab, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (context window, next token) example of the stories.  (exercise ch03.dataset)

    Read each story as `context` boundary tokens followed by its characters and one final boundary:
        [◆] * context + vocab.encode(story) + [◆]
    and slide a window along it: every token after the padding is a target Y, and the `context` tokens in
    front of it are its input X. A story of L characters gives L + 1 examples; the first has X = (◆, ..., ◆)
    and predicts the first character, the last predicts the closing ◆. With context = 1 these are exactly
    the (previous, next) pairs of Chapter 1.

    Returns X, int64 of shape (N, context), and Y, int64 of shape (N,), N = sum over stories of len + 1,
    examples in story order (set X and Y). Raises ValueError if context < 1.
    """
    if context < 1:
        raise ValueError(f"context must be >= 1, got {context}")
    if not stories:
        return torch.empty((0, context), dtype=torch.int64), torch.empty((0,), dtype=torch.int64)
    ### BEGIN SOLUTION ch03.dataset (§3.1, 2 pts): pad with context ◆, then every window of context + 1 ids is (X, Y)
    xs, ys = [], []
    for story in stories:
        ids = torch.tensor([BOUNDARY] * context + vocab.encode(story) + [BOUNDARY], dtype=torch.int64)
        windows = ids.unfold(0, context + 1, 1)  # (L + 1, context + 1): row t is ids[t : t + context + 1]
        xs.append(windows[:, :-1])  # the context tokens
        ys.append(windows[:, -1])  # the token that follows them
    X, Y = torch.cat(xs), torch.cat(ys)
    ### END SOLUTION
    return X, Y


# ----------------------------------------------------------------------------- 3.2 matrix multiplication


def matmul_loops(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """C = A @ B with three nested Python loops, one multiply-add at a time.  (exercise ch03.matmul)

    A: (n, k) and B: (k, m) float tensors. Returns C, (n, m), A's dtype, with
        C[i, j] = sum over p of A[i, p] * B[p, j].
    The inputs are given to you as Python lists of lists (`a`, `b`): reading a tensor element by element
    is slower still. Fill `out`, a list of n rows of m floats. Raises ValueError if the inner sizes differ.
    """
    (n, k), (k2, m) = A.shape, B.shape
    if k != k2:
        raise ValueError(f"cannot multiply {tuple(A.shape)} by {tuple(B.shape)}: inner sizes {k} != {k2}")
    a, b = A.tolist(), B.tolist()
    out = [[0.0] * m for _ in range(n)]
    ### BEGIN SOLUTION ch03.matmul (§3.2, 1 pt): for i, for j, for p: add a[i][p] * b[p][j] into out[i][j]
    for i in range(n):
        for j in range(m):
            s = 0.0
            for p in range(k):
                s += a[i][p] * b[p][j]
            out[i][j] = s
    ### END SOLUTION
    return torch.tensor(out, dtype=A.dtype)


def matmul_rows(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """C = A @ B one output row at a time: the two inner loops become one broadcast multiply and a sum.

    Row i of C is sum over p of A[i, p] * B[p, :]: A[i, :, None] is (k, 1), broadcast against B (k, m),
    summed over the k rows. Python still loops n times, but each iteration is one call into C code.
    """
    if A.shape[1] != B.shape[0]:
        raise ValueError(f"cannot multiply {tuple(A.shape)} by {tuple(B.shape)}")
    C = torch.empty((A.shape[0], B.shape[1]), dtype=A.dtype)
    for i in range(A.shape[0]):
        C[i] = (A[i, :, None] * B).sum(dim=0)
    return C


def matmul(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """C = A @ B in one call: a tuned BLAS kernel (blocked for the caches, SIMD, every core)."""
    return A @ B


# ----------------------------------------------------------------------------- 3.3 GELU


def gelu(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """The Gaussian error linear unit, elementwise.  (exercise ch03.gelu)

    approximate="none" (exact):  gelu(x) = x * Φ(x) = 0.5 * x * (1 + erf(x / √2)),
        Φ the standard normal CDF (torch.erf is the error function).
    approximate="tanh":          gelu(x) ≈ 0.5 * x * (1 + tanh(√(2/π) * (x + 0.044715 * x³))).
    Any shape, any float dtype; returns a tensor of the same shape and dtype (differentiable by autograd).
    Raises ValueError for any other `approximate`.
    """
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate must be one of {GELU_FORMS}, got {approximate!r}")
    ### BEGIN SOLUTION ch03.gelu (§3.3, 2 pts): 0.5·x·(1 + erf(x/√2)); tanh form: erf → tanh(√(2/π)(x + 0.044715x³))
    if approximate == "none":
        y = 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))
    else:
        y = 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
    ### END SOLUTION
    return y


# ----------------------------------------------------------------------------- 3.4 the model


class MLPLanguageModel(nn.Module):
    """Bengio et al. (2003), with a GELU: the next token from the `context` tokens before it.

        emb    = C[idx]                    (B, n, d)   one learned d-vector per token: the embedding table C (V, d)
        x      = emb.reshape(B, n * d)     (B, n·d)    the context's embeddings, side by side
        hpre   = x @ W1 + b1               (B, H)      the hidden layer, before its nonlinearity
        h      = gelu(hpre)                (B, H)
        logits = h @ W2 + b2               (B, V)      one score per possible next token

    Weights are stored as (fan_in, fan_out), so that a layer is `x @ W + b` exactly as written.
    Initialisation: C ~ N(0, 1); W1 ~ N(0, 1/(n·d)) so hpre starts with unit variance; W2 small, so the
    first predictions are nearly uniform and the first loss is close to ln V.
    """

    def __init__(
        self,
        vocab_size: int,
        context: int,
        n_embd: int = 16,
        n_hidden: int = 256,
        approximate: str = "none",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if approximate not in GELU_FORMS:
            raise ValueError(f"approximate must be one of {GELU_FORMS}, got {approximate!r}")
        self.vocab_size, self.context, self.n_embd, self.n_hidden = vocab_size, context, n_embd, n_hidden
        self.approximate = approximate
        fan_in = context * n_embd

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator)

        self.C = nn.Parameter(randn(vocab_size, n_embd))
        self.W1 = nn.Parameter(randn(fan_in, n_hidden) / math.sqrt(fan_in))
        self.b1 = nn.Parameter(torch.zeros(n_hidden))
        self.W2 = nn.Parameter(randn(n_hidden, vocab_size) * (0.1 / math.sqrt(n_hidden)))
        self.b2 = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits of the next token.  (exercise ch03.forward)

        idx: int64 (B, context), token ids. Returns float logits of shape (B, vocab_size), the dtype of the
        parameters: embedding lookup C[idx], reshape to (B, context * n_embd), x @ W1 + b1, then
        gelu(..., self.approximate) (your function of §3.3), then @ W2 + b2. No softmax here: the loss does it.
        """
        ### BEGIN SOLUTION ch03.forward (§3.4, 2 pts): C[idx] -> reshape (B, n·d) -> @ W1 + b1 -> gelu -> @ W2 + b2
        emb = self.C[idx]  # (B, n, d)
        x = emb.reshape(idx.shape[0], -1)  # (B, n·d)
        h = gelu(x @ self.W1 + self.b1, self.approximate)  # (B, H)
        logits = h @ self.W2 + self.b2  # (B, V)
        ### END SOLUTION
        return logits

    def n_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the B rows of -log softmax(logits[b])[targets[b]], a scalar (same as F.cross_entropy).

    log softmax(z)_j = z_j - logsumexp(z); torch.logsumexp subtracts the max first, so it never overflows.
    """
    log_probs = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    return -log_probs[torch.arange(len(targets)), targets].mean()


# ----------------------------------------------------------------------------- 3.5 - 3.8 backprop by hand
#
# Each function gets the *upstream* gradient (dloss/d output of the operation) and the operation's inputs,
# and returns dloss/d input, the same shape as the input. No autograd inside: these are plain tensor maths.


def cross_entropy_backward(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """dloss/dlogits for loss = cross_entropy(logits, targets).  (exercise ch03.cross_entropy_backward)

    logits: float (B, V); targets: int64 (B,). Returns dlogits, (B, V), logits' dtype:
        dlogits[b, j] = (softmax(logits[b])_j - [j == targets[b]]) / B.
    Every row sums to zero: the gradient pulls the target's logit up and pushes all others down.
    """
    ### BEGIN SOLUTION ch03.cross_entropy_backward (§3.5, 2 pts): row softmax, minus 1 at the target, over B
    B = logits.shape[0]
    dlogits = torch.softmax(logits, dim=1)  # a new tensor: the logits themselves are left alone
    dlogits[torch.arange(B), targets] -= 1.0
    dlogits = dlogits / B
    ### END SOLUTION
    return dlogits


def linear_backward(
    x: torch.Tensor, W: torch.Tensor, dout: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of out = x @ W + b.  (exercise ch03.linear_backward)

    x: (..., in), any number of leading batch dimensions; W: (in, out); dout = dloss/dout: (..., out).
    Returns (dx, dW, db) with the shapes of x, W and b = (out,):
        dx = dout @ Wᵀ,   dW = sum over every batch position of xᵀ dout,   db = dout summed over the batch.
    (Flatten the leading dimensions of x and dout to one of size M first: then dW = x2ᵀ @ dout2, (in, out).)
    """
    ### BEGIN SOLUTION ch03.linear_backward (§3.6, 2 pts): dx = dout @ Wᵀ; batch flattened, dW = xᵀ @ dout, db = Σ dout
    dx = dout @ W.T
    x2 = x.reshape(-1, x.shape[-1])  # (M, in)
    dout2 = dout.reshape(-1, dout.shape[-1])  # (M, out)
    dW = x2.T @ dout2
    db = dout2.sum(dim=0)
    ### END SOLUTION
    return dx, dW, db


def gelu_backward(x: torch.Tensor, dout: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """dloss/dx for out = gelu(x, approximate), given dout = dloss/dout.  (exercise ch03.gelu_backward)

    x, dout: same shape, float. Returns dx = dout * gelu'(x), same shape and dtype, with
      exact:  gelu'(x) = Φ(x) + x φ(x),   Φ(x) = 0.5 (1 + erf(x/√2)),   φ(x) = exp(-x²/2) / √(2π);
      tanh:   with u = √(2/π) (x + 0.044715 x³) and t = tanh(u),
              gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t²) √(2/π) (1 + 3 · 0.044715 x²).
    Raises ValueError for any other `approximate`.
    """
    if approximate not in GELU_FORMS:
        raise ValueError(f"approximate must be one of {GELU_FORMS}, got {approximate!r}")
    ### BEGIN SOLUTION ch03.gelu_backward (§3.7, 2 pts): exact: Φ(x) + x·φ(x); tanh: chain rule through tanh(u)
    if approximate == "none":
        cdf = 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))
        pdf = torch.exp(-0.5 * x**2) / math.sqrt(2.0 * math.pi)
        local = cdf + x * pdf
    else:
        k = math.sqrt(2.0 / math.pi)
        t = torch.tanh(k * (x + 0.044715 * x**3))
        local = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t**2) * k * (1.0 + 3 * 0.044715 * x**2)
    dx = dout * local
    ### END SOLUTION
    return dx


def embedding_backward(idx: torch.Tensor, demb: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """dloss/dC for emb = C[idx].  (exercise ch03.embedding_backward)

    idx: int64, any shape S (e.g. (B, n)); demb = dloss/demb: float, shape S + (d,). Returns dC, float
    (vocab_size, d), demb's dtype: row v is the sum of demb over every position where idx == v (zero for
    a token that does not occur). A token used twice gets both gradients *added*: scatter-add, e.g.
    Tensor.index_add_ — `dC[idx] += demb` would keep only one of them.
    """
    ### BEGIN SOLUTION ch03.embedding_backward (§3.8, 2 pts): zeros (V, d), then index_add_ the flattened demb rows
    d = demb.shape[-1]
    dC = torch.zeros((vocab_size, d), dtype=demb.dtype)
    dC.index_add_(0, idx.reshape(-1), demb.reshape(-1, d))  # dC[idx[i]] += demb[i], repeats included
    ### END SOLUTION
    return dC


def manual_backward(
    model: MLPLanguageModel, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss and every gradient of the model, by hand: the forward pass step by step, then the four
    backward pieces in reverse order. Returns (loss, grads) with grads keyed by name: the intermediates
    logits, h, hpre, emb and the parameters C, W1, b1, W2, b2."""
    m = model
    B, n = idx.shape
    with torch.no_grad():
        # forward, keeping every intermediate that a backward step needs
        emb = m.C[idx]  # (B, n, d)
        x = emb.reshape(B, n * m.n_embd)  # (B, n·d)
        hpre = x @ m.W1 + m.b1  # (B, H)
        h = gelu(hpre, m.approximate)  # (B, H)
        logits = h @ m.W2 + m.b2  # (B, V)
        loss = cross_entropy(logits, targets)
        # backward: the chain rule, from the loss back to the embedding table
        dlogits = cross_entropy_backward(logits, targets)
        dh, dW2, db2 = linear_backward(h, m.W2, dlogits)
        dhpre = gelu_backward(hpre, dh, m.approximate)
        dx, dW1, db1 = linear_backward(x, m.W1, dhpre)
        demb = dx.reshape(B, n, m.n_embd)  # a reshape moves numbers, it does not change them: undo it
        dC = embedding_backward(idx, demb, m.vocab_size)
    grads = {"logits": dlogits, "h": dh, "hpre": dhpre, "emb": demb,
             "C": dC, "W1": dW1, "b1": db1, "W2": dW2, "b2": db2}
    return loss.item(), grads


def autograd_backward(
    model: MLPLanguageModel, idx: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """The same as manual_backward, from PyTorch's autograd: the oracle we check ourselves against.
    `retain_grad()` asks autograd to keep the gradient of an intermediate (it frees them by default)."""
    m = model
    B, n = idx.shape
    emb = m.C[idx]
    x = emb.reshape(B, n * m.n_embd)
    hpre = x @ m.W1 + m.b1
    h = F.gelu(hpre, approximate=m.approximate)
    logits = h @ m.W2 + m.b2
    loss = F.cross_entropy(logits, targets)
    for t in (emb, hpre, h, logits):
        t.retain_grad()
    params = [m.C, m.W1, m.b1, m.W2, m.b2]
    for p in params:
        p.grad = None
    loss.backward()
    grads = {"logits": logits.grad, "h": h.grad, "hpre": hpre.grad, "emb": emb.grad,
             "C": m.C.grad, "W1": m.W1.grad, "b1": m.b1.grad, "W2": m.W2.grad, "b2": m.b2.grad}
    for p in params:
        p.grad = None
    return loss.item(), grads


@dataclass(frozen=True)
class Comparison:
    """How a hand-made tensor compares with a reference: bit-for-bit, within tolerance, and the worst gap."""

    name: str
    exact: bool
    approx: bool
    maxdiff: float

    def __str__(self) -> str:
        return f"{self.name:<8} | exact: {self.exact!s:<5} | approx: {self.approx!s:<5} | maxdiff: {self.maxdiff:.2e}"


def cmp(name: str, ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-7,
        verbose: bool = True) -> Comparison:
    """Compare our gradient with autograd's; print one line (unless verbose=False) and return it.

    exact:   every element equal, bit for bit (rare: the sums are done in another order);
    approx:  torch.allclose(ours, theirs, rtol, atol) — equal up to float rounding;
    maxdiff: the largest absolute difference. Raises ValueError if the shapes differ.
    """
    if ours.shape != theirs.shape:
        raise ValueError(f"{name}: shapes differ, ours {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    result = Comparison(
        name,
        exact=bool(torch.equal(ours, theirs)),
        approx=bool(torch.allclose(ours, theirs, rtol=rtol, atol=atol)),
        maxdiff=float((ours - theirs).abs().max()) if ours.numel() else 0.0,
    )
    if verbose:
        print(result)
    return result


# ----------------------------------------------------------------------------- 3.9 - 3.10 training


def warmup_cosine_lr(step: int, total_steps: int, lr_max: float, warmup: int = 0, lr_min: float = 0.0) -> float:
    """The learning rate at `step` (0-based) of a run of total_steps.  (exercise ch03.lr_schedule)

    Linear warm-up, then cosine decay:
      step < warmup:   lr_max * (step + 1) / warmup                  (rises to lr_max at step warmup - 1)
      otherwise:       with p = (step - warmup) / max(1, total_steps - 1 - warmup), clipped to [0, 1],
                       lr_min + 0.5 * (lr_max - lr_min) * (1 + cos(π p))
                       (lr_max at step = warmup, lr_min at the last step, total_steps - 1).
    """
    ### BEGIN SOLUTION ch03.lr_schedule (§3.10, 1 pt): linear ramp while step < warmup, then a half cosine to lr_min
    if step < warmup:
        lr = lr_max * (step + 1) / warmup
    else:
        p = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - 1 - warmup)))
        lr = lr_min + 0.5 * (lr_max - lr_min) * (1.0 + math.cos(math.pi * p))
    ### END SOLUTION
    return lr


def make_optimizer(model: nn.Module, lr: float, momentum: float = 0.9) -> torch.optim.Optimizer:
    """Minibatch SGD with (Nesterov) momentum: each step moves along a running average of recent gradients.
    (Chapter 7 builds AdamW; plain momentum is all this small model needs.)"""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=True)


def lr_finder(
    make_model: Callable[[], nn.Module],
    X: torch.Tensor,
    Y: torch.Tensor,
    lr_lo: float = 1e-3,
    lr_hi: float = 30.0,
    steps: int = 150,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> tuple[list[float], list[float]]:
    """The learning-rate range test (Smith 2017): train a fresh model for `steps` minibatches while the
    learning rate grows geometrically from lr_lo to lr_hi, and record the loss at each. The loss falls
    faster and faster as the rate grows, then the run blows up; a good peak rate sits somewhat below the
    bottom of the curve, where the loss still falls steeply. Stops early once the loss is 4x its best."""
    model = make_model()
    opt = make_optimizer(model, lr_lo)
    lrs, losses = [], []
    for i in range(steps):
        lr = lr_lo * (lr_hi / lr_lo) ** (i / max(1, steps - 1))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = torch.randint(0, len(X), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(X[batch]), Y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        lrs.append(lr)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]) or losses[-1] > 4 * min(losses):
            break
    return lrs, losses


@dataclass
class TrainLog:
    """What a training run recorded: the loss of every step, and the mean losses at each evaluation."""

    lrs: list[float] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)  # per step, on that step's minibatch (nats)
    eval_steps: list[int] = field(default_factory=list)
    eval_train: list[float] = field(default_factory=list)  # on a fixed sample of training examples
    eval_val: list[float] = field(default_factory=list)  # on the validation examples
    seconds: float = 0.0  # wall-clock time of the optimisation steps, evaluations excluded


@torch.no_grad()
def mean_loss(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, batch_size: int = 16384) -> float:
    """Mean cross-entropy of the model over all examples (X, Y), in nats per token, in chunks."""
    total = 0.0
    for i in range(0, len(X), batch_size):
        total += F.cross_entropy(model(X[i : i + batch_size]), Y[i : i + batch_size], reduction="sum").item()
    return total / max(1, len(X))


def train(
    model: nn.Module,
    X: torch.Tensor,
    Y: torch.Tensor,
    steps: int,
    lr: float,
    batch_size: int = 256,
    warmup: int = 100,
    lr_min: float | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    eval_every: int = 500,
    eval_size: int = 50_000,
    generator: torch.Generator | None = None,
) -> TrainLog:
    """Minibatch SGD with momentum on random batches of (X, Y), learning rate warmup_cosine_lr(step, ...) with
    lr_min = lr / 20 unless given. Every eval_every steps (and at the end) record the mean loss on
    eval_size random training examples and on `val`."""
    lr_min = lr / 20 if lr_min is None else lr_min
    opt = make_optimizer(model, lr)
    log = TrainLog()
    train_eval = torch.randint(0, len(X), (min(eval_size, len(X)),), generator=generator)
    for step in range(steps):
        t0 = time.perf_counter()
        lr_now = warmup_cosine_lr(step, steps, lr, warmup, lr_min)
        for group in opt.param_groups:
            group["lr"] = lr_now
        batch = torch.randint(0, len(X), (batch_size,), generator=generator)
        loss = F.cross_entropy(model(X[batch]), Y[batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.seconds += time.perf_counter() - t0
        log.lrs.append(lr_now)
        log.train_loss.append(loss.item())
        if (step + 1) % eval_every == 0 or step == steps - 1:
            log.eval_steps.append(step + 1)
            log.eval_train.append(mean_loss(model, X[train_eval], Y[train_eval]))
            if val is not None:
                log.eval_val.append(mean_loss(model, *val))
    return log


# ----------------------------------------------------------------------------- 3.11 measuring and sampling


def bits_per_byte(model: MLPLanguageModel, stories: Sequence[str], vocab: Vocab) -> float:
    """The cost of the stories under the model in bits per UTF-8 byte, as in Chapter 1.

    Total bits = (sum over every example, closing ◆ included, of -ln p(target)) / ln 2, divided by the
    number of bytes of the stories in UTF-8. Bytes, not characters or tokens: every model, whatever it
    calls a token, has to encode the same bytes, so bits per byte compares them all on one scale.
    """
    X, Y = build_dataset(stories, vocab, model.context)
    n_bytes = sum(len(s.encode("utf-8")) for s in stories)
    return mean_loss(model, X, Y) * len(X) / math.log(2) / n_bytes


@torch.no_grad()
def sample(
    model: MLPLanguageModel,
    vocab: Vocab,
    max_len: int = 500,
    temperature: float = 1.0,
    prompt: str = "",
    generator: torch.Generator | None = None,
) -> str:
    """A story from the model: start from `context` boundary tokens (then the prompt), draw the next
    character from softmax(logits / temperature), slide the window, stop at ◆ or after max_len characters.
    Returns the prompt followed by the characters drawn."""
    window = ([BOUNDARY] * model.context + vocab.encode(prompt))[-model.context :]
    out: list[int] = []
    while len(out) < max_len:
        logits = model(torch.tensor([window]))[0]
        if temperature == 0:
            nxt = int(logits.argmax())
        else:
            nxt = int(torch.multinomial(torch.softmax(logits / temperature, dim=0), 1, generator=generator))
        if nxt == BOUNDARY:
            break
        out.append(nxt)
        window = window[1:] + [nxt]
    return prompt + vocab.decode(out)
