"""Chapter 7 — optimization, written to be read from top to bottom.

How a network starts (initialisation) and how it moves (optimizers, clipping, accumulation; the learning-rate
schedule is Chapter 3's `storylib.mlp.warmup_cosine_lr`). The optimizers are `torch.optim.Optimizer`
subclasses, so they drop into any PyTorch training loop, and they take the same steps as PyTorch's own: the
tests check that, step for step.

    GAINS, init_fan_in_   std = gain / sqrt(fan_in): activations keep their scale    (exercise ch07.fan_in_init)
    SGD                   gradient descent, with momentum and L2 weight decay        (exercise ch07.sgd)
    AdamW, Adam           per-parameter step sizes; decoupled (AdamW) or L2 decay    (exercise ch07.adamw)
    param_groups          weight decay for matrices, none for biases and gains       (exercise ch07.param_groups)
    clip_grad_norm_       rescale all gradients together to a maximum norm           (exercise ch07.clip)
    accumulate_grads      k small backward passes = one big one                      (exercise ch07.accumulate)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn

# ----------------------------------------------------------------------------- initialisation

# How much a nonlinearity shrinks the variance of a unit-variance input, undone by the gain (PyTorch's
# torch.nn.init.calculate_gain): ReLU zeroes half its inputs, so it halves the second moment -> gain sqrt(2);
# tanh squashes large inputs, 5/3 is the customary correction.
GAINS = {"linear": 1.0, "tanh": 5.0 / 3.0, "relu": math.sqrt(2.0)}


def fan_in(weight: torch.Tensor) -> int:
    """The number of inputs each output of a layer sums over.

    nn.Linear stores its weight as (out_features, in_features): fan_in = in_features. A convolution's weight is
    (out_channels, in_channels, *kernel): fan_in = in_channels · prod(kernel). Needs at least 2 dimensions.
    """
    if weight.dim() < 2:
        raise ValueError(f"fan_in needs a weight with at least 2 dimensions, got shape {tuple(weight.shape)}")
    return weight.shape[1] * math.prod(weight.shape[2:])


@torch.no_grad()
def init_fan_in_(weight: torch.Tensor, gain: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fill `weight` in place with N(0, std²), std = gain / sqrt(fan_in); return it.  (exercise ch07.fan_in_init)

    weight: (out, in, *kernel), any float dtype. Draw the numbers with `generator` (None: PyTorch's global one),
    so the same seeded generator gives the same weights. It is the "fan-in" (LeCun / Kaiming) initialisation:
    torch.nn.init.kaiming_normal_(weight, mode="fan_in") with the gain given directly.
    """
    ### BEGIN SOLUTION ch07.fan_in_init (§7.1, 1 pt): std = gain / √fan_in(weight); weight.normal_(0, std, generator=…)
    std = gain / math.sqrt(fan_in(weight))
    weight.normal_(0.0, std, generator=generator)
    ### END SOLUTION
    return weight


# ----------------------------------------------------------------------------- SGD with momentum


