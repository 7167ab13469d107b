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