class SGD(torch.optim.Optimizer):
    """Stochastic gradient descent with momentum and L2 weight decay: torch.optim.SGD with dampening 0, no nesterov."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, weight_decay: float = 0.0):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"lr, momentum and weight_decay must be >= 0, got {lr}, {momentum}, {weight_decay}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One SGD update of every parameter that has a gradient, PyTorch's conventions.  (exercise ch07.sgd)

        For each parameter p with a gradient g, in its group's settings (lr, momentum μ, weight_decay λ):
            g   = g + λ·p               L2 weight decay, the gradient of λ/2·|p|² (skip when λ = 0); out of place:
                                        p.grad itself must not change
            buf = g at p's first step, else μ·buf + g     only when μ != 0; kept in self.state[p]["momentum_buffer"]
            p   = p - lr·buf            (p - lr·g when μ = 0)
        Equal to torch.optim.SGD(params, lr, momentum, weight_decay=...). Returns closure()'s loss, if given one.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]  # a dict, empty before the first step of p
                ### BEGIN SOLUTION ch07.sgd (§7.3, 2 pts): g + λ·p; buf = g first, then μ·buf + g; p -= lr·buf
                if wd != 0:
                    g = g.add(p, alpha=wd)  # a new tensor: p.grad itself is left as it was
                if mu != 0:
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = g.clone()
                    else:
                        state["momentum_buffer"].mul_(mu).add_(g)
                    g = state["momentum_buffer"]
                p.add_(g, alpha=-lr)
                ### END SOLUTION
        return loss


# ----------------------------------------------------------------------------- Adam and AdamW


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter 2019): torch.optim.AdamW, amsgrad and the rest off."""

    decoupled = True  # AdamW: decay the weights directly. Adam (below): add λ·p to the gradient.

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One Adam update of every parameter that has a gradient, PyTorch's conventions.  (exercise ch07.adamw)

        For each parameter p with a gradient g, in its group's settings (lr, betas = (β1, β2), eps, weight_decay λ),
        with t = the number of steps p has taken, this one included (1 at the first step):
            p = p · (1 - lr·λ)          decoupled decay (AdamW); when self.decoupled is False (class Adam), L2 decay
                                        instead: g = g + λ·p, out of place, as in SGD
            m = β1·m + (1 - β1)·g       first moment, a running mean of g       (self.state[p]["exp_avg"], from 0)
            v = β2·v + (1 - β2)·g²      second moment, a running mean of g²     (self.state[p]["exp_avg_sq"], from 0)
            p = p - lr/(1 - β1^t) · m / (sqrt(v)/sqrt(1 - β2^t) + eps)        bias-corrected; eps outside the sqrt
        Keep t in self.state[p]["step"], an int. Equal to torch.optim.AdamW (Adam: torch.optim.Adam) up to float
        rounding. Returns closure()'s loss, if given one.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]  # a dict, empty before the first step of p
                ### BEGIN SOLUTION ch07.adamw (§7.4, 3 pts): decay; m, v running means of g, g²; p -= lr·m̂ / (√v̂ + eps)
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                if wd != 0:
                    if self.decoupled:
                        p.mul_(1 - lr * wd)
                    else:
                        g = g.add(p, alpha=wd)
                m, v = state["exp_avg"], state["exp_avg_sq"]
                m.lerp_(g, 1 - beta1)  # m + (1 - β1)(g - m) = β1·m + (1 - β1)·g
                v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
                denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
                p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
                ### END SOLUTION
        return loss


class Adam(AdamW):
    """Adam (Kingma & Ba 2015): AdamW's update, with weight decay as L2 (added to the gradient). Default λ = 0."""

    decoupled = False

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two optimizer parameter groups, as nanoGPT makes them.  (exercise ch07.param_groups)

    Returns [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]:
    decay holds the parameters with p.dim() >= 2 (the matrices of Linear layers, the embeddings), no_decay the
    others (biases, LayerNorm weights), each list in the order of model.parameters(). Only parameters with
    requires_grad; a shared (tied) parameter appears once, as model.parameters() gives it.
    """
    ### BEGIN SOLUTION ch07.param_groups (§7.4, 1 pt): split model.parameters() (requires_grad only) by p.dim() >= 2
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    ### END SOLUTION
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# ----------------------------------------------------------------------------- gradient clipping


@torch.no_grad()
def clip_grad_norm_(params: torch.Tensor | Iterable[torch.Tensor], max_norm: float) -> torch.Tensor:
    """Scale all gradients together so that their total norm is at most max_norm.  (exercise ch07.clip)

    The total norm is the L2 norm of all gradients as one long vector: sqrt(Σ_p Σ_i p.grad[i]²), over the
    parameters whose .grad is not None. With coef = max_norm / (total + 1e-6): when coef < 1, multiply every
    gradient in place by coef; otherwise leave them alone. Returns the total norm *before* clipping, a 0-dim
    tensor. Equal to torch.nn.utils.clip_grad_norm_(params, max_norm).
    """
    params = [params] if isinstance(params, torch.Tensor) else list(params)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    ### BEGIN SOLUTION ch07.clip (§7.6, 1 pt): total = √(Σ g²) over all grads; if max_norm/(total+1e-6) < 1, scale by it
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    coef = max_norm / (total + 1e-6)
    if coef < 1:
        for g in grads:
            g.mul_(coef)
    ### END SOLUTION
    return total


def update(opt: torch.optim.Optimizer, loss: torch.Tensor, lr: float, grad_clip: float) -> torch.Tensor:
    """One training step on `loss`: fresh gradients, clipped to total norm grad_clip (clip_grad_norm_), then opt's
    update at learning rate lr. Returns the norm before clipping. (Chapter 17's picture models train with it.)"""
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    norm = clip_grad_norm_([p for group in opt.param_groups for p in group["params"]], grad_clip)
    opt.step()
    return norm


# ----------------------------------------------------------------------------- gradient accumulation


def accumulate_grads(
    model: nn.Module, loss_fn: Callable[[nn.Module, Any], torch.Tensor], micro_batches: Sequence[Any]
) -> float:
    """Gradients of a big batch, computed k = len(micro_batches) pieces at a time.  (exercise ch07.accumulate)

    loss_fn(model, batch) returns the *mean* loss over one micro-batch (a scalar tensor). Run a forward and a
    backward pass per micro-batch, of that loss divided by k, so that the gradients added up in p.grad are those
    of the mean over all the micro-batches: equal to one big batch's when the micro-batches have equal sizes.
    Only one micro-batch's graph is alive at a time. Like loss.backward(), this *adds* to p.grad: zero the
    gradients before. Returns the mean of the k micro-batch losses, a float.
    """
    if len(micro_batches) == 0:
        raise ValueError("accumulate_grads needs at least one micro-batch")
    ### BEGIN SOLUTION ch07.accumulate (§7.7, 2 pts): per batch (loss_fn(model, batch) / k).backward(); return the mean
    k = len(micro_batches)
    total = 0.0
    for batch in micro_batches:
        loss = loss_fn(model, batch) / k
        loss.backward()  # adds this micro-batch's share to p.grad and frees its graph
        total += loss.item()
    return total
    ### END SOLUTION


# ----------------------------------------------------------------------------- Muon (optional)

# The quintic's coefficients (Keller Jordan 2024): the largest slope at 0 (a) for which 5 steps still squeeze every
# singular value of a normalised matrix into a band around 1 (about 0.7 to 1.2), rather than exactly onto 1.
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Orthogonalise G: U·S'·Vᵀ for G = U·S·Vᵀ, with every S' near 1.  (exercise ch07.newton_schulz)

    G: (..., m, n), a matrix or a stack of them (each orthogonalised on its own). In `dtype` (None: bf16 on a GPU,
    where its matmuls are fast, fp32 on a CPU), on the matrix whose rows are the shorter side (transpose a tall
    one, m > n, and transpose back at the end):
        X = G / max(‖G‖_F, eps)          ‖·‖_F of each matrix: every singular value is then at most 1
        `steps` times, with (a, b, c) = coefficients:
            A = X·Xᵀ                     (short side)²: the cheap Gram matrix
            B = b·A + c·A·A              torch.baddbmm(A, A, A, beta=b, alpha=c): one fused matmul
            X = a·X + B·X                torch.baddbmm(X, B, X, beta=a); each singular value s -> a·s + b·s³ + c·s⁵
    baddbmm wants a stack: work on G.reshape(-1, m, n). Returns X in `dtype`, shaped like G. It is torch.optim.Muon's
    _zeropower_via_newtonschulz (always bf16), bit for bit in the same dtype.
    """
    if G.dim() < 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {tuple(G.shape)}")
    if dtype is None:
        dtype = torch.bfloat16 if G.is_cuda else torch.float32
    a, b, c = coefficients
    ### BEGIN SOLUTION ch07.newton_schulz (§7.11, 2 pts): X = G/‖G‖ (short side first); A = XXᵀ; X = aX + (bA + cA²)X
    X = G.to(dtype).reshape(-1, *G.shape[-2:])
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    for _ in range(steps):
        A = X @ X.mT
        B = torch.baddbmm(A, A, A, beta=b, alpha=c)
        X = torch.baddbmm(X, B, X, beta=a)
    if tall:
        X = X.mT
    X = X.reshape(G.shape)
    ### END SOLUTION
    return X


def muon_lr_scale(shape: Sequence[int]) -> float:
    """sqrt(max(1, rows / cols)): torch.optim.Muon's default ("original") step-size rule for a (rows, cols) matrix.

    An orthogonalised (rows, cols) update has root mean square sqrt(min/(rows·cols)) = 1/sqrt(max(rows, cols));
    the factor gives tall matrices (more outputs than inputs) the per-entry size of wide ones."""
    rows, cols = shape[:2]
    return math.sqrt(max(1.0, rows / cols))


def orthogonalize(updates: Sequence[torch.Tensor], steps: int = 5, dtype: torch.dtype | None = None,
                  eps: float = 1e-7) -> list[torch.Tensor]:
    """newton_schulz of each matrix in `updates`, those of one shape stacked into one batched call (a transformer's
    blocks share 4 shapes: 4 calls instead of 4·n_layer, far fewer kernel launches on a GPU)."""
    out: list[torch.Tensor | None] = [None] * len(updates)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, u in enumerate(updates):
        by_shape.setdefault(tuple(u.shape), []).append(i)
    for idx in by_shape.values():
        stack = newton_schulz(torch.stack([updates[i] for i in idx]), steps, eps=eps, dtype=dtype)
        for i, o in zip(idx, stack.unbind(0), strict=True):
            out[i] = o
    return out  # type: ignore[return-value]


class Muon(torch.optim.Optimizer):
    """MomentUm Orthogonalized by Newton–Schulz (Keller Jordan et al. 2024) for 2-D matrices: torch.optim.Muon.

    Adam scales each entry of a matrix's update on its own; Muon changes the matrix as a whole, by an update whose
    singular values are all about 1, so that every direction the matrix maps moves by the same amount, the rare
    directions as much as the common ones. Hidden matrices only: embeddings, the lm_head, gains and biases go to
    AdamW (muon_param_groups). ns_dtype: the Newton–Schulz dtype (None: bf16 on a GPU, fp32 on a CPU; torch's: bf16).
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype | None = None):
        if lr < 0 or momentum < 0 or weight_decay < 0 or ns_steps < 1:
            raise ValueError(f"lr, momentum, weight_decay must be >= 0, ns_steps >= 1, got {lr}, {momentum}, "
                             f"{weight_decay}, {ns_steps}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                                      ns_steps=ns_steps, ns_dtype=ns_dtype))
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon updates 2-D matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        """One Muon update of every matrix that has a gradient, torch.optim.Muon's conventions.  (exercise ch07.muon)

        For each group (lr, weight_decay λ, momentum μ, nesterov, ns_steps, ns_dtype) and each of its parameters p
        with a gradient g:
            buf = μ·buf + (1 - μ)·g        a running mean of g, from 0  (self.state[p]["momentum_buffer"])
            u   = (1 - μ)·g + μ·buf        Nesterov: look one step ahead (plain momentum: u = buf)
        then O = orthogonalize(the group's u's, ns_steps, ns_dtype) (newton_schulz on each), and for each p:
            p = p · (1 - lr·λ)             decoupled weight decay, as AdamW
            p = p - lr · muon_lr_scale(p.shape) · O
        Equal to torch.optim.Muon (its default adjust_lr_fn) up to bf16 rounding. Returns closure()'s loss, if any.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            ### BEGIN SOLUTION ch07.muon (§7.11, 2 pts): buf.lerp_(g, 1-μ); u = g.lerp(buf, μ); orthogonalize; step
            updates = []
            for p in params:
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                updates.append(p.grad.lerp(buf, mu) if group["nesterov"] else buf)
            for p, o in zip(params, orthogonalize(updates, group["ns_steps"], group["ns_dtype"]), strict=True):
                p.mul_(1 - lr * wd)
                p.add_(o.to(p.dtype), alpha=-lr * muon_lr_scale(p.shape))
            ### END SOLUTION
        return loss


class BatchedMuon(Muon):
    """Muon's update with its loops over parameters replaced by multi-tensor (torch._foreach_*) calls: the same
    numbers, a few kernel launches per shape instead of a few per matrix. On a GPU an optimizer step of 40 small
    matrices is bound by Python and launches, not by arithmetic; the trainer's optimizer = "muon" uses this one."""

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            bufs = [self.state[p].setdefault("momentum_buffer", torch.zeros_like(p)) for p in params]
            torch._foreach_lerp_(bufs, grads, 1 - mu)
            updates = torch._foreach_lerp(grads, bufs, mu) if group["nesterov"] else bufs
            if wd != 0:
                torch._foreach_mul_(params, 1 - lr * wd)
            by_shape: dict[tuple[int, ...], list[int]] = {}
            for i, p in enumerate(params):
                by_shape.setdefault(tuple(p.shape), []).append(i)
            for shape, idx in by_shape.items():
                O = newton_schulz(torch.stack([updates[i] for i in idx]), group["ns_steps"], dtype=group["ns_dtype"])
                O = O.to(params[idx[0]].dtype)
                torch._foreach_add_([params[i] for i in idx], list(O.unbind(0)), alpha=-lr * muon_lr_scale(shape))
        return loss


def muon_param_groups(model: nn.Module, weight_decay: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(Muon's groups, AdamW's groups): the hidden 2-D matrices (the blocks' Linear weights) for Muon; for AdamW,
    param_groups' split of the rest (embeddings and the lm_head tied to them with weight_decay, gains and biases
    without). A matrix is hidden when it is a Linear layer's weight other than lm_head: an embedding is a lookup
    table (each row sees only its own token), not a map whose directions Muon should balance."""
    linear = {id(m.weight) for name, m in model.named_modules()
              if isinstance(m, nn.Linear) and name.rpartition(".")[2] != "lm_head"}
    embed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    hidden = [p for p in model.parameters() if p.requires_grad and p.dim() == 2 and id(p) in linear - embed]
    hidden_ids = {id(p) for p in hidden}
    rest = [dict(g, params=[p for p in g["params"] if id(p) not in hidden_ids])
            for g in param_groups(model, weight_decay)]
    return [{"params": hidden, "weight_decay": weight_decay}], rest


class MuonAdamW:
    """Muon for some parameter groups, torch.optim.AdamW for the others, as one optimizer: the trainer sets each
    group's "lr", steps, zeroes and checkpoints it like any torch.optim.Optimizer (state_dict numbers the parameters
    of muon's groups first, then adamw's)."""

    def __init__(self, muon: Muon, adamw: torch.optim.Optimizer):
        self.muon, self.adamw = muon, adamw

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # looked up each time: load_state_dict makes new group dicts
        return self.muon.param_groups + self.adamw.param_groups

    @property
    def n_muon(self) -> int:
        return sum(len(g["params"]) for g in self.muon.param_groups)

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = self.muon.step(closure)
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        m, a, n = self.muon.state_dict(), self.adamw.state_dict(), self.n_muon
        groups = m["param_groups"] + [dict(g, params=[i + n for i in g["params"]]) for g in a["param_groups"]]
        return {"state": {**m["state"], **{i + n: s for i, s in a["state"].items()}}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        n, k = self.n_muon, len(self.muon.param_groups)
        state, groups = state_dict["state"], state_dict["param_groups"]
        self.muon.load_state_dict({"state": {i: s for i, s in state.items() if i < n}, "param_groups": groups[:k]})
        adam_groups = [dict(g, params=[i - n for i in g["params"]]) for g in groups[k:]]
        self.adamw.load_state_dict({"state": {i - n: s for i, s in state.items() if i >= n},
                                    "param_groups": adam_groups})
